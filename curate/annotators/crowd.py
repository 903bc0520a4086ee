"""The fitted crowd model, and what it says about each judgement (one implementation for the
annotators stage, which needs it for dataset-wide scales and per-person agreement, and the
consensus stage, which writes it shard by shard).

For a judgement by a person with memberships r (taste components, random) of the taste model:
- ``bt``: the majority component's margin winner - loser with the judgement's own pull removed;
- ``agreement``: P(majority taste prefers the labelled winner) = sigmoid(bt), the scorers' calibrated
  log-odds being the prior margin the majority's fit corrects (``scorer_prior``); without a taste model, other people's votes in log-odds
  plus slope x the scorers' mean normalised margin;
- ``minority``: the posterior that the majority taste prefers the other image given this label and
  who gave it (curate.annotators.tastes.minority_posterior).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from curate.annotators import signals as sig
from curate.annotators.tastes import leave_one_out_margin, minority_posterior, per_judgement

SOURCES = ("votes", "scorers", "bradley_terry")


class CrowdModel(NamedTuple):
    image_keys: np.ndarray  # sorted image keys of the taste model (int64)
    theta: np.ndarray  # (K, items) log-strengths per taste component
    curvature: np.ndarray  # (K, items) each item's curvature under each component
    majority: int  # which component is the majority (most people)
    alpha: float  # how often a majority member follows the majority's preference
    share: np.ndarray  # (K + 1,) memberships of a person nobody knows (last: random)
    groups: sig.VoteGroups
    signals: tuple[str, ...]  # the signals of the minority metric: scorer:<name>..., bradley_terry, votes
    signal_rms: np.ndarray  # each one's RMS over the whole dataset
    scorer_slope: float  # log-odds of agreement per unit of the mean normalised scorer margin

    @property
    def scorer_rms(self) -> np.ndarray:
        return np.array([r for s, r in zip(self.signals, self.signal_rms) if s.startswith("scorer:")])


def mean_scorer_margin(raw: np.ndarray, rms: np.ndarray) -> np.ndarray:
    """Mean over scorers of each judgement's RMS-normalised margin (NaN where no scorer has both images)."""
    if not len(raw):
        return np.full(raw.shape[1] if raw.ndim == 2 else 0, np.nan)
    norm = raw / np.where(rms > 0, rms, 1.0)[:, None]
    counted = (~np.isnan(norm)).sum(axis=0)
    return np.where(counted > 0, np.nansum(norm, axis=0) / np.maximum(counted, 1), np.nan)


def scorer_prior(raw: np.ndarray, rms: np.ndarray, slope: float) -> np.ndarray | None:
    """The majority taste's prior margin for each labelled winner: the scorers' calibrated log-odds,
    slope x mean normalised margin (0 where no scorer has both images); None without scorers or
    without a positive slope (scorers that do not predict people).

    The majority's Bradley-Terry strengths are fitted on top of it (``tastes.Judgements.prior``):
    where people compared an image pair often, their votes correct the prior; where they compared it
    once, the leave-one-out margin is the prior itself, at the scorers' full calibrated weight.
    E.g. slope 2, mean normalised margin 0.5: 1.0, P(winner) = sigmoid(1.0) = 0.73."""
    if not len(raw) or slope <= 0:
        return None
    return slope * np.nan_to_num(mean_scorer_margin(raw, rms))


def fit_slope(m: np.ndarray) -> float:
    """b maximising sum log sigmoid(b m) over judgements: how well the scorers predict people.

    In the label's frame every judgement is a "1", so this is the logistic regression of which image
    people chose on the scorer margin, without intercept (the layout A/B is arbitrary). Newton steps.
    """
    m = m[~np.isnan(m)]
    b = 0.0
    for _ in range(50 if len(m) else 0):
        p = 1.0 / (1.0 + np.exp(-b * m))
        step = np.sum(m * (1 - p)) / (np.sum(m * m * p * (1 - p)) + 1e-9)
        b = float(np.clip(b + step, 0.0, 50.0))
        if abs(step) < 1e-6:
            break
    return b


def winner_loser(model: CrowdModel, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decided judgements (row numbers) and their winner's and loser's indices in ``model.image_keys``.

    Ties never get a margin, and their images need not be in the model (it is fitted on decisions).
    """
    sign = cols["sign"]
    decided = np.flatnonzero(sign != 0)
    ia = sig.search_sorted(model.image_keys, cols["key_a"][decided])
    ib = sig.search_sorted(model.image_keys, cols["key_b"][decided])
    a_is_winner = sign[decided] > 0
    return decided, np.where(a_is_winner, ia, ib), np.where(a_is_winner, ib, ia)


def taste_margins(model: CrowdModel, cols: dict[str, np.ndarray], resp: np.ndarray,
                  at: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                  prior: np.ndarray | None = None) -> np.ndarray:
    """(K, judgements) leave-one-out margins for the labelled winner under each taste component,
    the majority's from ``prior`` (per judgement: ``scorer_prior``, as the fit had it).

    ``at`` is ``winner_loser(model, cols)`` where the caller already has it (the annotators stage
    indexes its judgements once for the fit): two searches over every judgement fewer.
    """
    out = np.full((len(model.theta), len(cols["sign"])), np.nan)
    if not len(model.image_keys):
        return out
    decided, w, l = winner_loser(model, cols) if at is None else at
    for k, (theta, h) in enumerate(zip(model.theta, model.curvature)):
        d = per_judgement(theta, w) - per_judgement(theta, l)
        if prior is not None and k == model.majority:
            d += per_judgement(prior, decided)
        out[k, decided] = leave_one_out_margin(d, per_judgement(resp[:, k], decided), per_judgement(h, w), per_judgement(h, l))
    return out


def combine(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """1 - P(label right | consensus q, reliability r), two independent pieces of evidence:
    P(right) = r q / (r q + (1 - r)(1 - q)); a missing piece (NaN) counts as none (1/2).
    E.g. q = 0.8, r = 0.5: 0.2; q = r = 0.8: 1 - 0.64 / 0.68 = 0.0588."""
    q = np.clip(np.nan_to_num(q, nan=0.5), 1e-6, 1 - 1e-6)
    r = np.clip(np.nan_to_num(r, nan=0.5), 1e-6, 1 - 1e-6)
    return 1.0 - r * q / (r * q + (1 - r) * (1 - q))


def judgement_evidence(model: CrowdModel, cols: dict[str, np.ndarray], resp: np.ndarray, raw: np.ndarray,
                       reliability: np.ndarray | None = None, at: tuple | None = None,
                       group_at: tuple | None = None, entropy: bool = True) -> dict[str, np.ndarray]:
    """Every per-judgement quantity the consensus table holds, from the model and the judgement's facts.

    ``resp`` (judgements x K+1) are the authors' memberships, ``raw`` the (scorers x judgements)
    scorer margins for the labelled winner. ``minority`` is the taste model's posterior; without a
    taste model, the consensus combined with the author's ``reliability`` (NaN: no track record),
    and NaN with neither (no evidence: no score). Ties never get one. ``at`` (``winner_loser``) and
    ``group_at`` (``signals.positions`` of the judgements' vote groups) spare the key searches
    where the caller has them; ``margins`` in the result are every component's (K x judgements);
    ``entropy`` False: the votes without their entropy (the annotators stage needs only the scales).
    """
    usable = cols["sign"] != 0
    votes = sig.other_votes(cols, model.groups, group_at, entropy)
    scorer_mean = mean_scorer_margin(raw, model.scorer_rms)
    prior = scorer_prior(raw, model.scorer_rms, model.scorer_slope)
    margins = taste_margins(model, cols, resp, at, prior)
    bt = margins[model.majority] if len(margins) else np.full(len(usable), np.nan)
    people = bt if prior is None or not len(margins) else bt - prior  # the people's part of bt: the scorers are signals of their own
    has_bt = usable & ~np.isnan(bt)
    has_votes = usable & ~has_bt & (votes["total"] > 0)
    has_scores = usable & ~np.isnan(scorer_mean) & (model.scorer_slope > 0)
    logit = np.where(has_bt, np.nan_to_num(bt), 0.0)
    logit[has_votes] += np.log((votes["agree"][has_votes] + 1) / (votes["total"] - votes["agree"] + 1)[has_votes])
    added = has_scores & ~has_bt  # with a taste model the scorers are already inside bt (its prior margin)
    logit[added] += model.scorer_slope * scorer_mean[added]
    code = has_votes * 1 + has_scores * 2 + has_bt * 4
    agreement = np.where(code > 0, 1.0 / (1.0 + np.exp(-logit)), np.nan)
    minority = np.full(len(usable), np.nan)
    if len(margins):
        others = [k for k in range(len(margins)) if k != model.majority]
        other = sum((resp[:, k] / (1.0 + np.exp(-margins[k])) for k in others), 0.5 * resp[:, -1])
        minority = np.where(has_bt, minority_posterior(agreement, resp[:, model.majority], model.alpha, other), np.nan)
    elif reliability is not None:
        minority = np.where(usable & ((code > 0) | ~np.isnan(reliability)), combine(agreement, reliability), np.nan)
    return {"votes": votes, "scorer_mean": scorer_mean, "bt": bt, "bt_people": people, "code": code, "agreement": agreement,
            "minority": minority, "vote_margin": sig.vote_margin(votes), "margins": margins}


def source_names() -> list[str]:
    """The evidence behind each source code (bit 0 votes, 1 scorers, 2 Bradley-Terry), '+'-joined."""
    return ["+".join(name for bit, name in enumerate(SOURCES) if code >> bit & 1) or "none" for code in range(8)]


def signal_rows(model: CrowdModel, raw: np.ndarray, evidence: dict) -> np.ndarray:
    """(signals x judgements) margins of ``model.signals``, each divided by its RMS over the whole dataset.

    The Bradley-Terry signal is the people's part of the majority's margin (``bt_people``: without
    the scorers' prior), so that the metric's annotators are independent: the scorers count once."""
    scorer_rows, named = iter(raw), {"bradley_terry": evidence["bt_people"], "votes": evidence["vote_margin"]}
    picked = [next(scorer_rows) if name.startswith("scorer:") else named[name] for name in model.signals]
    return np.array(picked) / model.signal_rms[:, None] if picked else np.zeros((0, len(evidence["bt"])))
