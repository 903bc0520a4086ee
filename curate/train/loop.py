"""The Diffusion-DPO / Adaptive-DPO training loop: config, setup, model, optimizer, loop.

    result = train(TrainConfig(model="path/or/hub-id", method="adaptive-dpo"), source)

`source` is a PairBatchSource of precomputed latents and prompt embeddings (see data.py): the loop
never runs the VAE or the text encoders. A run restarted on the same output_dir resumes from its
latest checkpoint and continues the same loss curve.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from curate.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from curate.train.config import TrainConfig
from curate.train.ema import EMAAnnotators
from curate.train.losses import adaptive_terms, dpo_margin, preference_loss
from curate.train.margins import noised_pair, pair_conditioning, pair_errors, reference_errors
from curate.train.metrics import MetricsLog, peak_memory_mb, summarize
from curate.train.setup import make_optimizer, prepare_policy, trainable_parameters

# A resumed run may change how long it runs and how it reports, nothing that shapes the loss curve.
RESUMABLE_CHANGES = {"max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "tensorboard", "progress"}


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; nothing was saved for the step that produced it."""


@dataclass
class StepOutput:
    loss: torch.Tensor          # scalar, with gradient
    losses: torch.Tensor        # per pair, detached
    h: torch.Tensor
    model_err: torch.Tensor     # (2B,) [winners; losers]
    ref_err: torch.Tensor
    u: torch.Tensor | None = None
    weights: torch.Tensor | None = None


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    history: list[dict] = field(default_factory=list)   # this call's logged steps
    unet: object = None                                 # the trained policy (unwrapped)
    reference: object = None                            # frozen copy (full) or None (LoRA: adapters off)
    exported: Path | None = None


def train(cfg: TrainConfig, source, components=None, *, accelerator=None, export: bool = True) -> TrainResult:
    """Train on `source` until cfg.max_steps optimizer steps, resuming from output_dir if it holds
    a checkpoint. `components` (curate.train.models.Components) defaults to load_components(cfg.model);
    train() takes ownership of components.unet (adapters are added to it in place)."""
    # ---------------------------------------------------------------- setup
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    accelerator = accelerator or Accelerator(gradient_accumulation_steps=cfg.grad_accum,
                                             mixed_precision=cfg.mixed_precision)
    device = accelerator.device
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)  # LoRA init and anything else drawn from the global RNGs
    if components is None:
        from curate.train.models import load_components

        components = load_components(cfg.model, cfg.revision)
    scheduler = components.noise_scheduler

    # ---------------------------------------------------------------- model
    unet, reference = prepare_policy(cfg, components.unet)
    if reference is not None:
        reference.to(device)
    trainable = trainable_parameters(unet)
    annotators = EMAAnnotators(trainable, cfg.ema_caps) if cfg.method == "adaptive-dpo" else None

    # ---------------------------------------------------------------- optimizer
    optimizer = make_optimizer(cfg, list(trainable.values()))
    # Not passed to prepare(): accelerate would step it once per process; we step it once per optimizer step.
    lr_schedule = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                num_training_steps=cfg.max_steps)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    bare_unet = accelerator.unwrap_model(unet)
    world = getattr(source, "world_size", 1), getattr(source, "rank", 0)
    if world != (accelerator.num_processes, accelerator.process_index):
        raise ValueError(f"the pair source is built for world_size, rank = {world} but this process is "
                         f"{accelerator.num_processes, accelerator.process_index}; build it with "
                         "rank=accelerator.process_index, world_size=accelerator.num_processes")
    step = 0

    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        step = _restore(ckpt, cfg, trainable, annotators, optimizer, lr_schedule, source)
    log = MetricsLog(out, enabled=accelerator.is_main_process, tensorboard=cfg.tensorboard,
                     progress=cfg.progress, total=cfg.max_steps, start=step)
    log.event({"event": "start", "step": step, "resumed_from": str(ckpt) if ckpt else None,
               "dropped_pairs": dict(getattr(source, "dropped", {})), "config": cfg.to_json()})
    result = TrainResult(output_dir=out, step=step, unet=bare_unet, reference=reference)

    # ---------------------------------------------------------------- loop
    batches = iter(source)
    try:
        while step < cfg.max_steps:
            started, parts = time.perf_counter(), []
            for micro in range(cfg.grad_accum):
                batch = next(batches).to(device)
                noise_gen = noise_generator(cfg.seed, step, micro, accelerator.process_index)
                with accelerator.accumulate(unet):
                    with accelerator.autocast():
                        o = pair_step(cfg, unet, bare_unet, reference, annotators, scheduler, batch, noise_gen,
                                      adaptive_on=step >= cfg.adaptive_warmup_steps)
                    # A CPU-GPU sync point, but a NaN must stop the run before it reaches the weights.
                    if not torch.isfinite(o.loss):
                        raise NonFiniteLoss(f"loss is {o.loss.item()} at step {step + 1} (micro-batch {micro}); "
                                            f"pair_ids: {list(batch.pair_ids)}. No checkpoint was written for this "
                                            f"step; the last good one is {latest_checkpoint(out)}")
                    accelerator.backward(o.loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(list(trainable.values()), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                parts.append(o)
            lr_schedule.step()
            step += 1
            if annotators is not None:
                annotators.update(trainable)

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                record = _record(parts, lr_schedule, started, device, accelerator.num_processes)
                result.history.append({"step": step, **record})
                log.log(step, record)
            if accelerator.is_main_process and (
                    (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.max_steps):
                _save(out, step, cfg, trainable, annotators, optimizer, lr_schedule, source)
        accelerator.wait_for_everyone()
        if export and accelerator.is_main_process:
            from curate.train.export import export_model

            result.exported = export_model(cfg, bare_unet, components, out / "final")
            log.event({"event": "exported", "path": str(result.exported), "step": step})
    finally:
        log.close()
    result.step = step
    return result


def noise_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The generator of one micro-batch's noise and timesteps: a function of where the run is, not of
    what ran before, so a resumed run (on any number of ranks) draws exactly what it would have."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + micro) * 101 + rank)


def pair_step(cfg, unet, bare_unet, reference, annotators, scheduler, batch, noise_gen, adaptive_on) -> StepOutput:
    """Loss of one micro-batch: one noise and timestep per pair, policy vs reference, then the loss."""
    device = batch.latent_w.device
    noise = torch.randn(batch.latent_w.shape, generator=noise_gen).to(device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), generator=noise_gen).to(device)
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
        weights = batch.weight.float() if weights is None else weights * batch.weight.float()
    losses = preference_loss(h, cfg.loss, cfg.beta, weights=weights, margin=margin,
                             label_smoothing=cfg.label_smoothing, ipo_tau=cfg.ipo_tau)
    return StepOutput(loss=losses.mean(), losses=losses.detach(), h=h.detach(),
                      model_err=torch.cat([model_w, model_l]).detach(), ref_err=torch.cat([ref_w, ref_l]),
                      u=u, weights=None if weights is None else weights.detach())


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


def _record(parts, lr_schedule, started, device, processes) -> dict:
    cat = lambda name: None if getattr(parts[0], name) is None else torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    record = summarize(cat("losses"), cat("h"), cat("u"), cat("weights"), cat("model_err"), cat("ref_err"))
    pairs = sum(len(p.h) for p in parts) * processes
    record.update(lr=lr_schedule.get_last_lr()[0], pairs_per_s=pairs / (time.perf_counter() - started),
                  peak_mem_mb=peak_memory_mb(device))
    return record


def _save(out, step, cfg, trainable, annotators, optimizer, lr_schedule, source) -> Path:
    state = {"step": step, "optimizer": optimizer.state_dict(), "lr_scheduler": lr_schedule.state_dict(),
             "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "data": source.state_dict()}
    return save_checkpoint(out, step, trainable=trainable, ema=annotators.state_dict() if annotators else None,
                           state=state, config_json=cfg.to_json(), keep=cfg.keep_checkpoints)


def _restore(path, cfg, trainable, annotators, optimizer, lr_schedule, source) -> int:
    ckpt = load_checkpoint(path)
    saved = TrainConfig.from_json(ckpt["config_json"])
    changed = {k for k, v in vars(saved).items() if getattr(cfg, k) != v} - RESUMABLE_CHANGES
    if changed:
        raise ValueError(f"cannot resume {path}: config fields {sorted(changed)} differ from the saved run; "
                         "use the saved config or a new output_dir")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(ckpt["trainable"][name])
    if annotators is not None:
        annotators.load_state_dict(ckpt["ema"])
    state = ckpt["state"]
    optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state["lr_scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    source.load_state_dict(state["data"])
    return int(state["step"])
