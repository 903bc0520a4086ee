"""One micro-batch of Diffusion-DPO / Adaptive-DPO: noise, margins, minority scores, the loss.

Everything a step draws (noise, timesteps, prompt dropout) comes from one generator that is a
function of where the run is (see noise_generator), never of what ran before.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from curate.train.losses import adaptive_terms, dpo_margin, preference_loss
from curate.train.margins import noised_pair, pair_conditioning, pair_errors, reference_errors
from curate.train.sampler import stream_seed


@dataclass
class StepOutput:
    loss: torch.Tensor          # scalar, with gradient
    losses: torch.Tensor        # per pair, detached
    h: torch.Tensor
    model_err: torch.Tensor     # (2B,) [winners; losers]
    ref_err: torch.Tensor
    u: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    flagged: torch.Tensor | None = None     # per pair, from the data (pair_scores.is_minority), or None


def noise_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The generator of one micro-batch: `index` = micro * processes + rank, the micro-batch's place
    among the step's global batches, so one process with 2x accumulation draws what two processes
    draw, and a resumed run (on any number of processes) draws exactly what it would have."""
    return torch.Generator().manual_seed((stream_seed(seed, step) * 1009 + index) * 101)


def drop_prompts(batch, empty_prompt, p: float, gen: torch.Generator):
    """Each pair trains on the empty prompt with probability p (both of its images: they share the
    conditioning). `empty_prompt` is (text (L, D), pooled (P,) or None) on the batch's device."""
    drop = (torch.rand(len(batch), generator=gen) < p).to(batch.text_emb.device)
    text, pooled = empty_prompt
    out = replace(batch, text_emb=torch.where(drop[:, None, None], text.to(batch.text_emb.dtype), batch.text_emb))
    if batch.pooled is not None:
        out = replace(out, pooled=torch.where(drop[:, None], pooled.to(batch.pooled.dtype), batch.pooled))
    return out


def pair_step(cfg, unet, bare_unet, reference, annotators, scheduler, batch, noise_gen, adaptive_on,
              empty_prompt=None) -> StepOutput:
    """Loss of one micro-batch: one noise and timestep per pair, policy vs reference, then the loss."""
    device = batch.latent_w.device
    noise = torch.randn(batch.latent_w.shape, generator=noise_gen).to(device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), generator=noise_gen).to(device)
    if cfg.prompt_dropout > 0:
        batch = drop_prompts(batch, empty_prompt, cfg.prompt_dropout, noise_gen)
    x_t, t2, target = noised_pair(scheduler, batch.latent_w, batch.latent_l, noise, timesteps)
    cond = pair_conditioning(batch)

    model_w, model_l = pair_errors(unet, x_t, t2, cond, target)
    ref_w, ref_l = reference_errors(bare_unet, reference, x_t, t2, cond, target)
    h = dpo_margin(model_w, model_l, ref_w, ref_l)

    u = weights = margin = None
    if cfg.method != "dpo":
        u = minority_scores(cfg, bare_unet, annotators, batch, h, (x_t, t2, cond, target, ref_w, ref_l), adaptive_on)
        weights, margin = adaptive_terms(u, h, cfg.beta, weight_kind=cfg.weight_kind, margin_kind=cfg.margin_kind,
                                         k=cfg.weight_k, c=cfg.weight_c)
    if batch.weight is not None:  # per-pair data weights (train --minority weight: pair_scores.weight)
        if cfg.method == "adaptive-offline":
            raise ValueError(DOUBLE_WEIGHT)
        weights = batch.weight.float() if weights is None else weights * batch.weight.float()
    losses = preference_loss(h, cfg.loss, cfg.beta, weights=weights, margin=margin,
                             label_smoothing=cfg.label_smoothing, ipo_tau=cfg.ipo_tau)
    return StepOutput(loss=losses.mean(), losses=losses.detach(), h=h.detach(),
                      model_err=torch.cat([model_w, model_l]).detach(), ref_err=torch.cat([ref_w, ref_l]),
                      u=u, weights=None if weights is None else weights.detach(), flagged=batch.flagged)


DOUBLE_WEIGHT = ("adaptive-offline already weights each pair by W = 1/(k u + c) from pair_scores.u; --minority "
                 "weight would multiply the loss by pair_scores.weight, the same W again. Use --minority keep (or "
                 "drop) with adaptive-offline, or --method dpo --minority weight for the data weights alone")


def minority_scores(cfg, bare_unet, annotators, batch, h, forward_args, adaptive_on) -> torch.Tensor:
    """u per pair: from the data (adaptive-offline) or from policy + EMA annotators (adaptive-dpo)."""
    if cfg.method == "adaptive-offline":
        if batch.u is None:
            raise ValueError(f"method 'adaptive-offline' needs per-pair u from the data, but pairs "
                             f"{list(batch.pair_ids)[:4]}... have none; run the minority stage or use 'adaptive-dpo'")
        return batch.u.float()
    if not adaptive_on:  # the EMAs are still warming up: their judgements mean nothing yet
        return torch.zeros_like(h, dtype=torch.float32)
    from curate.minority import minority_score

    judgements = [h.detach()] + annotators.margins(bare_unet, *forward_args)
    return torch.as_tensor(minority_score(torch.stack(judgements).float(), cfg.rho,
                                          normalize=cfg.minority_normalize).u, device=h.device).float()
