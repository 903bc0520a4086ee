"""A trivially learnable latent preference, for tests and benchmarks of the trainer.

Preferred latents are a fixed pattern plus noise, the others are noise alone: a model can learn
to denoise pattern-like latents better, and that generalises to held-out pairs.
"""
from __future__ import annotations

import torch

from curate.train.data import EncodedPairs


def pattern_pairs(n_pairs: int, *, latent_shape=(4, 16, 16), text_shape=(16, 32), pooled_dim: int | None = None,
                  n_prompts: int = 4, n_ties: int = 0, seed: int = 0, with_u: bool = False,
                  prefix: str = "p") -> EncodedPairs:
    """EncodedPairs of n_pairs learnable pairs (+ n_ties ties that a source must drop), with an
    "empty prompt" embedding for prompt dropout.

    The pattern depends only on the latent shape (not on `seed`), so pairs drawn with different
    seeds share it: use one seed for training pairs and another for held-out ones.
    """
    pattern = torch.sin(torch.arange(latent_shape[-1]) * 0.7).expand(latent_shape) * 1.5
    gen = torch.Generator().manual_seed(seed)
    out = EncodedPairs(pairs=[], time_ids={} if pooled_dim else None)
    empty = torch.Generator().manual_seed(seed + 7919)  # a stream apart, so the pairs do not depend on it
    out.empty_prompt = (torch.randn(text_shape, generator=empty),
                        torch.randn(pooled_dim, generator=empty) if pooled_dim else None)
    for j in range(n_prompts):
        text = torch.randn(text_shape, generator=gen)
        out.prompts[f"{prefix}prompt{j}"] = (text, torch.randn(pooled_dim, generator=gen)) if pooled_dim else text
    for i in range(n_pairs + n_ties):
        good, bad = f"{prefix}img{i}g", f"{prefix}img{i}b"
        out.latents[good] = pattern + 0.1 * torch.randn(latent_shape, generator=gen)
        out.latents[bad] = torch.randn(latent_shape, generator=gen)
        if pooled_dim:
            for image_id in (good, bad):
                out.time_ids[image_id] = torch.tensor([32.0, 32.0, 0.0, 0.0, 32.0, 32.0])
        # Alternate which side holds the winner so a/b bookkeeping is exercised.
        a, b, label = (good, bad, "a") if i % 2 == 0 else (bad, good, "b")
        pair = {"pair_id": f"{prefix}pair{i}", "prompt_id": f"{prefix}prompt{i % n_prompts}",
                "image_a_id": a, "image_b_id": b, "label": "tie" if i >= n_pairs else label}
        if with_u:
            pair["u"] = float(torch.rand((), generator=gen)) * 0.5
        out.pairs.append(pair)
    return out
