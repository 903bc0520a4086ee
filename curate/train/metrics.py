"""Per-step training metrics: JSONL always, TensorBoard when installed, a tqdm progress bar."""
from __future__ import annotations

import json
import resource
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


def peak_memory_mb(device) -> float:
    """Peak accelerator memory allocated, or the process's peak RSS on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class MetricsLog:
    def __init__(self, output_dir: Path, *, enabled: bool, tensorboard: bool, progress: bool, total: int, start: int):
        self.enabled = enabled
        self.file = (output_dir / "metrics.jsonl").open("a") if enabled else None
        self.tb = _tensorboard(output_dir / "tb") if enabled and tensorboard else None
        self.bar = None
        if enabled and progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def log(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **record}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"train/{key}", value, step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['implicit_acc']:.2f}")

    def event(self, record: dict) -> None:
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        for thing in (self.bar, self.tb, self.file):
            if thing is not None:
                thing.close()


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(path))
