"""Per-step training metrics: JSONL always, TensorBoard when installed, progress (curate.progress).

A resumed run's log reads like an uninterrupted one: the records a killed run wrote after its last
checkpoint are removed when the run resumes from that checkpoint (and TensorBoard purges them).
"""
from __future__ import annotations

import json
import os
import resource
from contextlib import ExitStack
from pathlib import Path

import torch


def summarize(losses, h, u, weights, model_err, ref_err) -> dict:
    """Scalar statistics of one optimizer step's micro-batches (tensors already concatenated)."""
    from curate.train.losses import implicit_accuracy

    out = {"loss": float(losses.mean()), "implicit_acc": float(implicit_accuracy(h)),
           "model_err": float(model_err.mean()), "ref_err": float(ref_err.mean()),
           "h_mean": float(h.mean()), "h_std": float(h.std()) if h.numel() > 1 else 0.0,
           "h_min": float(h.min()), "h_max": float(h.max())}
    if u is not None:
        out.update(u_mean=float(u.mean()), u_max=float(u.max()), u_p90=float(torch.quantile(u.float(), 0.9)))
    if weights is not None:
        out.update(w_mean=float(weights.mean()), w_min=float(weights.min()))
    return out


def health(model_err, ref_err, u, weights, flagged) -> dict:
    """Training-health figures of one step: how far the policy's errors moved from the reference's
    on winners and on losers, and the per-pair u and W split by the data's minority flag.

    model_err / ref_err are (2N,) [winners; losers]; `flagged` (N,) bool or None (no flags known:
    every pair counts as kept).
    """
    delta_w, delta_l = (model_err.float() - ref_err.float()).chunk(2)
    out = {"err_w_delta": float(delta_w.mean()), "err_l_delta": float(delta_l.mean())}
    is_flagged = torch.zeros(len(delta_w), dtype=torch.bool) if flagged is None else flagged.bool().cpu()
    for name, values in (("u", u), ("w", weights)):
        if values is not None:
            values = values.float().cpu()
            out[f"{name}_flagged"] = [round(float(v), 4) for v in values[is_flagged]]
            out[f"{name}_kept"] = [round(float(v), 4) for v in values[~is_flagged]]
    return out


def peak_memory_mb(device) -> float:
    """Peak accelerator memory allocated, or the process's peak RSS on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def truncate_log(path: Path, step: int) -> None:
    """Keep the records of steps <= `step` (the checkpoint resumed from); rewrite, then rename."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class MetricsLog:
    def __init__(self, output_dir: Path, *, enabled: bool, tensorboard: bool, progress: bool, total: int, start: int):
        self.enabled = enabled
        if enabled:
            truncate_log(output_dir / "metrics.jsonl", start)
        self.file = (output_dir / "metrics.jsonl").open("a") if enabled else None
        self.tb = _tensorboard(output_dir / "tb", start) if enabled and tensorboard else None
        self.total, self.bars, self.update = total, ExitStack(), None
        if enabled and progress:
            from curate.progress import progress_bars

            self.update = self.bars.enter_context(progress_bars())
            self.update("train", start, total)

    def log(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **record}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"train/{key}", value, step)
        if self.update is not None:
            self.update("train", step, self.total, note=f"loss {record['loss']:.4f} acc {record['implicit_acc']:.2f}")

    def event(self, record: dict) -> None:
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        for thing in (self.bars, self.tb, self.file):
            if thing is not None:
                thing.close()


def _tensorboard(path: Path, start: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    # purge_step drops the events a killed run logged after the checkpoint this run resumes from.
    return SummaryWriter(str(path), purge_step=start + 1 if start else None)
