"""Tiny diffusion models and one real evaluation of them, shared by the evaluate and report tests (built once)."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from typer.testing import CliRunner

from curate.cli import app

runner = CliRunner()
_BUILT: dict[str, Path] = {}


def build_models() -> Path:
    """A tiny SD 1.x folder, a LoRA on it (random, non-zero) and a full fine-tune (other UNet weights)."""
    if "models" not in _BUILT:
        import torch
        from peft import LoraConfig

        from curate.train.export import save_lora
        from curate.train.models import tiny_sd15

        root = Path(tempfile.mkdtemp(prefix="prefcurate-eval-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        tiny_sd15(0).save_pretrained(root / "base")
        tuned = tiny_sd15(0)
        torch.manual_seed(1)
        tuned.unet.add_adapter(LoraConfig(r=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        save_lora(tuned.unet, tuned, root / "lora")
        tiny_sd15(1).save_pretrained(root / "full")
        _BUILT["models"] = root
    return _BUILT["models"]


def evaluate_cli(out: Path, *extra: str):
    """`prefcurate evaluate` of the tiny base against its LoRA and its full fine-tune, two scorer kinds."""
    models = build_models()
    return runner.invoke(app, ["evaluate", "--model", str(models / "base"), "--lora", str(models / "lora"),
                               "--tuned", str(models / "full"), "--prompts", "world:3", "--scorers",
                               "world,clip:domain", "--images-per-prompt", "2", "--seed", "7", "--steps", "2",
                               "--resolution", "32", "--batch-size", "4", "--device", "cpu", "--out", str(out), *extra])


def build_evaluation() -> Path:
    """The evaluation folder of ``evaluate_cli`` (never modified by the tests that share it)."""
    if "evaluation" not in _BUILT:
        out = build_models() / "evaluation"
        result = evaluate_cli(out)
        assert result.exit_code == 0, (result.output, repr(result.exception))
        _BUILT["evaluation"] = out
    return _BUILT["evaluation"]
