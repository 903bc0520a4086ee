"""`prefcurate flag`: minority samples, why each was flagged, and per-pair training weights.

For each judgement (ties are never flagged and get weight 0):

- **u, a, s**: the Adaptive-DPO metric over the signals (each scorer, the Bradley-Terry fit, other
  votes), each already RMS-normalised over the dataset: z = rho * margin, a = 1 - mean sigmoid(z),
  s = min(std z, 1), u = a * s (curate.minority.minority_score, the function the trainer uses).
- **minority score**: 1 - P(label right), combining the consensus probability q that the labelled
  winner is better with the annotator's reliability r as two independent pieces of evidence:
  P(right) = r q / (r q + (1 - r)(1 - q)). A missing piece counts as no evidence (q or r = 1/2);
  with neither (no consensus, no track record of the annotator) there is no score and no flag.
- **flag**: minority score >= threshold (absolute), or in the top ``quantile`` share.
- **weight**: W = 1 / (k x + c) (curate.minority.adaptive_weights) with x = u (default, as the
  paper) or x = the minority score.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curate.annotators.stage import RHO_RMS
from curate.dataset import Dataset
from curate.runner import ShardContext, Stage, commit_shard_file

REASONS = {
    "consensus_disagrees": "the consensus says the other image is better",
    "scorers_disagree": "the scorers (AI annotators) prefer the other image",
    "votes_disagree": "most other people who judged the same images chose the other one",
    "unreliable_annotator": "the annotator agrees with the consensus less than annotators typically do",
    "position_bias": "the annotator picks the first image far more often than chance, and did so here",
    "high_u": "the signals doubt the label and disagree with each other (high u)",
}


@dataclass
class FlagStage(Stage):
    threshold: float = 0.5
    quantile: float | None = None
    rho: float = RHO_RMS
    weight_from: str = "u"
    weight_kind: str = "linear"
    k: float = 10.0
    c: float = 1.0
    u_reason: float = 0.2
    bias_pvalue: float = 1e-3

    name = "flag"
    version = 1
    outputs = {"pair_scores": "pair_scores"}
    inputs = ("pairs", "consensus", "annotators")

    def __post_init__(self):
        if self.weight_from not in ("u", "minority_score"):
            raise ValueError(f"weight_from {self.weight_from!r}: expected 'u' or 'minority_score'")
        if self.quantile is not None and not 0 < self.quantile < 1:
            raise ValueError(f"quantile {self.quantile}: expected a share in (0, 1), e.g. 0.2 flags the top 20%")

    def config(self) -> dict:
        return {k: getattr(self, k) for k in ("threshold", "quantile", "rho", "weight_from", "weight_kind",
                                               "k", "c", "u_reason", "bias_pvalue")}

    def plan(self, dataset: Dataset) -> list[dict]:
        pairs = dataset.require("pairs", "run `prefcurate ingest` first")
        consensus = dataset.require("consensus", "run `prefcurate annotators` first")
        if len(consensus) != len(pairs):
            raise RuntimeError(f"{dataset.root}: {len(consensus)} consensus shards for {len(pairs)} pairs shards; "
                               f"rerun `prefcurate annotators` after ingest")
        return [{"pairs": str(p), "consensus": str(c)} for p, c in zip(pairs, consensus)]

    def process(self, spec: dict, ctx: ShardContext):
        scored = score_shard(self, ctx.dataset, spec)
        threshold = self.threshold
        if self.quantile is not None:
            ctx.partial = scored["minority_score"]
            threshold = np.inf  # decided in finalize, once every score is known
        yield "pair_scores", verdict_table(self, scored, threshold)

    def finalize(self, dataset: Dataset, results, executor) -> dict[str, int]:
        if self.quantile is not None:
            everything = np.concatenate([r.partial for r in results]) if results else np.zeros(0)
            finite = everything[~np.isnan(everything)]
            threshold = float(np.quantile(finite, 1 - self.quantile)) if len(finite) else np.inf
            for i, spec in enumerate(self.plan(dataset)):
                scored = score_shard(self, dataset, spec)
                commit_shard_file(dataset, self, i, "pair_scores", self.shard_file("pair_scores", i),
                                  [verdict_table(self, scored, threshold)])
        import polars as pl

        scores = dataset.scan("pair_scores")
        stats = {"flagged": int(scores.select(pl.col("is_minority").sum()).collect().item())}
        counts = scores.select(pl.col("reasons").explode().drop_nulls().value_counts()).unnest("reasons").collect()
        stats.update({f"reason:{r}": int(n) for r, n in counts.iter_rows()})
        return stats


def score_shard(stage: FlagStage, dataset: Dataset, spec: dict) -> dict[str, np.ndarray]:
    """Every number the verdict needs, for one shard (pairs and consensus rows in the same order)."""
    import polars as pl

    from curate.minority import adaptive_weights, minority_score

    pairs = pl.read_ipc(spec["pairs"], columns=["pair_id", "label", "annotator_id"])
    consensus = pl.read_ipc(spec["consensus"])
    if not pairs["pair_id"].equals(consensus["pair_id"]):
        raise RuntimeError(f"{spec['consensus']} is out of step with {spec['pairs']}; rerun `prefcurate annotators`")
    annotators = _annotators(dataset)
    joined = pairs.join(annotators, on="annotator_id", how="left", maintain_order="left")
    n = pairs.height
    names = consensus["signal_names"][0].to_list() if n else []
    margins = consensus["signal_margins"].explode().cast(pl.Float64).to_numpy().reshape(n, len(names)).T
    u, a, s, used = _metric(margins, stage.rho, minority_score)
    q = consensus["agreement"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    r = joined["reliability"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    known = joined["compared"].fill_null(0).to_numpy() > 0  # a track record to judge the annotator by
    tie = (pairs["label"] == "tie").to_numpy()
    score = _combine(q, np.where(known, r, np.nan))
    score[tie | (np.isnan(q) & ~known)] = np.nan  # no evidence either way: no score, never a flag
    x = np.nan_to_num(u if stage.weight_from == "u" else score, nan=0.0)
    weight = np.where(tie, 0.0, adaptive_weights(x, kind=stage.weight_kind, k=stage.k, c=stage.c))
    return {"pair_id": pairs["pair_id"].to_arrow(), "u": u, "a": a, "s": s, "signals": used, "agreement": q,
            "reliability": r, "minority_score": score, "weight": weight, "names": names, "margins": margins,
            "source": consensus["source"].to_numpy(), "label": pairs["label"].to_numpy(),
            "verdict": joined["verdict"].to_numpy(), "position_share": joined["position_share"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
            "position_pvalue": joined["position_pvalue"].cast(pl.Float64).fill_null(1.0).to_numpy(),
            "other_agree_share": consensus["other_agree_share"].cast(pl.Float64).fill_null(np.nan).to_numpy()}


_ANNOTATORS: dict[str, object] = {}


def _annotators(dataset: Dataset):
    """The annotators table, read once per process (it is small: one row per person)."""
    import polars as pl

    key = str(dataset.root)
    if key not in _ANNOTATORS:
        _ANNOTATORS.clear()
        _ANNOTATORS[key] = dataset.scan("annotators").select(
            "annotator_id", "reliability", "verdict", "position_share", "position_pvalue", "compared").collect()
        if not _ANNOTATORS[key].height:
            _ANNOTATORS[key] = pl.DataFrame(schema=_ANNOTATORS[key].schema)
    return _ANNOTATORS[key]


def _metric(margins: np.ndarray, rho: float, minority_score):
    """u, a, s per pair over the signals it has (>= 2), grouped by which signals are present."""
    n = margins.shape[1] if margins.ndim == 2 else 0
    u, a, s = (np.full(n, np.nan) for _ in range(3))
    present = ~np.isnan(margins)
    used = present.sum(axis=0).astype(np.int32) if n else np.zeros(0, np.int32)
    if n == 0 or margins.shape[0] < 2:
        return u, a, s, used
    patterns, which = np.unique(present.T, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        if pattern.sum() < 2:
            continue
        cols = np.flatnonzero(which.ravel() == p)
        # Margins are already RMS-normalised over the whole dataset (section 5): no per-shard renormalising.
        result = minority_score(margins[pattern][:, cols], rho=rho, normalize="none")
        u[cols], a[cols], s[cols] = result.u, result.a, result.s
    return u, a, s, used


def _combine(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """1 - P(label right | consensus q, reliability r), two independent pieces of evidence."""
    q = np.clip(np.nan_to_num(q, nan=0.5), 1e-6, 1 - 1e-6)
    r = np.clip(np.nan_to_num(r, nan=0.5), 1e-6, 1 - 1e-6)
    right = r * q / (r * q + (1 - r) * (1 - q))
    return 1.0 - right


def reason_masks(stage: FlagStage, scored: dict) -> dict[str, np.ndarray]:
    """For each reason, which judgements it applies to (whether or not they end up flagged)."""
    label = scored["label"]
    decided = label != "tie"
    with np.errstate(invalid="ignore"):
        scorer_rows = [k for k, name in enumerate(scored["names"]) if name.startswith("scorer:")]
        scorer_mean = _nanmean_rows(scored["margins"][scorer_rows]) if scorer_rows else np.full(len(label), np.nan)
        share = scored["position_share"]
        masks = {
            "consensus_disagrees": scored["agreement"] < 0.5,
            "scorers_disagree": scorer_mean < 0,
            "votes_disagree": scored["other_agree_share"] < 0.5,
            "unreliable_annotator": scored["verdict"] == "unreliable",
            "position_bias": (scored["position_pvalue"] < stage.bias_pvalue) & ((share > 0.5) == (label == "a")),
            "high_u": scored["u"] >= stage.u_reason,
        }
    return {name: mask & decided for name, mask in masks.items()}


def _nanmean_rows(rows: np.ndarray) -> np.ndarray:
    counted = (~np.isnan(rows)).sum(axis=0)
    return np.where(counted > 0, np.nansum(rows, axis=0) / np.maximum(counted, 1), np.nan)


def verdict_table(stage: FlagStage, scored: dict, threshold: float) -> pa.Table:
    from curate import schema as schemas

    score = scored["minority_score"]
    flagged = np.nan_to_num(score, nan=-1.0) >= threshold
    masks = reason_masks(stage, scored)
    grid = np.stack(list(masks.values()), axis=1) & flagged[:, None]  # (pairs, reasons), only for flags
    rows, cols = np.nonzero(grid)  # row-major: each pair's reasons in REASONS order
    offsets = np.concatenate([[0], np.cumsum(grid.sum(axis=1))]).astype(np.int32)
    names = pa.array(list(masks), pa.string()).take(pa.array(cols.astype(np.int32)))
    reasons = pa.ListArray.from_arrays(pa.array(offsets), names)
    f32 = lambda x: pa.array(x, pa.float32(), from_pandas=True)  # noqa: E731 (NaN -> null)
    return schemas.load("pair_scores").table({
        "pair_id": scored["pair_id"], "u": f32(scored["u"]), "a": f32(scored["a"]), "s": f32(scored["s"]),
        "signals": pa.array(scored["signals"], pa.int32()), "agreement": f32(scored["agreement"]),
        "reliability": f32(scored["reliability"]), "minority_score": f32(score),
        "is_minority": pa.array(flagged), "reasons": reasons,
        "weight": pa.array(scored["weight"], pa.float32()),
    })
