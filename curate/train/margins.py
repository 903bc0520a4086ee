"""Per-pair denoising errors of the policy, the reference and the EMA annotators (docs section 1).

A batch of B pairs becomes 2B UNet samples [winners; losers] that share one noise draw and one
timestep per pair, so h compares the two images under exactly the same corruption.
"""
from __future__ import annotations

import contextlib

import torch

from curate.train.models import unet_conditioning


def noised_pair(scheduler, latent_w, latent_l, noise, timesteps):
    """(x_t, t, target) for the 2B samples; the target follows the scheduler's prediction_type."""
    latents = torch.cat([latent_w, latent_l])
    noise2, t2 = torch.cat([noise, noise]), torch.cat([timesteps, timesteps])
    x_t = scheduler.add_noise(latents, noise2, t2)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise2
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise2, t2)
    else:
        raise ValueError(f"scheduler prediction_type {kind!r} is not supported; expected epsilon or v_prediction")
    return x_t, t2, target


def pair_conditioning(batch) -> dict:
    """UNet kwargs for [winners; losers]: both images of a pair see the same prompt."""
    twice = lambda x: None if x is None else torch.cat([x, x])  # noqa: E731
    return unet_conditioning(twice(batch.text_emb), twice(batch.pooled), twice(batch.time_ids))


def per_sample_mse(pred, target):
    """mean over C, H, W of the squared error, one value per sample, in fp32."""
    return (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))


def pair_errors(unet, x_t, t2, cond, target, params=None):
    """(err_w, err_l) of `unet`; `params` substitutes tensors (EMA weights) without touching the module."""
    if params is None:
        pred = unet(x_t, t2, **cond).sample
    else:
        pred = torch.func.functional_call(unet, params, (x_t, t2), cond).sample
    return per_sample_mse(pred, target).chunk(2)


@contextlib.contextmanager
def adapters_disabled(unet):
    """The LoRA reference: the same UNet with its adapters switched off (no second copy)."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


@torch.no_grad()
def reference_errors(policy, reference, x_t, t2, cond, target):
    """Errors of the frozen reference: a separate UNet (full fine-tune) or `policy` without adapters (LoRA)."""
    if reference is not None:
        return pair_errors(reference, x_t, t2, cond, target)
    with adapters_disabled(policy):
        return pair_errors(policy, x_t, t2, cond, target)
