"""The Diffusion-DPO / Adaptive-DPO training loop: config, setup, model, optimizer, loop.

    result = train(TrainConfig(model="path/or/hub-id", method="adaptive-dpo"), source)

`source` is a PairBatchSource of precomputed latents and prompt embeddings (see data.py): the loop
never runs the VAE or the text encoders. A run restarted on the same output_dir resumes from its
latest checkpoint and continues the same loss curve, on the same or another number of processes
(`accelerate launch --num_processes N` or `torchrun`; only the main process writes).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from curate.train.checkpoint import latest_checkpoint
from curate.train.config import TrainConfig
from curate.train.metrics import MetricsLog, health, peak_memory_mb, summarize
from curate.train.resume import restore_run, save_run
from curate.train.setup import apply_gradients, check_runtime, make_accelerator, place_model
from curate.train.step import StepOutput, noise_generator, pair_step


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; nothing was saved for the step that produced it."""


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    history: list[dict] = field(default_factory=list)   # this call's logged steps
    unet: object = None                                 # the trained policy (unwrapped)
    reference: object = None                            # frozen copy (full) or None (LoRA: adapters off)
    exported: Path | None = None
    skipped_steps: int = 0                              # fp16 steps the loss scaler skipped (overflow)


def train(cfg: TrainConfig, source, components=None, *, accelerator=None, export: bool = True) -> TrainResult:
    """Train on `source` until cfg.max_steps optimizer steps, resuming from output_dir if it holds
    a checkpoint. `components` (curate.train.models.Components) defaults to load_components(cfg.model);
    train() takes ownership of components.unet (adapters are added to it in place)."""
    # ---------------------------------------------------------------- setup
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    check_runtime(cfg)
    accelerator = accelerator or make_accelerator()
    check_world(cfg, source, accelerator)
    device, processes = accelerator.device, accelerator.num_processes
    empty = empty_prompt(cfg, source, device)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)  # LoRA init and anything else drawn from the global RNGs
    if components is None:
        from curate.train.models import load_components, unet_dtype

        components = load_components(cfg.model, cfg.revision, unet_dtype=unet_dtype(cfg))
    scheduler = components.noise_scheduler

    # ---------------------------------------------------------------- model and optimizer
    model = place_model(cfg, components.unet, accelerator)
    # Not passed to prepare(): accelerate would step it once per process; we step it once per optimizer step.
    lr_schedule = get_scheduler(cfg.lr_scheduler, model.optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                num_training_steps=cfg.max_steps)
    step = skipped = 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        step, skipped = restore_run(ckpt, cfg, model, lr_schedule, source, processes)
    log = MetricsLog(out, enabled=accelerator.is_main_process, tensorboard=cfg.tensorboard,
                     progress=cfg.progress, total=cfg.max_steps, start=step)
    log.event({"event": "start", "step": step, "resumed_from": str(ckpt) if ckpt else None, "processes": processes,
               "dropped_pairs": dict(getattr(source, "dropped", {})), "config": cfg.to_json()})
    result = TrainResult(output_dir=out, step=step, unet=model.bare, reference=model.reference)

    # ---------------------------------------------------------------- loop
    batches = iter(source)
    try:
        while step < cfg.max_steps:
            started, lr = time.perf_counter(), model.optimizer.param_groups[0]["lr"]
            parts = accumulate_gradients(cfg, accelerator, model, scheduler, batches, step, skipped, empty, out)
            grad_norm, was_skipped = apply_gradients(cfg, accelerator, model)
            if was_skipped:  # fp16 overflow: nothing moved, so neither do the schedule, the EMAs or the count
                skipped += 1
                log.event({"event": "skipped_step", "step": step + 1, "scale": model.precision.scaler.get_scale()})
                continue
            lr_schedule.step()
            step += 1
            if model.annotators is not None:
                model.annotators.update(model.trainable)

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                record = _record(accelerator, parts, lr, grad_norm, started, skipped)
                result.history.append({"step": step, **record})
                log.log(step, record)
            if accelerator.is_main_process and (
                    (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.max_steps):
                save_run(out, step, skipped, cfg, model, lr_schedule, source, processes)
        accelerator.wait_for_everyone()
        if export and accelerator.is_main_process:
            from curate.train.export import export_model

            result.exported = export_model(cfg, model.bare, components, out / "final")
            log.event({"event": "exported", "path": str(result.exported), "step": step})
    finally:
        log.close()
    result.step, result.skipped_steps = step, skipped
    return result


def accumulate_gradients(cfg, accelerator, model, scheduler, batches, step: int, skipped: int, empty, out: Path):
    """Forward and backward of one optimizer step's micro-batches; their StepOutputs."""
    processes, rank, parts = accelerator.num_processes, accelerator.process_index, []
    for micro in range(cfg.grad_accum):
        batch = next(batches).to(accelerator.device)
        gen = noise_generator(cfg.seed, step + skipped, micro * processes + rank)
        # Gradients are all-reduced once per optimizer step, on its last micro-batch.
        with nullcontext() if micro == cfg.grad_accum - 1 else accelerator.no_sync(model.unet):
            with model.precision.autocast():
                o = pair_step(cfg, model.policy, model.bare, model.reference, model.annotators, scheduler, batch, gen,
                              adaptive_on=step >= cfg.adaptive_warmup_steps, empty_prompt=empty)
            _check_finite(o, step, micro, batch, out)
            accelerator.backward(model.precision.scale(o.loss / cfg.grad_accum))
        parts.append(o)
    return parts


def check_world(cfg, source, accelerator) -> None:
    if accelerator.gradient_accumulation_steps != 1 or accelerator.mixed_precision != "no":
        raise ValueError("pass an Accelerator with gradient_accumulation_steps=1 and mixed_precision='no'; "
                         "set TrainConfig.grad_accum and mixed_precision instead")
    world = getattr(source, "world_size", 1), getattr(source, "rank", 0), getattr(source, "grad_accum", 1)
    here = accelerator.num_processes, accelerator.process_index, cfg.grad_accum
    if world != here:
        raise ValueError(f"the pair source is built for world_size, rank, grad_accum = {world} but this run is "
                         f"{here}; build it with rank=accelerator.process_index, "
                         "world_size=accelerator.num_processes, grad_accum=cfg.grad_accum")


def empty_prompt(cfg, source, device="cpu"):
    """The empty prompt's (text, pooled) on the device, when prompt dropout needs it."""
    if cfg.prompt_dropout <= 0:
        return None
    empty = getattr(source, "empty_prompt", None)
    if empty is None:
        raise ValueError(f"prompt_dropout={cfg.prompt_dropout} needs the empty prompt's embedding, which this pair "
                         "source lacks: run `prefcurate encode` again (it stores it), or set prompt_dropout to 0")
    text, pooled = empty
    return text.to(device), None if pooled is None else pooled.to(device)


def _check_finite(o: StepOutput, step: int, micro: int, batch, out: Path) -> None:
    # A CPU-GPU sync point, but a NaN must stop the run before it reaches the weights.
    if not torch.isfinite(o.loss):
        raise NonFiniteLoss(f"loss is {o.loss.item()} at step {step + 1} (micro-batch {micro}); "
                            f"pair_ids: {list(batch.pair_ids)}. No checkpoint was written for this "
                            f"step; the last good one is {latest_checkpoint(out)}")


def _record(accelerator, parts: list[StepOutput], lr: float, grad_norm, started: float, skipped: int) -> dict:
    """The logged record of one optimizer step, over the pairs of every process."""
    def gathered(name):
        if getattr(parts[0], name) is None:
            return None
        values = torch.cat([getattr(p, name) for p in parts])
        values = values.to(torch.uint8) if values.dtype == torch.bool else values  # gloo gathers no bools
        return accelerator.gather(values.contiguous()).cpu()

    model_err, ref_err = (_gather_pairs(accelerator, parts, name) for name in ("model_err", "ref_err"))
    h, u, weights, flagged = (gathered(n) for n in ("h", "u", "weights", "flagged"))
    record = summarize(gathered("losses"), h, u, weights, model_err, ref_err)
    record.update(lr=lr, grad_norm=float(grad_norm), pairs_per_s=len(h) / (time.perf_counter() - started),
                  peak_mem_mb=peak_memory_mb(accelerator.device), skipped_steps=skipped)
    record.update(health(model_err, ref_err, u, weights, flagged))
    return record


def _gather_pairs(accelerator, parts: list[StepOutput], name: str) -> torch.Tensor:
    """(2N,) [winners; losers] of every micro-batch and process (each part is [its winners; its losers])."""
    halves = [getattr(p, name).chunk(2) for p in parts]
    winners = accelerator.gather(torch.cat([w for w, _ in halves]).contiguous())
    losers = accelerator.gather(torch.cat([l for _, l in halves]).contiguous())
    return torch.cat([winners, losers]).cpu()
