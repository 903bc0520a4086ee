"""The crowd model's per-judgement margins, worked by hand."""
import numpy as np

from curate.annotators import crowd, signals


def _model(keys, theta, curvature):
    return crowd.CrowdModel(np.array(keys, np.int64), np.array(theta, float), np.array(curvature, float), 0, 0.9,
                            np.array([0.9, 0.1]), signals.VoteGroups(*(np.zeros(0),) * 4), (), np.zeros(0), 0.0)


def test_ties_on_images_the_model_never_saw_get_no_margin():
    # The model is fitted on decisions only: image 30 appears in a tie alone, and sorts after every
    # key the model knows (it once indexed one past the end of theta).
    model = _model([10, 20], [[0.5, -0.5]], [[2.0, 2.0]])
    cols = {"key_a": np.array([10, 20, 20], np.int64), "key_b": np.array([20, 30, 10], np.int64),
            "sign": np.array([1, 0, 1], np.int8)}
    resp = np.ones((3, 2))
    out = crowd.taste_margins(model, cols, resp)
    # d = 0.5 - (-0.5) = 1 with the judgement's own pull removed: 1 - (1 - sigmoid(1)) (1/2 + 1/2).
    own = 1.0 - (1.0 - 1.0 / (1.0 + np.exp(-1.0)))
    assert out.shape == (1, 3)
    assert np.isclose(out[0, 0], own)
    assert np.isnan(out[0, 1])
    # 20 beat 10: d = -1 with its pull removed: -1 - (1 - sigmoid(-1)).
    assert np.isclose(out[0, 2], -1.0 - (1.0 - 1.0 / (1.0 + np.exp(1.0))))


def test_dense_index_is_numpys_unique_with_inverse():
    assert [a.tolist() for a in signals.dense_index(np.array([30, 10, 30, 20]))] == [[10, 20, 30], [2, 0, 2, 1]]
    rng = np.random.default_rng(5)
    for values in (rng.integers(0, 2**63, 50, dtype=np.int64).astype(np.uint64)[rng.integers(0, 50, 5000)],
                   rng.integers(-1000, 1000, 3000), np.zeros(0, np.int64)):
        distinct, index = signals.dense_index(values)
        ref, inverse = np.unique(values, return_inverse=True)
        assert distinct.dtype == values.dtype
        np.testing.assert_array_equal(distinct, ref)
        np.testing.assert_array_equal(index, inverse.ravel())


def test_search_sorted_is_numpys_searchsorted():
    assert signals.search_sorted(np.array([10, 20, 30]), np.array([30, 5, 20])).tolist() == [2, 0, 1]
    rng = np.random.default_rng(6)
    for keys in (np.unique(rng.integers(0, 2**60, 20000)), np.arange(0, 300, 3), np.zeros(0, np.int64)):
        for queries in (rng.integers(-10, 2**60, 5000), rng.integers(-10, 400, 3000), rng.integers(0, 50, 10)):
            np.testing.assert_array_equal(signals.search_sorted(keys, queries), np.searchsorted(keys, queries))


def test_flag_metric_groups_pairs_by_present_signals():
    # Each pair's u, a, s come from the signals it has (>= 2); fewer than 2: NaN. Checked pair by
    # pair against minority_score on that pair's own signals.
    from curate.annotators.flag import _metric
    from curate.minority import minority_score

    rng = np.random.default_rng(6)
    margins = rng.normal(size=(4, 300))
    margins[rng.random((4, 300)) < 0.3] = np.nan
    u, a, s, used = _metric(margins, 3.75, minority_score)
    np.testing.assert_array_equal(used, (~np.isnan(margins)).sum(axis=0))
    for i in range(300):
        have = ~np.isnan(margins[:, i])
        if have.sum() < 2:
            assert np.isnan(u[i]) and np.isnan(a[i]) and np.isnan(s[i])
            continue
        one = minority_score(margins[have, i:i + 1], rho=3.75, normalize="none")
        np.testing.assert_allclose([u[i], a[i], s[i]], [one.u[0], one.a[0], one.s[0]], rtol=1e-12)
