"""Training checkpoints: a directory written under a temporary name and renamed when complete.

    checkpoint-00000500/
      trainable.safetensors   the trainable weights (LoRA adapters, or the whole UNet), by parameter name
      ema.safetensors         Adaptive-DPO's EMA annotators (when used)
      state.pt                a plain dict: step, optimizer, lr scheduler, RNG states, data position
      config.json             the frozen TrainConfig of the run

A directory named checkpoint-* is complete by construction; half-written ones keep their .tmp- name.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import torch

PREFIX = "checkpoint-"


def save_checkpoint(output_dir: str | Path, step: int, *, trainable: dict, ema: dict | None, state: dict,
                    config_json: str, keep: int = 2) -> Path:
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"{PREFIX}{step:08d}"
    tmp = output_dir / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    save_file({n: t.detach().contiguous().cpu() for n, t in trainable.items()}, str(tmp / "trainable.safetensors"))
    if ema is not None:
        save_file({n: t.contiguous().cpu() for n, t in ema["tensors"].items()}, str(tmp / "ema.safetensors"))
        state = {**state, "ema": {k: v for k, v in ema.items() if k != "tensors"}}
    torch.save(state, tmp / "state.pt")
    (tmp / "config.json").write_text(config_json)
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (a resumed run that ended where it started)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(output_dir)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> dict:
    """{'trainable', 'ema' (or None), 'state', 'config_json'} of a checkpoint directory."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "state.pt").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no state.pt); remove it or pick another")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    ema = None
    if (path / "ema.safetensors").exists():
        ema = {**state.pop("ema"), "tensors": load_file(str(path / "ema.safetensors"))}
    return {"trainable": load_file(str(path / "trainable.safetensors")), "ema": ema, "state": state,
            "config_json": (path / "config.json").read_text()}


def _fsync_dir(path: Path) -> None:
    for child in [*path.iterdir(), path] if path.is_dir() else [path]:
        try:
            fd = os.open(child, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass  # some filesystems refuse fsync on directories; the rename is still atomic
        finally:
            os.close(fd)
