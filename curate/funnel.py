"""The curation funnel of a dataset: read -> rejected (by reason) -> accepted -> filtered -> flagged -> clean.

One definition, shown the same way, step by step (Funnel.steps), by `prefcurate run`, the HTML
report and the dataset card. Flags are counted among the pairs the filter kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from curate.dataset import Dataset


@dataclass(frozen=True)
class Funnel:
    """Where every input pair went. ``filtered``/``flagged`` are None when that stage has not run."""

    read: int
    rejected: dict[str, int]
    accepted: int
    ties: int
    filtered: dict[str, int] | None  # removed by the filter, each pair under its first rule
    flagged: int | None  # minority flags among the pairs the filter kept (all pairs without filters)
    flag_reasons: dict[str, int] = field(default_factory=dict)  # among those flagged pairs
    flagged_total: int | None = None  # minority flags among all accepted pairs

    @property
    def kept(self) -> int:
        return self.accepted - sum((self.filtered or {}).values())

    @property
    def clean(self) -> int:
        return self.kept - (self.flagged or 0)

    def steps(self) -> list[tuple[str, int, str]]:
        """(label, pairs, kind) top to bottom; kind is total, rejected, filtered, flagged or kept."""
        out = [("read", self.read, "total")]
        out += [(f"rejected: {r}", n, "rejected") for r, n in _by_count(self.rejected)]
        out.append(("accepted", self.accepted, "total"))
        if self.filtered is not None:
            out += [(f"filtered: {r}", n, "filtered") for r, n in _by_count(self.filtered)]
            out.append(("kept by the filter", self.kept, "total"))
        if self.flagged is not None:
            out.append(("flagged as minority", self.flagged, "flagged"))
            out.append(("clean (kept, not flagged)", self.clean, "kept"))
        return out


def _by_count(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(((k, v) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0]))


def funnel(ds: Dataset) -> Funnel:
    """Where every input pair of ``ds`` went, from its tables (the one funnel: `run`, the report and
    the dataset card all show this)."""
    import polars as pl

    ds.require("pairs", "run `prefcurate ingest SOURCES -f FORMAT -o DATASET_DIR` first")
    accepted = ds.num_rows("pairs")
    ties = int(ds.scan("pairs").filter(pl.col("label") == "tie").select(pl.len()).collect().item())
    rejected = counts_of(ds.scan("rejects"), "reason") if ds.has("rejects") else {}
    filtered = None
    if ds.has("filters"):
        removed = ds.scan("filters").filter(~pl.col("keep")).select(pl.col("reasons").list.first().fill_null("unknown"))
        filtered = counts_of(removed, "reasons")
    flagged, flagged_total, flag_reasons = None, None, {}
    if ds.has("pair_scores"):
        scores = ds.scan("pair_scores").select("pair_id", "is_minority", "reasons")
        flagged_total = int(scores.filter(pl.col("is_minority")).select(pl.len()).collect().item())
        if ds.has("filters"):
            scores = scores.join(ds.scan("filters").select("pair_id", "keep"), on="pair_id", how="left") \
                .filter(pl.col("keep").fill_null(True))
        hit = scores.filter(pl.col("is_minority"))
        flagged = int(hit.select(pl.len()).collect().item())
        flag_reasons = counts_of(hit.select(pl.col("reasons").explode()).drop_nulls(), "reasons")
    return Funnel(read=accepted + sum(rejected.values()), rejected=rejected, accepted=accepted, ties=ties,
                  filtered=filtered, flagged=flagged, flag_reasons=flag_reasons, flagged_total=flagged_total)


def counts_of(lf, column: str) -> dict[str, int]:
    """Value -> rows, from a polars LazyFrame column."""
    import polars as pl

    rows = lf.group_by(column).agg(pl.len().alias("n")).collect()
    return {str(k): int(n) for k, n in zip(rows[column].to_list(), rows["n"].to_list())}

