"""The ingest stage: raw files -> pairs, images (each distinct image once) and rejects.

Shards are parts of input files (row groups, record ranges). Each shard checks its rows and writes
its three tables; the global facts (a judgement already seen in an earlier shard, an image already
stored by an earlier shard) are merged in ``finalize`` from small per-shard key arrays, and only the
shards that hold such rows are rewritten. The first occurrence in input order always wins, so the
result does not depend on the executor.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import ids
from curate.dataset import Dataset, read_shard
from curate.ingest import hpdv2, pickapic, table
from curate.ingest.candidates import ShardState, assemble, describe_row, image_keys
from curate.ingest.pickapic import SourceError
from curate.ingest.reasons import Reason
from curate.runner import ShardContext, Stage, commit_shard_file


class Format(str, Enum):
    pickapic = "pickapic"
    hpdv2 = "hpdv2"
    table = "table"


_GLOBS = {Format.pickapic: ("*.parquet",), Format.hpdv2: ("*.json",),
          Format.table: ("*.csv", "*.tsv", "*.jsonl", "*.ndjson", "*.parquet")}
_SPLITS = ("validation_unique", "test_unique", "validation", "test", "train")


def expand_sources(sources: list[str], fmt: Format) -> list[Path]:
    """Input files from paths, folders (searched recursively) or, for pickapic, a Hugging Face dataset id."""
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for pattern in _GLOBS[fmt] for p in path.rglob(pattern))
            if not found:
                raise SourceError(f"{path}: no {' / '.join(_GLOBS[fmt])} files inside for --format {fmt.value}")
            files.extend(found)
        elif fmt is Format.pickapic and source.count("/") == 1 and not source.startswith("."):
            files.extend(_download_hub_dataset(source))
        else:
            raise SourceError(f"{source}: no such file or folder")
    return files


def _download_hub_dataset(repo_id: str) -> list[Path]:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise SourceError(f"{repo_id}: looks like a Hugging Face dataset id, but HF_HUB_OFFLINE is set; download "
                          f"the parquet files elsewhere and pass their folder instead")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, repo_type="dataset", allow_patterns=["*.parquet", "**/*.parquet"])
    except Exception as exc:
        raise SourceError(f"{repo_id}: could not download it from the Hugging Face Hub ({exc}); pass a local "
                          f"folder of parquet files instead") from None
    return sorted(Path(folder).rglob("*.parquet"))


def split_of(path: Path, default: str | None) -> str:
    if default:
        return default
    stem = path.stem.lower()
    return next((s for s in _SPLITS if stem.startswith(s)), "train")


@dataclass
class IngestStage(Stage):
    files: list[str]
    format: str
    image_root: str | None = None
    mapping: dict[str, str] = field(default_factory=dict)
    split: str | None = None
    shard_rows: int = 20_000
    batch_rows: int = 10_000
    allow_network: bool = False
    full_decode: bool = False

    name = "ingest"
    version = 1
    outputs = {"pairs": "pairs", "images": "images", "rejects": "rejects"}

    def config(self) -> dict:
        return {"files": [os.path.abspath(f) for f in self.files], "format": self.format,
                "image_root": self.image_root and os.path.abspath(self.image_root), "mapping": self.mapping,
                "split": self.split, "shard_rows": self.shard_rows, "allow_network": self.allow_network,
                "full_decode": self.full_decode}

    def source_fingerprint(self) -> dict:
        # Hashing hundreds of GB on every start is not an option: size and modification time stand in.
        return {f: [os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in self.files}

    def plan(self, dataset: Dataset) -> list[dict]:
        specs = []
        for f in map(Path, self.files):
            try:
                specs.extend(self._plan_file(f))
            except OSError as exc:  # unreadable (permissions, a vanished file): the run stops, naming it
                raise SourceError(f"{f}: cannot be read ({exc.strerror or exc}); check the file's permissions") from None
        return specs

    def _plan_file(self, f: Path) -> list[dict]:
        """The shard specs of one input file."""
        if self.format == Format.pickapic:
            file_specs = pickapic.plan(f, self.shard_rows)
        elif self.format == Format.hpdv2:
            file_specs = hpdv2.plan(f, max(1, self.shard_rows // 10), Path(self.image_root or f.parent))
        else:
            file_specs = table.plan(f, self.shard_rows, {"mapping": self.mapping, "image_root": self.image_root,
                                                         "allow_network": self.allow_network})
        for spec in file_specs:
            spec.update(source=ids.source_name(self.format, f.name), split=split_of(f, self.split))
        return file_specs

    def process(self, spec: dict, ctx: ShardContext):
        reader = {Format.pickapic: pickapic.read, Format.hpdv2: hpdv2.read, Format.table: table.read}[Format(self.format)]
        state = ShardState(full_decode=self.full_decode)
        for candidates, raw_row in reader(spec, self.batch_rows):
            yield from assemble(candidates, source=spec["source"], split=spec["split"], raw_row=raw_row,
                                state=state, stats=ctx.stats)
        ctx.stats["records"] += _records_in(spec)
        ctx.partial = state.partial()

    def finalize(self, dataset: Dataset, results, executor) -> dict[str, int]:
        stats = _drop_duplicate_pairs(self, dataset, results)
        _drop_images_stored_earlier(self, dataset, results)
        return stats


def _records_in(spec: dict) -> int:
    if "records" in spec:
        return len(spec["records"])
    if "rows" in spec:
        return spec["rows"]
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(spec["file"]).metadata
    return sum(meta.row_group(g).num_rows for g in spec["row_groups"])


def _first_occurrence(keys_per_shard: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For keys laid out in shard order: (all keys, shard of each, whether it is the first occurrence)."""
    keys = np.concatenate(keys_per_shard) if keys_per_shard else np.zeros(0, np.uint64)
    shard = np.repeat(np.arange(len(keys_per_shard)), [len(k) for k in keys_per_shard])
    first = np.zeros(len(keys), dtype=bool)
    if len(keys):
        _, first_index = np.unique(keys, return_index=True)
        first[first_index] = True
    return keys, shard, first


def _drop_duplicate_pairs(stage: IngestStage, dataset: Dataset, results) -> dict[str, int]:
    """Move every judgement seen earlier in input order from pairs to rejects (duplicate_row)."""
    partials = [r.partial for r in results]
    keys, shard, first = _first_occurrence([p["dup_keys"] for p in partials])
    if first.all():
        return {}
    hi = np.concatenate([p["pair_hi"] for p in partials])
    lo = np.concatenate([p["pair_lo"] for p in partials])
    _, inverse = np.unique(keys, return_inverse=True)
    first_pos = np.full(inverse.max() + 1, -1)
    first_pos[inverse[first]] = np.flatnonzero(first)
    dups = np.flatnonzero(~first)
    originals = first_pos[inverse[dups]]  # where each duplicate's first occurrence sits
    dup_ids = ids.hex_words(hi[dups], lo[dups]).to_pylist()
    original_ids = ids.hex_words(hi[originals], lo[originals]).to_pylist()
    for index in np.unique(shard[dups]):
        mine = shard[dups] == index
        drop = {d: o for d, o, m in zip(dup_ids, original_ids, mine) if m}
        _move_pairs_to_rejects(stage, dataset, int(index), drop)
    # The counts describe the final tables whether this ran now or in an earlier, interrupted finalize.
    total = len(dups)
    return {"accepted": -total, f"rejected:{Reason.DUPLICATE_ROW.value}": total}


def _move_pairs_to_rejects(stage: IngestStage, dataset: Dataset, index: int, drop: dict[str, str]) -> int:
    """Idempotent: the rejects file is written before the pairs file loses the rows."""
    pairs_file = dataset.table_dir("pairs") / stage.shard_file("pairs", index)
    dup_file = f"{stage.name}-{index:05d}-duplicates.arrow"
    pairs = read_shard(pairs_file)
    is_dup = pc.is_in(pairs["pair_id"], pa.array(list(drop)))
    if not pc.any(is_dup).as_py():
        return 0  # an earlier finalize already moved them
    dups = pairs.filter(is_dup)
    rejects = {"source": dups["source"], "source_row": dups["source_row"], "source_item": dups["source_item"],
               "reason": pa.array([Reason.DUPLICATE_ROW.value] * dups.num_rows),
               "message": pa.array([f"same judgement as pair {drop[p]} earlier in the input"
                                    for p in dups["pair_id"].to_pylist()]),
               "row": pa.array([describe_row(r) for r in dups.to_pylist()])}
    from curate import schema as schemas

    commit_shard_file(dataset, stage, index, "rejects", dup_file, [schemas.load("rejects").table(rejects)])
    commit_shard_file(dataset, stage, index, "pairs", pairs_file.name, [pairs.filter(pc.invert(is_dup))])
    return dups.num_rows


def _drop_images_stored_earlier(stage: IngestStage, dataset: Dataset, results) -> None:
    """Each distinct image is kept by the first shard (input order) that stored it."""
    keys, shard, first = _first_occurrence([r.partial["image_keys"] for r in results])
    for index in np.unique(shard[~first]):
        redundant = keys[(shard == index) & ~first]
        path = dataset.table_dir("images") / stage.shard_file("images", int(index))
        images = read_shard(path)
        keep = ~np.isin(image_keys(images["image_id"].to_pylist()), redundant)
        if keep.all():
            continue  # already rewritten by an earlier finalize
        commit_shard_file(dataset, stage, int(index), "images", path.name, [images.filter(pa.array(keep))])
