"""The evaluation section: win rates with intervals, a chart per scorer, and base-vs-tuned images that differ most."""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

from curate.report.html import _figure, _section, _thumbnail
from curate.report.plots import interval_chart


def evaluation_section(folder: str | Path, gallery: int = 6, thumbnail: int = 192) -> str:
    """``folder`` is an ``prefcurate evaluate --out`` folder with its summary.json and images.parquet."""
    folder = Path(folder)
    path = folder / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no summary.json; run `prefcurate evaluate --out {folder}` to the end first")
    summary = json.loads(path.read_text())
    lead = (f"<code>{escape(summary['model'])}</code> against {', '.join(escape(t) for t in summary['tuned'])} on "
            f"{summary['prompts']} prompts of <code>{escape(summary['suite'])}</code>, {summary['images_per_prompt']} "
            f"images each, the same seeds in every model. A win is the tuned image scoring higher than the base "
            f"image of the same prompt and seed (ties count half); intervals are 95% bootstrap intervals over prompts.")
    entries = [(name, summary["scorers"][name]) for name in summary["scorer_order"]]
    charts = [_figure(_win_chart(name, entry), f"{escape(name)} ({escape(entry['key'])}): win rate over the base; "
                      f"the dashed line is no change.") for name, entry in entries]
    body = _table(entries) + "<div class='grid2'>" + "".join(charts) + "</div>"
    body += _gallery(folder, summary, gallery, thumbnail)
    return _section("evaluation", "Evaluation: what training bought", lead, body)


def _ci(value: float, ci: list[float], signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.3f}"
    return f"{f.format(value)} <span class='muted'>[{f.format(ci[0])}, {f.format(ci[1])}]</span>"


def _table(entries: list[tuple[str, dict]]) -> str:
    rows = []
    for name, entry in entries:
        groups = [("all prompts", entry)] + sorted((entry.get("by_category") or {}).items())
        for group, stats in groups:
            for model, c in stats["comparisons"].items():
                rows.append(f"<tr><td class='name'>{escape(name)}</td><td class='text'>{escape(group)}</td>"
                            f"<td class='text'>{escape(model)}</td><td>{stats['mean']['base']:.4f}</td>"
                            f"<td>{stats['mean'][model]:.4f}</td><td>{_ci(c['win_rate'], c['win_rate_ci'])}</td>"
                            f"<td>{_ci(c['mean_diff'], c['mean_diff_ci'], signed=True)}</td><td>{c['prompts']}</td></tr>")
    head = ("<tr><th>scorer</th><th class='text'>prompts</th><th class='text'>tuned</th><th>base mean</th>"
            "<th>tuned mean</th><th>win rate [95% CI]</th><th>mean difference [95% CI]</th><th>prompts</th></tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _win_chart(name: str, entry: dict) -> str:
    rows = [(model, c["win_rate"], *c["win_rate_ci"]) for model, c in entry["comparisons"].items()]
    for category, stats in sorted((entry.get("by_category") or {}).items()):
        rows += [(f"{model} · {category}", c["win_rate"], *c["win_rate_ci"]) for model, c in stats["comparisons"].items()]
    return interval_chart(rows, f"Win rate over the base: {name}", "win rate of the tuned model", reference=0.5,
                          lo=0.0, hi=1.0)


def _gallery(folder: Path, summary: dict, limit: int, thumbnail: int) -> str:
    """Per tuned model, the (prompt, seed) pairs whose first scorer's scores differ most, base beside tuned."""
    import polars as pl

    if not limit:
        return ""
    scorers = summary["scorer_order"]
    first = scorers[0]
    table = pl.read_parquet(folder / "images.parquet")
    base = table.filter(pl.col("model") == "base").select("prompt", "seed", "image", *scorers)
    cards = []
    for model in summary["tuned"]:
        tuned = table.filter(pl.col("model") == model).select("seed", "image", *scorers)
        joined = base.join(tuned, on="seed", suffix="_tuned")
        joined = joined.with_columns((pl.col(f"{first}_tuned") - pl.col(first)).alias("diff"))
        for row in joined.sort(pl.col("diff").abs(), descending=True).head(limit).iter_rows(named=True):
            cards.append(_card(folder, model, row, scorers, thumbnail))
    return (f"<h3>Where the models differ most ({escape(first)})</h3><div class='gallery'>" + "".join(cards) + "</div>")


def _card(folder: Path, model: str, row: dict, scorers: list[str], thumbnail: int) -> str:
    sides = []
    for label, image, suffix in (("base", row["image"], ""), (model, row["image_tuned"], "_tuned")):
        scores = " · ".join(f"{escape(s)} {row[s + suffix]:.3f}" for s in scorers)
        blob = (folder / image).read_bytes() if (folder / image).is_file() else None
        sides.append(f"<div class='col'><div class='side'>{_thumbnail(blob, thumbnail)}<span class='which'>"
                     f"{escape(label)}</span></div><p class='facts'>{scores}</p></div>")
    return (f"<article class='pair'><div class='sides'>{''.join(sides)}</div>"
            f"<p class='prompt'>{escape(row['prompt'])}</p><p class='pid'>seed "
            f"{row['seed']} · {escape(model)} − base = {row['diff']:+.4f}</p></article>")
