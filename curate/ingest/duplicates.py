"""Ingest's later passes: judgements and images seen earlier in input order, found and removed.

Pass 1 (curate.ingest.stage) writes each shard's pairs, images and rejects and leaves its keys in
hash buckets (curate.ingest.buckets); it merges nothing. Two later passes (``IngestStage.then``),
each planned as tasks and run by the executor, finish the job:

- ``DuplicatesStage`` (pass 2), one task per bucket: reads that bucket of every shard's partial and
  finds the first occurrence in input order, (shard, row), of every key. It writes what each later
  occurrence is: ``duplicate_pairs`` (a pair that repeats a judgement, and the pair it repeats) and
  ``redundant_images`` (an image a shard stored that an earlier shard stored too), declared tables
  of one file per bucket, one record batch per shard, so pass 3 reads only its shard's batches.
- ``RewriteStage`` (pass 3) supersedes pass 1 (curate.runner): one task per affected shard moves its
  duplicate pairs to a rejects file of their own (reason duplicate_row, naming the original) and
  drops its redundant images; the runner renames the files over pass 1's and updates pass 1's records
  and manifest (counts corrected by ``superseded_stats``).

Why buckets rather than one merge on the driver: the driver held 24 bytes per row (2.4 GB at 100M
rows, plus np.unique's copies) and did the whole merge alone. Now the first occurrence is found per
bucket, in parallel, a bucket holding about a shard's worth of rows or 1/64 of the input
(curate.ingest.buckets). Why declared tables between passes 2 and 3 rather than partials: they are
checksummed by the manifest like any table (pass 3's fingerprint, ``prefcurate verify``), and they
say, for anyone who asks, which pair each duplicate repeated. Why pass 3 finds rows by pair id and
image key rather than by position: a rerun after a crash may meet a file already rewritten, and
must then change nothing.

Memory, at 100M pairs (5,000 shards of 20,000): a pass-2 task holds one bucket, 1/64 of the keys,
at about 200 B per row at its peak (the shards' arrays, their concatenation, the sort; measured
with tracemalloc) plus ~90 B per duplicate it reports: ~300 MB, ~450 MB if most rows repeat. A
pass-3 task holds one shard's files, as pass 1's tasks do. The driver holds a small record per
shard and task (specs, stats) and pass 3's plan, at most shards x 128 batch references (~60 MB,
reached only if every shard repeats something in every bucket): flat in rows, growing with shards
only. The result is what one global merge gives: the first occurrence in input order wins,
whatever the executor or the number of workers.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from curate import ids
from curate import schema as schemas
from curate.dataset import Dataset, DatasetError, read_shard
from curate.ingest.buckets import MAX_BUCKETS, bucket_count, images_key, pairs_key
from curate.ingest.candidates import describe_row, image_keys
from curate.ingest.reasons import Reason
from curate.runner import ShardContext, Stage, read_partial

FIRST_PASS = "ingest"


def _first_pass_shards(dataset: Dataset) -> int:
    manifest = dataset.run_dir(FIRST_PASS) / "manifest.json"
    if not manifest.is_file():
        raise DatasetError(f"{manifest} is missing: the duplicates pass reads a committed ingest run; rerun "
                           f"`prefcurate ingest` without --resume")
    return int(json.loads(manifest.read_text())["shards"])


def first_occurrences(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For keys in input order: (positions of the later occurrences, position of each one's first).

    A stable sort keeps input order among equal keys, so the first of each run of equal keys is the
    first occurrence in input order."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = ranked[1:] != ranked[:-1]
    run_start = np.maximum.accumulate(np.where(first, np.arange(len(keys)), 0))
    return order[~first], order[run_start][~first]


def _by_shard(table: pa.Table):
    """One record batch per shard (the table is sorted by shard): pass 3 reads only its own."""
    shard = table["shard"].to_numpy()
    cuts = np.flatnonzero(np.diff(shard)) + 1
    for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(shard)]):
        if stop > start:
            yield table.slice(int(start), int(stop - start)).combine_chunks().to_batches()[0]


def duplicate_pairs(parts: list[np.ndarray]) -> pa.Table:
    """``duplicate_pairs`` rows of one bucket from every shard's (key, row, hi, lo) arrays, in shard order."""
    rows = np.concatenate(parts) if parts else np.zeros((0, 4), np.uint64)
    shard = np.repeat(np.arange(len(parts), dtype=np.int32), [len(p) for p in parts])
    later, first = first_occurrences(rows[:, 0])
    order = np.lexsort((rows[later, 1], shard[later]))
    later, first = later[order], first[order]
    return schemas.load("duplicate_pairs").table({
        "shard": pa.array(shard[later], pa.int32()), "row": pa.array(rows[later, 1].astype(np.int64)),
        "pair_id": ids.hex_words(rows[later, 2], rows[later, 3]),
        "original_pair_id": ids.hex_words(rows[first, 2], rows[first, 3]),
        "original_shard": pa.array(shard[first], pa.int32())})


def redundant_images(parts: list[np.ndarray]) -> pa.Table:
    """``redundant_images`` rows of one bucket from every shard's sorted image keys, in shard order."""
    keys = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    shard = np.repeat(np.arange(len(parts), dtype=np.int32), [len(p) for p in parts])
    later, first = first_occurrences(keys)
    order = np.lexsort((keys[later], shard[later]))
    later, first = later[order], first[order]
    return schemas.load("redundant_images").table({
        "shard": pa.array(shard[later], pa.int32()), "image_key": pa.array(keys[later], pa.uint64()),
        "owner_shard": pa.array(shard[first], pa.int32())})


@dataclass
class _LaterPass(Stage):
    """A pass after ingest: its fingerprint is ingest's config and sources (it reads ingest's run)."""

    ingest: Stage

    def config(self) -> dict:
        return {"ingest": {"version": self.ingest.version, "config": self.ingest.config()}, "max_buckets": MAX_BUCKETS}

    def source_fingerprint(self) -> dict:
        return self.ingest.source_fingerprint()


@dataclass
class DuplicatesStage(_LaterPass):
    """Pass 2: per hash bucket, every later occurrence of a judgement or an image (see the module doc)."""

    name = "ingest_duplicates"
    version = 1
    outputs = {"duplicate_pairs": "duplicate_pairs", "redundant_images": "redundant_images"}

    def plan(self, dataset: Dataset) -> list[dict]:
        shards = _first_pass_shards(dataset)
        return [{"bucket": b, "shards": shards} for b in range(bucket_count(shards))]

    def process(self, spec: dict, ctx: ShardContext):
        b = spec["bucket"]
        parts = [read_partial(ctx.dataset, FIRST_PASS, i, [pairs_key(b), images_key(b)]) for i in range(spec["shards"])]
        pairs = duplicate_pairs([p[pairs_key(b)].reshape(-1, 4) for p in parts])
        images = redundant_images([p[images_key(b)] for p in parts])
        del parts
        for batch in _by_shard(pairs):
            yield "duplicate_pairs", batch
        for batch in _by_shard(images):
            yield "redundant_images", batch


@dataclass
class RewriteStage(_LaterPass):
    """Pass 3: rewrites the ingest shards that hold duplicates or redundant images (see the module doc)."""

    name = "ingest_rewrite"
    version = 1
    supersedes = FIRST_PASS
    outputs = {"pairs": "pairs", "images": "images", "rejects": "rejects"}
    inputs = ("duplicate_pairs", "redundant_images")

    def plan(self, dataset: Dataset) -> list[dict]:
        """One task per shard with anything to remove; it is told which record batches describe it."""
        found: dict[int, list] = defaultdict(list)
        for table in self.inputs:
            for path in dataset.shards(table):
                with ipc.open_file(pa.memory_map(str(path))) as reader:
                    for i in range(reader.num_record_batches):
                        shard = reader.get_record_batch(i).column("shard")[0].as_py()
                        found[shard].append((table, str(path), i))
        return [{"shard": s, "batches": found[s]} for s in sorted(found)]

    def replaces(self, spec: dict) -> tuple[int, dict[str, str]]:
        shard, tables = spec["shard"], {t for t, _, _ in spec["batches"]}
        files = {}
        if "duplicate_pairs" in tables:  # the moved rows' file first, then the pairs file losing them
            files |= {"rejects": duplicates_file(shard), "pairs": self.ingest.shard_file("pairs", shard)}
        if "redundant_images" in tables:
            files["images"] = self.ingest.shard_file("images", shard)
        return shard, files

    def process(self, spec: dict, ctx: ShardContext):
        found = _read_batches(spec["batches"])
        _, files = self.replaces(spec)
        if "duplicate_pairs" in found:
            yield from _move_pairs_to_rejects(ctx.dataset, files["pairs"], found["duplicate_pairs"])
        if "redundant_images" in found:
            yield from _drop_images(ctx.dataset, files["images"], found["redundant_images"])

    def finalize(self, dataset: Dataset, results) -> dict[str, int]:
        # Counted from pass 2's tables, not from this pass's tasks: a task rerun after a crash finds its
        # rows already moved and moves nothing, but the table still says how many this pass removed.
        return {"duplicate_pairs": dataset.num_rows("duplicate_pairs"),
                "redundant_images": dataset.num_rows("redundant_images")}

    def superseded_stats(self, stats: dict[str, int]) -> dict[str, int]:
        moved = stats.get("duplicate_pairs", 0)
        return {"accepted": -moved, f"rejected:{Reason.DUPLICATE_ROW.value}": moved} if moved else {}


def duplicates_file(shard: int) -> str:
    """The rejects file of a shard's duplicate pairs (ingest's clear-out removes it with the rest)."""
    return f"{FIRST_PASS}-{shard:05d}-duplicates.arrow"


def _read_batches(batches: list) -> dict[str, pa.Table]:
    out: dict[str, list] = defaultdict(list)
    for table, path, i in batches:
        with ipc.open_file(pa.memory_map(path)) as reader:
            out[table].append(reader.get_record_batch(i))
    return {t: pa.Table.from_batches(b) for t, b in out.items()}


def _move_pairs_to_rejects(dataset: Dataset, pairs_file: str, found: pa.Table):
    """Idempotent: after a crash, the rows are found gone from pairs and nothing is yielded again."""
    drop = dict(zip(found["pair_id"].to_pylist(), found["original_pair_id"].to_pylist()))
    pairs = read_shard(dataset.table_dir("pairs") / pairs_file)
    is_dup = pc.is_in(pairs["pair_id"], pa.array(list(drop)))
    if not pc.any(is_dup).as_py():
        return  # moved by an earlier run of this pass
    dups = pairs.filter(is_dup)
    yield "rejects", schemas.load("rejects").table({
        "source": dups["source"], "source_row": dups["source_row"], "source_item": dups["source_item"],
        "reason": pa.array([Reason.DUPLICATE_ROW.value] * dups.num_rows),
        "message": pa.array([f"same judgement as pair {drop[p]} earlier in the input"
                             for p in dups["pair_id"].to_pylist()]),
        "row": pa.array([describe_row(r) for r in dups.to_pylist()])})
    yield "pairs", pairs.filter(pc.invert(is_dup))


def _drop_images(dataset: Dataset, images_file: str, found: pa.Table):
    """Each distinct image stays with the first shard (input order) that stored it; idempotent."""
    images = read_shard(dataset.table_dir("images") / images_file)
    keep = ~np.isin(image_keys(images["image_id"].to_pylist()), found["image_key"].to_numpy())
    if not keep.all():
        yield "images", images.filter(pa.array(keep))
