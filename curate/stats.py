"""Annotator and pair statistics: shrunk reliability, position bias, vote share and entropy, and
Krippendorff's alpha. Vectorised over annotators or pairs; numpy/scipy only, no I/O.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats
from scipy.special import entr


class BetaPrior(NamedTuple):
    """Beta(alpha, beta) prior on an annotator's agreement rate; ``fitted`` is False for the fallback."""

    alpha: float
    beta: float
    fitted: bool


class Reliability(NamedTuple):
    """Posterior mean and central credible interval of each annotator's agreement rate."""

    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    prior: BetaPrior


UNIFORM_PRIOR = BetaPrior(1.0, 1.0, False)


def _counts(k, n) -> tuple[np.ndarray, np.ndarray]:
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if k.shape != n.shape:
        raise ValueError(f"agreements k and judgements n must have one shape; got {k.shape} and {n.shape}")
    bad = (k < 0) | (k > n)
    if bad.any():
        i = int(np.flatnonzero(bad.ravel())[0])
        raise ValueError(f"need 0 <= k <= n for every annotator; annotator {i} has k={k.flat[i]}, n={n.flat[i]}")
    return k, n


def fit_beta_prior(k, n, max_strength: float = 100.0) -> BetaPrior:
    """Empirical-Bayes Beta prior of agreement rates, by the method of moments over annotators.

    With p_i = k_i / n_i, mu = sum k / sum n and the between-annotator variance tau^2 of the true
    rates, E[var(p_i)] = tau^2 (1 - mean(1/n)) + mu (1 - mu) mean(1/n); solving for tau^2 gives
    alpha + beta = mu (1 - mu) / tau^2 - 1. That strength is capped at ``max_strength`` pseudo-
    judgements (also when tau^2 <= 0, i.e. no spread beyond binomial noise), so a prolific
    annotator's own record always dominates, and floored at 1. Fallback to the uniform Beta(1, 1), ``fitted=False``:
    fewer than 2 annotators with judgements, every annotator with a single judgement (tau^2 is not
    identifiable), or mu at 0 or 1.
    """
    k, n = _counts(k, n)
    seen = n > 0
    if seen.sum() < 2:
        return UNIFORM_PRIOR
    k, n = k[seen], n[seen]
    mu = k.sum() / n.sum()
    mean_inv_n = np.mean(1.0 / n)
    if not 0.0 < mu < 1.0 or mean_inv_n >= 1.0:
        return UNIFORM_PRIOR
    binomial = mu * (1.0 - mu)
    tau2 = (np.var(k / n, ddof=1) - binomial * mean_inv_n) / (1.0 - mean_inv_n)
    strength = max_strength if tau2 <= 0 else min(binomial / tau2 - 1.0, max_strength)
    # Sampling noise can push tau^2 to mu (1 - mu) or past it (strength <= 0: no Beta has that
    # variance); the most dispersed prior kept is worth one pseudo-judgement.
    strength = max(strength, 1.0)
    return BetaPrior(mu * strength, (1.0 - mu) * strength, True)


def shrunk_reliability(k, n, prior: BetaPrior | None = None, level: float = 0.95) -> Reliability:
    """Posterior Beta(alpha + k, beta + n - k) of each annotator's agreement rate.

    ``k[i]`` of ``n[i]`` judgements of annotator i agree with the consensus. ``prior`` defaults to
    :func:`fit_beta_prior` over these annotators. The interval is central at ``level``; an
    annotator with few judgements is pulled towards the population mean and their interval keeps
    covering it, so :func:`reliability_verdict` leaves them undecided.
    """
    k, n = _counts(k, n)
    if not 0.0 < level < 1.0:
        raise ValueError(f"credible level must be in (0, 1); got {level}")
    prior = fit_beta_prior(k, n) if prior is None else prior
    a, b = prior.alpha + k, prior.beta + n - k
    tail = (1.0 - level) / 2.0
    return Reliability(a / (a + b), stats.beta.ppf(tail, a, b), stats.beta.ppf(1.0 - tail, a, b), prior)


def reliability_verdict(reliability: Reliability, reference: float | None = None) -> np.ndarray:
    """+1 reliable (interval above ``reference``), -1 unreliable (below it), 0 undecided; int8.

    ``reference`` defaults to the prior mean, the typical annotator: "unreliable" then means
    "agrees with the consensus less than the population does", which a handful of judgements can
    never show. Pass 0.5 to ask "better or worse than a coin" instead.
    """
    prior = reliability.prior
    ref = prior.alpha / (prior.alpha + prior.beta) if reference is None else reference
    return (reliability.lower > ref).astype(np.int8) - (reliability.upper < ref).astype(np.int8)


def position_bias_pvalue(first_chosen, n) -> np.ndarray:
    """Two-sided exact binomial p-value of "chose the first-shown image" against chance (0.5).

    Vectorised equivalent of ``scipy.stats.binomtest(k, n, 0.5).pvalue``: the null is symmetric, so
    the outcomes at most as likely as k are the two tails beyond min(k, n - k) and the p-value is
    min(1, 2 * P(X <= min(k, n - k))). Ties must be removed from both counts first; n = 0 gives 1.
    """
    k, n = _counts(first_chosen, n)
    if np.any(k != np.round(k)) or np.any(n != np.round(n)):
        raise ValueError("position_bias_pvalue needs whole counts of choices and judgements")
    return np.minimum(1.0, 2.0 * stats.binom.cdf(np.minimum(k, n - k), n, 0.5))


def vote_share(votes) -> np.ndarray:
    """Each pair's share of votes per option, from a (pairs x options) count matrix.

    A pair with no votes has no share: its row is NaN, for the caller to count and report.
    """
    votes = np.asarray(votes, dtype=np.float64)
    total = votes.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return votes / total


def vote_entropy_bits(votes) -> np.ndarray:
    """Entropy in bits of each pair's vote shares: 0 when unanimous, 1 for an even 2-way split."""
    return entr(vote_share(votes)).sum(axis=-1) / np.log(2.0)


def krippendorff_alpha_nominal(counts) -> float:
    """Krippendorff's alpha for nominal data from a (units x categories) matrix of value counts.

    ``counts[u, c]`` is how many coders put unit u in category c (missing judgements simply are
    not counted). Coincidences o_ck = sum_u (n_uc n_uk - [c = k] n_uc) / (m_u - 1) over units with
    m_u >= 2 values (others are unpairable and dropped); with n_c = sum_k o_ck and n = sum_c n_c,

        alpha = 1 - (n - 1) * (n - sum_c o_cc) / (n^2 - sum_c n_c^2)

    Returns NaN when alpha is undefined: fewer than 2 pairable values, or every value in one
    category (no variation to agree on).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts must be (units x categories); got shape {counts.shape}")
    m = counts.sum(axis=1)
    pairable = counts[m >= 2]
    m = m[m >= 2]
    observed_same = (pairable * (pairable - 1.0)).sum(axis=1) / (m - 1.0)
    n_c = pairable.sum(axis=0)
    n = n_c.sum()
    expected_diff = n * n - np.square(n_c).sum()
    if n < 2 or expected_diff == 0:
        return float("nan")
    return float(1.0 - (n - 1.0) * (n - observed_same.sum()) / expected_diff)


SKETCH_BINS = 1 << 16


def unit_sketch(values, bins: int = SKETCH_BINS) -> tuple[np.ndarray, np.ndarray]:
    """A mergeable sketch of values in [0, 1]: (bin, count) of the non-empty bins of a fixed grid.

    Bin b holds [b, b + 1) / bins, the last one includes 1; NaN is left out. Sketches of shards
    merge by adding counts per bin, exactly.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if np.any((values < 0) | (values > 1)):
        raise ValueError(f"unit_sketch takes values in [0, 1]; got a range of [{values.min()}, {values.max()}]")
    counts = np.bincount(np.minimum((values * bins).astype(np.int64), bins - 1), minlength=bins)
    filled = np.flatnonzero(counts)
    return filled.astype(np.int32), counts[filled].astype(np.int64)


def top_share_threshold(bin_index, counts, share: float, bins: int = SKETCH_BINS) -> float:
    """The lower edge of the highest bins holding at least ``share`` of the sketched values.

    Flagging values >= that edge flags the top ``share``, overshooting by at most one bin's count.
    E.g. bins 0..3 (bins=4) with counts [5, 3, 1, 1] and share 0.2: the top two bins hold 2 of 10,
    so the threshold is 2/4 = 0.5. No values: +inf (nothing is flagged).
    """
    bin_index, counts = np.asarray(bin_index), np.asarray(counts, dtype=np.float64)
    if not 0 < share < 1:
        raise ValueError(f"share {share}: expected a share in (0, 1), e.g. 0.2 for the top 20%")
    if counts.sum() == 0:
        return float("inf")
    order = np.argsort(bin_index)[::-1]
    reached = np.flatnonzero(np.cumsum(counts[order]) >= share * counts.sum())[0]
    return float(bin_index[order][reached] / bins)
