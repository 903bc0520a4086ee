"""What a training checkpoint holds beyond the weights, and how a run resumes from it.

The state is a plain dict: step, optimizer, lr schedule, fp16 loss scaler, skipped steps, RNG
states, the data position (global: any number of processes can resume it) and the pairs taken per
optimizer step, which a resumed run must keep (batch_size x grad_accum x processes).
"""
from __future__ import annotations

from pathlib import Path

import torch

from curate.train.checkpoint import load_checkpoint, save_checkpoint
from curate.train.config import TrainConfig

# A resumed run may change how long it runs, how and where it reports (a run folder may move), and
# how the pairs of a step are split between processes and accumulation; nothing that shapes the loss curve.
RESUMABLE_CHANGES = {"max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "tensorboard", "progress",
                     "grad_accum", "output_dir"}


def pairs_per_step(cfg: TrainConfig, processes: int) -> int:
    return cfg.batch_size * cfg.grad_accum * processes


def save_run(out: Path, step: int, skipped: int, cfg: TrainConfig, model, lr_schedule, source, processes: int) -> Path:
    scaler = model.precision.scaler
    state = {"step": step, "skipped_steps": skipped, "optimizer": model.optimizer.state_dict(),
             "lr_scheduler": lr_schedule.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
             "pairs_per_step": pairs_per_step(cfg, processes), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "data": source.state_dict()}
    annotators = model.annotators
    return save_checkpoint(out, step, trainable=model.trainable, ema=annotators.state_dict() if annotators else None,
                           state=state, config_json=cfg.to_json(), keep=cfg.keep_checkpoints)


def restore_run(path: Path, cfg: TrainConfig, model, lr_schedule, source, processes: int) -> tuple[int, int]:
    """Load a checkpoint into the run; (step, skipped steps) it was saved at."""
    ckpt = load_checkpoint(path)
    check_resumable(path, TrainConfig.from_json(ckpt["config_json"]), cfg, ckpt["state"], processes)
    with torch.no_grad():
        for name, p in model.trainable.items():
            p.copy_(ckpt["trainable"][name])
    if model.annotators is not None:
        model.annotators.load_state_dict(ckpt["ema"])
    state = ckpt["state"]
    model.optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state["lr_scheduler"])
    if model.precision.scaler is not None:
        model.precision.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    source.load_state_dict(state["data"])
    return int(state["step"]), int(state.get("skipped_steps", 0))


def check_resumable(path: Path, saved: TrainConfig, cfg: TrainConfig, state: dict, processes: int) -> None:
    changed = {k for k, v in vars(saved).items() if getattr(cfg, k) != v} - RESUMABLE_CHANGES
    if changed:
        raise ValueError(f"cannot resume {path}: config fields {sorted(changed)} differ from the saved run; "
                         "use the saved config or a new output_dir")
    saved_pairs, pairs = state.get("pairs_per_step", pairs_per_step(saved, processes)), pairs_per_step(cfg, processes)
    if saved_pairs != pairs:
        raise ValueError(f"cannot resume {path}: it took {saved_pairs} pairs per optimizer step, this run takes "
                         f"{pairs} (batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x {processes} "
                         f"processes); set grad_accum to {saved_pairs // (cfg.batch_size * processes) or 1} "
                         "so the product stays the same")
