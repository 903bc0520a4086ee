"""`prefcurate annotators`, pass 1: the crowd model and everything person-level.

Each task reads one pairs shard and leaves declared partials (plain arrays): per judgement its
image keys, label sign, author, vote group and own votes, and each scorer's raw margin; per
annotator the counts. ``finalize`` merges them on the driver, fits the taste model (a mixture of
Bradley-Terry components over people, curate.annotators.tastes) and returns whole tables for the
runner to write: annotators, taste_groups, image_strengths, vote_groups, signal_scales and
bt_stability. Pass 2 (curate.annotators.consensus) reads those to write each shard's consensus.

Scales are dataset-wide: each signal is divided by its RMS over every judgement, so the outputs do
not depend on how the pairs were sharded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate.annotators import crowd
from curate.annotators import signals as sig
from curate.annotators import tables
from curate.annotators import tastes as tm
from curate.dataset import Dataset
from curate.runner import Finalized, ShardContext, Stage

RHO_RMS = 3.75  # the authors' rho = 15 with an L2 norm over a batch of 16, in batch-size-free RMS form
JUDGEMENT_KEYS = ("key_a", "key_b", "sign", "who", "group", "lo_wins", "hi_wins", "tied", "multi")
PERSON_KEYS = ("annotator_id", "who", "judgements", "ties", "chose_a", "trust_sum", "trust_count")


@dataclass
class AnnotatorsStage(Stage):
    bradley_terry: bool = True
    ridge: float = 1.0
    level: float = 0.95
    bootstrap: int = 0
    max_tastes: int = 3
    em_iterations: int = 30
    em_sample: int = 200_000  # EM runs on the judgements of a sample of people this size; then one full pass

    name = "annotators"
    version = 2
    # no shard ``outputs``: everything pass 1 makes is whole-dataset
    final_outputs = {t: t for t in ("annotators", "taste_groups", "image_strengths", "vote_groups",
                                    "signal_scales", "bt_stability")}
    inputs = ("pairs", "scores")

    def __post_init__(self):
        if self.max_tastes < 1 or self.em_iterations < 1 or self.em_sample < 1:
            raise ValueError(f"max_tastes {self.max_tastes}, em_iterations {self.em_iterations}, em_sample "
                             f"{self.em_sample}: each must be >= 1")

    def config(self) -> dict:
        return {"bradley_terry": self.bradley_terry, "ridge": self.ridge, "level": self.level,
                "bootstrap": self.bootstrap, "max_tastes": self.max_tastes, "em_iterations": self.em_iterations,
                "em_sample": self.em_sample}

    def plan(self, dataset: Dataset) -> list[dict]:
        shards = dataset.require("pairs", "run `prefcurate ingest` first")
        return [{"pairs": str(p), "scorers": scorer_names(dataset)} for p in shards]

    def then(self) -> list[Stage]:
        from curate.annotators.consensus import ConsensusStage

        return [ConsensusStage()]

    def process(self, spec: dict, ctx: ShardContext):
        pairs = sig.read_judgements(spec["pairs"])
        keyed = sig.with_keys(pairs)
        ctx.partial = {**sig.judgement_columns(pairs, keyed),
                       **{f"person_{k}": v for k, v in sig.person_columns(pairs).items()},
                       "scorer_margins": shard_scorer_margins(ctx.dataset, pairs, spec["scorers"]).astype(np.float32)}
        return iter(())

    def finalize(self, dataset: Dataset, results, executor=None) -> Finalized:
        parts = [r.partial for r in results]
        cols = {k: np.concatenate([p[k] for p in parts]) for k in JUDGEMENT_KEYS} if parts else {}
        if not cols or not len(cols["sign"]):
            return Finalized({}, tables.empty(self))
        people = tables.merge_people([{k: p[f"person_{k}"] for k in PERSON_KEYS} for p in parts])
        raw = np.concatenate([p["scorer_margins"] for p in parts], axis=1).astype(float)
        scorers = scorer_names(dataset)
        fit = fit_crowd(self, cols, raw, scorers, people)
        evidence = fit.evidence
        agreed = tables.person_agreement(people, fit.who, fit.person, evidence)
        out = {"annotators": [tables.annotators_table(self, people, agreed, fit)],
               "taste_groups": [tables.taste_groups_table(fit, cols, evidence, raw, scorers)],
               "image_strengths": [tables.image_strengths_table(fit.model)],
               "vote_groups": [tables.vote_groups_table(fit.model.groups)],
               "signal_scales": [tables.signal_scales_table(fit.model)],
               "bt_stability": [tables.stability_table(fit)]}
        verdicts = out["annotators"][0]["verdict"].to_pylist()
        stats = {"annotators": len(verdicts), **{f"verdict:{v}": verdicts.count(v) for v in set(verdicts)},
                 "signals:bradley_terry": int(self.bradley_terry), "signals:scorers": len(scorers),
                 "taste_groups": len(fit.model.theta), "krippendorff_alpha_x1000": alpha_x1000(fit.model.groups)}
        return Finalized(stats, out)


def scorer_names(dataset: Dataset) -> list[str]:
    if not dataset.has("scores"):
        return []
    return sorted(dataset.scan("scores").select("scorer").unique().collect()["scorer"].to_list())


def shard_scorer_margins(dataset: Dataset, pairs, scorers: list[str]) -> np.ndarray:
    """(scorers x judgements) raw margins of one shard's labelled winners under each scorer."""
    import polars as pl

    if not scorers:
        return np.zeros((0, pairs.height))
    scores = dataset.scan("scores").filter(pl.col("prompt_id").is_in(pairs["prompt_id"].unique().implode())).collect()
    return sig.scorer_margins(pairs, scores, scorers)


@dataclass
class CrowdFit:
    """The fitted model plus what finalize needs about people (``who`` sorted, ``resp`` theirs,
    ``person`` each judgement's index in ``who``, ``author_resp`` the memberships a judgement of
    theirs gets: ``resp``, or the people share for those without an annotator id) and judgements."""

    model: crowd.CrowdModel
    who: np.ndarray
    resp: np.ndarray
    author_resp: np.ndarray
    taste: tm.TasteModel | None
    data: tm.Judgements | None
    evidence: dict
    person: np.ndarray
    stability: object = None


def fit_crowd(stage: AnnotatorsStage, cols: dict, raw: np.ndarray, scorers: list[str], people: dict) -> CrowdFit:
    """Vote groups, the taste model (when Bradley-Terry is on), scorer scales and slope, signal scales.

    ``people`` are those with an annotator id (``who`` their hashes, ``trust`` their trust scores);
    a judgement without one gets the memberships of a person nobody knows (the people share), as
    the consensus stage gives it.
    """
    known = people["who"]
    groups, group_index = vote_groups(cols)
    who, person = sig.dense_index(cols["who"])
    decided = cols["sign"] != 0
    keys, image = sig.dense_index(np.concatenate([cols["key_a"][decided], cols["key_b"][decided]]))
    scorer_rms = np.array([sig.rms(r) for r in raw])
    slope = crowd.fit_slope(crowd.mean_scorer_margin(raw, scorer_rms))
    scorer_names = tuple(f"scorer:{s}" for s in scorers)  # the evidence below reads the scorers' scales from these
    model = crowd.CrowdModel(np.zeros(0, np.int64), np.zeros((0, 0)), np.zeros((0, 0)), 0, 0.5, np.ones(1),
                             groups, scorer_names, scorer_rms, slope)
    resp, taste, data, stability, at = np.ones((len(who), 1)), None, None, None, None
    if stage.bradley_terry and len(keys) >= 2:
        prior = crowd.scorer_prior(raw, scorer_rms, slope)
        data = judgements(cols, image, len(keys), person, len(who))._replace(
            trust=person_trust(who, people), prior=None if prior is None else prior[decided])
        at = (np.flatnonzero(decided), data.winner, data.loser)  # = crowd.winner_loser(model, cols), searched once
        model, resp, taste, stability = fit_taste_model(stage, data, model._replace(image_keys=keys))
    author_resp = np.where(np.isin(who, known)[:, None], resp, model.share[None, :])
    judgement_resp = author_resp[person]
    evidence = crowd.judgement_evidence(model, cols, judgement_resp, raw, at=at,
                                        group_at=(group_index, np.ones(len(group_index), bool)), entropy=False)
    names = list(scorer_names) + (["bradley_terry"] if taste is not None else [])
    rms = list(scorer_rms) + ([sig.rms(evidence["bt_people"])] if taste is not None else [])
    if np.isfinite(evidence["vote_margin"]).any():
        names.append("votes")
        rms.append(sig.rms(evidence["vote_margin"]))
    model = model._replace(signals=tuple(names), signal_rms=np.array(rms, dtype=float))
    return CrowdFit(model, who, resp, author_resp, taste, data, evidence, person, stability)


def fit_taste_model(stage: AnnotatorsStage, data: tm.Judgements, model: crowd.CrowdModel):
    """EM over people, then the model as its tables will hold it (float32): strengths, curvatures,
    the majority, alpha and the people share; with the per-person memberships and the bootstrap.

    Where scorers are there, ``data.prior`` holds their calibrated log-odds for each labelled
    winner (``crowd.scorer_prior``): the majority taste's strengths are fitted on top of them inside
    EM, so the memberships, too, see how each person's labels agree with the scorers where people
    compared an image pair only once (benchmarks/alignment.py's pairs: BENCHMARKS.md)."""
    taste = tm.fit_tastes_sampled(data, stage.em_sample, ridge=stage.ridge, max_tastes=stage.max_tastes,
                                  iterations=stage.em_iterations)
    as_stored = lambda x: x.astype(np.float32).astype(float)  # noqa: E731
    resp, theta, k = as_stored(taste.resp), as_stored(taste.theta), taste.majority
    h = as_stored(np.stack([tm.curvature(t, data, tm.weights_of(resp, data, c), stage.ridge, tm.prior_of(data, c, k))
                            for c, t in enumerate(theta)]))
    own = tm.weights_of(resp, data, k)
    margins = tm.leave_one_out_margin(tm.margins_of(theta[k], data, data.prior), own,
                                      tm.per_judgement(h[k], data.winner), tm.per_judgement(h[k], data.loser))
    model = model._replace(theta=theta, curvature=h, majority=k, alpha=tm.majority_accuracy(margins, own),
                           share=as_stored(taste.share))
    stability = bootstrap_stability(data, own, stage) if stage.bootstrap > 0 else None
    return model, resp, taste, stability


def person_trust(who: np.ndarray, people: dict) -> np.ndarray | None:
    """Each person's trust score in ``who``'s order (NaN unknown); None when nobody has one."""
    if not np.isfinite(people["trust"]).any():
        return None
    pos, found = sig.positions(who, people["who"])
    trust = np.full(len(who), np.nan)
    trust[pos[found]] = people["trust"][found]
    return trust


def vote_groups(cols: dict) -> tuple[sig.VoteGroups, np.ndarray]:
    """Votes per (prompt, image pair) group, summed over every judgement (sorted by group), and
    each judgement's group index (so its other votes need no search)."""
    group, index = sig.dense_index(cols["group"])
    count = lambda c: np.bincount(index, cols[c], len(group)).astype(np.int64)  # noqa: E731
    return sig.VoteGroups(group, count("lo_wins"), count("hi_wins"), count("tied")), index


def judgements(cols: dict, image: np.ndarray, n_items: int, person: np.ndarray, n_people: int) -> tm.Judgements:
    """The decided judgements as (winner, loser, person) indices for the taste model; ``image``
    holds the decided judgements' A images' indices among the sorted image keys, then their B images'."""
    decided = cols["sign"] != 0
    ia, ib = np.split(image, 2)
    a_won = cols["sign"][decided] > 0
    return tm.Judgements(np.where(a_won, ia, ib), np.where(a_won, ib, ia), person[decided], n_items, n_people)


def bootstrap_stability(data: tm.Judgements, weight: np.ndarray, stage: AnnotatorsStage):
    """For each compared image pair: the share of majority refits on resampled people keeping its order."""
    from curate.bradley_terry import bootstrap_consensus

    keep = weight > 0
    return bootstrap_consensus(data.winner[keep], data.loser[keep], data.person[keep], data.n_items,
                               n_boot=stage.bootstrap, weights=weight[keep], ridge=stage.ridge)


def alpha_x1000(groups: sig.VoteGroups) -> int:
    """Krippendorff's alpha over the groups that several people judged (x1000, -1000 when undefined)."""
    from curate.stats import krippendorff_alpha_nominal

    counts = np.stack([groups.lo_wins, groups.hi_wins, groups.tied], axis=1).astype(float)
    counts = counts[counts.sum(axis=1) >= 2]
    alpha = krippendorff_alpha_nominal(counts) if len(counts) else float("nan")
    return -1000 if np.isnan(alpha) else int(round(alpha * 1000))
