"""The curation funnel of a dataset: read -> rejected (by reason) -> filtered -> flagged -> kept."""
from __future__ import annotations

import json
from pathlib import Path

from curate.dataset import Dataset


def funnel_counts(dataset_dir: Path) -> dict:
    """Counts from the stages that have run (missing stages are absent from the result)."""
    ds = Dataset(dataset_dir)
    out: dict = {}
    manifest = ds.run_dir("ingest") / "manifest.json"
    if manifest.is_file():
        stats = json.loads(manifest.read_text())["stats"]
        out["read"] = stats.get("items", 0)
        out["rejected"] = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("rejected:") and v}
        out["accepted"] = stats.get("accepted", 0)
    if ds.has("pairs"):
        import polars as pl

        out["ties"] = int(ds.scan("pairs").filter(pl.col("label") == "tie").select(pl.len()).collect().item())
    if ds.has("filters"):
        import polars as pl

        out["filtered"] = int(ds.scan("filters").filter(~pl.col("keep")).select(pl.len()).collect().item())
    if ds.has("pair_scores"):
        import polars as pl

        out["flagged"] = int(ds.scan("pair_scores").filter(pl.col("is_minority")).select(pl.len()).collect().item())
    return out


def funnel(dataset_dir: Path) -> list[tuple[str, object]]:
    counts = funnel_counts(dataset_dir)
    if not counts:
        return []
    rows: list[tuple[str, object]] = []
    if "read" in counts:
        rows.append(("pairs read", counts["read"]))
        rows.append(("rejected at ingest", sum(counts["rejected"].values())))
        rows += [(f"  {reason}", n) for reason, n in sorted(counts["rejected"].items(), key=lambda kv: -kv[1])]
        rows.append(("accepted", counts["accepted"]))
    if "ties" in counts:
        rows.append(("  of which ties", counts["ties"]))
    if "filtered" in counts:
        rows.append(("removed by filters", counts["filtered"]))
    if "flagged" in counts:
        rows.append(("flagged as minority", counts["flagged"]))
    return rows
