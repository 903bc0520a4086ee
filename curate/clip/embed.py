"""The embed stage: each distinct image and prompt of a dataset embedded once per CLIP model.

Work is split into buckets by id hash (``bucket_of``), so an id that appears in several input shards
is embedded once, by one shard, whatever the executor. Embedding is incremental: each run of a
model is a *generation* (stage ``embed-<model slug>-g<NNN>``) that embeds only the ids no earlier
generation embedded or recorded as a failure. An interrupted generation is redone (or resumed
with ``--resume``, keeping its finished shards) before a new one starts.

Images are decoded and preprocessed in worker processes (a torch DataLoader over an
IterableDataset of rows of the memory-mapped images shards) while the main process runs the model.
"""
from __future__ import annotations

import functools
import hashlib
import math
import multiprocessing
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import schema as schemas
from curate.clip.models import ClipSource, LoadedClip, load_clip
from curate.dataset import Dataset, read_shard
from curate.ids import normalize_prompt
from curate.generations import committed_generation_files
from curate.generations import generations as runner_generations
from curate.runner import ShardContext, Stage

EMBEDDING_TABLES = ("image_embeddings", "prompt_embeddings", "embed_failures")
ROWS_PER_BATCH = 2048  # rows per written record batch: big enough that per-batch overhead vanishes


def model_slug(key: str) -> str:
    """A file-name-safe, collision-free name for a model key (readable part + 6 hex of its hash)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:60]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"


_HEX = np.full(256, -1, dtype=np.int64)
for _value, _char in enumerate(b"0123456789abcdef"):
    _HEX[_char] = _HEX[ord(chr(_char).upper())] = _value


def bucket_of(ids, buckets: int) -> np.ndarray:
    """Bucket of hex ids (image_id, prompt_id are SHA-256 prefixes): their first 8 hex digits mod ``buckets``.

    Vectorised over the Arrow string buffers: every shard scans all ids once per bucket, so this
    must cost nanoseconds per id, not a Python call.
    """
    if isinstance(ids, pa.ChunkedArray):
        return np.concatenate([bucket_of(c, buckets) for c in ids.chunks] or [np.zeros(0, np.int64)])
    array = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
    if not len(array):
        return np.zeros(0, np.int64)
    offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset: array.offset + len(array) + 1]
    data = np.frombuffer(array.buffers()[2], np.uint8)
    if (np.diff(offsets) < 8).any():
        raise ValueError("ids must be hex digests of at least 8 digits (curate.ids); found a shorter one")
    value = np.zeros(len(array), np.int64)
    for k in range(8):
        digit = _HEX[data[offsets[:-1] + k]]
        if (digit < 0).any():
            raise ValueError("ids must be hex digests (curate.ids); found a non-hex character")
        value = value * 16 + digit
    return value % buckets


@functools.lru_cache(maxsize=2)
def cached_model(source: ClipSource, device: str, precision: str) -> LoadedClip:
    """One model per process (the driver and each Dask worker), loaded on first use."""
    return load_clip(source, device, precision)


def embedding_batch(table: str, ids: list[str], model: str, vectors: np.ndarray) -> pa.RecordBatch:
    """A record batch of ``table`` from unit-norm ``vectors`` (stored as float16)."""
    width = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float16).reshape(-1), type=pa.float16())
    return pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.string()), pa.array([model] * len(ids), pa.string()),
         pa.FixedSizeListArray.from_arrays(flat, width)],
        schema=schemas.load(table).arrow(embedding=width))


@functools.lru_cache(maxsize=4)
def _prior_ids(root: str, files: tuple[str, ...], key_column: str, model: str) -> pa.Array:
    """Ids already embedded (or failed) for ``model`` in earlier generations' files."""
    parts = []
    for name in files:
        t = read_shard(Dataset(root).root / name, [key_column, "model"])
        parts.append(t.filter(pc.equal(t["model"], model))[key_column].combine_chunks())
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


@dataclass(frozen=True)
class EmbedOptions:
    """How to run (not what to compute): none of these changes the embeddings beyond float noise."""

    device: str = "cpu"
    batch_size: int = 64
    decode_workers: int | None = None  # None: 2 feeding a GPU; 0 on the CPU, where the model has the task's core

    def decoders(self, device: str) -> int:
        """Decode processes for a model on ``device`` (resolved: cpu, cuda, mps)."""
        if self.decode_workers is not None:
            return self.decode_workers
        return 0 if device == "cpu" else 2


class EmbedStage(Stage):
    """Embeds what earlier generations of this model left: images by image_id, prompts by prompt_id."""

    version = 1
    outputs = {t: t for t in EMBEDDING_TABLES}
    inputs = ("pairs", "images")

    def __init__(self, source: ClipSource, generation: int, buckets: tuple[int, int], prior: dict[str, tuple[str, ...]],
                 precision: str = "fp32", options: EmbedOptions = EmbedOptions()):
        """``buckets``: (image buckets, prompt buckets); shard k embeds image bucket k and prompt bucket k.

        The model is loaded only where shards run (once per process): a driver that hands the
        shards to Dask workers never imports open_clip (seconds per process)."""
        self.source, self.generation, self.prior = source, generation, prior
        self.image_buckets, self.prompt_buckets = buckets
        self.precision, self.options = precision, options
        self.name = f"embed-{model_slug(source.key)}-g{generation:03d}"

    def config(self) -> dict:
        return {"model": self.source.key, "precision": self.precision,
                "buckets": {"images": self.image_buckets, "prompts": self.prompt_buckets},
                "after": {t: list(files) for t, files in self.prior.items()}}

    def output_dims(self):
        width = cached_model(self.source, self.options.device, self.precision).embed_dim
        return {"image_embeddings": {"embedding": width}, "prompt_embeddings": {"embedding": width}}

    def plan(self, dataset: Dataset) -> list[int]:
        return list(range(max(self.image_buckets, self.prompt_buckets)))

    def process(self, bucket: int, ctx: ShardContext) -> Iterator[tuple[str, pa.RecordBatch]]:
        model = cached_model(self.source, self.options.device, self.precision)
        ds = ctx.dataset
        done = {t: _prior_ids(str(ds.root), self.prior.get(t, ()), "image_id" if t != "prompt_embeddings" else "prompt_id",
                              self.source.key) for t in EMBEDDING_TABLES}
        skip_images = pa.concat_arrays([done["image_embeddings"], done["embed_failures"]])
        if bucket < self.image_buckets:
            work = image_work(ds, bucket, self.image_buckets, skip_images, ctx)
            yield from embed_images(model, work, self.options, ctx)
        if bucket < self.prompt_buckets:  # fewer, larger prompt buckets: each one scans the whole pairs table
            prompts = prompt_work(ds, bucket, self.prompt_buckets, done["prompt_embeddings"], ctx)
            yield from embed_prompts(model, prompts, self.options.batch_size, ctx)


def image_work(ds: Dataset, bucket: int, buckets: int, skip: pa.Array, ctx: ShardContext) -> list[tuple[str, list[int]]]:
    """(images shard, row indices) of the bucket's images not in ``skip``; each image_id once."""
    seen: set[str] = set()
    work = []
    for shard in ds.shards("images"):
        ids = read_shard(shard, ["image_id"])["image_id"]
        mine = bucket_of(ids, buckets) == bucket
        done = pc.is_in(ids, value_set=skip).to_numpy(zero_copy_only=False)
        ctx.stats["images_already_embedded"] += int((mine & done).sum())
        rows = []
        for row in np.flatnonzero(mine & ~done).tolist():
            if (image := ids[row].as_py()) not in seen:
                seen.add(image)
                rows.append(row)
        if rows:
            work.append((str(shard), rows))
    return work


def prompt_work(ds: Dataset, bucket: int, buckets: int, skip: pa.Array, ctx: ShardContext) -> dict[str, str]:
    """prompt_id -> normalised prompt for the bucket's prompts not in ``skip``."""
    todo: dict[str, str] = {}
    already: set[str] = set()
    for batch in ds.read_batches("pairs", ["prompt_id", "prompt"]):
        ids = batch.column(0)
        mine = bucket_of(ids, buckets) == bucket
        done = pc.is_in(ids, value_set=skip).to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(mine).tolist():
            prompt = ids[row].as_py()
            if done[row]:
                already.add(prompt)
            elif prompt not in todo:
                todo[prompt] = normalize_prompt(batch.column(1)[row].as_py())
    ctx.stats["prompts_already_embedded"] += len(already)
    return todo


def embed_prompts(model: LoadedClip, prompts: dict[str, str], batch_size: int, ctx: ShardContext):
    ids, texts = list(prompts), list(prompts.values())
    for start in range(0, len(ids), ROWS_PER_BATCH):
        end = min(start + ROWS_PER_BATCH, len(ids))
        vectors = np.concatenate([model.encode_texts(texts[s: min(s + batch_size, end)]) for s in range(start, end, batch_size)])
        ctx.stats["prompts_embedded"] += len(vectors)
        yield "prompt_embeddings", embedding_batch("prompt_embeddings", ids[start:end], model.key, vectors)


def embed_images(model: LoadedClip, work, options: EmbedOptions, ctx: ShardContext):
    """Run the model over decoded batches as the workers deliver them; write failures with reasons."""
    from curate.clip.decode import PixelPipeline, decoded_batches

    workers = options.decoders(model.device)
    if workers and multiprocessing.current_process().daemon:
        workers = 0  # a daemonic process (a Dask worker) may not start children: decode here instead
        ctx.stats["shards_decoded_in_process"] += 1
    ids, vectors = [], []
    pipeline = PixelPipeline(model.preprocess)
    for batch_ids, pixels, failures in decoded_batches(work, pipeline, options.batch_size, workers,
                                                       pin_memory=model.device == "cuda"):
        if failures:
            ctx.stats["images_failed"] += len(failures)
            yield "embed_failures", failure_batch(failures, model.key)
        if batch_ids:
            ids += batch_ids
            vectors.append(model.encode_images(pipeline.finish(pixels)))
        if len(ids) >= ROWS_PER_BATCH:
            yield "image_embeddings", _flush(ids, vectors, model.key, ctx)
            ids, vectors = [], []
    if ids:
        yield "image_embeddings", _flush(ids, vectors, model.key, ctx)


def _flush(ids: list[str], vectors: list[np.ndarray], key: str, ctx: ShardContext) -> pa.RecordBatch:
    ctx.stats["images_embedded"] += len(ids)
    return embedding_batch("image_embeddings", ids, key, np.concatenate(vectors))


def failure_batch(failures: list[tuple[str, str, str]], key: str) -> pa.RecordBatch:
    image_ids, reasons, messages = (list(c) for c in zip(*failures))
    return pa.RecordBatch.from_arrays(
        [pa.array(image_ids, pa.string()), pa.array([key] * len(failures), pa.string()),
         pa.array(reasons, pa.string()), pa.array(messages, pa.string())],
        schema=schemas.load("embed_failures").arrow())


# ------------------------------------------------------------------------------ generations
def generations(ds: Dataset, key: str) -> list[tuple[int, bool]]:
    """(generation, committed) of every embed run of ``key`` in the dataset, oldest first."""
    return runner_generations(ds, f"embed-{model_slug(key)}-g")


def prior_files(ds: Dataset, key: str, before: int) -> dict[str, tuple[str, ...]]:
    """Output files of committed generations older than ``before``, per embedding table (from their manifests)."""
    return committed_generation_files(ds, f"embed-{model_slug(key)}-g", EMBEDDING_TABLES, before)


def count_pending(ds: Dataset, key: str, prior: dict[str, tuple[str, ...]]) -> tuple[int, int]:
    """How many distinct images and prompts no earlier generation embedded or failed (ids only: cheap)."""
    root = str(ds.root)
    skip_images = pa.concat_arrays([_prior_ids(root, prior["image_embeddings"], "image_id", key),
                                    _prior_ids(root, prior["embed_failures"], "image_id", key)])
    skip_prompts = _prior_ids(root, prior["prompt_embeddings"], "prompt_id", key)

    def pending(table: str, column: str, skip: pa.Array) -> int:
        ids = pa.chunked_array([b.column(0) for b in ds.read_batches(table, [column])], pa.string())
        return len(pc.unique(ids.filter(pc.invert(pc.is_in(ids, value_set=skip)))))

    images = pending("images", "image_id", skip_images) if ds.has("images") else 0
    return images, pending("pairs", "prompt_id", skip_prompts)


def bucket_counts(pending_images: int, pairs: int, images_per_shard: int, pairs_per_prompt_shard: int = 200_000) -> tuple[int, int]:
    """(image buckets, prompt buckets): shards of about ``images_per_shard`` new images; prompt
    buckets by pairs, because finding a bucket's prompts reads the whole pairs table."""
    return max(1, math.ceil(pending_images / images_per_shard)), max(1, math.ceil(pairs / pairs_per_prompt_shard))
