"""The shuffle behind the per-prompt-bucket CLIP stages: each bucket's pairs and embeddings, read once.

clip-scores and filter work per prompt bucket (``bucket_of(prompt_id, B)``), so that a prompt's
pairs meet in one task. Finding a bucket's pairs and embeddings by scanning the pairs and
embedding tables costs every bucket a full read: B times the data, which grows with the square
of the dataset (at 10M pairs, 100 buckets would each decompress all 20M image embeddings). This
shuffle reads every table once, in two passes, and leaves each bucket's rows where its task
finds them:

- pass 1 (``clip-partition-<model>``), one task per pairs shard: the shard's pairs split by
  prompt bucket, and the routes (image, bucket) of every image they show, grouped by the pass-2
  task that holds the image's embedding;
- pass 2 (``clip-partition-<model>-embeddings``), one task per group of the model's embedding
  files: each image's embedding sent to every bucket its routes name, each prompt's to its
  prompt's bucket.

An embed generation writes image bucket j of its n buckets to file j (curate.clip.embed), so the
file that would hold an image is known from its id alone; pass 1 routes an image to that file in
every generation of the model, and pass 2 keeps the routes of the images its files hold (a task
checks that its files hold only their bucket's ids). Both passes leave declared partials (plain
arrays, ids as fixed-width bytes) in runs/<pass>/shards, one member per bucket and column, never
sent to the driver; a consumer's task reads its bucket's members from each (``bucket_pairs``,
``bucket_embeddings``), in task order, so every bucket's rows come in the order a scan would find
them. Consumers name the partition in ``Stage.needs``: the runner runs it first, or reuses it
when it is complete for the same tables and bucket count. The partials hold a copy of the pairs'
ids and of the model's embeddings (an image shown in several buckets once per bucket): a
shuffle's disk, kept for reuse until an input changes.
"""
from __future__ import annotations

import json
import math
import re
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.clip.embed import bucket_of, model_slug
from curate.dataset import Dataset, DatasetError, read_shard
from curate.generations import generations as runner_generations
from curate.runner import ShardContext, Stage, read_partial

FILES_PER_TASK = 25  # embedding files per pass-2 task (embed writes ~4,096 images a file: ~100k a task)
PAIR_COLUMNS = ("prompt_id", "pair_id", "image_a_id", "image_b_id", "label")
_FILE_INDEX = re.compile(r"-(\d{5})\.arrow$")


# ------------------------------------------------------------------ ids as fixed-width arrays
def to_fixed(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Strings as a fixed-width bytes array (a partial holds no Python objects); hex ids of one
    length are copied from the Arrow buffers without a Python loop."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())
    if not len(ids):
        return np.zeros(0, "S1")
    if ids.null_count:
        raise DatasetError(f"{ids.null_count} null id(s) among {len(ids)}: the pairs table must give every pair its ids")
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset: ids.offset + len(ids) + 1]
    width = int(offsets[1] - offsets[0])
    if width > 0 and (np.diff(offsets) == width).all():
        data = np.frombuffer(ids.buffers()[2], np.uint8)[offsets[0]: offsets[-1]]
        return data.view(f"S{width}").copy()
    return np.array([s.encode() for s in ids.to_pylist()], dtype=bytes)


def from_fixed(values: np.ndarray) -> pa.Array:
    """``to_fixed`` undone: an Arrow string array."""
    n, width = len(values), values.dtype.itemsize
    raw = np.ascontiguousarray(values).view(np.uint8)
    if n and width and (raw.reshape(n, width)[:, -1] != 0).all():  # every value fills the width: the buffer as it is
        offsets = np.arange(n + 1, dtype=np.int32) * width
        return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(raw.copy())])
    return pa.array([v.decode() for v in values.tolist()], pa.string())


def _slices(bucket: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order grouping rows by bucket (stable) and the bucket boundaries in it."""
    order = np.argsort(bucket, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=buckets))])
    return order, bounds


# --------------------------------------------------------------------------------- the layout
class EmbeddingFiles(NamedTuple):
    """A pass-2 task: some embedding files of one generation (``table``), with the image bucket
    count of that generation (0 for prompt files, which need no routes)."""

    table: str
    generation: int
    image_buckets: int
    files: tuple[tuple[int, str], ...]  # (file index j, path relative to the dataset)


def embedding_layout(ds: Dataset, model: str, files_per_task: int = FILES_PER_TASK) -> list[EmbeddingFiles]:
    """The model's committed embedding files, grouped into pass-2 tasks: image files of each
    generation in runs of ``files_per_task`` consecutive buckets, then prompt files likewise."""
    prefix = f"embed-{model_slug(model)}-g"
    tasks: dict[str, list[EmbeddingFiles]] = {"image_embeddings": [], "prompt_embeddings": []}
    for generation, committed in runner_generations(ds, prefix):
        if not committed:
            continue
        manifest = json.loads((ds.run_dir(f"{prefix}{generation:03d}") / "manifest.json").read_text())
        n_images = int(manifest["config"]["buckets"]["images"])
        for table in tasks:
            groups: dict[int, list[tuple[int, str]]] = {}
            for shard in manifest["tables"].get(table, {}).get("shards", []):
                if shard["rows"]:
                    j = int(_FILE_INDEX.search(shard["file"]).group(1))
                    groups.setdefault(j // files_per_task, []).append((j, f"tables/{table}/{shard['file']}"))
            if table == "image_embeddings":  # a task for every run of buckets, files or not: pass 1 routes by index
                tasks[table] += [EmbeddingFiles(table, generation, n_images, tuple(groups.get(g, ())))
                                 for g in range(math.ceil(n_images / files_per_task))]
            else:
                tasks[table] += [EmbeddingFiles(table, generation, 0, tuple(files)) for _, files in sorted(groups.items())]
    return tasks["image_embeddings"] + tasks["prompt_embeddings"]


def _route_groups(layout: list[EmbeddingFiles]) -> list[tuple[int, int, int]]:
    """Per generation with image files: (its image bucket count, index of its first image task,
    number of its image tasks), so pass 1 can name the task that holds an image's file."""
    out: dict[int, list[int]] = {}
    for t, task in enumerate(layout):
        if task.table == "image_embeddings":
            out.setdefault(task.generation, [task.image_buckets, t, 0])[2] += 1
    return [tuple(v) for _, v in sorted(out.items())]


def pair_member(bucket: int, column: str) -> str:
    return f"p{bucket:05d}.{column}"


def route_member(task: int, column: str) -> str:
    return f"r{task:05d}.{column}"


def embedding_member(bucket: int, column: str) -> str:
    return f"e{bucket:05d}.{column}"


# ------------------------------------------------------------------------------------ pass 1
class PartitionStage(Stage):
    """Pass 1: each pairs shard's pairs by prompt bucket, and the routes of their images."""

    version = 1
    inputs = ("pairs", "image_embeddings", "prompt_embeddings")
    partials_to_driver = False  # the buckets stay in runs/<name>/shards for pass 2 and the consumers

    def __init__(self, model: str, buckets: int, layout: list[EmbeddingFiles], files_per_task: int = FILES_PER_TASK):
        self.model, self.buckets, self.layout, self.files_per_task = model, buckets, layout, files_per_task
        self.name = f"clip-partition-{model_slug(model)}"

    def config(self) -> dict:
        return {"model": self.model, "buckets": self.buckets, "files_per_task": self.files_per_task,
                "layout": [t._asdict() for t in self.layout]}

    def plan(self, dataset: Dataset) -> list[str]:
        return [str(p) for p in dataset.require("pairs", "run `prefcurate ingest` first")]

    def then(self) -> list[Stage]:
        return [EmbeddingPartitionStage(self)]

    def process(self, shard: str, ctx: ShardContext):
        pairs = read_shard(shard, list(PAIR_COLUMNS))
        bucket = bucket_of(pairs["prompt_id"], self.buckets)
        order, bounds = _slices(bucket, self.buckets)
        columns = {c: to_fixed(pairs[c])[order] for c in PAIR_COLUMNS}
        partial = {pair_member(b, c): v[bounds[b]: bounds[b + 1]] for c, v in columns.items() for b in range(self.buckets)}
        shown = pa.chunked_array(pairs["image_a_id"].chunks + pairs["image_b_id"].chunks, pa.string())
        images, routed = to_fixed(shown), np.concatenate([bucket, bucket]).astype(np.int32)
        for n_images, first, count in _route_groups(self.layout):
            order, bounds = _slices(bucket_of(shown, n_images) // self.files_per_task, count)
            for t in range(count):
                rows = order[bounds[t]: bounds[t + 1]]
                ids, to = unique_routes(images[rows], routed[rows])
                partial[route_member(first + t, "image_id")], partial[route_member(first + t, "bucket")] = ids, to
        ctx.partial = partial
        ctx.stats["partition:pairs"] += pairs.num_rows
        return iter(())


def unique_routes(ids: np.ndarray, bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (id, bucket) pairs, sorted by id then bucket."""
    if not len(ids):
        return ids, bucket
    order = np.lexsort((bucket, ids))
    ids, bucket = ids[order], bucket[order]
    new = np.concatenate([[True], (ids[1:] != ids[:-1]) | (bucket[1:] != bucket[:-1])])
    return ids[new], bucket[new]


# ------------------------------------------------------------------------------------ pass 2
class EmbeddingPartitionStage(Stage):
    """Pass 2: the model's image embeddings sent to the buckets their routes name, prompts' to theirs."""

    version = 1
    inputs = PartitionStage.inputs
    partials_to_driver = False

    def __init__(self, first: PartitionStage):
        self.first = first
        self.name = f"{first.name}-embeddings"

    def config(self) -> dict:
        return self.first.config()

    def plan(self, dataset: Dataset) -> list[dict]:
        pairs_tasks = len(self.first.plan(dataset))
        return [{"task": t, "pairs_tasks": pairs_tasks} for t in range(len(self.first.layout))]

    def process(self, spec: dict, ctx: ShardContext):
        task, model, buckets = self.first.layout[spec["task"]], self.first.model, self.first.buckets
        key = "image_id" if task.table == "image_embeddings" else "prompt_id"
        ids, vectors = [], []
        for j, path in task.files:
            rows = read_shard(ctx.dataset.root / path, [key, "model", "embedding"])
            rows = rows.filter(pc.equal(rows["model"], model))
            if task.image_buckets and (bucket_of(rows[key], task.image_buckets) != j).any():
                raise DatasetError(f"{ctx.dataset.root / path}: holds image ids outside image bucket {j} of "
                                   f"{task.image_buckets}; it was not written by `prefcurate embed`. Delete the "
                                   f"model's embeddings and embed again")
            emb = rows["embedding"].combine_chunks()
            ids.append(to_fixed(rows[key]))
            vectors.append(emb.values.to_numpy(zero_copy_only=False).reshape(len(emb), emb.type.list_size))
        ids = np.concatenate(ids) if ids else np.zeros(0, "S1")
        vectors = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float16)
        if task.image_buckets:
            rows, to = self._routed(ctx.dataset, spec, ids)
        else:
            rows, to = np.arange(len(ids)), bucket_of(from_fixed(ids), buckets)
        order, bounds = _slices(to, buckets)  # within a bucket, rows stay in file order
        rows = rows[order]
        ctx.partial = {}
        for b in range(buckets):
            mine = rows[bounds[b]: bounds[b + 1]]
            ctx.partial[embedding_member(b, "id")] = ids[mine]
            ctx.partial[embedding_member(b, "embedding")] = vectors[mine]
        ctx.stats[f"partition:{task.table}"] += len(ids)
        ctx.stats[f"partition:{task.table}_sent"] += len(rows)
        return iter(())

    def _routed(self, ds: Dataset, spec: dict, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, bucket) for every route of the task's images, rows in file order."""
        names = [route_member(spec["task"], "image_id"), route_member(spec["task"], "bucket")]
        parts = [read_partial(ds, self.first.name, i, names) for i in range(spec["pairs_tasks"])]
        route_ids, route_to = unique_routes(np.concatenate([p[names[0]] for p in parts] or [np.zeros(0, "S1")]),
                                            np.concatenate([p[names[1]] for p in parts] or [np.zeros(0, np.int32)]))
        left, right = np.searchsorted(route_ids, ids, "left"), np.searchsorted(route_ids, ids, "right")
        count = right - left
        rows = np.repeat(np.arange(len(ids)), count)
        within = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
        return rows, route_to[left[rows] + within].astype(np.int64)


# --------------------------------------------------------------------------------- consumers
class Partition(NamedTuple):
    """Where a consumer's tasks find their buckets (small: it travels in their specs)."""

    name: str
    buckets: int
    pairs_tasks: int
    image_tasks: tuple[int, ...]
    prompt_tasks: tuple[int, ...]


def partition_stage(ds: Dataset, model: str, buckets: int, files_per_task: int = FILES_PER_TASK) -> PartitionStage:
    return PartitionStage(model, buckets, embedding_layout(ds, model, files_per_task), files_per_task)


def partition_of(ds: Dataset, stage: PartitionStage) -> Partition:
    tables = [t.table for t in stage.layout]
    return Partition(stage.name, stage.buckets, len(stage.plan(ds)),
                     tuple(i for i, t in enumerate(tables) if t == "image_embeddings"),
                     tuple(i for i, t in enumerate(tables) if t == "prompt_embeddings"))


def bucket_pairs(ds: Dataset, part: Partition, bucket: int, columns: list[str]) -> pa.Table:
    """The pairs whose prompt falls in ``bucket`` (some of PAIR_COLUMNS), in the pairs table's order."""
    names = [pair_member(bucket, c) for c in columns]
    parts = [read_partial(ds, part.name, i, names) for i in range(part.pairs_tasks)]
    return pa.table({c: from_fixed(np.concatenate([p[n] for p in parts] or [np.zeros(0, "S1")]))
                     for c, n in zip(columns, names)})


def bucket_embeddings(ds: Dataset, part: Partition, bucket: int, table: str) -> dict[str, np.ndarray]:
    """The bucket's embeddings from ``table`` (image_embeddings: the images its pairs show;
    prompt_embeddings: its prompts), float32 and renormalised after float16 storage."""
    found: dict[str, np.ndarray] = {}
    names = [embedding_member(bucket, "id"), embedding_member(bucket, "embedding")]
    for task in part.image_tasks if table == "image_embeddings" else part.prompt_tasks:
        stored = read_partial(ds, f"{part.name}-embeddings", task, names)
        if not len(stored[names[0]]):
            continue
        matrix = stored[names[1]].astype(np.float32)
        matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        for key, vector in zip(from_fixed(stored[names[0]]).to_pylist(), matrix):
            found.setdefault(key, vector)
    return found


def bucket_count(pairs: int, pairs_per_bucket: int = 100_000) -> int:
    """Prompt buckets of the CLIP stages: few, large ones (10 at 1M pairs)."""
    return max(1, math.ceil(pairs / pairs_per_bucket))
