"""Adaptive-DPO minority metric: values worked out by hand (sigmoid values written out below)."""
import math

import numpy as np
import pytest
import torch

from curate.minority import adaptive_margin, adaptive_weights, ema_decay, minority_score


def test_two_annotators_no_normalisation_by_hand():
    # rho = 1, normalize="none": z = h.
    # pair 0: z = (0.2, -0.2). sigmoid(0.2) = 1/(1 + e^-0.2) = 1/1.818731 = 0.549834, sigmoid(-0.2) = 0.450166
    #   a = 1 - (0.549834 + 0.450166)/2 = 0.5; std (divisor 1) = sqrt(0.2^2 + 0.2^2) = 0.282843; u = 0.141421
    # pair 1: z = (1, 0). sigmoid(1) = 0.731059, sigmoid(0) = 0.5: a = 1 - 0.615529 = 0.384471
    #   std = sqrt(0.5^2 + 0.5^2) = 0.707107; u = 0.384471 * 0.707107 = 0.271862
    u, a, s = minority_score(np.array([[0.2, 1.0], [-0.2, 0.0]]), rho=1.0, normalize="none")
    np.testing.assert_allclose(a, [0.5, 0.384471], atol=1e-6)
    np.testing.assert_allclose(s, [0.282843, 0.707107], atol=1e-6)
    np.testing.assert_allclose(u, [0.141421, 0.271862], atol=1e-6)


def test_l2_normalisation_by_hand():
    # row 0 (3, 4) has norm 5 -> (0.6, 0.8); row 1 (-6, 8) has norm 10 -> (-0.6, 0.8). rho = 1.
    # pair 0: z = (0.6, -0.6): sigmoid = 0.645656, 0.354344 -> a = 0.5; std = sqrt(2 * 0.36) = 0.848528
    # pair 1: z = (0.8, 0.8): a = 1 - sigmoid(0.8) = 1 - 0.689974 = 0.310026; s = 0 -> u = 0
    u, a, s = minority_score([[3.0, 4.0], [-6.0, 8.0]], rho=1.0)
    np.testing.assert_allclose(a, [0.5, 0.310026], atol=1e-6)
    np.testing.assert_allclose(s, [0.848528, 0.0], atol=1e-6)
    np.testing.assert_allclose(u, [0.424264, 0.0], atol=1e-6)


def test_std_is_clamped_at_one():
    # Same margins, rho = 10: pair 0 has z = (6, -6), std = sqrt(72) = 8.49 -> s = 1, a = 0.5, u = 0.5.
    u, a, s = minority_score([[3.0, 4.0], [-6.0, 8.0]], rho=10.0)
    assert s[0] == 1.0 and u[0] == pytest.approx(0.5)


def test_rms_form_equals_l2_with_rho_over_sqrt_batch():
    # rms(h) = ||h|| / sqrt(N), so hhat_rms = sqrt(N) * hhat_l2 and rho_rms = rho / sqrt(N) gives the same z.
    h = np.random.default_rng(0).normal(size=(3, 16))
    l2 = minority_score(h, rho=15.0, normalize="l2")
    rms = minority_score(h, rho=15.0 / 4.0, normalize="rms")
    np.testing.assert_allclose(rms.u, l2.u, rtol=1e-12)


def test_identical_annotators_have_zero_score_and_unit_weight():
    h = np.random.default_rng(1).normal(size=16)
    u, a, s = minority_score(np.stack([h, h, h]), rho=15.0)
    np.testing.assert_allclose(s, 0.0, atol=1e-12)
    np.testing.assert_allclose(adaptive_weights(u), 1.0, atol=1e-11)
    assert np.all(a > 0) and np.all(a < 1)


def test_zero_norm_annotator_gives_hhat_zero_not_nan():
    # Row 0 is all zeros -> hhat 0 -> z 0. Row 1 (1, -1, 2) has norm sqrt(6): hhat = (0.408248, -0.408248, 0.816497).
    # Pair 0: z = (0, 0.408248): a = 1 - (0.5 + sigmoid(0.408248)) / 2 = 1 - (0.5 + 0.600668) / 2 = 0.449666
    #   s = |0.408248 - 0| / sqrt(2) = 0.288675 (two values: std with divisor 1 is |difference| / sqrt 2)
    u, a, s = minority_score([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0]], rho=1.0)
    assert np.all(np.isfinite(u))
    assert a[0] == pytest.approx(0.449666, abs=1e-6) and s[0] == pytest.approx(0.288675, abs=1e-6)
    for normalize in ("rms", "none"):
        assert np.all(np.isfinite(minority_score(np.zeros((2, 4)), rho=15.0, normalize=normalize).u))


def test_numpy_and_torch_agree_and_torch_stays_put():
    h = np.random.default_rng(2).normal(size=(3, 32))
    ref = minority_score(h, rho=15.0)
    t = torch.tensor(h, requires_grad=True)
    got = minority_score(t, rho=15.0)
    for g, r in zip(got, ref):
        assert isinstance(g, torch.Tensor) and g.dtype == torch.float64 and not g.requires_grad
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-12)
    half = minority_score(t.detach().half(), rho=15.0)
    assert half.u.dtype == torch.float16 and half.u.device == t.device
    np.testing.assert_allclose(half.u.float().numpy(), ref.u, atol=2e-3)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="at least 2 annotators"):
        minority_score(np.ones((1, 5)), rho=15.0)
    with pytest.raises(ValueError, match=r"shape \(M annotators, N pairs\)"):
        minority_score(np.ones(5), rho=15.0)
    with pytest.raises(ValueError, match="unknown normalize 'l1'; expected one of l2, rms, none"):
        minority_score(np.ones((2, 5)), rho=15.0, normalize="l1")
    with pytest.raises(ValueError, match="unknown weight kind"):
        adaptive_weights(np.zeros(2), kind="cubic")


def test_adaptive_weights_by_hand():
    u = np.array([0.0, 0.5])
    # linear: 1 / (10 * 0.5 + 1) = 1/6; quadratic: 1 / (10 * 0.25 + 1) = 1/3.5
    np.testing.assert_allclose(adaptive_weights(u, "linear"), [1.0, 1 / 6])
    np.testing.assert_allclose(adaptive_weights(u, "quadratic"), [1.0, 1 / 3.5])
    got = adaptive_weights(torch.tensor(u), "quadratic", k=2.0, c=0.5)  # 1 / (2 * 0.25 + 0.5) = 1
    np.testing.assert_allclose(got.numpy(), [2.0, 1.0])


def test_adaptive_margin_by_hand():
    # h_mean 0.2, u 0.5, beta 1000: quadratic 0.2 - 0.25/1000 = 0.19975; linear 0.2 - 0.5/1000 = 0.1995
    assert adaptive_margin(0.5, 0.2, 1000.0, "quadratic") == pytest.approx(0.19975)
    assert adaptive_margin(0.5, 0.2, 1000.0, "linear") == pytest.approx(0.1995)
    got = adaptive_margin(torch.tensor([0.0, 0.5]), torch.tensor(0.2), 1000.0, "quadratic")
    np.testing.assert_allclose(got.numpy(), [0.2, 0.19975], rtol=1e-6)


def test_ema_decay_warmup_and_cap():
    assert ema_decay(0, 0.9999) == pytest.approx(0.1)  # 1 / 10
    assert ema_decay(10, 0.9999) == pytest.approx(0.55)  # 11 / 20
    assert ema_decay(10, 0.5) == 0.5
    assert ema_decay(1_000_000, 0.9999) == 0.9999  # 1000001 / 1000010 = 0.999991 > cap
    assert math.isclose(ema_decay(90, 1.0), 91 / 100)
    with pytest.raises(ValueError, match="step must be >= 0"):
        ema_decay(-1, 0.5)
    with pytest.raises(ValueError, match=r"cap must be in \[0, 1\]"):
        ema_decay(3, 1.5)
