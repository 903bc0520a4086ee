"""The taste model's math against hand-worked values, and the worlds it must get right."""
from __future__ import annotations

import math

import numpy as np
import pytest

from curate.annotators import tastes as tm
from curate.annotators.crowd import combine
from curate.stats import top_share_threshold, unit_sketch


def test_leave_one_out_margin_by_hand():
    # d = 0, weight 1, curvatures 2 and 2: the pull is (1 - 1/2) (1/2 + 1/2) = 1/2
    assert tm.leave_one_out_margin(np.array([0.0]), np.array([1.0]), np.array([2.0]), np.array([2.0]))[0] == pytest.approx(-0.5)
    # d = ln 3 (sigmoid 3/4), weight 1/2, curvatures 1 and 4: ln 3 - 0.5 * 0.25 * 1.25
    got = tm.leave_one_out_margin(np.array([math.log(3)]), np.array([0.5]), np.array([1.0]), np.array([4.0]))[0]
    assert got == pytest.approx(math.log(3) - 0.15625)


def test_minority_posterior_by_hand():
    post = lambda p, r, alpha, o: float(tm.minority_posterior(np.array([p]), np.array([r]), alpha, np.array([o]))[0])  # noqa: E731
    assert post(0.5, 1.0, 0.8, 0.0) == pytest.approx(0.2)  # a majority member's label on an open question
    assert post(0.5, 0.0, 0.8, 0.5) == pytest.approx(0.5)  # a non-member's label says nothing about the majority
    # p = 0.9, r = 1/2, alpha = 0.8, o = 0.25: L(winner) = 0.65, L(other) = 0.35 -> 0.035 / (0.035 + 0.585)
    assert post(0.9, 0.5, 0.8, 0.25) == pytest.approx(0.035 / 0.62)


def test_memberships_by_hand():
    # person 0: two judgements at log-likelihoods (log 0.8, log 0.5) under (taste, random); equal shares
    data = tm.Judgements(np.array([0, 1]), np.array([1, 0]), np.array([0, 0]), 2, 1)
    log_lik = np.log(np.array([[0.8, 0.5], [0.8, 0.5]]))
    resp, total = tm.memberships(log_lik, data, np.array([0.5, 0.5]))
    assert resp[0, 0] == pytest.approx(0.64 / 0.89)
    assert total == pytest.approx(math.log(0.5 * 0.64 + 0.5 * 0.25))


def test_people_not_clicks_by_hand():
    person = np.array([0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])  # person 2 makes 10 of 12 judgements
    np.testing.assert_allclose(tm.person_weights(person, 3), [1, 1] + [0.1] * 10)  # the median person makes 1
    data = tm.Judgements(person, person, person, 3, 3)
    resp = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(tm.people_share(resp, data), [1 / 3, 2 / 3], atol=1e-5)


def test_majority_accuracy_by_hand():
    assert tm.majority_accuracy(np.array([1.0, -1.0, 0.0, 2.0]), np.ones(4)) == pytest.approx(0.625)
    assert tm.majority_accuracy(np.array([-1.0, -1.0]), np.ones(2)) == 0.5  # never below a coin


def test_combine_by_hand():
    np.testing.assert_allclose(combine(np.array([0.8, 0.8, np.nan]), np.array([0.5, 0.8, np.nan])),
                               [0.2, 1 - 0.64 / 0.68, 0.5])


def test_sketch_threshold_by_hand_and_merging():
    values = np.array([0.1] * 5 + [0.3] * 3 + [0.6, 0.9])  # bins of 1/4: counts 5, 3, 1, 1
    bins, counts = unit_sketch(values, bins=4)
    assert bins.tolist() == [0, 1, 2, 3] and counts.tolist() == [5, 3, 1, 1]
    assert top_share_threshold(bins, counts, 0.2, bins=4) == 0.5
    a, b = unit_sketch(values[:4]), unit_sketch(values[4:])
    merged = dict(zip(*a))
    for k, n in zip(*b):
        merged[k] = merged.get(k, 0) + n
    whole = dict(zip(*unit_sketch(values)))
    assert merged == whole
    assert top_share_threshold([], [], 0.1) == float("inf")
    with pytest.raises(ValueError, match="values in"):
        unit_sketch(np.array([1.5]))


def _world(rng, strengths, people):
    """Judgements of random item pairs: each person (taste sign, count) follows sign * strengths."""
    winners, losers, who = [], [], []
    for p, (sign, count) in enumerate(people):
        i, j = rng.integers(0, len(strengths), (2, count))
        keep = i != j
        i, j = i[keep], j[keep]
        first = rng.random(len(i)) < 1 / (1 + np.exp(-sign * (strengths[i] - strengths[j])))
        winners.append(np.where(first, i, j))
        losers.append(np.where(first, j, i))
        who.append(np.full(len(i), p))
    return tm.Judgements(np.concatenate(winners), np.concatenate(losers), np.concatenate(who), len(strengths), len(people))


def test_a_heavy_user_with_a_minority_taste_does_not_become_the_consensus():
    rng = np.random.default_rng(0)
    strengths = rng.normal(0, 2, 40)
    # 30 people share a taste (20 judgements each); one person with the opposite taste makes 1500
    data = _world(rng, strengths, [(1, 20)] * 30 + [(-1, 1500)])
    per_click = tm.fit_component(data, np.ones(len(data.winner)), ridge=1.0)
    assert np.corrcoef(per_click, strengths)[0, 1] < 0  # counted by clicks, the heavy user IS the consensus
    model = tm.fit_tastes(data, max_tastes=3)
    majority = model.theta[model.majority]
    assert np.corrcoef(majority, strengths)[0, 1] > 0.9
    assert model.resp[30, model.majority] < 0.01  # the heavy user is not in the majority
    assert (model.resp[:30, model.majority] > 0.9).all()
    heavy_group = int(np.argmax(model.resp[30]))
    assert heavy_group != model.majority and heavy_group < len(model.theta)  # a taste group of their own
    assert np.corrcoef(model.theta[heavy_group], strengths)[0, 1] < -0.9


def test_random_clickers_are_not_a_taste():
    rng = np.random.default_rng(1)
    strengths = rng.normal(0, 2, 30)
    data = _world(rng, strengths, [(1, 40)] * 20 + [(0, 40)] * 5)  # sign 0: a coin
    model = tm.fit_tastes(data, max_tastes=3)
    assert (model.resp[:20, model.majority] > 0.9).all()
    assert (model.resp[20:, model.majority] < 0.5).all()


def test_a_sampled_fit_finds_the_same_tastes():
    rng = np.random.default_rng(2)
    strengths = rng.normal(0, 2, 40)
    data = _world(rng, strengths, [(1, 30)] * 40 + [(-1, 30)] * 10)
    whole = tm.fit_tastes(data)
    sampled = tm.fit_tastes_sampled(data, sample=800)  # about half the people drive EM
    assert tm.sample_people(data, 800).sum() >= 800 > tm.sample_people(data, 800).sum() - 31
    assert np.array_equal(whole.resp.argmax(axis=1), sampled.resp.argmax(axis=1))
    assert np.corrcoef(sampled.theta[sampled.majority], strengths)[0, 1] > 0.9
    same = tm.fit_tastes_sampled(data, sample=len(data.winner))
    np.testing.assert_array_equal(same.resp, whole.resp)  # at most `sample` judgements: fit_tastes itself


def test_a_prior_margin_is_corrected_by_balanced_votes_by_hand():
    # 0 > 1 and 1 > 0 once each, weight 1, ridge 1; the prior says image 0 leads by 1 (margin +1 for
    # "0 won", -1 for "1 won"). By symmetry theta = (t, -t), d = 1 + 2t, and the optimum solves
    # 2 (sigmoid(d) - sigmoid(-d)) + 2 t = 0, i.e. tanh(d / 2) = -t: t = -0.2475, d = 0.505.
    data = tm.Judgements(np.array([0, 1]), np.array([1, 0]), np.array([0, 1]), 2, 2, prior=np.array([1.0, -1.0]))
    lo, hi = -1.0, 0.0
    for _ in range(60):  # bisection on tanh((1 + 2t) / 2) + t
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.tanh(0.5 + mid) + mid < 0 else (lo, mid)
    theta = tm.fit_component(data, np.ones(2), ridge=1.0, prior=data.prior)
    assert theta[0] == pytest.approx(lo, abs=1e-4) and theta[1] == pytest.approx(-lo, abs=1e-4)  # fit_component: tol 1e-4
    assert tm.margins_of(theta, data, data.prior)[0] == pytest.approx(1 + 2 * lo, abs=2e-4)
    # no prior: the votes balance, the strengths stay at 0
    np.testing.assert_allclose(tm.fit_component(data, np.ones(2), ridge=1.0), [0, 0], atol=1e-8)
    # only the majority component fits on top of the prior
    assert tm.prior_of(data, 1, majority=1) is data.prior and tm.prior_of(data, 0, majority=1) is None


def test_the_scorer_prior_is_the_calibrated_log_odds_by_hand():
    from curate.annotators import crowd

    raw = np.array([[0.5, np.nan, -0.25]])  # one scorer; RMS 0.5; slope 2
    np.testing.assert_allclose(crowd.scorer_prior(raw, np.array([0.5]), 2.0), [2.0, 0.0, -1.0])
    assert crowd.scorer_prior(raw, np.array([0.5]), 0.0) is None  # a scorer that does not predict people
    assert crowd.scorer_prior(np.zeros((0, 3)), np.zeros(0), 2.0) is None


def test_with_a_scorer_prior_single_judged_pairs_still_tell_people_apart():
    # Every image pair judged once (what Pick-a-Pic mostly is): the people's labels alone cannot tell a
    # majority member from a dissenter, since no pair has other votes. With the scorers' calibrated
    # log-odds as the majority's prior margin, people who keep contradicting them lose membership.
    rng = np.random.default_rng(0)
    people, per_person = 40, 12
    person = np.repeat(np.arange(people), per_person)
    n = len(person)
    dissenter = np.arange(people) >= 30  # 10 of 40 people reverse the majority's preference 70% of the time
    follows = rng.random(n) < np.where(dissenter[person], 0.3, 0.9)
    truth_first = rng.random(n) < 0.5  # which image of pair j the majority prefers
    first_won = truth_first == follows
    a, b = 2 * np.arange(n), 2 * np.arange(n) + 1
    winner, loser = np.where(first_won, a, b), np.where(first_won, b, a)
    prior = np.where(first_won == truth_first, 1.5, -1.5)  # a scorer right about the majority, log-odds 1.5
    data = tm.Judgements(winner, loser, person, 2 * n, people, prior=prior)
    model = tm.fit_tastes(data, max_tastes=2)
    majority = model.resp[:, model.majority]
    assert majority[~dissenter].mean() > 0.8 > 0.5 > majority[dissenter].mean()
    order = np.argsort(-majority)  # every majority member ranked above every dissenter but at most two
    assert dissenter[order[:30]].sum() <= 2
