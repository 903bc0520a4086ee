"""The README.md dataset card of an export: Hugging Face YAML header, then what a reader needs to trust the data.

The YAML declares the configs (data files per split), the features, the split sizes, the license,
task and tags. The body gives the curation funnel, the export's own drops, annotator statistics and
how the flags and filters were made, from the stage manifests of the runs that made the tables.
"""
from __future__ import annotations

import pyarrow as pa

from curate import __version__
from curate.dataset import Dataset
from curate.funnel import funnel as curation_funnel
from curate.report import data as figures
from curate.report.method import filter_method, flag_method


def yaml_features(columns) -> list[dict]:
    """The features in the card's ``dataset_info`` (list types as ``sequence``, readable by old and new datasets)."""
    from curate.publish.export import dtype_name

    out = []
    for c in columns:
        if c.feature == "image":
            out.append({"name": c.name, "dtype": "image"})
        elif pa.types.is_list(c.type):
            out.append({"name": c.name, "sequence": dtype_name(c.type.value_type)})
        else:
            out.append({"name": c.name, "dtype": dtype_name(c.type)})
    return out


def size_category(rows: int) -> str:
    for limit, name in ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                        (10**7, "1M<n<10M")):
        if rows < limit:
            return name
    return "10M<n<100M"


def card_header(result) -> dict:
    splits = {name: s for name, s in result.splits.items() if s["rows"]}
    return {
        "license": result.options.license,
        "task_categories": ["text-to-image"],
        "tags": ["preference", "dpo", "prefcurate"],
        "size_categories": [size_category(result.rows)],
        "pretty_name": f"{result.out.name} (prefcurate)",
        "configs": [{"config_name": "default", "data_files": [{"split": name, "path": f"data/{name}-*"}
                                                               for name in splits]}],
        "dataset_info": {
            "features": yaml_features(result.columns),
            "splits": [{"name": name, "num_bytes": int(s["num_bytes"]), "num_examples": int(s["rows"])}
                       for name, s in splits.items()],
            "download_size": int(sum(f["size"] for s in splits.values() for f in s["files"])),
            "dataset_size": int(sum(s["num_bytes"] for s in splits.values())),
        },
    }


def render_card(result, ds: Dataset) -> str:
    import yaml

    header = yaml.safe_dump(card_header(result), sort_keys=False, allow_unicode=True, width=1000)
    sections = [_intro(result), _columns(result), _funnel(ds), _export(result), _annotators(ds), _flags(ds),
                _filters(ds, result)]
    return f"---\n{header}---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


def _table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value).replace("|", "\\|")  # a bare pipe would end the cell


def _intro(result) -> str:
    splits = ", ".join(f"{name} ({s['rows']:,})" for name, s in result.splits.items() if s["rows"])
    layout = ("Images are stored as raw bytes in `jpg_0`/`jpg_1` with `label_0`/`label_1` and `caption`, the "
              "Pick-a-Pic layout existing training scripts read (the Hub viewer does not render raw bytes)."
              if result.options.pickapic_columns else
              "Images use the `Image` feature, so the Hub viewer shows them and `datasets` decodes them to PIL images.")
    return (f"# {result.out.name}\n\nPairwise human preferences between two images generated for the same prompt, "
            f"curated with prefcurate {__version__}: {result.rows:,} judgements; splits: {splits}. {layout}\n\n"
            "```python\nfrom datasets import load_dataset\n\n"
            "pairs = load_dataset(\"OWNER/NAME\")  # the Hub repo id, or the path of this folder\n```")


def _columns(result) -> str:
    rows = [[f"`{c.name}`", _type_name(c), c.doc] for c in result.columns]
    return "## Columns\n\n" + _table(["column", "type", "meaning"], rows)


def _type_name(column) -> str:
    from curate.publish.export import dtype_name

    if column.feature == "image":
        return "image"
    if pa.types.is_list(column.type):
        return f"list of {dtype_name(column.type.value_type)}"
    return dtype_name(column.type)


def _funnel(ds: Dataset) -> str:
    funnel = curation_funnel(ds)
    rows = [[label, n, f"{n / funnel.read:.1%}" if funnel.read else "n/a"] for label, n, _ in funnel.steps()]
    notes = []
    if funnel.filtered is None:
        notes.append(f"Not filtered: {figures.missing_hint('filters')}.")
    if funnel.flagged is None:
        notes.append(f"Not flagged: {figures.missing_hint('pair_scores')}.")
    reasons = ""
    if funnel.flag_reasons:
        reasons = "\n\nReasons given for the flags (a pair can have several):\n\n" + _table(
            ["reason", "pairs"], [[r, n] for r, n in sorted(funnel.flag_reasons.items(), key=lambda kv: -kv[1])])
    return ("## Curation funnel\n\nEvery pair read ends in exactly one row below each step; rejected rows are kept "
            "with their reason in the source dataset's rejects table. Ties in the accepted pairs: "
            f"{funnel.ties:,}.\n\n" + _table(["step", "pairs", "share of read"], rows)
            + ("\n\n" + " ".join(notes) if notes else "") + reasons)


def _export(result) -> str:
    dropped = result.dropped()
    options = [name for name, on in (("--drop-ties", result.options.drop_ties),
                                      ("--drop-filtered", result.options.drop_filtered),
                                      ("--drop-flagged", result.options.drop_flagged)) if on]
    rows = [[name, s["rows"], *(s["dropped"].get(k, 0) for k in ("tie", "filtered", "flagged")), len(s["files"])]
            for name, s in result.splits.items()]
    text = ("## What this export holds\n\n" + (f"Rows dropped on export with {', '.join(options)} (each counted under "
            "the first option that drops it): " + ", ".join(f"{k} {v:,}" for k, v in dropped.items()) + "."
            if options else "Every accepted pair is included; the curation columns say which ones to down-weight "
            "or leave out.") + "\n\n"
            + _table(["split", "rows", "dropped ties", "dropped filtered", "dropped flagged", "files"], rows))
    empty = [name for name, s in result.splits.items() if not s["rows"]]
    if empty:
        text += f"\n\nSplits with no rows left (not in the configs): {', '.join(empty)}."
    return text


def _annotators(ds: Dataset) -> str:
    people = figures.annotator_figures(ds)
    if people is None:
        return f"## Annotators\n\nNo annotator statistics: {figures.missing_hint('annotators')}."
    v = people["verdicts"]
    alpha = people["krippendorff_alpha"]
    rows = [["annotators", people["annotators"]], ["judgements", people["judgements"]],
            ["judgements per annotator (median / max)", f"{people['median_judgements']:g} / {people['max_judgements']:,}"],
            ["reliable / undecided / unreliable", f"{v['reliable']:,} / {v['undecided']:,} / {v['unreliable']:,}"],
            ["mean shrunk reliability", f"{people['mean_reliability']:.3f}"],
            ["tie rate", f"{people['tie_rate']:.1%}"],
            ["position-biased (exact binomial p < 0.001)", people["position_biased"]],
            ["Krippendorff's alpha", "n/a (no pair judged twice)" if alpha is None else f"{alpha:.3f}"]]
    return "## Annotators\n\n" + _table(["statistic", "value"], rows)


def _flags(ds: Dataset) -> str:
    run = figures.manifest(ds, "flag")
    if run is None or not ds.has("pair_scores"):
        return f"## How the flags were made\n\nNo flags: {figures.missing_hint('pair_scores')}."
    return "## How the flags were made\n\n" + "\n\n".join(flag_method(run.get("config", {})))


def _filters(ds: Dataset, result) -> str:
    run = figures.manifest(ds, "filter")
    parts = []
    if run is not None and ds.has("filters"):
        parts.append("## How the filters were made\n\n" + "\n".join(filter_method(run.get("config", {}))))
    if result.clip_model:
        parts.append(f"CLIP columns come from model `{result.clip_model}` (raw prompt-image cosines).")
    return "\n\n".join(parts)
