"""`prefcurate train` and `prefcurate sample`: Diffusion-DPO / Adaptive-DPO on encoded pairs."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli.common import fail


class Method(str, Enum):
    dpo = "dpo"
    adaptive_dpo = "adaptive-dpo"
    adaptive_offline = "adaptive-offline"


class Loss(str, Enum):
    dpo = "dpo"
    hinge = "hinge"
    ipo = "ipo"
    cdpo = "cdpo"
    rdpo = "rdpo"


class Finetune(str, Enum):
    lora = "lora"
    full = "full"


class Precision(str, Enum):
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


def train(
    encoded: Annotated[Path, typer.Argument(help="Encoded pairs: a folder written by EncodedPairs.save "
                                            "(latents, prompt embeddings, pairs.jsonl).", exists=True, file_okay=False)],
    model: Annotated[str, typer.Option(help="Hub id or local diffusers folder (SD 1.x/2.x or SDXL); the same "
                                       "model that encoded the pairs. Honours HF_HUB_OFFLINE.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: checkpoints, metrics.jsonl, final/. "
                                      "Rerunning on it resumes from the latest checkpoint.", file_okay=False)],
    method: Annotated[Method, typer.Option(help="dpo; adaptive-dpo (online EMA annotators); adaptive-offline "
                                           "(per-pair u from the data).")] = Method.dpo,
    loss: Annotated[Loss, typer.Option(help="Loss on h. Adaptive methods take dpo or ipo.")] = Loss.dpo,
    beta: Annotated[float, typer.Option(help="Multiplies h directly: loss = -log sigmoid(beta h). diffusers' "
                                        "beta_dpo 2500 = 2500 here; Salesforce's 5000 with its -0.5 factor = 2500; "
                                        "the Adaptive-DPO README's 1000 = 1000.")] = 2500.0,
    finetune: Annotated[Finetune, typer.Option(help="lora (reference = adapters off) or full (frozen copy).")] = Finetune.lora,
    lora_rank: Annotated[int, typer.Option(min=1)] = 8,
    learning_rate: Annotated[float, typer.Option("--lr")] = 1e-5,
    max_steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per device per micro-batch.")] = 16,
    grad_accum: Annotated[int, typer.Option(min=1)] = 1,
    mixed_precision: Annotated[Precision, typer.Option()] = Precision.no,
    gradient_checkpointing: Annotated[bool, typer.Option()] = False,
    label_smoothing: Annotated[float, typer.Option(help="eps for cdpo / rdpo.")] = 0.0,
    rho: Annotated[float, typer.Option(help="Adaptive-DPO scale of the normalised margins.")] = 15.0,
    checkpoint_every: Annotated[int, typer.Option(min=0)] = 500,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train a LoRA or a full UNet with Diffusion-DPO or Adaptive-DPO on precomputed latents."""
    from curate.train.config import TrainConfig
    from curate.train.data import EncodedPairs
    from curate.train.loop import NonFiniteLoss
    from curate.train.loop import train as run_training

    try:
        cfg = TrainConfig(model=model, output_dir=str(out), method=method.value, loss=loss.value, beta=beta,
                          finetune=finetune.value, lora_rank=lora_rank, learning_rate=learning_rate,
                          max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
                          mixed_precision=mixed_precision.value, gradient_checkpointing=gradient_checkpointing,
                          label_smoothing=label_smoothing, rho=rho, checkpoint_every=checkpoint_every, seed=seed)
        source = EncodedPairs.load(encoded).source(batch_size, seed=seed)
        result = run_training(cfg, source)
    except (ValueError, FileNotFoundError, NonFiniteLoss) as err:
        fail(str(err))
    typer.echo(f"trained {result.step} steps; dropped pairs: {dict(source.dropped) or 'none'}; "
               f"model: {result.exported}")


def sample(
    model: Annotated[str, typer.Option(help="Base model: hub id or local diffusers folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write (row 1 base, row 2 tuned).", dir_okay=False)],
    lora: Annotated[Optional[Path], typer.Option(help="LoRA folder (train's final/ with --finetune lora).",
                                                 exists=True, file_okay=False)] = None,
    tuned: Annotated[Optional[Path], typer.Option(help="Full fine-tuned pipeline folder (train's final/).",
                                                  exists=True, file_okay=False)] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="Repeatable.")] = None,
    steps: Annotated[int, typer.Option(min=1)] = 25,
    size: Annotated[Optional[int], typer.Option(help="Image side in pixels (default: the model's).")] = None,
    guidance_scale: Annotated[float, typer.Option()] = 5.0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Render the same prompts and seeds from the base and the tuned model, side by side."""
    from curate.train.models import load_components
    from curate.train.sample import sample_grid

    if (lora is None) == (tuned is None):
        fail("give exactly one of --lora (a LoRA folder) or --tuned (a full pipeline folder)")
    prompts = prompt or ["a photo of a cat", "a watercolor landscape", "a portrait of an astronaut"]
    try:
        base = load_components(model)
        tuned_unet = load_components(str(tuned)).unet if tuned else None
        sample_grid(base, prompts, out, lora_dir=lora, tuned_unet=tuned_unet, steps=steps, size=size,
                    guidance_scale=guidance_scale, seed=seed, device=_device())
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    typer.echo(f"wrote {out}")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
