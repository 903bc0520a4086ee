"""Pretrain the base model on the synthetic world: prompts paired with imperfect renders of them.

The training images are the world's candidate pool (curate.synth.pool): each prompt's images come
from simulated generators that get some attributes wrong and blur or noise the picture. A model
fitted to that data follows prompts imperfectly and makes images of mixed quality, which is what
preference tuning needs to have something to fix. JPEG is switched off (quality = blur x noise
only): at 32 px a JPEG round trip is mostly block artefacts that the judge could not read back.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from curate.align.model import AlignModel, to_latents, uint8_to_pixels


@dataclass(frozen=True)
class PretrainConfig:
    prompts: int = 8000
    per_prompt: int = 4
    batch_size: int = 32
    steps: int = 900
    minutes: float = 60.0           # safety stop (and save) past this wall time; steps decide the model
    lr: float = 1e-3
    warmup: int = 50
    prompt_dropout: float = 0.1     # empty prompts teach the unconditional model that guidance needs
    ema_decay: float = 0.995
    seed: int = 0


def render_training_set(prompts: int, per_prompt: int, size: int, seed: int):
    """(images uint8 (N, size, size, 3), prompt of each image, true fidelity, true quality)."""
    from curate.synth import scene as sc
    from curate.synth.pool import make_pool

    pool = make_pool(np.random.default_rng([seed, 11]), prompts, per_prompt)
    images = np.stack([np.asarray(sc.render(pool.scene(i), sc.QualityParams(float(pool.blur[i]), float(pool.noise[i]), 100),
                                            size, int(pool.seed[i]))) for i in range(pool.n_images)])
    texts = pool.prompts[pool.prompt_of(np.arange(pool.n_images))]
    return images, list(texts), pool.fidelity, sc.quality_values(pool.blur, pool.noise, 100)


def pretrain(cfg: PretrainConfig = PretrainConfig(), log=print) -> tuple[AlignModel, dict]:
    """Train from scratch; returns the EMA model and a record (loss curve, wall time, data summary)."""
    model = AlignModel.fresh(seed=cfg.seed)
    started = time.perf_counter()
    images, texts, fid, qual = render_training_set(cfg.prompts, cfg.per_prompt, model.cfg.image_size, cfg.seed)
    log(f"rendered {len(images)} training images in {time.perf_counter() - started:.0f} s "
        f"(data fidelity {fid.mean():.3f}, quality {qual.mean():.3f})")
    params = list(model.encoder.parameters()) + list(model.unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    def schedule(s: int) -> float:  # linear warm-up, then cosine down to a tenth of the peak
        return min(1.0, (s + 1) / cfg.warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / cfg.steps)))
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ema = {"encoder": copy.deepcopy(model.encoder), "unet": copy.deepcopy(model.unet)}
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    curve, running, step = [], [], 0
    model.encoder.train()
    model.unet.train()
    for step in range(cfg.steps):
        idx = rng.integers(0, len(images), cfg.batch_size)
        prompts = ["" if rng.random() < cfg.prompt_dropout else texts[i] for i in idx]
        x0 = to_latents(uint8_to_pixels(images[idx]), model.cfg.patch)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, model.cfg.train_timesteps, (len(idx),), generator=gen)
        pred = model.unet(model.scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=model.encoder(prompts)).sample
        target = noise if model.cfg.prediction == "epsilon" else model.scheduler.get_velocity(x0, noise, t)
        loss = torch.nn.functional.mse_loss(pred, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        _ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        running.append(loss.item())
        if (step + 1) % 50 == 0:
            curve.append([step + 1, round(float(np.mean(running)), 4)])
            running = []
            log(f"step {step + 1}/{cfg.steps} loss {curve[-1][1]:.4f} ({time.perf_counter() - started:.0f} s)")
        if time.perf_counter() - started > cfg.minutes * 60:
            log(f"time limit of {cfg.minutes} min reached at step {step + 1}")
            break
    out = AlignModel(model.cfg, ema["encoder"].eval(), ema["unet"].eval(), model.scheduler)
    record = {"pretrain": asdict(cfg), "steps_done": step + 1, "loss_curve": curve,
              "train_seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads(),
              "data": {"images": len(images), "fidelity": round(float(fid.mean()), 4),
                       "quality": round(float(qual.mean()), 4)}}
    return out, record


@torch.no_grad()
def _ema_update(ema: dict, model: AlignModel, decay: float) -> None:
    for name, live in (("encoder", model.encoder), ("unet", model.unet)):
        for shadow, p in zip(ema[name].parameters(), live.parameters()):
            shadow.lerp_(p.detach(), 1.0 - decay)
