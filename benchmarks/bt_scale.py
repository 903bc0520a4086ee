"""Bradley-Terry fit time: prefcurate at 5M comparisons / 200k items, and against choix at a size
choix handles (its ILSR builds a dense items x items chain), on instances from one generator.

    /work/venv/bin/python benchmarks/bt_scale.py [--big-items 200000 --big-comparisons 5000000]

BLAS is pinned to one thread before numpy loads: the fit's work is in bincount and ufuncs, and on a
shared machine threaded BLAS calls only thrash (Dask workers pin it the same way).
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from curate.bradley_terry import fit_bradley_terry  # noqa: E402


def instance(n_items: int, n_comparisons: int, tie_rate: float, seed: int = 0):
    """Random pairs, outcomes drawn from N(0, 1) true scores, plus a ring so the MLE exists."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=n_items)
    i = rng.integers(0, n_items, n_comparisons)
    j = (i + rng.integers(1, n_items, n_comparisons)) % n_items
    first_wins = rng.random(n_comparisons) < 1.0 / (1.0 + np.exp(true[j] - true[i]))
    ring = np.arange(n_items)
    winners = np.r_[np.where(first_wins, i, j), ring]
    losers = np.r_[np.where(first_wins, j, i), (ring + 1) % n_items]
    ties = np.r_[rng.random(n_comparisons) < tie_rate, np.zeros(n_items, bool)]
    return winners, losers, ties, true


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-items", type=int, default=200_000)
    parser.add_argument("--big-comparisons", type=int, default=5_000_000)
    parser.add_argument("--small-items", type=int, default=5_000)
    parser.add_argument("--small-comparisons", type=int, default=50_000)
    args = parser.parse_args()
    import choix

    w, l, _, _ = instance(args.small_items, args.small_comparisons, 0.0)
    ours, t_ours = timed(lambda: fit_bradley_terry(w, l, args.small_items, ridge=0.0, tol=1e-8))
    theirs, t_choix = timed(lambda: choix.ilsr_pairwise(args.small_items, np.c_[w, l].tolist(), tol=1e-8))
    gap = np.abs(ours.scores - (theirs - theirs.mean())).max()
    print(f"{args.small_comparisons:,} comparisons / {args.small_items:,} items, no ties, unpenalised MLE:")
    print(f"  prefcurate {t_ours:.2f} s ({ours.iterations} Newton steps)   choix.ilsr_pairwise {t_choix:.2f} s"
          f"   choix / prefcurate = {t_choix / t_ours:.1f}x   max |score gap| = {gap:.1e}")
    for tie_rate in (0.0, 0.1):
        w, l, ties, true = instance(args.big_items, args.big_comparisons, tie_rate)
        fit, t_big = timed(lambda: fit_bradley_terry(w, l, args.big_items, ties=ties))
        corr = np.corrcoef(fit.scores, true)[0, 1]
        print(f"{args.big_comparisons:,} comparisons / {args.big_items:,} items, tie rate {tie_rate:.0%}, "
              f"ridge 1e-3: prefcurate {t_big:.1f} s ({fit.iterations} Newton steps, converged={fit.converged}, "
              f"nu={fit.tie_param:.3f}, corr(true)={corr:.3f})")


if __name__ == "__main__":
    main()
