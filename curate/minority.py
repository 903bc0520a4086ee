"""Adaptive-DPO's minority-instance metric and the loss terms built on it (Zhang et al. 2025).

One implementation shared by curation (annotators = reward scorers over a whole dataset) and
training (annotators = the policy and its EMA copies over a batch). Every function accepts a numpy
array or a torch tensor and answers in kind; torch is never imported here, so data-only stages
that import this module stay light.

The rho convention. ``z = rho * hhat`` where ``hhat`` is each annotator's margins normalised over
the N pairs. With ``normalize="l2"`` (what the authors ran, rho = 15 at their batch B = 16 per
device) ``hhat`` has RMS ``1/sqrt(N)``, so the scale of ``z`` depends on N. ``normalize="rms"``
removes that dependence: the same z as the authors' needs ``rho_rms = rho / sqrt(B)``
(15 / 4 = 3.75 for B = 16). Use "rms" over a whole dataset, where N is millions.
"""
from __future__ import annotations

import sys
from typing import Any, NamedTuple

import numpy as np
from scipy.special import expit

NORMALIZATIONS = ("l2", "rms", "none")
WEIGHT_KINDS = ("linear", "quadratic")


class MinorityScore(NamedTuple):
    """Per-pair minority score ``u = a * s`` and its two factors, each of shape (N,)."""

    u: Any
    a: Any
    s: Any


def _is_torch(x) -> bool:
    # Looking torch up in sys.modules instead of importing it: a numpy caller never pays for torch.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _check_kind(kind: str, allowed: tuple[str, ...], what: str) -> None:
    if kind not in allowed:
        raise ValueError(f"unknown {what} {kind!r}; expected one of {', '.join(allowed)}")


def _normalise_rows(h, normalize: str):
    """Divide each annotator's row by its L2 norm or RMS; an all-zero row stays 0 (not 0/0 = NaN)."""
    if normalize == "none" or h.shape[1] == 0:
        return h
    if _is_torch(h):
        scale = h.square().sum(dim=1, keepdim=True).sqrt()
    else:
        scale = np.sqrt(np.square(h).sum(axis=1, keepdims=True))
    if normalize == "rms":
        scale = scale / h.shape[1] ** 0.5
    # The scale is 0 only when every margin of the row is 0, so dividing by 1 gives hhat = 0: an
    # annotator with no opinion adds sigmoid(0) = 1/2 to the mean and no NaN to the std.
    if _is_torch(h):
        return h / scale.masked_fill(scale == 0, 1.0)
    return h / np.where(scale > 0, scale, 1.0)


def minority_score(margins, rho: float, normalize: str = "l2") -> MinorityScore:
    """Minority score of N pairs judged by M annotators (Adaptive-DPO section 3).

    ``margins[m, i]`` is annotator m's margin h for pair i (> 0: agrees with the labelled winner).

        hhat[m] = h[m] / ||h[m]||_2   ("l2"),  h[m] / rms(h[m])  ("rms"),  h[m]  ("none")
        z = rho * hhat
        a = 1 - mean_m sigmoid(z)                       (annotators' doubt in the label)
        s = min(std_m(z), 1), unbiased (divisor M - 1)  (annotators' disagreement)
        u = a * s,  0 <= u < 1

    A row of all-zero margins has hhat = 0. Torch input stays on its device and dtype (half
    precision is computed in float32 there, since sums of squares overflow float16) and is
    detached: u is a weight, never a path for gradients. numpy input is computed in float64.
    """
    _check_kind(normalize, NORMALIZATIONS, "normalize")
    if not _is_torch(margins):
        margins = np.asarray(margins, dtype=np.float64)
    if margins.ndim != 2:
        raise ValueError(f"margins must have shape (M annotators, N pairs); got shape {tuple(margins.shape)}")
    if margins.shape[0] < 2:
        raise ValueError(
            f"minority_score needs at least 2 annotators (the std over annotators has divisor M - 1); "
            f"got margins of shape {tuple(margins.shape)}. Add annotators (EMA copies, more scorers) "
            "or pass the margins as (M, N), not (N, M)"
        )
    if _is_torch(margins):
        return _minority_torch(margins, rho, normalize)
    z = rho * _normalise_rows(margins, normalize)
    a = 1.0 - expit(z).mean(axis=0)
    s = np.minimum(z.std(axis=0, ddof=1), 1.0)
    return MinorityScore(a * s, a, s)


def _minority_torch(margins, rho: float, normalize: str) -> MinorityScore:
    import torch

    out_dtype = margins.dtype if margins.is_floating_point() else torch.get_default_dtype()
    work_dtype = torch.promote_types(out_dtype, torch.float32)
    h = margins.detach().to(work_dtype)
    z = rho * _normalise_rows(h, normalize)
    a = 1.0 - torch.sigmoid(z).mean(dim=0)
    s = z.std(dim=0, correction=1).clamp(max=1.0)
    return MinorityScore(*(t.to(out_dtype) for t in (a * s, a, s)))


def adaptive_weights(u, kind: str = "linear", k: float = 10.0, c: float = 1.0):
    """Instance weight ``W = 1 / (k * u + c)`` ("linear") or ``1 / (k * u**2 + c)`` ("quadratic").

    With the authors' k = 10, c = 1 a majority pair (u = 0) keeps weight 1 and a likely minority
    pair is down-weighted towards 1/11.
    """
    _check_kind(kind, WEIGHT_KINDS, "weight kind")
    return 1.0 / (k * (u if kind == "linear" else u * u) + c)


def adaptive_margin(u, h_mean, beta: float, kind: str = "quadratic"):
    """Adaptive margin ``G = h_mean - u**2 / beta`` ("quadratic") or ``h_mean - u / beta`` ("linear").

    ``h_mean`` is the stop-gradient mean of the policy margins h over the (per-device) batch; pass
    it detached. The loss is ``-W * log sigmoid(beta * h - G)``. G is on the scale of h while it is
    subtracted from beta * h, so with beta = 1000 the u term is tiny: that is what the authors ran,
    reproduced here as the reference behaviour rather than silently rescaled.
    """
    _check_kind(kind, WEIGHT_KINDS, "margin kind")
    return h_mean - (u * u if kind == "quadratic" else u) / beta


def ema_decay(step: int, cap: float) -> float:
    """EMA decay after ``step`` updates: ``min((1 + step) / (10 + step), cap)``.

    This is diffusers' EMAModel warm-up; its n-th ``step()`` call uses step = n - 1 (and decay 0
    for n = 1, which only copies the weights). Adaptive-DPO's annotators use caps 0.9999 and 0.5.
    """
    if step < 0:
        raise ValueError(f"ema_decay step must be >= 0 (updates done so far); got {step}")
    if not 0.0 <= cap <= 1.0:
        raise ValueError(f"ema_decay cap must be in [0, 1]; got {cap}")
    return min((1.0 + step) / (10.0 + step), cap)
