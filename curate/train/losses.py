"""Preference losses on the pair margin h (the math of docs section 2 and 4).

Pure functions of tensors: no model, no config. `beta` multiplies h directly, so the
diffusers script's beta_dpo = 2500 and Salesforce's 0.5 * 5000 are both beta = 2500 here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from curate.train.config import IPO_TAU

LOSS_TYPES = ("dpo", "hinge", "ipo", "cdpo", "rdpo")


def check_loss_type(loss_type: str) -> str:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    return loss_type


def dpo_margin(model_err_w, model_err_l, ref_err_w, ref_err_l):
    """h = (L_ref^w - L_ref^l) - (L_theta^w - L_theta^l), per pair.

    h > 0 when the policy's error on the preferred image fell relative to the reference's.
    """
    return (ref_err_w - ref_err_l) - (model_err_w - model_err_l)


def preference_loss(
    h: torch.Tensor,
    loss_type: str,
    beta: float,
    *,
    weights: torch.Tensor | None = None,
    margin: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ipo_tau: float = IPO_TAU,
) -> torch.Tensor:
    """Per-pair loss l_i (no reduction; the caller takes the mean).

    `margin` is Adaptive-DPO's G (on the scale of h, as the authors ran it): the sigmoid-family
    losses see beta*h - G; the IPO form sees h + G/beta (the authors' sign; see docs section 4).
    `weights` multiplies each pair's loss. `ipo_tau` defaults to the Adaptive-DPO
    authors' IPO beta (100; see config.IPO_TAU). `label_smoothing` is eps for cdpo/rdpo and must be 0 for the others.
    """
    check_loss_type(loss_type)
    if label_smoothing and loss_type not in ("cdpo", "rdpo"):
        raise ValueError(f"label_smoothing={label_smoothing} only applies to cdpo and rdpo, not {loss_type!r}; set it to 0")
    if loss_type == "rdpo" and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"rdpo needs a flip rate 0 <= label_smoothing < 0.5, got {label_smoothing}")
    g = torch.zeros_like(h) if margin is None else margin.to(h.dtype)
    eps = label_smoothing
    if loss_type == "ipo":
        losses = (h + g / beta - 1.0 / (2.0 * ipo_tau)) ** 2
    else:
        z = beta * h - g
        if loss_type == "dpo":
            losses = -F.logsigmoid(z)
        elif loss_type == "hinge":
            losses = torch.relu(1.0 - z)
        elif loss_type == "cdpo":
            losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        else:  # rdpo
            losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return losses if weights is None else weights.to(losses.dtype) * losses


def implicit_accuracy(h: torch.Tensor) -> torch.Tensor:
    """mean(h > 0) + 0.5 * mean(h == 0): a tie (policy == reference) counts as a coin flip."""
    h = h.detach().float()
    return (h > 0).float().mean() + 0.5 * (h == 0).float().mean()


def adaptive_terms(u, h, beta: float, *, weight_kind="linear", margin_kind="quadratic", k=10.0, c=1.0):
    """(W, G) of docs section 4 from minority scores u and this batch's h (stop-gradient mean).

    Formulas live in curate.minority so curation and training share one implementation.
    """
    from curate.minority import adaptive_margin, adaptive_weights

    u = u.detach().to(h.device, torch.float32)
    weights = adaptive_weights(u, kind=weight_kind, k=k, c=c)
    margin = adaptive_margin(u, h.detach().float().mean(), beta, kind=margin_kind)
    return torch.as_tensor(weights, device=h.device), torch.as_tensor(margin, device=h.device)
