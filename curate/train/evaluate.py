"""Implicit accuracy of a policy against its reference on held-out pairs."""
from __future__ import annotations

import torch

from curate.train.losses import dpo_margin, implicit_accuracy
from curate.train.margins import noised_pair, pair_conditioning, pair_errors, reference_errors


@torch.no_grad()
def evaluate_pairs(unet, reference, scheduler, source, *, batches: int, draws: int = 1, seed: int = 1234,
                   device="cpu") -> dict:
    """Implicit accuracy and mean h over `batches` batches of `source`.

    Each pair's h is averaged over `draws` (noise, timestep) draws before its sign is taken: one
    draw at a large t says little about a pair. The noise seed is fixed, so two evaluations
    (before / after training) judge the pairs under the same corruptions. `reference` is a frozen
    UNet (full fine-tune) or None (LoRA: `unet` with adapters disabled).
    """
    was_training = unet.training
    unet.eval()
    gen = torch.Generator().manual_seed(seed)
    hs = []
    for _, batch in zip(range(batches), iter(source)):
        batch = batch.to(device)
        cond = pair_conditioning(batch)
        h = 0.0
        for _ in range(draws):
            noise = torch.randn(batch.latent_w.shape, generator=gen).to(device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), generator=gen).to(device)
            x_t, t2, target = noised_pair(scheduler, batch.latent_w, batch.latent_l, noise, t)
            model_w, model_l = pair_errors(unet, x_t, t2, cond, target)
            ref_w, ref_l = reference_errors(unet, reference, x_t, t2, cond, target)
            h = h + dpo_margin(model_w, model_l, ref_w, ref_l) / draws
        hs.append(h)
    unet.train(was_training)
    h = torch.cat(hs)
    return {"implicit_acc": float(implicit_accuracy(h)), "h_mean": float(h.mean()), "pairs": len(h)}
