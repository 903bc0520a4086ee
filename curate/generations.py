"""Generations of an incremental stage (embed, encode, scores): runs named ``<prefix><NNN>``, each
processing only what committed earlier generations did not. A generation counts as data only
once its manifest exists."""
from __future__ import annotations

import json

from curate.dataset import Dataset


def generations(dataset: Dataset, prefix: str) -> list[tuple[int, bool]]:
    """(generation, committed) of the runs named ``<prefix><NNN>``, oldest first."""
    runs = dataset.root / "runs"
    found = []
    for run in sorted(runs.glob(f"{prefix}*")) if runs.is_dir() else []:
        if run.name[len(prefix):].isdigit():
            found.append((int(run.name[len(prefix):]), (run / "manifest.json").is_file()))
    return found


def committed_generation_files(dataset: Dataset, prefix: str, tables, before: int | None = None) -> dict[str, tuple[str, ...]]:
    """Non-empty output files (relative to the dataset) of the committed generations older than
    ``before``, per table, from their manifests: a file no manifest lists is not data yet."""
    out: dict[str, list[str]] = {t: [] for t in tables}
    for generation, committed in generations(dataset, prefix):
        if committed and (before is None or generation < before):
            manifest = json.loads((dataset.run_dir(f"{prefix}{generation:03d}") / "manifest.json").read_text())
            for table in tables:
                shards = manifest["tables"].get(table, {}).get("shards", [])
                out[table] += [f"tables/{table}/{s['file']}" for s in shards if s["rows"]]
    return {t: tuple(files) for t, files in out.items()}
