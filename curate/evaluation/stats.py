"""Paired comparisons of a tuned model with its base: win rate and mean difference, with bootstrap intervals.

Image i of the tuned model and image i of the base come from the same prompt and the same seed,
so they form a pair. Pairs of one prompt are not independent (one prompt can be easy for both), so
intervals resample prompts, not pairs: a cluster bootstrap over prompts, percentile interval.
"""
from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 2000
LEVEL = 0.95


def paired_outcomes(tuned, base) -> np.ndarray:
    """1 where the tuned image scores higher, 0 where lower, 0.5 for a tie."""
    tuned, base = np.asarray(tuned, np.float64), np.asarray(base, np.float64)
    return np.where(tuned > base, 1.0, np.where(tuned < base, 0.0, 0.5))


def cluster_bootstrap_interval(values, clusters, *, samples: int = BOOTSTRAP_SAMPLES, level: float = LEVEL,
                               seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` when whole clusters (prompts) are resampled.

    Each bootstrap sample draws as many clusters as there are, with replacement, and takes the mean
    over all values of the drawn clusters (a cluster drawn twice counts twice).
    """
    values = np.asarray(values, np.float64)
    _, index = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.bincount(index, weights=values)
    counts = np.bincount(index).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, len(sums), size=(samples, len(sums)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def paired_comparison(tuned, base, prompts, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """Win rate of tuned over base (ties half) and the mean of tuned - base, each with its interval."""
    tuned, base = np.asarray(tuned, np.float64), np.asarray(base, np.float64)
    wins, diff = paired_outcomes(tuned, base), tuned - base
    return {"win_rate": float(wins.mean()),
            "win_rate_ci": cluster_bootstrap_interval(wins, prompts, samples=samples, seed=seed),
            "mean_diff": float(diff.mean()),
            "mean_diff_ci": cluster_bootstrap_interval(diff, prompts, samples=samples, seed=seed),
            "ties": int((tuned == base).sum()), "pairs": int(len(tuned)), "prompts": int(len(np.unique(prompts)))}
