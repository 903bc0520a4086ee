"""CLIP scores of pairs: prompt-image cosine, the winner's margin, and image-image cosine.

Scores are raw cosines of unit-norm embeddings, in [-1, 1] (not CLIPScore's 100 * max(cos, 0)):
the flag stage normalises each scorer by its RMS over the dataset, so the scale is free, and raw
cosines compare directly with DataComp's published CLIP-score thresholds.

The stage writes two tables:
- ``scores`` (image_id, prompt_id, scorer, score): one row per distinct (image, prompt) of the
  pairs, scorer ``clip:<model key>``, so each CLIP model is one AI annotator for the minority metric;
- ``clip_scores`` (pair_id, model, score_a, score_b, margin, image_cosine): one row per pair, nulls
  where an image or the prompt has no embedding (no bytes, or a decoding failure).

Pairs are split into buckets by prompt_id, so every (image, prompt) of a prompt lands in one shard
and the scores table has each key once; a task reads its bucket's pairs and embeddings from the
shuffle it needs first (curate.clip.partition), never the whole tables.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate import schema as schemas
from curate.clip import partition as shuffle
from curate.clip.embed import model_slug
from curate.dataset import Dataset
from curate.runner import ShardContext, Stage



def row_cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosine of row i of ``x`` with row i of ``y`` (any norms; a zero row gives 0): the CLIP score of
    prompt and image embeddings, and the image-image cosine of ``embed``'s pairs."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return np.divide((x * y).sum(axis=1), norms, out=np.zeros(len(x), np.float32), where=norms > 0)


def scorer_name(model_key: str) -> str:
    return f"clip:{model_key}"


def winner_margin(score_a: np.ndarray, score_b: np.ndarray, label: np.ndarray) -> np.ndarray:
    """score(winner) - score(loser) per pair; 0 for ties (labels 'a', 'b', 'tie')."""
    label = np.asarray(label)
    diff = np.asarray(score_a, np.float32) - np.asarray(score_b, np.float32)
    return np.where(label == "a", diff, np.where(label == "b", -diff, np.float32(0))).astype(np.float32)


def gather(found: dict[str, np.ndarray], ids: list[str], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrix of the embeddings of ``ids`` (zeros where missing) and the mask of those found."""
    present = np.array([i in found for i in ids], dtype=bool)
    matrix = np.zeros((len(ids), width), np.float32)
    if present.any():
        matrix[present] = np.stack([found[i] for i, p in zip(ids, present) if p])
    return matrix, present


class ClipScoreStage(Stage):
    """Scores every pair with one CLIP model's stored embeddings (run ``embed`` first)."""

    version = 1
    outputs = {"scores": "scores", "clip_scores": "clip_scores"}
    inputs = ("pairs", "image_embeddings", "prompt_embeddings")

    def __init__(self, model_key: str, buckets: int):
        self.model_key, self.buckets = model_key, buckets
        self.name = f"clip-scores-{model_slug(model_key)}"

    def config(self) -> dict:
        return {"model": self.model_key, "buckets": self.buckets}

    def needs(self, dataset: Dataset) -> list[Stage]:
        return [shuffle.partition_stage(dataset, self.model_key, self.buckets)]

    def plan(self, dataset: Dataset) -> list[dict]:
        part = shuffle.partition_of(dataset, shuffle.partition_stage(dataset, self.model_key, self.buckets))
        return [{"bucket": b, "partition": part} for b in range(self.buckets)]

    def process(self, spec: dict, ctx: ShardContext):
        part, bucket = spec["partition"], spec["bucket"]
        pairs = shuffle.bucket_pairs(ctx.dataset, part, bucket, ["prompt_id", "pair_id", "image_a_id", "image_b_id", "label"])
        ids = {c: pairs[c].to_pylist() for c in pairs.column_names}
        prompts = shuffle.bucket_embeddings(ctx.dataset, part, bucket, "prompt_embeddings")
        images = shuffle.bucket_embeddings(ctx.dataset, part, bucket, "image_embeddings")
        width = len(next(iter(prompts.values()))) if prompts else 1
        p, has_p = gather(prompts, ids["prompt_id"], width)
        a, has_a = gather(images, ids["image_a_id"], width)
        b, has_b = gather(images, ids["image_b_id"], width)
        score_a, score_b = row_cosines(p, a), row_cosines(p, b)
        scored = has_p & has_a & has_b
        ctx.stats["pairs_scored"] += int(scored.sum())
        ctx.stats["pairs_unscored"] += int((~scored).sum())
        yield "clip_scores", self._pair_rows(ids, scored, score_a, score_b, row_cosines(a, b), has_a & has_b)
        yield "scores", self._score_rows(ids, score_a, score_b, has_p & has_a, has_p & has_b, ctx)

    def _pair_rows(self, ids, scored, score_a, score_b, image_cosine, has_images) -> pa.RecordBatch:
        margin = winner_margin(score_a, score_b, np.array(ids["label"], dtype=object))
        return pa.RecordBatch.from_arrays(
            [pa.array(ids["pair_id"], pa.string()), pa.array([self.model_key] * len(scored), pa.string()),
             pa.array(score_a, pa.float32(), mask=~scored), pa.array(score_b, pa.float32(), mask=~scored),
             pa.array(margin, pa.float32(), mask=~scored), pa.array(image_cosine, pa.float32(), mask=~has_images)],
            schema=schemas.load("clip_scores").arrow())

    def _score_rows(self, ids, score_a, score_b, ok_a, ok_b, ctx) -> pa.RecordBatch:
        rows: dict[tuple[str, str], float] = {}
        for side, scores, ok in (("image_a_id", score_a, ok_a), ("image_b_id", score_b, ok_b)):
            for i in np.flatnonzero(ok).tolist():
                rows.setdefault((ids[side][i], ids["prompt_id"][i]), float(scores[i]))
        ctx.stats["scores_rows"] += len(rows)
        keys = sorted(rows)
        return pa.RecordBatch.from_arrays(
            [pa.array([k[0] for k in keys], pa.string()), pa.array([k[1] for k in keys], pa.string()),
             pa.array([scorer_name(self.model_key)] * len(keys), pa.string()),
             pa.array([rows[k] for k in keys], pa.float32())],
            schema=schemas.load("scores").arrow())


def score_bucket_count(ds: Dataset) -> int:
    return shuffle.bucket_count(ds.num_rows("pairs"))
