"""Bradley-Terry / Davidson fits: closed forms on tiny cases, choix, and a direct scipy minimisation."""
import choix
import numpy as np
import pytest
from scipy.optimize import minimize

from curate.bradley_terry import (
    Comparisons,
    bootstrap_consensus,
    fit_bradley_terry,
    fit_comparisons,
    prepare_comparisons,
    prob_tie,
    prob_win,
)


def _repeat(pairs):
    """[(winner, loser, times), ...] -> winners, losers arrays."""
    w = np.concatenate([[a] * k for a, _, k in pairs])
    l = np.concatenate([[b] * k for _, b, k in pairs])
    return w, l


def test_two_items_log_odds_is_log_of_win_ratio():
    # 3 wins against 1 loss, no prior: the MLE sets sigmoid(d) = 3/4, so d = log 3 = 1.098612.
    w, l = _repeat([(0, 1, 3), (1, 0, 1)])
    r = fit_bradley_terry(w, l, 2, ridge=0.0)
    assert r.converged and r.tie_param == 0.0
    np.testing.assert_allclose(r.scores, [0.549306, -0.549306], atol=1e-6)


def test_davidson_two_items_closed_form():
    # Two items: (P(win), P(loss), P(tie)) ranges over the whole simplex with P(win)/P(loss) = e^d and
    # P(tie)/sqrt(P(win) P(loss)) = nu, so the MLE matches the frequencies: d = log(a/b), nu = t/sqrt(ab).
    # Symmetric case a = b = 3, t = 2: d = 0, nu = 2/3.
    w, l = _repeat([(0, 1, 3), (1, 0, 3), (0, 1, 2)])
    ties = np.r_[np.zeros(6, bool), np.ones(2, bool)]
    r = fit_bradley_terry(w, l, 2, ties=ties, ridge=0.0)
    assert r.converged
    np.testing.assert_allclose(r.scores, [0.0, 0.0], atol=1e-7)
    assert r.tie_param == pytest.approx(2 / 3, rel=1e-6)
    # a = 4, b = 1, t = 2: d = log 4 = 1.386294, nu = 2 / sqrt(4) = 1.
    w, l = _repeat([(0, 1, 4), (1, 0, 1), (1, 0, 2)])
    r = fit_bradley_terry(w, l, 2, ties=np.r_[np.zeros(5, bool), np.ones(2, bool)], ridge=0.0)
    assert r.scores[0] - r.scores[1] == pytest.approx(np.log(4.0), rel=1e-6)
    assert r.tie_param == pytest.approx(1.0, rel=1e-6)


def test_half_tie_model_counts_a_tie_as_half_a_win_each_way():
    # 3 wins + 2 halves = 4 for item 0; 1 win + 2 halves = 2 for item 1: d = log 2.
    w, l = _repeat([(0, 1, 3), (1, 0, 1), (0, 1, 2)])
    r = fit_bradley_terry(w, l, 2, ties=np.r_[np.zeros(4, bool), np.ones(2, bool)], tie_model="half", ridge=0.0)
    assert r.scores[0] - r.scores[1] == pytest.approx(np.log(2.0), rel=1e-6) and r.tie_param == 0.0


def test_prob_win_and_tie_by_hand():
    assert prob_win(np.array([np.log(3.0), 0.0]), 0, 1) == pytest.approx(0.75)
    # d = log 4: e^(d/2) = 2, e^(-d/2) = 0.5, nu = 1 -> S = 3.5: P(win) = 2/3.5, P(tie) = 1/3.5, P(loss) = 0.5/3.5
    s = np.array([np.log(4.0), 0.0])
    assert prob_win(s, 0, 1, 1.0) == pytest.approx(2 / 3.5)
    assert prob_tie(s, 0, 1, 1.0) == pytest.approx(1 / 3.5)
    assert prob_win(s, 1, 0, 1.0) == pytest.approx(0.5 / 3.5)


def _random_instance(seed, n_items=40, n_cmp=800, tie_rate=0.0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=n_items)
    i = rng.integers(0, n_items, n_cmp)
    j = (i + rng.integers(1, n_items, n_cmp)) % n_items
    first_wins = rng.random(n_cmp) < 1 / (1 + np.exp(true[j] - true[i]))
    w, l = np.where(first_wins, i, j), np.where(first_wins, j, i)
    # A cycle 0 > 1 > ... > n-1 > 0 makes the graph strongly connected, so the unpenalised MLE exists.
    ring = np.arange(n_items)
    return np.r_[w, ring], np.r_[l, (ring + 1) % n_items], np.r_[rng.random(n_cmp) < tie_rate, np.zeros(n_items, bool)]


def test_merged_duplicates_fit_like_unmerged():
    w, l, ties = _random_instance(1, n_items=15, n_cmp=400, tie_rate=0.2)
    # Flip half the ties' order: a tie (i, j) is the same event as a tie (j, i).
    flip = ties & (np.arange(ties.size) % 2 == 0)
    w2, l2 = np.where(flip, l, w), np.where(flip, w, l)
    rows, _ = prepare_comparisons(w2, l2, 15, ties=ties)
    assert rows.weight.size < w.size and rows.weight.sum() == w.size
    unmerged = Comparisons(w, l, ties, np.ones(w.size))
    a, b = fit_comparisons(rows, 15, tol=1e-9), fit_comparisons(unmerged, 15, tol=1e-9)
    assert a.converged and b.converged
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-8)
    assert a.tie_param == pytest.approx(b.tie_param, rel=1e-8)


def test_agrees_with_choix_without_ties():
    w, l, _ = _random_instance(2)
    data = list(zip(w.tolist(), l.tolist()))
    # Both sides converge to the same (regularised) MLE: ours to a scaled gradient RMS of 1e-9,
    # ILSR until the L1 change per item is 1e-9, choix's Newton-CG to xtol 1e-9. The gap left is
    # the solvers' residual error, far below 1e-6.
    ours = fit_bradley_terry(w, l, 40, ridge=0.0, tol=1e-9)
    theirs = choix.ilsr_pairwise(40, data, alpha=0.0, tol=1e-9)
    assert ours.converged
    np.testing.assert_allclose(ours.scores, theirs - theirs.mean(), atol=1e-6)
    # choix penalises alpha * |theta|^2, ours ridge / 2 * |theta|^2: ridge = 2 alpha.
    ours = fit_bradley_terry(w, l, 40, ridge=0.2, tol=1e-9)
    theirs = choix.opt_pairwise(40, data, alpha=0.1, tol=1e-9)
    np.testing.assert_allclose(ours.scores, theirs, atol=1e-6)


def test_davidson_matches_direct_scipy_minimisation():
    w, l, ties = _random_instance(3, n_items=10, n_cmp=300, tie_rate=0.25)
    ridge = 0.05

    def nll(params):  # the Davidson likelihood written naively, straight from its definition
        theta, nu = params[:-1], np.exp(params[-1])
        pw, pl = np.exp(theta[w]), np.exp(theta[l])
        denom = pw + pl + nu * np.sqrt(pw * pl)
        p = np.where(ties, nu * np.sqrt(pw * pl), pw) / denom
        return -np.log(p).sum() + 0.5 * ridge * theta @ theta

    ref = minimize(nll, np.zeros(11), method="BFGS", options={"gtol": 1e-9})
    ours = fit_bradley_terry(w, l, 10, ties=ties, ridge=ridge, tol=1e-9)
    assert ours.converged
    # BFGS with numerical gradients stops near 1e-6 in the parameters; the optimum is unique (convex).
    np.testing.assert_allclose(ours.scores, ref.x[:-1] - ref.x[:-1].mean(), atol=1e-5)
    assert ours.tie_param == pytest.approx(np.exp(ref.x[-1]), rel=1e-5)


def test_ridge_keeps_disconnected_and_undefeated_items_finite():
    # {0, 1}: 0 always wins (no finite MLE); {2, 3}: one win each way; 4: never compared.
    w, l = _repeat([(0, 1, 3), (2, 3, 1), (3, 2, 1)])
    r = fit_bradley_terry(w, l, 5, ridge=1e-3)
    assert r.converged and np.all(np.isfinite(r.scores))
    # The ridge pins each component's mean to 0: score_0 + score_1 = 0, score_2 = score_3 = score_4 = 0.
    assert r.scores[0] > 3 and r.scores[0] + r.scores[1] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(r.scores[2:], 0.0, atol=1e-6)


def test_bad_comparisons_are_named():
    with pytest.raises(ValueError, match="1 comparisons have winner == loser"):
        fit_bradley_terry([0, 1], [1, 1], 2)
    with pytest.raises(ValueError, match=r"losers must index items 0..1 \(n_items=2\)"):
        fit_bradley_terry([0], [2], 2)
    with pytest.raises(ValueError, match="unknown tie_model 'rao'"):
        fit_bradley_terry([0], [1], 2, tie_model="rao")


def test_bootstrap_consensus_over_annotators():
    # Pair (0, 1): all 9 annotators say 0 > 1 twice. Pair (2, 3): annotators 0-4 say 2 > 3 and 5-8 say 3 > 2.
    w = np.r_[np.zeros(18, int), [2] * 5 + [3] * 4]
    l = np.r_[np.ones(18, int), [3] * 5 + [2] * 4]
    groups = np.r_[np.repeat(np.arange(9), 2), np.arange(9)]
    c = bootstrap_consensus(w, l, groups, 4, n_boot=100, seed=7)
    assert list(zip(c.winner, c.loser)) == [(0, 1), (2, 3)]
    assert c.agreement[0] == 1.0
    # 2 > 3 holds in a resample when more of annotators 0-4 than 5-8 are drawn (about 60% of draws).
    assert 0.45 < c.agreement[1] < 0.8
    again = bootstrap_consensus(w, l, groups, 4, n_boot=100, seed=7)
    np.testing.assert_array_equal(again.agreement, c.agreement)


def _random_comparisons(items: int, rows: int, seed: int, ties: bool = False):
    rng = np.random.default_rng(seed)
    strength = rng.normal(size=items)
    i, j = rng.integers(0, items, rows), rng.integers(0, items, rows)
    i, j = i[i != j], j[i != j]
    i_wins = rng.random(len(i)) < 1 / (1 + np.exp(-(strength[i] - strength[j])))
    tie = (rng.random(len(i)) < 0.1) if ties else None
    return np.where(i_wins, i, j), np.where(i_wins, j, i), tie


@pytest.mark.parametrize("ties", [False, True])
def test_trust_region_newton_cg_steps_like_scipy_trust_ncg(ties):
    # The solver is a port of scipy's trust-ncg: on the same problem it takes the same steps, so
    # after 3 (warm-start style, far from converged) and at convergence it sits at the same point.
    from curate.bradley_terry import _Problem, trust_region_newton_cg

    w, l, tie = _random_comparisons(300, 3000, seed=3, ties=ties)
    rows, _ = prepare_comparisons(w, l, 300, ties=tie)
    problem = _Problem(rows, 300, 1.0)
    x0 = np.zeros(300 + problem.with_ties)
    for steps in (3, 200):
        ours, nit, ok = trust_region_newton_cg(problem.value_and_grad, problem.hessp, x0, 1e-6, steps, 5.0, 5e3)
        ref = minimize(problem.value_and_grad, x0, jac=True, hessp=problem.hessp, method="trust-ncg",
                       options={"gtol": 1e-6, "maxiter": steps, "initial_trust_radius": 5.0, "max_trust_radius": 5e3})
        np.testing.assert_allclose(ours, ref.x, atol=1e-9)
        assert (nit, ok) == (ref.nit, ref.success)


def test_items_nobody_compared_change_nothing():
    # Items 0-49 compared, 50-199 never: the fit over 200 items is the 50-item fit's differences,
    # the never-compared items sit at the ridge optimum 0 before centring, and the solve takes the
    # same steps (its stopping rule and trust radius count all 200 items, as before they were left out).
    w, l, _ = _random_comparisons(50, 800, seed=4)
    rows, _ = prepare_comparisons(w, l, 200)
    wide = fit_comparisons(rows, 200, ridge=1.0, tol=1e-8)
    raw = wide.scores - wide.scores[199]  # undo the centring over 200 items
    np.testing.assert_allclose(raw[50:], 0.0, atol=1e-12)
    narrow = fit_comparisons(rows, 50, ridge=1.0, tol=1e-8)
    np.testing.assert_allclose(raw[:50] - raw[:50].mean(), narrow.scores, atol=1e-7)
    warm = fit_comparisons(rows, 200, ridge=1.0, tol=1e-4, max_iter=2, init=wide)
    np.testing.assert_allclose(warm.scores[50:], warm.scores[199], atol=1e-12)
