"""The ingest stage: raw files -> pairs, images (each distinct image once) and rejects.

Shards are parts of input files (row groups, record ranges). Each shard checks its rows and writes
its three tables; the global facts (a judgement already seen in an earlier shard, an image already
stored by an earlier shard) are merged in ``finalize`` from small per-shard key arrays, and only the
shards that hold such rows are rewritten. The first occurrence in input order always wins, so the
result does not depend on the executor.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import ids
from curate.dataset import Dataset, read_shard
from curate.ingest import hpdv2, hpdv3, hub, pickapic, rapidata, table
from curate.ingest.candidates import ShardState, assemble, describe_row, image_keys
from curate.ingest.pickapic import SourceError, one_line
from curate.ingest.reasons import Reason
from curate.options import Format
from curate.runner import ShardContext, Stage, commit_shard_file


_SPLITS = ("validation_unique", "test_unique", "validation", "test", "train")


def split_of(path: Path, default: str | None) -> str:
    if default:
        return default
    stem = path.stem.lower()
    return next((s for s in _SPLITS if stem.startswith(s)), "train")


@dataclass
class IngestStage(Stage):
    """``files`` are local paths or ``hf://`` references (curate.ingest.hub), all of one layout ``format``."""

    files: list[str]
    format: str
    image_root: str | None = None
    mapping: dict[str, str] = field(default_factory=dict)
    split: str | None = None
    shard_rows: int = 20_000
    batch_rows: int = 10_000
    allow_network: bool = False
    full_decode: bool = False
    hub_mirror: str | None = None  # where hf:// references are served from (not output-changing: not in config)

    name = "ingest"
    version = 2
    outputs = {"pairs": "pairs", "images": "images", "rejects": "rejects"}

    def config(self) -> dict:
        return {"files": [f if hub.is_ref(f) else os.path.abspath(f) for f in self.files], "format": self.format,
                "image_root": self.image_root and os.path.abspath(self.image_root), "mapping": self.mapping,
                "split": self.split, "shard_rows": self.shard_rows, "allow_network": self.allow_network,
                "full_decode": self.full_decode}

    def source_fingerprint(self) -> dict:
        # Hashing hundreds of GB on every start is not an option: size and modification time stand in
        # (a Hub file: the repo revision in its reference).
        return {f: hub.fingerprint(f, self.hub_mirror) if hub.is_ref(f) else
                [os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in self.files}

    def plan(self, dataset: Dataset) -> list[dict]:
        if self.format == Format.auto:
            raise SourceError("IngestStage needs the layout itself: choose it first with "
                              "curate.ingest.sources.resolve_format(Format.auto, files)")
        specs = []
        for f in self.files:
            try:
                specs.extend(self._plan_file(f))
            except OSError as exc:  # unreadable (permissions, a vanished file): the run stops, naming it
                raise SourceError(f"{f}: cannot be read ({exc.strerror or one_line(exc)}); check the file's "
                                  f"permissions") from None
        return specs

    def _plan_file(self, f: str, shard_rows: int | None = None) -> list[dict]:
        """The shard specs of one input file; a Hub file is one shard, planned when it has been fetched."""
        name = hub.display_name(f) if hub.is_ref(f) else Path(f).name
        common = {"source": ids.source_name(self.format, name), "split": split_of(Path(name), self.split)}
        if hub.is_ref(f):
            return [{"file": f, "hub": True, **common}]
        path, rows = Path(f), shard_rows or self.shard_rows
        if self.format == Format.pickapic:
            file_specs = pickapic.plan(path, rows)
        elif self.format == Format.rapidata:
            file_specs = rapidata.plan(path, rows)
        elif self.format in (Format.hpdv2, Format.hpdv3):
            module = hpdv2 if self.format == Format.hpdv2 else hpdv3
            file_specs = module.plan(path, rows, Path(self.image_root or path.parent))
        else:
            file_specs = table.plan(path, rows, {"mapping": self.mapping, "image_root": self.image_root,
                                                 "allow_network": self.allow_network})
        return [{**spec, **common} for spec in file_specs]

    def _read(self, spec: dict):
        if self.format == Format.rapidata:
            root = Path(self.image_root) if self.image_root else None
            return rapidata.read(spec, self.batch_rows, spec["source"], root, self.allow_network)
        if self.format == Format.pickapic:
            return pickapic.read(spec, self.batch_rows, self.allow_network)
        return {Format.hpdv2: hpdv2.read, Format.hpdv3: hpdv3.read, Format.table: table.read}[Format(self.format)](
            spec, self.batch_rows)

    def process(self, spec: dict, ctx: ShardContext):
        if spec.get("hub"):
            with hub.local_copy(spec["file"], self.hub_mirror) as local:
                for local_spec in self._plan_file(str(local), shard_rows=sys.maxsize):
                    yield from self._process_local({**local_spec, **{k: spec[k] for k in ("source", "split")}}, ctx)
        else:
            yield from self._process_local(spec, ctx)

    def _process_local(self, spec: dict, ctx: ShardContext):
        state = ShardState(full_decode=self.full_decode)
        for candidates, raw_row in self._read(spec):
            if self.format == Format.rapidata:
                ctx.stats["anonymous_votes"] += rapidata.anonymous_votes(candidates, spec["source"])
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
