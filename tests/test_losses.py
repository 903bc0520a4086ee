"""Preference losses against hand-worked values (docs sections 2 and 4)."""
import math

import pytest
import torch

from curate.train.losses import (LOSS_TYPES, adaptive_terms, dpo_margin, implicit_accuracy,
                                 preference_loss)

# beta = 1000 turns these margins into logits z = beta * h = 1, -0.4, 0.
H = torch.tensor([0.001, -0.0004, 0.0], dtype=torch.float64)
BETA = 1000.0


def close(actual, expected, tol=1e-9):
    assert torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=0), actual


def test_dpo_margin_by_hand():
    # (ref_w - ref_l) - (model_w - model_l) = (1.0 - 1.2) - (0.9 - 1.25) = -0.2 + 0.35 = 0.15
    h = dpo_margin(torch.tensor(0.9), torch.tensor(1.25), torch.tensor(1.0), torch.tensor(1.2))
    assert h.item() == pytest.approx(0.15, abs=1e-6)


def test_dpo_sigmoid():
    # -log sigmoid(z) = log(1 + e^-z): z=1 -> log(1.3678794) = 0.3132617; z=-0.4 -> log(2.4918247) = 0.9130153;
    # z=0 -> ln 2 = 0.6931472
    close(preference_loss(H, "dpo", BETA), [0.31326168751822286, 0.9130152523999526, math.log(2)])


def test_hinge():
    # relu(1 - z) = relu(0), relu(1.4), relu(1)
    close(preference_loss(H, "hinge", BETA), [0.0, 1.4, 1.0])


def test_ipo_default_tau_is_the_authors_100_and_explicit_tau():
    # tau = 100 (Adaptive-DPO's IPO beta): 1/(2 tau) = 0.005; (0.001-0.005)^2 = 1.6e-5,
    # (-0.0004-0.005)^2 = 2.916e-5, (0-0.005)^2 = 2.5e-5
    close(preference_loss(H, "ipo", BETA), [1.6e-5, 2.916e-5, 2.5e-5], tol=1e-12)
    # tau = beta = 1000: 1/(2 tau) = 0.0005; (0.001-0.0005)^2 = 2.5e-7, (-0.0004-0.0005)^2 = 8.1e-7, (0-0.0005)^2 = 2.5e-7
    close(preference_loss(H, "ipo", BETA, ipo_tau=BETA), [2.5e-7, 8.1e-7, 2.5e-7], tol=1e-15)
    # tau = 250: 1/(2 tau) = 0.002; (0.001 - 0.002)^2 = 1e-6
    close(preference_loss(H[:1], "ipo", BETA, ipo_tau=250.0), [1e-6], tol=1e-15)


def test_cdpo_and_rdpo_with_eps_0_1():
    z1 = H[:1]  # z = 1; -log sigmoid(1) = 0.3132617, -log sigmoid(-1) = log(1 + e) = 1.3132617
    # cdpo: 0.9 * 0.3132617 + 0.1 * 1.3132617 = 0.2819355 + 0.1313262 = 0.4132617
    close(preference_loss(z1, "cdpo", BETA, label_smoothing=0.1), [0.4132616875182229])
    # rdpo: (0.9 * 0.3132617 - 0.1 * 1.3132617) / (1 - 0.2) = 0.1506094 / 0.8 = 0.1882617
    close(preference_loss(z1, "rdpo", BETA, label_smoothing=0.1), [0.1882616875182229])
    # eps = 0 reduces both to plain DPO
    for kind in ("cdpo", "rdpo"):
        close(preference_loss(H, kind, BETA), preference_loss(H, "dpo", BETA).tolist())


def test_adaptive_sigmoid_and_ipo_forms():
    h = torch.tensor([0.002, 0.0], dtype=torch.float64)
    u = torch.tensor([0.5, 0.0], dtype=torch.float64)
    w, g = adaptive_terms(u, h, BETA)  # linear weights (k=10, c=1), quadratic margin
    # W = 1/(10 u + 1) = [1/6, 1];  G = mean(h) - u^2/beta = 0.001 - [0.25/1000, 0] = [0.00075, 0.001]
    close(w.double(), [1 / 6, 1.0], tol=1e-7)
    close(g.double(), [0.00075, 0.001], tol=1e-9)
    # z = beta h - G = [2 - 0.00075, -0.001]; l = W log(1 + e^-z):
    # (1/6) * log(1 + e^-1.99925) = (1/6) * 0.1270174 = 0.0211696;  log(1 + e^0.001) = 0.6936473
    close(preference_loss(h, "dpo", BETA, weights=w, margin=g), [0.021169573794926302, 0.6936473055599401], tol=1e-7)
    # IPO form, tau = beta: W (h + G/beta - 1/(2 tau))^2
    #   (1/6) (0.002 + 0.00000075 - 0.0005)^2 = (1/6) 0.00150075^2 = 3.7537509e-7;  (0 + 0.000001 - 0.0005)^2 = 2.49001e-7
    close(preference_loss(h, "ipo", BETA, weights=w, margin=g, ipo_tau=BETA), [3.7537509375e-07, 2.49001e-07],
          tol=1e-12)


def test_u_zero_gives_unit_weights_and_mean_margin():
    h = torch.tensor([0.003, -0.001])
    w, g = adaptive_terms(torch.zeros(2), h, BETA)
    assert torch.equal(w, torch.ones(2))
    close(g, [0.001, 0.001], tol=1e-9)  # G = mean(h) = 0.001 even when u = 0 (the authors' form)


def test_policy_equals_reference_gives_ln2_for_every_sigmoid_loss():
    h = torch.zeros(4)
    for kind in ("dpo", "cdpo", "rdpo"):
        assert preference_loss(h, kind, 2500.0, label_smoothing=0.1 if kind != "dpo" else 0.0).mean().item() \
            == pytest.approx(0.693147, abs=1e-6)


def test_implicit_accuracy_counts_ties_as_half():
    # 2 of 4 positive, 1 of 4 zero: 2/4 + 0.5 * 1/4 = 0.625
    assert implicit_accuracy(torch.tensor([1.0, -1.0, 0.0, 2.0])).item() == pytest.approx(0.625)


def test_errors_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match="unknown loss 'cpo'; expected one of dpo, hinge, ipo, cdpo, rdpo"):
        preference_loss(H, "cpo", BETA)
    with pytest.raises(ValueError, match="only applies to cdpo and rdpo"):
        preference_loss(H, "dpo", BETA, label_smoothing=0.1)
    with pytest.raises(ValueError, match="rdpo needs a flip rate"):
        preference_loss(H, "rdpo", BETA, label_smoothing=0.5)
    assert LOSS_TYPES == ("dpo", "hinge", "ipo", "cdpo", "rdpo")


def test_gradient_flows_through_h_but_not_through_margin():
    h = torch.tensor([0.001, 0.002], requires_grad=True)
    w, g = adaptive_terms(torch.tensor([0.3, 0.0]), h, BETA)
    preference_loss(h, "dpo", BETA, weights=w, margin=g).sum().backward()
    # d/dh [-W log sigmoid(beta h - G)] = -W beta sigmoid(-(beta h - G)), G held fixed (stop-gradient)
    z = BETA * h.detach() - g
    close(h.grad, (-w * BETA * torch.sigmoid(-z)).tolist(), tol=1e-4)
