"""``embed_dataset``: embed what is new for a model, then (re)score the pairs with it.

What the ``prefcurate embed`` command calls; usable from Python the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from curate.clip.embed import (EmbedOptions, EmbedStage, bucket_counts, count_pending, generations,
                               prior_files)
from curate.clip.models import ClipSource
from curate.clip.scores import ClipScoreStage, score_bucket_count
from curate.dataset import Dataset
from curate.runner import Executor, StageReport, run_stage

IMAGES_PER_SHARD = 4096


@dataclass
class EmbedSummary:
    model: str
    embed: StageReport | None  # None: nothing new to embed
    scores: StageReport
    pending_images: int
    pending_prompts: int
    embed_seconds: float

    @property
    def images_per_second(self) -> float:
        done = (self.embed.stats.get("images_embedded", 0) if self.embed else 0)
        return done / self.embed_seconds if self.embed_seconds > 0 else 0.0


def embed_dataset(root: str | Path, source: ClipSource, *, precision: str = "fp32",
                  options: EmbedOptions = EmbedOptions(), executor: Executor | None = None,
                  resume: bool = False, images_per_shard: int = IMAGES_PER_SHARD) -> EmbedSummary:
    """Embed the images and prompts ``source`` has not embedded yet, then score every pair with it.

    An interrupted earlier run of this model is finished first (``resume`` keeps its finished
    shards; without it that run is recomputed). Scores are recomputed only if an input changed.
    """
    ds = Dataset(root)
    ds.require("pairs", hint="run `prefcurate ingest` (or `prefcurate demo-data`) first")
    runs = generations(ds, source.key)
    open_run = runs[-1][0] if runs and not runs[-1][1] else None
    generation = open_run if open_run is not None else (runs[-1][0] + 1 if runs else 1)
    prior = prior_files(ds, source.key, before=generation)
    pending_images, pending_prompts = count_pending(ds, source.key, prior)

    embed_report, started = None, time.perf_counter()
    if pending_images or pending_prompts or open_run is not None:
        buckets = bucket_counts(pending_images, ds.num_rows("pairs"), images_per_shard)
        stage = EmbedStage(source, generation, buckets, prior, precision, options)
        embed_report = run_stage(stage, ds, executor, resume=resume)
    embed_seconds = time.perf_counter() - started

    scores = run_stage(ClipScoreStage(source.key, score_bucket_count(ds)), ds, executor, skip_complete=True)
    return EmbedSummary(source.key, embed_report, scores, pending_images, pending_prompts, embed_seconds)
