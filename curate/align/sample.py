"""Deterministic DDIM sampling with classifier-free guidance, one noise seed per image.

The same seed gives the same starting noise to every model, so "base vs tuned" comparisons differ
only by the weights (a paired comparison: the win rate needs no extra samples to be fair).
"""
from __future__ import annotations

import numpy as np
import torch

from curate.align.model import pixels_to_uint8, to_images


def initial_noise(seeds, shape) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def sample_images(unet, scheduler, text: torch.Tensor, empty: torch.Tensor, seeds, *, patch: int, steps: int = 20,
                  guidance: float = 3.0, batch: int = 128) -> np.ndarray:
    """(N, H, W, 3) uint8 images for prompt states `text` (N, L, D); `empty` (L, D) is the empty prompt.

    Guidance: eps = eps_empty + guidance * (eps_text - eps_empty), both from `unet`.
    """
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=False, set_alpha_to_one=False)
    ddim.set_timesteps(steps)
    was_training = unet.training
    unet.eval()
    device = next(unet.parameters()).device  # noise is drawn on the CPU so every device starts alike
    side = unet.config.sample_size
    shape = (unet.config.in_channels, side, side)
    out = []
    for start in range(0, len(text), batch):
        cond = text[start:start + batch]
        n = len(cond)
        x = initial_noise(seeds[start:start + n], shape).to(device)
        states = torch.cat([empty.expand(n, *empty.shape), cond]).to(device)
        for t in ddim.timesteps:
            eps = unet(torch.cat([x, x]), t, encoder_hidden_states=states).sample
            eps_empty, eps_text = eps.chunk(2)
            x = ddim.step(eps_empty + guidance * (eps_text - eps_empty), t, x).prev_sample
        out.append(pixels_to_uint8(to_images(x, patch)))
    unet.train(was_training)
    return np.concatenate(out)
