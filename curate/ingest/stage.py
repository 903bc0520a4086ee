"""The ingest stage: raw files -> pairs, images (each distinct image once) and rejects.

Shards are parts of input files (row groups, record ranges). Each shard checks its rows and writes
its three tables, and leaves its keys (judgements, stored images) in hash buckets. The global facts
(a judgement already seen in an earlier shard, an image already stored by an earlier shard) are
found and applied by two later passes, planned as tasks like this one (curate.ingest.duplicates):
``finalize`` merges nothing, so the driver's memory does not grow with the input. The first
occurrence in input order always wins, so the result does not depend on the executor.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from curate import ids
from curate.dataset import Dataset
from curate.ingest import hpdv2, hpdv3, hub, pickapic, rapidata, table
from curate.ingest.buckets import bucket_count
from curate.ingest.candidates import ShardState, assemble
from curate.ingest.pickapic import SourceError, one_line
from curate.options import Format
from curate.runner import ShardContext, Stage


_SPLITS = ("validation_unique", "test_unique", "validation", "test", "train")


def split_of(path: Path, default: str | None) -> str:
    if default:
        return default
    stem = path.stem.lower()
    return next((s for s in _SPLITS if stem.startswith(s)), "train")


@dataclass
class IngestStage(Stage):
    """``files`` are local paths or ``hf://`` references (curate.ingest.hub), all of one layout ``format``.

    Memory: a task holds its shard (``shard_rows``); the driver, one record per shard, not per row
    (at 100M rows: the duplicates pass's tasks ~300 MB each, the driver under ~60 MB; see
    curate.ingest.duplicates)."""

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
    version = 3  # 3: partials in hash buckets, merged by the later passes (2: merged in finalize)
    outputs = {"pairs": "pairs", "images": "images", "rejects": "rejects"}
    partials_to_driver = False  # the keys stay in runs/ingest/shards for the duplicates pass

    def then(self) -> list[Stage]:
        from curate.ingest.duplicates import DuplicatesStage, RewriteStage

        return [DuplicatesStage(self), RewriteStage(self)]

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
        buckets = bucket_count(len(specs))  # every shard lays out its keys alike, for the duplicates pass
        return [{**spec, "buckets": buckets} for spec in specs]

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
                    shared = {k: spec[k] for k in ("source", "split", "buckets")}
                    yield from self._process_local({**local_spec, **shared}, ctx)
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
        ctx.partial = state.partial(spec["buckets"])


def _records_in(spec: dict) -> int:
    if "records" in spec:
        return len(spec["records"])
    if "rows" in spec:
        return spec["rows"]
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(spec["file"]).metadata
    return sum(meta.row_group(g).num_rows for g in spec["row_groups"])
