"""Declarative pair filters on CLIP scores and embeddings; the verdict goes to the ``filters`` table.

Rules, in funnel order (a pair is counted under the first rule that removes it; ``reasons`` lists
every rule that does):

- ``unscored``: an image or the prompt has no embedding (no bytes, or undecodable).
- ``low_prompt_score``: the pair's prompt-image cosine (by default its BEST image's, ``score_of =
  "max"``) is below ``min_score`` or below the ``min_score_quantile`` of the dataset (DataComp-style).
  The best image, because a pair with one on-prompt and one off-prompt image is the most
  informative kind; only when neither image follows the prompt is there little to learn.
- ``near_identical_images``: image-image cosine above ``max_image_cosine``: no preference signal.
- ``semantic_duplicate``: another kept pair has the same prompt (same prompt_id) and the same two
  images within ``duplicate_epsilon`` (cosine >= 1 - epsilon, in either order) but not the very same
  image files: a re-encoded or resized copy of a pair. Judgements of the very same two images by
  different people are not duplicates but the crowd's votes on one pair (the annotators stage uses
  them as such), so they are kept together with their pair. Of each cluster, the pair with the
  smallest pair_id stays, with every judgement of its own two images. Candidates come from random-hyperplane LSH bands over the
  two image embeddings within a prompt, then every candidate is verified exactly: no all-pairs matrix.

Nothing is deleted: every pair gets a row (pair_id, keep, reasons).
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import schema as schemas
from curate.clip import partition as shuffle
from curate.clip.scores import score_bucket_count
from curate.dataset import Dataset, DatasetError, read_shard
from curate.runner import ShardContext, Stage, is_complete

RULES = ("unscored", "low_prompt_score", "near_identical_images", "semantic_duplicate")
SCORE_OF = ("max", "min", "mean")
LSH_BANDS, LSH_BITS = 8, 8  # P(miss) for two pairs at epsilon 0.01 is about 0.5% (see duplicate_clusters)


class RuleError(ValueError):
    """A filter rule is malformed, or names something the dataset does not have."""


@dataclass(frozen=True)
class FilterRules:
    """The rules; ``None`` switches a rule off (in TOML, write ``false``)."""

    model: str | None = None  # CLIP model key whose clip_scores to use; default: the only one present
    min_score: float | None = None
    min_score_quantile: float | None = None
    score_of: str = "max"
    max_image_cosine: float | None = 0.98
    duplicate_epsilon: float | None = 0.01
    drop_unscored: bool = True

    def __post_init__(self):
        if self.score_of not in SCORE_OF:
            raise RuleError(f"score_of {self.score_of!r}; expected one of {', '.join(SCORE_OF)}")
        if self.min_score_quantile is not None and not 0 <= self.min_score_quantile < 1:
            raise RuleError(f"min_score_quantile {self.min_score_quantile} must be in [0, 1)")
        if self.duplicate_epsilon is not None and not 0 <= self.duplicate_epsilon < 1:
            raise RuleError(f"duplicate_epsilon {self.duplicate_epsilon} must be in [0, 1)")

    @classmethod
    def from_toml(cls, path: Path) -> FilterRules:
        """Rules from a TOML file: keys at the top level or under ``[filter]``."""
        data = tomllib.loads(Path(path).read_text())
        data = data.get("filter", data)
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise RuleError(f"{path}: unknown rule keys {unknown}; expected some of {sorted(known)}")
        return cls(**{k: (None if v is False and k != "drop_unscored" else v) for k, v in data.items()})

    def with_overrides(self, **overrides) -> FilterRules:
        """These rules with every override that is not None (CLI options over the file)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# ------------------------------------------------------------------------------- pure functions
def reduce_pair_scores(score_a: np.ndarray, score_b: np.ndarray, how: str) -> np.ndarray:
    if how == "max":
        return np.maximum(score_a, score_b)
    if how == "min":
        return np.minimum(score_a, score_b)
    return (np.asarray(score_a) + np.asarray(score_b)) / 2


def funnel_counts(flags: dict[str, np.ndarray]) -> dict[str, int]:
    """Pairs removed per rule, each counted under its first rule in ``RULES`` order."""
    removed = np.zeros(len(next(iter(flags.values()))), dtype=bool)
    counts = {}
    for rule in RULES:
        hit = flags[rule] & ~removed
        counts[rule] = int(hit.sum())
        removed |= hit
    return counts


def same_image_pair(a: np.ndarray, b: np.ndarray, i: int, j: int, epsilon: float) -> bool:
    """Pairs i and j show the same two images (unit-norm rows) within ``epsilon``, in either order."""
    direct = min(a[i] @ a[j], b[i] @ b[j])
    swapped = min(a[i] @ b[j], b[i] @ a[j])
    return max(direct, swapped) >= 1 - epsilon


def duplicate_clusters(groups: np.ndarray, a: np.ndarray, b: np.ndarray, epsilon: float,
                       bands: int = LSH_BANDS, bits: int = LSH_BITS, seed: int = 0) -> np.ndarray:
    """For each pair, the smallest index of its duplicate cluster (itself when it has no duplicate).

    Blocking: per band, ``bits`` random hyperplanes sign each image; the band key is (group, the
    two image signatures sorted), so it ignores image order. Two pairs at image cosine c share a
    band with probability (1 - acos(c)/pi)^(2 bits); they are missed only if no band matches.
    Candidates in a block are verified exactly against the block's representatives.
    """
    n = len(groups)
    planes = np.random.default_rng(seed).standard_normal((a.shape[1], bands * bits)).astype(np.float32)
    weights = (1 << np.arange(bits)).astype(np.int64)
    sig_a = (((a @ planes) > 0).reshape(n, bands, bits) * weights).sum(-1)
    sig_b = (((b @ planes) > 0).reshape(n, bands, bits) * weights).sum(-1)
    low, high = np.minimum(sig_a, sig_b), np.maximum(sig_a, sig_b)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for band in range(bands):
        key = (groups.astype(np.int64) << (2 * bits)) | (low[:, band] << bits) | high[:, band]
        order = np.argsort(key, kind="stable")
        starts = np.flatnonzero(np.diff(key[order], prepend=-1) != 0)
        for block in np.split(order, starts[1:]):
            representatives: list[int] = []
            for i in block.tolist():
                match = next((r for r in representatives if same_image_pair(a, b, i, r, epsilon)), None)
                if match is None:
                    representatives.append(i)
                else:
                    ri, rm = root(i), root(match)
                    parent[max(ri, rm)] = min(ri, rm)
    return np.array([root(i) for i in range(n)])


# ------------------------------------------------------------------------------------- resolve
def clip_models(ds: Dataset) -> list[str]:
    ds.require("clip_scores", hint="run `prefcurate embed DATASET_DIR --model ...` first")
    return sorted(set().union(*(pc.unique(b.column(0)).to_pylist() for b in ds.read_batches("clip_scores", ["model"]))))


def resolve_rules(ds: Dataset, rules: FilterRules) -> tuple[FilterRules, float | None]:
    """Pick the CLIP model and turn the score rules into one absolute threshold (None: no score rule)."""
    models = clip_models(ds)
    model = rules.model or (models[0] if len(models) == 1 else None)
    if model not in models:
        raise RuleError(f"{'no' if rules.model else 'several'} CLIP models {('named ' + repr(rules.model)) if rules.model else ''} "
                        f"in {ds.table_dir('clip_scores')}; pass --model with one of {models}")
    thresholds = [rules.min_score] if rules.min_score is not None else []
    if rules.min_score_quantile is not None:
        reduced = []
        for batch in ds.read_batches("clip_scores", ["model", "score_a", "score_b"]):
            rows = batch.filter(pc.and_(pc.equal(batch.column(0), model), pc.is_valid(batch.column(1))))
            reduced.append(reduce_pair_scores(rows.column(1).to_numpy(), rows.column(2).to_numpy(), rules.score_of))
        values = np.concatenate(reduced) if reduced else np.array([])
        if len(values):
            thresholds.append(float(np.quantile(values, rules.min_score_quantile)))
    return replace(rules, model=model), (max(thresholds) if thresholds else None)


# --------------------------------------------------------------------------------------- stage
class FilterStage(Stage):
    """Judges every pair by the rules; pairs are bucketed by prompt_id so duplicates meet in one shard."""

    name = "filter"
    version = 1
    outputs = {"filters": "filters"}
    inputs = ("pairs", "clip_scores", "image_embeddings")

    def __init__(self, rules: FilterRules, threshold: float | None, buckets: int):
        self.rules, self.threshold, self.buckets = rules, threshold, buckets

    def config(self) -> dict:
        return {"rules": asdict(self.rules), "min_score_resolved": self.threshold, "buckets": self.buckets}

    def needs(self, dataset: Dataset) -> list[Stage]:
        return [shuffle.partition_stage(dataset, self.rules.model, self.buckets)]

    def plan(self, dataset: Dataset) -> list[dict]:
        part = shuffle.partition_of(dataset, shuffle.partition_stage(dataset, self.rules.model, self.buckets))
        return [{"bucket": b, "partition": part, "clip_scores": f} for b, f in enumerate(self._clip_files(dataset))]

    def _clip_files(self, ds: Dataset) -> list[str]:
        """The clip_scores file of each bucket: the scores stage wrote bucket b of the same count to shard b."""
        from curate.clip.scores import ClipScoreStage

        scores = ClipScoreStage(self.rules.model, self.buckets)
        paths = [ds.table_dir("clip_scores") / scores.shard_file("clip_scores", b) for b in range(self.buckets)]
        if not is_complete(scores, ds) or not set(paths) <= set(ds.shards("clip_scores")):
            raise DatasetError(f"{ds.table_dir('clip_scores')}: no current CLIP scores of model {self.rules.model!r} "
                               f"in {self.buckets} prompt buckets (the pairs changed since they were computed, or "
                               f"they never were); run `prefcurate embed {ds.root} --model ...` with that model again")
        return [str(p) for p in paths]

    def process(self, spec: dict, ctx: ShardContext):
        part, bucket = spec["partition"], spec["bucket"]
        pairs = shuffle.bucket_pairs(ctx.dataset, part, bucket, ["prompt_id", "pair_id", "image_a_id", "image_b_id"])
        clip = read_shard(spec["clip_scores"], ["pair_id", "score_a", "score_b", "image_cosine"])
        pairs = pairs.join(clip, "pair_id", join_type="left outer")
        pairs = pairs.sort_by("pair_id")  # the smallest pair_id of a duplicate cluster is the one kept
        flags = self._flags(pairs, shuffle.bucket_embeddings(ctx.dataset, part, bucket, "image_embeddings"))
        reasons = [[rule for rule in RULES if flags[rule][i]] for i in range(pairs.num_rows)]
        ctx.stats["pairs_in"] += pairs.num_rows
        for rule, count in funnel_counts(flags).items():
            ctx.stats[f"removed_{rule}"] += count
            ctx.stats[f"flagged_{rule}"] += int(flags[rule].sum())
        ctx.stats["kept"] += sum(not r for r in reasons)
        yield "filters", pa.RecordBatch.from_arrays(
            [pairs["pair_id"].combine_chunks(), pa.array([not r for r in reasons], pa.bool_()),
             pa.array(reasons, pa.list_(pa.string()))], schema=schemas.load("filters").arrow())

    def _flags(self, pairs: pa.Table, embeddings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        r = self.rules
        n = pairs.num_rows
        score_a = pairs["score_a"].to_numpy(zero_copy_only=False).astype(np.float32)  # nulls become NaN
        score_b = pairs["score_b"].to_numpy(zero_copy_only=False).astype(np.float32)
        cosine = pairs["image_cosine"].to_numpy(zero_copy_only=False).astype(np.float32)
        unscored = np.isnan(score_a) | np.isnan(score_b)
        flags = {"unscored": unscored & r.drop_unscored}
        reduced = reduce_pair_scores(np.nan_to_num(score_a, nan=np.inf), np.nan_to_num(score_b, nan=np.inf), r.score_of)
        flags["low_prompt_score"] = ~unscored & (reduced < self.threshold) if self.threshold is not None else np.zeros(n, bool)
        flags["near_identical_images"] = (np.nan_to_num(cosine, nan=-1) > r.max_image_cosine) if r.max_image_cosine is not None \
            else np.zeros(n, bool)
        flags["semantic_duplicate"] = self._duplicates(embeddings, pairs, ~(unscored | flags["low_prompt_score"] | flags["near_identical_images"]))
        return flags

    def _duplicates(self, found: dict[str, np.ndarray], pairs: pa.Table, candidates: np.ndarray) -> np.ndarray:
        """Candidates (pairs no earlier rule removed) that duplicate a smaller-pair_id candidate."""
        out = np.zeros(pairs.num_rows, bool)
        rows = np.flatnonzero(candidates)
        if self.rules.duplicate_epsilon is None or len(rows) < 2:
            return out
        taken = pairs.select(["prompt_id", "image_a_id", "image_b_id"]).take(pa.array(rows))
        ids_a, ids_b = taken["image_a_id"].to_pylist(), taken["image_b_id"].to_pylist()
        prompts = taken["prompt_id"].to_numpy(zero_copy_only=False)
        # One unit per (prompt, unordered image pair), in pair_id order: repeat judgements travel together.
        exact = np.array([f"{p}|{min(x, y)}|{max(x, y)}" for p, x, y in zip(prompts, ids_a, ids_b)], dtype=object)
        _, first, unit_of = np.unique(exact, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        unit_rows = first[order]
        a = np.stack([found[ids_a[i]] for i in unit_rows])
        b = np.stack([found[ids_b[i]] for i in unit_rows])
        groups = np.unique(prompts[unit_rows], return_inverse=True)[1]
        cluster = duplicate_clusters(groups, a, b, self.rules.duplicate_epsilon)
        duplicate_unit = cluster != np.arange(len(unit_rows))
        out[rows] = duplicate_unit[rank[unit_of.ravel()]]
        return out


def build_filter_stage(ds: Dataset, rules: FilterRules) -> FilterStage:
    ds.require("pairs", hint="run `prefcurate ingest` first")
    resolved, threshold = resolve_rules(ds, rules)
    return FilterStage(resolved, threshold, score_bucket_count(ds))


def funnel_lines(stats: dict[str, int], pairs_total: int) -> list[str]:
    """The funnel for people; raises DatasetError if the counts do not reconcile."""
    removed = {rule: stats.get(f"removed_{rule}", 0) for rule in RULES}
    pairs_in, kept = stats.get("pairs_in", 0), stats.get("kept", 0)
    if not pairs_in == pairs_total == kept + sum(removed.values()):
        raise DatasetError(f"filter counts do not reconcile: pairs table {pairs_total}, judged {pairs_in}, "
                           f"kept {kept} + removed {sum(removed.values())}")
    width = max(len(r) for r in RULES) + 4
    lines = [f"{'pairs in':<{width}}{pairs_in:>10}"]
    lines += [f"{'  - ' + rule:<{width}}{count:>10}   (flagged by this rule in all: {stats.get(f'flagged_{rule}', 0)})"
              for rule, count in removed.items()]
    return lines + [f"{'kept':<{width}}{kept:>10}"]
