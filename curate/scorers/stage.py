"""`scores compute`: any registry scorer as an AI annotator, scoring each distinct (image, prompt) of the pairs once.

The scores go in the ``scores`` table under the scorer's name (the spec as written: ``world``,
``pickscore``, ``hps:v2.1``), where ``annotators`` and ``flag`` read every scorer as one AI
annotator. Images the scorer cannot read (no row in ``images``, no bytes, undecodable) go in
``score_failures`` with their reason and are not retried.

Like ``embed``, the work is incremental: each run is a *generation* (stage
``scorer-<slug>-g<NNN>``) that scores only the keys no earlier generation scored or failed, split
into buckets by image_id so every key lands in exactly one shard, whatever the executor.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate import schema as schemas
from curate.clip.embed import bucket_of, model_slug
from curate.dataset import Dataset, read_shard
from curate.ids import normalize_prompt
from curate.generations import committed_generation_files, generations
from curate.runner import Executor, ShardContext, Stage, StageReport, run_stage
from curate.scorers.base import Scorer, ScorerError, ScorerSpec, parse_spec

TABLES = ("scores", "score_failures")
IMAGES_PER_SHARD = 4096
IMAGES_PER_CHUNK = 256  # decoded images held at once in a shard


@functools.lru_cache(maxsize=2)
def cached_scorer(spec: ScorerSpec, device: str, precision: str) -> Scorer:
    """One scorer per process (the driver and each Dask worker), loaded on first use."""
    from curate.scorers import load_scorer

    return load_scorer(spec, device, precision)


@dataclass(frozen=True)
class ScoreOptions:
    """How to run (not what to compute): none of these changes a score beyond float noise."""

    device: str = "cpu"
    batch_size: int = 16


def _prefix(scorer: str) -> str:
    return f"scorer-{model_slug(scorer)}-g"


def pending_keys(ds: Dataset, scorer: str, prior: dict[str, tuple[str, ...]], bucket: int = 0, buckets: int = 1):
    """(image_id, prompt_id, prompt) of the bucket's distinct keys that no earlier generation scored
    or failed, sorted by key (a polars DataFrame; ``prompt`` normalised as ingest hashes it)."""
    import polars as pl

    parts = []
    for batch in ds.read_batches("pairs", ["image_a_id", "image_b_id", "prompt_id", "prompt"]):
        for side in (0, 1):
            mine = pa.array(bucket_of(batch.column(side), buckets) == bucket)
            parts.append(pl.from_arrow(pa.table({"image_id": batch.column(side).filter(mine),
                                                 "prompt_id": batch.column(2).filter(mine),
                                                 "prompt": batch.column(3).filter(mine)})))
    keys = pl.concat(parts).unique(["image_id", "prompt_id"], keep="first", maintain_order=True)
    root = ds.root
    if prior.get("scores"):
        done = pl.scan_ipc([str(root / f) for f in prior["scores"]]).filter(pl.col("scorer") == scorer)
        keys = keys.join(done.select("image_id", "prompt_id").collect(), on=["image_id", "prompt_id"], how="anti")
    if prior.get("score_failures"):
        failed = pl.scan_ipc([str(root / f) for f in prior["score_failures"]]).filter(pl.col("scorer") == scorer)
        keys = keys.join(failed.select("image_id").collect(), on="image_id", how="anti")
    keys = keys.with_columns(pl.col("prompt").map_elements(normalize_prompt, return_dtype=pl.String))
    return keys.sort("image_id", "prompt_id")


class ScoreStage(Stage):
    """Scores what earlier generations of this scorer left, one image_id bucket per shard."""

    version = 1
    outputs = {t: t for t in TABLES}
    inputs = ("pairs", "images")

    def __init__(self, spec: ScorerSpec, key: str, generation: int, buckets: int, prior: dict[str, tuple[str, ...]],
                 precision: str = "fp32", options: ScoreOptions = ScoreOptions()):
        self.spec, self.key, self.generation, self.buckets, self.prior = spec, key, generation, buckets, prior
        self.precision, self.options = precision, options
        self.name = f"{_prefix(spec.name)}{generation:03d}"

    def config(self) -> dict:
        return {"scorer": self.spec.name, "key": self.key, "precision": self.precision, "buckets": self.buckets,
                "after": {t: list(files) for t, files in self.prior.items()}}

    def plan(self, dataset: Dataset) -> list[int]:
        return list(range(self.buckets))

    def process(self, bucket: int, ctx: ShardContext) -> Iterator[tuple[str, pa.Table]]:
        scorer = cached_scorer(self.spec, self.options.device, self.precision)
        keys = pending_keys(ctx.dataset, self.spec.name, self.prior, bucket, self.buckets)
        prompts: dict[str, list[tuple[str, str]]] = {}
        for image, prompt_id, prompt in keys.iter_rows():
            prompts.setdefault(image, []).append((prompt_id, prompt))
        scored: dict[tuple[str, str], float] = {}
        failures: list[tuple[str, str, str]] = []
        for chunk in image_chunks(ctx.dataset, prompts, failures):
            score_chunk(scorer, chunk, prompts, self.options.batch_size, scored)
        for reason in ("missing_image", "empty_image", "undecodable_image"):
            ctx.stats[f"images_{reason.removesuffix('_image')}"] += sum(f[1] == reason for f in failures)
        ctx.stats["scores_rows"] += len(scored)
        ctx.stats["images_scored"] += len(prompts) - len(failures)
        yield "scores", score_batch(scored, self.spec.name)
        if failures:
            yield "score_failures", failure_batch(sorted(failures), self.spec.name)


def image_chunks(ds: Dataset, wanted: dict, failures: list) -> Iterator[list[tuple[str, object]]]:
    """(image_id, PIL image) of the ``wanted`` ids, ``IMAGES_PER_CHUNK`` at a time, in images-table order;
    an id with no row, no bytes or undecodable bytes is appended to ``failures`` instead."""
    from curate.clip.decode import _OBJECT_REPR, decode_image  # the scrub embed applies to decoder messages

    found: set[str] = set()
    value_set = pa.array(sorted(wanted), pa.string())
    for shard in ds.shards("images"):
        table = read_shard(shard, ["image_id", "bytes"])
        rows = {}  # image_id -> its first row here, for ids no earlier shard had
        for r in pc.indices_nonzero(pc.is_in(table["image_id"], value_set=value_set)).to_pylist():
            rows.setdefault(table["image_id"][r].as_py(), r)
        rows = [r for image_id, r in rows.items() if image_id not in found]
        for start in range(0, len(rows), IMAGES_PER_CHUNK):
            take = table.take(rows[start: start + IMAGES_PER_CHUNK])
            chunk = []
            for image_id, data in zip(take["image_id"].to_pylist(), take["bytes"].to_pylist()):
                found.add(image_id)
                try:
                    chunk.append((image_id, decode_image(data)))
                except Exception as err:  # any decoder error is a property of this image: record it, go on
                    failures.append((image_id, "empty_image" if not data else "undecodable_image",
                                     _OBJECT_REPR.sub("<bytes>", f"{type(err).__name__}: {err}")[:500]))
            yield chunk
    failures += [(i, "missing_image", "no row in the images table (a metadata-only source?)")
                 for i in sorted(set(wanted) - found)]


def score_chunk(scorer: Scorer, chunk, prompts: dict, batch_size: int, scored: dict) -> None:
    """Score every (image, prompt) of the chunk's images into ``scored``."""
    keys, images, texts = [], [], []
    for image_id, image in chunk:
        for prompt_id, prompt in prompts[image_id]:
            keys.append((image_id, prompt_id))
            images.append(image)
            texts.append(prompt)
    for key, value in zip(keys, scorer.score(images, texts, batch_size).tolist()):
        scored[key] = value


def score_batch(scored: dict[tuple[str, str], float], scorer: str) -> pa.Table:
    keys = sorted(scored)
    return schemas.load("scores").table({"image_id": [k[0] for k in keys], "prompt_id": [k[1] for k in keys],
                                         "scorer": [scorer] * len(keys), "score": [scored[k] for k in keys]})


def failure_batch(failures: list[tuple[str, str, str]], scorer: str) -> pa.Table:
    return schemas.load("score_failures").table({"image_id": [f[0] for f in failures], "scorer": [scorer] * len(failures),
                                                 "reason": [f[1] for f in failures], "message": [f[2] for f in failures]})


# ------------------------------------------------------------------------------------- driver
@dataclass
class ScoreSummary:
    scorer: str
    report: StageReport | None  # None: nothing left to score
    pending_keys: int
    pending_images: int


def refuse_foreign_rows(ds: Dataset, scorer: str) -> None:
    """ScorerError if another stage (``scores import``, ``embed``) stored rows under this scorer's name: keys would repeat."""
    from curate.verify import committed_files

    # Only committed files of other stages: an interrupted run of this scorer is finished, not refused.
    others = [name for name in committed_files(ds).get("scores", {}) if not name.startswith(_prefix(scorer))]
    for shard in (ds.table_dir("scores") / name for name in sorted(others)):
        if scorer in pc.unique(read_shard(shard, ["scorer"])["scorer"]).to_pylist():
            run = shard.name.rsplit("-", 1)[0]
            raise ScorerError(f"{shard}: scores named {scorer!r} are already stored by another stage (runs/{run}, "
                              f"from `scores import` or `embed`); a key is stored once per scorer, so remove that "
                              f"stage's file and run folder, or import those scores under another --scorer name")


def compute_scores(root: str | Path, spec: ScorerSpec | str, *, precision: str = "fp32",
                   options: ScoreOptions = ScoreOptions(), executor: Executor | None = None, resume: bool = False,
                   images_per_shard: int = IMAGES_PER_SHARD) -> ScoreSummary:
    """Score the (image, prompt) keys of the pairs that ``spec`` has not scored yet into ``scores``.

    The scorer is loaded (missing weights fail here, a ScorerError) and checks the pending prompts
    before any shard runs. An interrupted earlier run of this scorer is finished first (``resume``
    keeps its finished shards; without it that run is recomputed).
    """
    ds = Dataset(root)
    ds.require("pairs", hint="run `prefcurate ingest` (or `prefcurate demo-data`) first")
    ds.require("images", hint="scores compute reads the image bytes; ingest a source that has them")
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    refuse_foreign_rows(ds, spec.name)
    scorer = cached_scorer(spec, options.device, precision)
    runs = generations(ds, _prefix(spec.name))
    open_run = runs[-1][0] if runs and not runs[-1][1] else None
    generation = open_run if open_run is not None else (runs[-1][0] + 1 if runs else 1)
    prior = committed_generation_files(ds, _prefix(spec.name), TABLES, before=generation)
    todo = pending_keys(ds, spec.name, prior)
    images = todo["image_id"].n_unique()
    if not todo.height and open_run is None:
        return ScoreSummary(spec.name, None, 0, 0)
    scorer.check_prompts(todo["prompt"].unique(maintain_order=True).to_list())
    buckets = max(1, math.ceil(images / images_per_shard))
    stage = ScoreStage(spec, scorer.key, generation, buckets, prior, precision, options)
    return ScoreSummary(spec.name, run_stage(stage, ds, executor, resume=resume), todo.height, images)
