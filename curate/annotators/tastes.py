"""Taste groups: a mixture of Bradley-Terry preference components over people, fitted by EM.

Every person belongs to one of K taste components or to a "random" component, with posterior
memberships ``resp[person, k]``. Component k has its own image log-strengths theta_k; a member of
k labels the pair (w, l) w with probability sigmoid(theta_k[w] - theta_k[l]); a random clicker
with probability 1/2. EM alternates
- E-step: resp[p, k] proportional to share[k] * prod over p's judgements of P(label | k), where each
  judgement's own pull on theta_k is removed to first order (so nobody is explained by a fit of
  their own clicks), and share[k] is the mean membership over PEOPLE;
- M-step: theta_k from a Bradley-Terry fit of every judgement weighted by its author's resp[., k].
The majority component is the one with the most people (sum of memberships), never the most clicks,
so one person's thousands of judgements cannot become the consensus. Components start from a fit
in which each person's votes count at most as much as a typical person's (``person_weights``),
then grow by splitting off the people the current components explain worst.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from curate.bradley_terry import BTResult, Comparisons, fit_comparisons

LOG_HALF = float(np.log(0.5))
EM_TOL = 0.01  # EM stops once fewer than EM_UNSETTLED of the people move by more than this
EM_UNSETTLED = 0.005
M_STEP_NEWTON = 3  # Newton steps per M-step, warm-started


class Judgements(NamedTuple):
    """Non-tie judgements: ``winner`` beat ``loser`` (item indices), by ``person`` (person indices);
    ``trust`` (per person, in [0, 1], NaN unknown) is a voter trust score the dataset carries, if any;
    ``prior`` (per judgement, or None) is the majority taste's prior margin for the winner: the
    calibrated scorers' log-odds (``crowd.scorer_prior``), which the majority's strengths correct."""

    winner: np.ndarray
    loser: np.ndarray
    person: np.ndarray
    n_items: int
    n_people: int
    trust: np.ndarray | None = None
    prior: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> "Judgements":
        """These judgements only (people and items keep their indices)."""
        return self._replace(winner=self.winner[rows], loser=self.loser[rows], person=self.person[rows],
                             prior=None if self.prior is None else self.prior[rows])


def prior_of(data: Judgements, component: int, majority: int) -> np.ndarray | None:
    """The prior margins a component's fit starts from: the scorers' for the majority, none for the rest."""
    return data.prior if component == majority else None


class TasteModel(NamedTuple):
    """``theta`` (K x items) per taste component, ``resp`` (people x K+1, last column = random),
    ``share`` (K+1,) mean membership over people, ``majority`` index of the majority component."""

    theta: np.ndarray
    resp: np.ndarray
    share: np.ndarray
    majority: int
    log_likelihood: float
    iterations: int


def person_weights(person: np.ndarray, n_people: int) -> np.ndarray:
    """Per-judgement weight min(1, m / n_p), m the median judgements per person: one person, one say."""
    counts = np.bincount(person, minlength=n_people).astype(float)
    typical = float(np.median(counts[counts > 0])) if (counts > 0).any() else 1.0
    return np.minimum(1.0, typical / np.maximum(counts[person], 1.0))


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """log(1 / (1 + e^-x)) without overflow: min(x, 0) - log(1 + e^-|x|), in half the time of
    -logaddexp(0, -x). E.g. x = 0: -log 2."""
    return np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))


def per_judgement(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` for a 1-D array and millions of indices, by ``np.take`` (half the time of
    fancy indexing); a column of a 2-D array should be taken as ``values[:, k]``: ``resp[index, k]``
    costs ten times as much at 10M judgements (measured, one core)."""
    return np.take(values, index)


def weights_of(resp: np.ndarray, data: "Judgements", k: int) -> np.ndarray:
    """Each judgement's weight in component k: its author's membership resp[person, k]."""
    return per_judgement(resp[:, k], data.person)


def fit_component(data: Judgements, weight: np.ndarray, ridge: float, init: np.ndarray | None = None,
                  newton_steps: int = 200, prior: np.ndarray | None = None) -> np.ndarray:
    """Bradley-Terry log-strengths of one component from weighted judgements (weights may be 0),
    each judgement's margin being ``prior`` (if any) + theta[winner] - theta[loser].

    Inside EM a few warm-started Newton steps suffice (``newton_steps``): each M-step only has to
    improve the fit, and the next E-step moves the weights anyway (generalised EM).
    """
    keep = weight > 1e-9
    if keep.all():  # the majority on all judgements: no copies of every row
        rows = Comparisons(data.winner, data.loser, np.zeros(len(weight), bool), weight, prior)
    else:
        rows = Comparisons(data.winner[keep], data.loser[keep], np.zeros(int(keep.sum()), bool), weight[keep],
                           None if prior is None else prior[keep])
    start = None if init is None else BTResult(init, 0.0, 0, True)
    return fit_comparisons(rows, data.n_items, ridge=ridge, tol=1e-4, max_iter=newton_steps, init=start).scores


def margins_of(theta: np.ndarray, data: Judgements, prior: np.ndarray | None = None) -> np.ndarray:
    """Each judgement's margin for its winner under a component: prior + theta[winner] - theta[loser]."""
    d = per_judgement(theta, data.winner) - per_judgement(theta, data.loser)
    return d if prior is None else d + prior


def curvature(theta: np.ndarray, data: Judgements, weight: np.ndarray, ridge: float,
              prior: np.ndarray | None = None) -> np.ndarray:
    """Each item's curvature: ridge + sum of weight p (1 - p) over its comparisons (p = P(winner wins))."""
    return curvature_at(margins_of(theta, data, prior), data, weight, ridge)


def curvature_at(d: np.ndarray, data: Judgements, weight: np.ndarray, ridge: float,
                 p: np.ndarray | None = None) -> np.ndarray:
    """``curvature`` from the judgements' margins d = theta[winner] - theta[loser], already gathered
    (and p = sigmoid(d), where the caller has it)."""
    p = 1.0 / (1.0 + np.exp(-d)) if p is None else p
    spread = weight * p * (1 - p)
    return ridge + np.bincount(data.winner, spread, data.n_items) + np.bincount(data.loser, spread, data.n_items)


def leave_one_out_margin(d: np.ndarray, weight: np.ndarray, h_winner: np.ndarray, h_loser: np.ndarray,
                         p: np.ndarray | None = None) -> np.ndarray:
    """The margin d = theta[w] - theta[l] with the judgement's own pull removed (one Newton step).

    A judgement of weight r pulls d up by about r (1 - sigmoid(d)) (1/h_w + 1/h_l), h the items'
    curvatures: e.g. d = 0, r = 1, h_w = h_l = 2 gives 0 - 0.5 * 1 = -0.5. ``p``: sigmoid(d), where
    the caller has it.
    """
    p = 1.0 / (1.0 + np.exp(-d)) if p is None else p
    return d - weight * (1.0 - p) * (1.0 / h_winner + 1.0 / h_loser)


def component_margins(theta: np.ndarray, data: Judgements, weight: np.ndarray, ridge: float,
                      prior: np.ndarray | None = None) -> np.ndarray:
    """Leave-one-out margins of every judgement under one component."""
    d = margins_of(theta, data, prior)  # gathered once: the curvature and the margin both start from it
    p = 1.0 / (1.0 + np.exp(-d))
    h = curvature_at(d, data, weight, ridge, p)
    return leave_one_out_margin(d, weight, per_judgement(h, data.winner), per_judgement(h, data.loser), p)


def judgement_log_likelihoods(theta: np.ndarray, resp: np.ndarray, data: Judgements, ridge: float,
                              majority: int = 0) -> np.ndarray:
    """(judgements x K+1) log P(label | component), leave-one-out for the taste components (the
    ``majority`` one from the prior margins, where there are any)."""
    out = np.full((len(theta) + 1, len(data.winner)), LOG_HALF)  # one row per component: contiguous for the E-step's sums
    for k, strengths in enumerate(theta):
        out[k] = log_sigmoid(component_margins(strengths, data, weights_of(resp, data, k), ridge, prior_of(data, k, majority)))
    return out.T


def m_step(data: Judgements, theta: np.ndarray, resp: np.ndarray, ridge: float, majority: int,
           newton_steps: int = M_STEP_NEWTON) -> np.ndarray:
    """Every component refitted on the judgements weighted by its memberships, warm-started; the
    majority's from the prior margins."""
    return np.stack([fit_component(data, weights_of(resp, data, k), ridge, theta[k], newton_steps, prior_of(data, k, majority))
                     for k in range(len(theta))])


def majority_of(share: np.ndarray) -> int:
    """The majority component: the taste with the most people (never the most clicks)."""
    return int(np.argmax(share[:-1]))


def membership_prior(share: np.ndarray, trust: np.ndarray | None) -> np.ndarray:
    """Each person's prior over the components (people x K+1; (K+1,) without trust scores).

    A trust score t in [0, 1] is read as the prior probability that the person judges by a taste
    at all: random gets 1 - t, the tastes share t in the people's proportions; a person without
    one (NaN) gets the people share. E.g. share (0.6, 0.2, 0.2), t = 0.9: (0.675, 0.225, 0.1).
    """
    if trust is None:
        return share
    tastes = share[:-1] / max(float(share[:-1].sum()), 1e-12)
    trusted = np.concatenate([trust[:, None] * tastes[None, :], 1.0 - trust[:, None]], axis=1)
    return np.where(np.isnan(trust)[:, None], share[None, :], trusted)


def memberships(log_lik: np.ndarray, data: Judgements, share: np.ndarray) -> tuple[np.ndarray, float]:
    """E-step: each person's posterior over components (prior: ``membership_prior``), and the
    total log-likelihood."""
    per_person = np.stack([np.bincount(data.person, log_lik[:, k], data.n_people) for k in range(log_lik.shape[1])], axis=1)
    log_post = per_person + np.log(np.maximum(membership_prior(share, data.trust), 1e-12))
    top = log_post.max(axis=1, keepdims=True)
    norm = top[:, 0] + np.log(np.exp(log_post - top).sum(axis=1))
    return np.exp(log_post - norm[:, None]), float(norm.sum())


def people_share(resp: np.ndarray, data: Judgements) -> np.ndarray:
    """Mean membership over the people who made at least one judgement: people, not clicks."""
    seen = np.bincount(data.person, minlength=data.n_people) > 0
    share = resp[seen].mean(axis=0) if seen.any() else np.full(resp.shape[1], 1.0 / resp.shape[1])
    return np.maximum(share, 1e-6) / np.maximum(share, 1e-6).sum()


def run_em(data: Judgements, theta: np.ndarray, resp: np.ndarray, ridge: float, iterations: int,
           tol: float = EM_TOL) -> TasteModel:
    """EM from a starting point until the memberships settle: fewer than EM_UNSETTLED of the people
    move by more than ``tol`` (a few near-even people may swing for ever)."""
    share, log_lik, done = people_share(resp, data), -np.inf, 0
    for done in range(1, iterations + 1):
        previous = resp
        resp, log_lik = memberships(judgement_log_likelihoods(theta, resp, data, ridge, majority_of(share)), data, share)
        share = people_share(resp, data)
        theta = m_step(data, theta, resp, ridge, majority_of(share))
        # The leave-one-out likelihood is not EM's bound, so stop on settled memberships, not on its gain.
        if (np.abs(resp - previous).max(axis=1) > tol).mean() < EM_UNSETTLED:
            break
    return TasteModel(theta, resp, share, majority_of(share), log_lik, done)


def worst_explained(model: TasteModel, data: Judgements, ridge: float, min_judgements: int) -> np.ndarray:
    """People (with enough judgements) whose labels no current taste predicts better than a coin."""
    log_lik = judgement_log_likelihoods(model.theta, model.resp, data, ridge, model.majority)[:, :-1]
    counts = np.bincount(data.person, minlength=data.n_people)
    per_taste = np.stack([np.bincount(data.person, ll, data.n_people) for ll in log_lik.T], axis=1)
    best = per_taste.max(axis=1) / np.maximum(counts, 1)
    return (best < LOG_HALF) & (counts >= min_judgements)


def fit_tastes(data: Judgements, max_tastes: int = 3, ridge: float = 1.0, iterations: int = 30,
               min_people: int = 3, min_judgements: int = 50) -> TasteModel:
    """Grow taste components one at a time while a split keeps at least ``min_people`` members or
    ``min_judgements`` of their judgements (one heavy user's coherent taste is a group too).

    The first component starts from a fit where each person counts at most as a typical person
    (``person_weights``); each split seeds a new component with the people the current ones
    explain worse than a coin, and EM then settles everyone's memberships.
    """
    start = fit_component(data, person_weights(data.person, data.n_people), ridge, prior=data.prior)
    model = run_em(data, start[None], np.tile([0.9, 0.1], (data.n_people, 1)), ridge, iterations)
    counts = np.bincount(data.person, minlength=data.n_people)
    big_enough = lambda members: members.sum() >= min_people or (members * counts).sum() >= min_judgements  # noqa: E731
    while len(model.theta) < max_tastes:
        seeds = worst_explained(model, data, ridge, min_judgements=3)
        if not big_enough(seeds):
            break
        new = fit_component(data, seeds[data.person].astype(float), ridge)
        keep = (~seeds)[:, None]
        resp = np.concatenate([model.resp[:, :-1] * keep, 0.9 * seeds[:, None], model.resp[:, -1:] * keep + 0.1 * seeds[:, None]], axis=1)
        grown = run_em(data, np.concatenate([model.theta, new[None]]), resp / resp.sum(axis=1, keepdims=True), ridge, iterations)
        if not big_enough(grown.resp[:, -2]):
            break
        model = grown
    return model


def sample_people(data: Judgements, cap: int, seed: int = 0) -> np.ndarray:
    """Judgements of whole people, drawn in a seeded random order until they reach ``cap``."""
    counts = np.bincount(data.person, minlength=data.n_people)
    order = np.random.default_rng(seed).permutation(data.n_people)
    taken = order[: int(np.searchsorted(np.cumsum(counts[order]), cap)) + 1]
    chosen = np.zeros(data.n_people, bool)
    chosen[taken] = True
    return chosen[data.person]


def fit_tastes_sampled(data: Judgements, sample: int, ridge: float = 1.0, newton_steps: int = 3, **options) -> TasteModel:
    """``fit_tastes`` on the judgements of a random sample of whole people (about ``sample`` of
    them), then one pass over everything: memberships for every person, each component refitted on
    all judgements (warm-started), and the memberships again. At most ``sample`` judgements, it is
    ``fit_tastes`` itself."""
    if len(data.winner) <= sample:
        return fit_tastes(data, ridge=ridge, **options)
    model = fit_tastes(data.take(sample_people(data, sample)), ridge=ridge, **options)
    theta, share = model.theta, model.share
    resp, _ = memberships(judgement_log_likelihoods(theta, model.resp, data, ridge, majority_of(share)), data, share)
    share = people_share(resp, data)
    theta = m_step(data, theta, resp, ridge, majority_of(share), newton_steps)
    resp, log_lik = memberships(judgement_log_likelihoods(theta, resp, data, ridge, majority_of(share)), data, share)
    share = people_share(resp, data)
    return TasteModel(theta, resp, share, majority_of(share), log_lik, model.iterations + 1)


def majority_accuracy(margin: np.ndarray, weight: np.ndarray) -> float:
    """How often a majority member's label follows the majority fit: weighted share of margins > 0
    (a margin of exactly 0 counts half), kept within [0.5, 0.99]."""
    total = weight.sum()
    hits = (weight * ((margin > 0) + 0.5 * (margin == 0))).sum()
    return float(np.clip(hits / total, 0.5, 0.99)) if total > 0 else 0.5


def minority_posterior(p_majority: np.ndarray, r_majority: np.ndarray, alpha: float, other_label_prob: np.ndarray) -> np.ndarray:
    """P(the majority taste prefers the other image | this label, who gave it).

    ``p_majority``: P(majority taste prefers the labelled winner) from everything else;
    ``r_majority``: the author's membership of the majority; a member follows the majority's
    preference with probability ``alpha``; ``other_label_prob``: sum over the author's other
    components (tastes, random) of membership x P(that component labels this winner), which does
    not depend on the majority's preference. Bayes over the majority's preference y:

        L(y = winner) = r alpha + o,  L(y = other) = r (1 - alpha) + o
        posterior = (1 - p) L(other) / ((1 - p) L(other) + p L(winner))

    E.g. p = 0.5, r = 1, alpha = 0.8, o = 0: 0.2; a non-member (r = 0, o = 0.5): 1 - p = 0.5.
    """
    like_winner = r_majority * alpha + other_label_prob
    like_other = r_majority * (1.0 - alpha) + other_label_prob
    against = (1.0 - p_majority) * like_other
    return against / np.maximum(against + p_majority * like_winner, 1e-300)
