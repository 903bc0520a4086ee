"""The figures of a curation report and a dataset card, aggregated from whatever tables exist.

Every function works on any subset of stages: a figure whose table is missing is ``None`` and
``MISSING`` says which command makes it. Pair-level columns are aggregated by polars (group-bys,
histogram counts) so nothing per pair reaches Python; only the small tables (annotators) and the
gallery rows are read whole. Image bytes are read for the gallery rows only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from curate.dataset import Dataset
from curate.funnel import counts_of

# table -> (stage that writes it, command that runs the stage, what must run before)
MISSING = {
    "pairs": ("ingest", "prefcurate ingest SOURCES -f FORMAT -o DATASET_DIR", ""),
    "annotators": ("annotators", "prefcurate annotators DATASET_DIR", ""),
    "pair_scores": ("flag", "prefcurate flag DATASET_DIR", "prefcurate annotators"),
    "clip_scores": ("embed", "prefcurate embed DATASET_DIR --model MODEL", ""),
    "filters": ("filter", "prefcurate filter DATASET_DIR", "prefcurate embed"),
}


def missing_hint(table: str) -> str:
    stage, command, before = MISSING[table]
    after = f" (after `{before}`)" if before else ""
    return f"the {stage} stage has not run on this dataset (no '{table}' table); run `{command}`{after}"


def manifest(ds: Dataset, stage: str) -> dict | None:
    """The committed manifest of a stage run (config and stats), or None."""
    path = ds.run_dir(stage) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------------------------ histograms
@dataclass(frozen=True)
class Histogram:
    """Counts per bin (``edges`` has one more entry than each count array), per series."""

    edges: np.ndarray
    series: dict[str, np.ndarray]

    @property
    def total(self) -> int:
        return int(sum(c.sum() for c in self.series.values()))


def histogram(lf, column: str, lo: float, hi: float, bins: int, by: str | None = None,
              order: tuple[str, ...] = ()) -> Histogram:
    """Bin ``column`` into ``bins`` equal bins over [lo, hi] (values outside go to the end bins),
    one series per value of ``by``; nulls and NaN are left out. The counting happens in polars."""
    import polars as pl

    width = (hi - lo) / bins
    value = pl.col(column).cast(pl.Float64)
    index = ((value - lo) / width).floor().clip(0, bins - 1).cast(pl.Int32).alias("bin")
    keys = [index] + ([pl.col(by).cast(pl.String).alias("series")] if by else [])
    rows = (lf.filter(value.is_not_null() & value.is_not_nan()).group_by(keys).agg(pl.len().alias("n")).collect())
    names = list(order) or sorted(set(rows["series"].to_list())) if by else ["all"]
    series = {name: np.zeros(bins, np.int64) for name in names}
    for row in rows.iter_rows(named=True):
        name = row["series"] if by else "all"
        series.setdefault(name, np.zeros(bins, np.int64))[row["bin"]] += row["n"]
    return Histogram(np.linspace(lo, hi, bins + 1), series)


def value_range(lf, columns: list[str]) -> tuple[float, float] | None:
    """Smallest and largest value over ``columns`` (None when all are null)."""
    import polars as pl

    stats = lf.select([pl.min_horizontal([pl.col(c).min() for c in columns]).alias("lo"),
                       pl.max_horizontal([pl.col(c).max() for c in columns]).alias("hi")]).collect()
    lo, hi = stats["lo"].item(), stats["hi"].item()
    if lo is None or hi is None or not np.isfinite([lo, hi]).all():
        return None
    return float(lo), float(hi)


# -------------------------------------------------------------------------------------- sections
def annotator_figures(ds: Dataset, bins: int = 20) -> dict | None:
    """Per-annotator statistics (the table is one row per person, small enough to read whole)."""
    import polars as pl

    if not ds.has("annotators"):
        return None
    people = ds.scan("annotators")
    table = people.select("judgements", "ties", "reliability", "verdict", "position_pvalue").collect()
    stats = (manifest(ds, "annotators") or {}).get("stats", {})
    alpha = stats.get("krippendorff_alpha_x1000")
    judgements = table["judgements"].to_numpy()
    return {
        "annotators": table.height,
        "judgements": int(judgements.sum()),
        "median_judgements": float(np.median(judgements)) if table.height else 0.0,
        "max_judgements": int(judgements.max()) if table.height else 0,
        "verdicts": {v: int((table["verdict"] == v).sum()) for v in ("reliable", "undecided", "unreliable")},
        "mean_reliability": float(table["reliability"].mean()) if table.height else float("nan"),
        "tie_rate": float(table["ties"].sum() / max(1, judgements.sum())),
        "position_biased": int((table["position_pvalue"] < 1e-3).sum()),
        "krippendorff_alpha": None if alpha is None or alpha == -1000 else alpha / 1000,
        "reliability": histogram(people, "reliability", 0.0, 1.0, bins, by="verdict",
                                 order=("reliable", "undecided", "unreliable")),
        "activity": histogram(people.with_columns(pl.col("judgements").log10().alias("log_judgements")),
                              "log_judgements", 0.0, _log_ceiling(judgements), 12),
    }


def _log_ceiling(counts: np.ndarray) -> float:
    """The next whole power of ten above the largest count, as a log10 (at least 1)."""
    largest = int(counts.max()) if len(counts) else 1
    return max(1.0, float(np.ceil(np.log10(max(1, largest)))))


def minority_figures(ds: Dataset, bins: int = 25) -> dict | None:
    import polars as pl

    if not ds.has("pair_scores"):
        return None
    scores = ds.scan("pair_scores").with_columns(
        pl.when(pl.col("is_minority")).then(pl.lit("flagged")).otherwise(pl.lit("not flagged")).alias("verdict"))
    summary = scores.select(pl.len().alias("pairs"), pl.col("is_minority").sum().alias("flagged"),
                            pl.col("minority_score").is_not_null().sum().alias("scored"),
                            pl.col("u").is_not_null().sum().alias("with_u"),
                            pl.col("weight").mean().alias("mean_weight")).collect().row(0, named=True)
    config = (manifest(ds, "flag") or {}).get("config", {})
    return {
        **{k: (int(v) if k != "mean_weight" else float(v or 0.0)) for k, v in summary.items()},
        "config": config,
        "minority_score": histogram(scores, "minority_score", 0.0, 1.0, bins, by="verdict", order=("not flagged", "flagged")),
        "u": histogram(scores, "u", 0.0, 1.0, bins) if summary["with_u"] else None,
        "weight": histogram(scores, "weight", 0.0, 1.0, bins),
        "reasons": counts_of(scores.select(pl.col("reasons").explode()).drop_nulls(), "reasons"),
    }


def clip_figures(ds: Dataset, bins: int = 30) -> list[dict] | None:
    """Per CLIP model: winner and loser prompt-image scores, the winner's margin, the image-image cosine."""
    import polars as pl

    from curate.report.plots import nice_ticks

    if not ds.has("clip_scores"):
        return None
    labels = ds.scan("pairs").select("pair_id", "label")
    out = []
    for model in sorted(ds.scan("clip_scores").select("model").unique().collect()["model"].to_list()):
        rows = ds.scan("clip_scores").filter(pl.col("model") == model).join(labels, on="pair_id", how="left")
        decided = rows.filter(pl.col("label") != "tie").select(
            pl.when(pl.col("label") == "a").then(pl.col("score_a")).otherwise(pl.col("score_b")).alias("chosen"),
            pl.when(pl.col("label") == "a").then(pl.col("score_b")).otherwise(pl.col("score_a")).alias("rejected"))
        long = pl.concat([decided.select(pl.col("chosen").alias("score"), pl.lit("chosen").alias("image")),
                          decided.select(pl.col("rejected").alias("score"), pl.lit("rejected").alias("image"))])
        figure = {"model": model, "pairs": int(rows.select(pl.len()).collect().item()),
                  "margin_positive": int(rows.filter(pl.col("margin") > 0).select(pl.len()).collect().item()),
                  "margin_decided": int(rows.filter((pl.col("margin") != 0) & pl.col("margin").is_not_null()
                                                    & (pl.col("label") != "tie")).select(pl.len()).collect().item())}
        signed = rows.filter(pl.col("label") != "tie").with_columns(
            pl.when(pl.col("margin") < 0).then(pl.lit("CLIP disagrees")).otherwise(pl.lit("CLIP agrees")).alias("side"))
        for name, frame, columns, series in (("scores", long, ["score"], ("chosen", "rejected")),
                                             ("margin", signed, ["margin"], ("CLIP disagrees", "CLIP agrees")),
                                             ("image_cosine", rows, ["image_cosine"], ())):
            span = value_range(frame, columns)
            if span is None:
                figure[name] = None
                continue
            ticks = nice_ticks(*span)
            by = {"scores": "image", "margin": "side"}.get(name)
            figure[name] = histogram(frame, columns[0], ticks[0], ticks[-1], bins, by=by, order=series)
        out.append(figure)
    return out


def source_rows(ds: Dataset) -> list[dict]:
    """One row per source file: pairs, ties, prompts, annotators, rejects, and (when run) flags and filters."""
    import polars as pl

    pairs = ds.scan("pairs").select("pair_id", "source", "label", "prompt_id", "annotator_id")
    extra = []
    if ds.has("pair_scores"):
        pairs = pairs.join(ds.scan("pair_scores").select("pair_id", "is_minority", "weight"), on="pair_id", how="left")
        extra += [pl.col("is_minority").sum().alias("flagged"), pl.col("weight").mean().alias("mean_weight")]
    if ds.has("filters"):
        pairs = pairs.join(ds.scan("filters").select("pair_id", "keep"), on="pair_id", how="left")
        extra += [(~pl.col("keep").fill_null(True)).sum().alias("filtered")]
    rows = pairs.group_by("source").agg(
        pl.len().alias("pairs"), (pl.col("label") == "tie").sum().alias("ties"),
        pl.col("prompt_id").n_unique().alias("prompts"), pl.col("annotator_id").drop_nulls().n_unique().alias("annotators"),
        *extra).sort("source").collect()
    rejected = counts_of(ds.scan("rejects"), "source") if ds.has("rejects") else {}
    out = [dict(row, rejected=rejected.pop(row["source"], 0)) for row in rows.iter_rows(named=True)]
    out += [{"source": source, "pairs": 0, "rejected": n} for source, n in sorted(rejected.items())]
    return out


def gallery_rows(ds: Dataset, limit: int = 12) -> list[dict] | None:
    """The most strongly flagged pairs (highest minority score first), with their images' bytes."""
    import polars as pl

    from curate.images import ImageIndex

    if not ds.has("pair_scores"):
        return None
    top = (ds.scan("pair_scores").filter(pl.col("is_minority"))
           .sort(["minority_score", "pair_id"], descending=[True, False], nulls_last=True).head(limit)
           .select("pair_id", "minority_score", "u", "reliability", "agreement", "reasons", "weight"))
    top = top.join(ds.scan("pairs").select("pair_id", "prompt", "label", "image_a_id", "image_b_id", "annotator_id",
                                           "source"), on="pair_id", how="left", maintain_order="left")
    if ds.has("filters"):
        top = top.join(ds.scan("filters").select("pair_id", "keep", pl.col("reasons").alias("filter_reasons")),
                       on="pair_id", how="left", maintain_order="left")
    rows = top.collect().to_dicts()
    if not rows:
        return rows
    images = ImageIndex(ds).take([r["image_a_id"] for r in rows] + [r["image_b_id"] for r in rows])
    blobs, formats = images.column("bytes").to_pylist(), images.column("format").to_pylist()
    for i, row in enumerate(rows):
        row["image_a"], row["image_b"] = blobs[i], blobs[len(rows) + i]
        row["format_a"], row["format_b"] = formats[i], formats[len(rows) + i]
    return rows
