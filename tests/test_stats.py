"""Annotator statistics against hand-worked values and scipy's per-call reference."""
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from curate.stats import (
    BetaPrior,
    fit_beta_prior,
    krippendorff_alpha_nominal,
    position_bias_pvalue,
    reliability_verdict,
    shrunk_reliability,
    vote_entropy_bits,
    vote_share,
)


def test_method_of_moments_prior_by_hand():
    # p = (0.8, 0.2, 0.5, 0.5), mu = 20/40 = 0.5, var(p, ddof=1) = (0.09 + 0.09) / 3 = 0.06,
    # mean(1/n) = 0.1, binomial part mu(1-mu) * 0.1 = 0.025 -> tau^2 = (0.06 - 0.025) / 0.9 = 0.0388889
    # strength = 0.25 / 0.0388889 - 1 = 5.428571 -> alpha = beta = 2.714286
    prior = fit_beta_prior([8, 2, 5, 5], [10, 10, 10, 10])
    assert prior.fitted
    assert prior.alpha == pytest.approx(2.714286, abs=1e-6) and prior.beta == pytest.approx(2.714286, abs=1e-6)


def test_prior_recovers_a_simulated_population():
    rng = np.random.default_rng(0)
    n = rng.integers(20, 200, size=3000)
    k = rng.binomial(n, rng.beta(14.0, 6.0, size=n.size))  # mean 0.7, strength 20
    prior = fit_beta_prior(k, n)
    assert prior.alpha / (prior.alpha + prior.beta) == pytest.approx(0.7, abs=0.01)
    assert prior.alpha + prior.beta == pytest.approx(20.0, rel=0.2)


def test_prior_fallbacks():
    assert fit_beta_prior([3], [4]) == BetaPrior(1.0, 1.0, False)  # one annotator
    assert fit_beta_prior([1, 0, 1], [1, 1, 1]) == BetaPrior(1.0, 1.0, False)  # tau^2 not identifiable
    assert fit_beta_prior([4, 9], [4, 9]) == BetaPrior(1.0, 1.0, False)  # mu = 1
    # No spread beyond binomial noise: tau^2 = (0 - 0.025) / 0.9 < 0 -> strength capped at 100.
    assert fit_beta_prior([5, 5, 5, 5], [10] * 4, max_strength=100.0) == BetaPrior(50.0, 50.0, True)


def test_posterior_interval_by_hand():
    # Uniform prior, 1 agreement in 1 judgement -> Beta(2, 1), cdf x^2: quantiles sqrt(0.025), sqrt(0.975).
    r = shrunk_reliability([1], [1], prior=BetaPrior(1.0, 1.0, False))
    assert r.mean[0] == pytest.approx(2 / 3)
    assert r.lower[0] == pytest.approx(math.sqrt(0.025)) and r.upper[0] == pytest.approx(math.sqrt(0.975))


def test_three_judgements_are_neither_reliable_nor_unreliable():
    rng = np.random.default_rng(1)
    n = rng.integers(20, 200, size=500)
    k = rng.binomial(n, rng.beta(14.0, 6.0, size=n.size))
    k = np.concatenate([k, [3, 0, 180, 40]])
    n = np.concatenate([n, [3, 3, 200, 200]])
    r = shrunk_reliability(k, n)
    # Judged against the typical annotator (prior mean ~0.7): 3/3 and 0/3 stay undecided.
    np.testing.assert_array_equal(reliability_verdict(r)[-4:], [0, 0, 1, -1])
    assert r.lower[-4] < 0.7 < r.upper[-3]
    assert np.all(r.lower <= r.mean) and np.all(r.mean <= r.upper)


def test_bad_counts_are_named():
    with pytest.raises(ValueError, match="annotator 1 has k=5.0, n=4.0"):
        shrunk_reliability([1, 5], [2, 4])


def test_position_bias_matches_scipy_binomtest():
    ks, ns = [], []
    for n in list(range(1, 41)) + [999, 1000]:
        for k in sorted({0, 1, n // 3, n // 2, (n + 1) // 2, n - 1, n}):
            ks.append(k)
            ns.append(n)
    got = position_bias_pvalue(ks, ns)
    want = [binomtest(k, n, 0.5).pvalue for k, n in zip(ks, ns)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    assert position_bias_pvalue([0], [0])[0] == 1.0


def test_vote_share_and_entropy_by_hand():
    votes = [[3, 1], [2, 2], [4, 0], [0, 0]]
    share = vote_share(votes)
    np.testing.assert_allclose(share[:3], [[0.75, 0.25], [0.5, 0.5], [1.0, 0.0]])
    assert np.isnan(share[3]).all()
    # -(0.75 log2 0.75 + 0.25 log2 0.25) = 0.75 * 0.415037 + 0.25 * 2 = 0.811278
    h = vote_entropy_bits(votes)
    np.testing.assert_allclose(h[:3], [0.811278, 1.0, 0.0], atol=1e-6)
    assert np.isnan(h[3])
    assert vote_entropy_bits([[1, 1, 1, 1]])[0] == pytest.approx(2.0)


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: 4 coders x 12
# units, values 1..5, '.' missing.
#   A: 1 2 3 3 2 1 4 1 2 . . .
#   B: 1 2 3 3 2 2 4 1 2 5 . 3
#   C: . 3 3 3 2 3 4 2 2 5 1 .
#   D: 1 2 3 3 2 4 4 1 2 5 1 .
KRIPPENDORFF_COUNTS = [
    # categories 1  2  3  4  5
    [3, 0, 0, 0, 0],
    [0, 3, 1, 0, 0],
    [0, 0, 4, 0, 0],
    [0, 0, 4, 0, 0],
    [0, 4, 0, 0, 0],
    [1, 1, 1, 1, 0],
    [0, 0, 0, 4, 0],
    [3, 1, 0, 0, 0],
    [0, 4, 0, 0, 0],
    [0, 0, 0, 0, 3],
    [2, 0, 0, 0, 0],
    [0, 0, 1, 0, 0],  # one value: unpairable, dropped
]


def test_krippendorff_classic_example_by_hand():
    # Pairable values n = 40; n_c = (9, 13, 10, 5, 3), sum n_c^2 = 81 + 169 + 100 + 25 + 9 = 384.
    # Diagonal coincidences sum_u sum_c n_uc (n_uc - 1) / (m_u - 1), unit by unit:
    #   3 + 2 + 4 + 4 + 4 + 0 + 4 + 2 + 4 + 3 + 2 = 32, so the off-diagonal mass is 40 - 32 = 8.
    # alpha = 1 - 39 * 8 / (1600 - 384) = 1 - 312 / 1216 = 0.743421 (the paper's 0.743)
    assert krippendorff_alpha_nominal(KRIPPENDORFF_COUNTS) == pytest.approx(0.743421, abs=1e-6)


def test_krippendorff_edge_cases():
    # Two coders, units (a, a), (a, b), (b, b): diagonal 2 + 0 + 2 = 4 of n = 6, n_c = (3, 3):
    # alpha = 1 - 5 * (6 - 4) / (36 - 18) = 1 - 10/18 = 0.444444
    assert krippendorff_alpha_nominal([[2, 0], [1, 1], [0, 2]]) == pytest.approx(0.444444, abs=1e-6)
    assert krippendorff_alpha_nominal([[3, 0], [0, 2], [0, 5]]) == 1.0  # perfect agreement
    assert math.isnan(krippendorff_alpha_nominal([[3, 0], [2, 0]]))  # one category: undefined
    assert math.isnan(krippendorff_alpha_nominal([[1, 0], [0, 1]]))  # nothing pairable
