"""`prefcurate flag`: minority samples, why each was flagged, and per-pair training weights.

For each judgement (ties are never flagged and get weight 0):

- **u, a, s**: the Adaptive-DPO metric over the signals (each scorer, the Bradley-Terry fit, other
  votes), each already RMS-normalised over the dataset: z = rho * margin, a = 1 - mean sigmoid(z),
  s = min(std z, 1), u = a * s (curate.minority.minority_score, the function the trainer uses).
- **minority score**: consensus.minority_score, 1 - P(label right): the crowd model's posterior that
  the majority taste prefers the other image, given the label and who gave it (without a taste
  model, the consensus and the annotator's reliability as independent evidence); none for ties or
  without any evidence, and then never a flag.
- **flag**: minority score >= threshold (absolute), or in the top ``quantile`` share, whose threshold
  comes from the consensus stage's mergeable sketch (minority_sketch): one pass over the shards.
- **weight**: W = 1 / (k x + c) (curate.minority.adaptive_weights) with x = u (default, as the
  paper) or x = the minority score.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curate.annotators.stage import RHO_RMS
from curate.dataset import Dataset
from curate.options import WeightKind, WeightSource, choice
from curate.runner import ShardContext, Stage, table_fingerprint

REASONS = {
    "consensus_disagrees": "the consensus says the other image is better",
    "scorers_disagree": "the scorers (AI annotators) prefer the other image",
    "votes_disagree": "most other people who judged the same images chose the other one",
    "unreliable_annotator": "the annotator agrees with the consensus less than annotators typically do",
    "minority_taste": "the annotator most likely holds a taste other than the majority's (or clicks at random)",
    "position_bias": "the annotator picks the first image far more often than chance, and did so here",
    "high_u": "the signals doubt the label and disagree with each other (high u)",
}


@dataclass
class FlagStage(Stage):
    threshold: float = 0.5
    quantile: float | None = None
    rho: float = RHO_RMS
    weight_from: WeightSource = WeightSource.u
    weight_kind: WeightKind = WeightKind.linear
    k: float = 10.0
    c: float = 1.0
    u_reason: float = 0.2
    bias_pvalue: float = 1e-3

    name = "flag"
    version = 1
    outputs = {"pair_scores": "pair_scores"}
    inputs = ("pairs", "consensus", "annotators", "minority_sketch")

    def __post_init__(self):
        # Checked here, before the runner clears anything: a bad option never costs the old outputs.
        self.weight_from = choice(WeightSource, self.weight_from, "weight_from")
        self.weight_kind = choice(WeightKind, self.weight_kind, "weight_kind")
        if self.quantile is not None and not 0 < self.quantile < 1:
            raise ValueError(f"quantile {self.quantile}: expected a share in (0, 1), e.g. 0.2 flags the top 20%")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold {self.threshold}: expected a minority score in [0, 1]")

    def config(self) -> dict:
        config = {k: getattr(self, k) for k in ("threshold", "quantile", "rho", "k", "c", "u_reason", "bias_pvalue")}
        return {**config, "weight_from": self.weight_from.value, "weight_kind": self.weight_kind.value}

    def plan(self, dataset: Dataset) -> list[dict]:
        pairs = dataset.require("pairs", "run `prefcurate ingest` first")
        consensus = dataset.require("consensus", "run `prefcurate annotators` first")
        if len(consensus) != len(pairs):
            raise RuntimeError(f"{dataset.root}: {len(consensus)} consensus shards for {len(pairs)} pairs shards; "
                               f"rerun `prefcurate annotators` after ingest")
        threshold = self.threshold if self.quantile is None else quantile_threshold(dataset, self.quantile)
        return [{"pairs": str(p), "consensus": str(c), "threshold": threshold} for p, c in zip(pairs, consensus)]

    def process(self, spec: dict, ctx: ShardContext):
        yield "pair_scores", verdict_table(self, score_shard(self, ctx.dataset, spec), spec["threshold"])

    def finalize(self, dataset: Dataset, results, executor=None) -> dict[str, int]:
        import polars as pl

        scores = dataset.scan("pair_scores")
        stats = {"flagged": int(scores.select(pl.col("is_minority").sum()).collect().item())}
        counts = scores.select(pl.col("reasons").explode().drop_nulls().value_counts()).unnest("reasons").collect()
        stats.update({f"reason:{r}": int(n) for r, n in counts.iter_rows()})
        return stats


def quantile_threshold(dataset: Dataset, share: float) -> float:
    """The minority score above which the top ``share`` of scored judgements lie, from the sketch."""
    from curate.stats import top_share_threshold

    dataset.require("minority_sketch", "rerun `prefcurate annotators` (it writes the sketch with the consensus)")
    sketch = dataset.read_table("minority_sketch")
    return top_share_threshold(sketch["bin"].to_numpy(), sketch["count"].to_numpy(), share)


def score_shard(stage: FlagStage, dataset: Dataset, spec: dict) -> dict[str, np.ndarray]:
    """Every number the verdict needs, for one shard (pairs and consensus rows in the same order).

    Strings are compared in polars (label, verdict, taste group), never turned into numpy object
    arrays: at 500k rows a shard, that was a third of flag's time."""
    import polars as pl

    from curate.minority import adaptive_weights, minority_score

    pairs = pl.read_ipc(spec["pairs"], columns=["pair_id", "label", "annotator_id"])
    consensus = pl.read_ipc(spec["consensus"], columns=CONSENSUS_COLUMNS)
    if not pairs["pair_id"].equals(consensus["pair_id"]):
        raise RuntimeError(f"{spec['consensus']} is out of step with {spec['pairs']}; rerun `prefcurate annotators`")
    n = pairs.height
    names = pl.read_ipc(spec["consensus"], columns=["signal_names"], n_rows=1)["signal_names"][0].to_list() if n else []
    facts = pairs.select(tie=pl.col("label") == "tie", chose_a=pl.col("label") == "a", annotator_id="annotator_id").join(
        _annotators(dataset), on="annotator_id", how="left", maintain_order="left").select(
        "tie", "chose_a", "reliability", "position_share", "position_pvalue",
        unreliable=(pl.col("verdict") == "unreliable").fill_null(False),
        minority_taste=(pl.col("taste_group") != "majority").fill_null(False))
    floats = lambda frame, c, missing=np.nan: frame[c].cast(pl.Float64).fill_null(missing).to_numpy()  # noqa: E731
    margins = consensus["signal_margins"].explode().cast(pl.Float64).to_numpy().reshape(n, len(names)).T
    u, a, s, used = _metric(margins, stage.rho, minority_score)
    tie = facts["tie"].to_numpy()
    score = floats(consensus, "minority_score")
    x = np.nan_to_num(u if stage.weight_from == WeightSource.u else score, nan=0.0)
    weight = np.where(tie, 0.0, adaptive_weights(x, kind=stage.weight_kind.value, k=stage.k, c=stage.c))
    return {"pair_id": pairs["pair_id"].to_arrow(), "u": u, "a": a, "s": s, "signals": used,
            "agreement": floats(consensus, "agreement"), "reliability": floats(facts, "reliability"),
            "minority_score": score, "weight": weight, "names": names, "margins": margins, "tie": tie,
            "chose_a": facts["chose_a"].to_numpy(), "unreliable": facts["unreliable"].to_numpy(),
            "minority_taste": facts["minority_taste"].to_numpy(), "position_share": floats(facts, "position_share"),
            "position_pvalue": floats(facts, "position_pvalue", 1.0),
            "other_agree_share": floats(consensus, "other_agree_share")}


CONSENSUS_COLUMNS = ["pair_id", "agreement", "minority_score", "other_agree_share", "signal_margins"]


_ANNOTATORS: dict[tuple[str, str], object] = {}


def _annotators(dataset: Dataset):
    """The annotators table, read once per process and content: keyed by the checksums of its files,
    so a rerun of `annotators` is never scored against the old table."""
    key = (str(dataset.root), table_fingerprint(dataset, "annotators"))
    if key not in _ANNOTATORS:
        _ANNOTATORS.clear()
        _ANNOTATORS[key] = dataset.scan("annotators").select(
            "annotator_id", "reliability", "verdict", "taste_group", "position_share", "position_pvalue", "compared").collect()
    return _ANNOTATORS[key]


def _metric(margins: np.ndarray, rho: float, minority_score):
    """u, a, s per pair over the signals it has (>= 2), grouped by which signals are present."""
    n = margins.shape[1] if margins.ndim == 2 else 0
    u, a, s = (np.full(n, np.nan) for _ in range(3))
    present = ~np.isnan(margins)
    used = present.sum(axis=0).astype(np.int32) if n else np.zeros(0, np.int32)
    if n == 0 or margins.shape[0] < 2:
        return u, a, s, used
    # Each pair's pattern of present signals as one integer (bit m: signal m), so grouping is a
    # unique over integers, not numpy's row-wise unique of a boolean matrix (a tenth of the cost).
    if margins.shape[0] > 62:
        raise ValueError(f"{margins.shape[0]} signals (scorers + bradley_terry + votes): at most 62 fit the "
                         "int64 pattern codes; score with fewer scorers")
    bits = 1 << np.arange(margins.shape[0], dtype=np.int64)
    codes, which = np.unique((present * bits[:, None]).sum(axis=0), return_inverse=True)
    for p, code in enumerate(codes):
        pattern = (code & bits) > 0
        if pattern.sum() < 2:
            continue
        cols = np.flatnonzero(which.ravel() == p)
        # Margins are already RMS-normalised over the whole dataset (section 5): no per-shard renormalising.
        result = minority_score(margins[pattern][:, cols], rho=rho, normalize="none")
        u[cols], a[cols], s[cols] = result.u, result.a, result.s
    return u, a, s, used


def reason_masks(stage: FlagStage, scored: dict) -> dict[str, np.ndarray]:
    """For each reason, which judgements it applies to (whether or not they end up flagged)."""
    decided = ~scored["tie"]
    with np.errstate(invalid="ignore"):
        scorer_rows = [k for k, name in enumerate(scored["names"]) if name.startswith("scorer:")]
        scorer_mean = _nanmean_rows(scored["margins"][scorer_rows]) if scorer_rows else np.full(len(decided), np.nan)
        share = scored["position_share"]
        masks = {
            "consensus_disagrees": scored["agreement"] < 0.5,
            "scorers_disagree": scorer_mean < 0,
            "votes_disagree": scored["other_agree_share"] < 0.5,
            "unreliable_annotator": scored["unreliable"],
            "minority_taste": scored["minority_taste"],
            "position_bias": (scored["position_pvalue"] < stage.bias_pvalue) & ((share > 0.5) == scored["chose_a"]),
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
