"""Sample the world model through its diffusers pipeline and judge the samples against the world's renders."""
from __future__ import annotations

import numpy as np

SIZE = 32


def held_out_prompts(n: int, seed: int = 300) -> tuple[list[str], np.ndarray]:
    """Prompts from a seed the world model's training set never used."""
    from curate.synth import scene as sc
    from curate.synth.pool import random_scenes

    codes = random_scenes(np.random.default_rng([seed, 7]), n)
    return [str(p) for p in sc.prompts_for_codes(codes)], codes


def sample_images(components, prompts: list[str], seeds, *, unet=None, steps: int = 20, guidance: float = 3.0,
                  batch: int = 64) -> np.ndarray:
    """(N, SIZE, SIZE, 3) uint8: one image per prompt, from its own noise seed, DDIM with guidance.

    The same seed gives every model the same starting noise, so base-vs-tuned comparisons are paired.
    """
    import torch
    from diffusers import DDIMScheduler

    pipe = components.pipeline(unet=unet)
    pipe.scheduler = DDIMScheduler.from_config(components.noise_scheduler.config, set_alpha_to_one=False)
    pipe.set_progress_bar_config(disable=True)
    out = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch):
            gens = [torch.Generator().manual_seed(int(x)) for x in seeds[s:s + batch]]
            images = pipe(prompts[s:s + batch], height=SIZE, width=SIZE, num_inference_steps=steps,
                          guidance_scale=guidance, generator=gens, output_type="np").images
            out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def render_images(pool, clean: bool = False) -> np.ndarray:
    """The pool's renders at SIZE (JPEG off), or clean renders of its prompts' own scenes."""
    from curate.synth import scene as sc

    if clean:
        return np.stack([np.asarray(sc.render(sc.Scene.from_codes(t), sc.QualityParams(), SIZE, i))
                         for i, t in enumerate(pool.targets)])
    return np.stack([np.asarray(sc.render(pool.scene(i), sc.QualityParams(float(pool.blur[i]), float(pool.noise[i]), 100),
                                          SIZE, int(pool.seed[i]))) for i in range(pool.n_images)])


def _summary(judged: dict) -> dict:
    return {"fidelity": round(float(judged["fidelity"].mean()), 4), "exact_scene": round(float((judged["fidelity"] == 1).mean()), 4),
            "quality": round(float(judged["quality"].mean()), 4), "reward": round(float(judged["reward"].mean()), 4),
            "images": int(len(judged["fidelity"]))}


def describe_model(components, n_prompts: int, steps: int = 20, guidance: float = 3.0) -> dict:
    """Judge's fidelity, quality and reward: the model's samples (2 per held-out prompt), the world's
    pool renders of the same prompts, and clean renders of them."""
    from curate.scorers.judge import judge_images
    from curate.synth.pool import make_pool

    prompts, codes = held_out_prompts(n_prompts)
    seeds = np.arange(2 * n_prompts) + 7_000_000
    samples = sample_images(components, list(np.repeat(prompts, 2)), seeds, steps=steps, guidance=guidance)
    pool = make_pool(np.random.default_rng([300, 11]), n_prompts, 4)
    own = np.repeat(pool.targets, 4, axis=0)
    return {"held_out_prompts": n_prompts, "sampler": f"DDIM {steps} steps, guidance {guidance}",
            "model_samples": _summary(judge_images(samples, np.repeat(codes, 2, axis=0))),
            "world_pool_renders": _summary(judge_images(render_images(pool), own)),
            "world_clean_renders": _summary(judge_images(render_images(pool, clean=True), pool.targets))}
