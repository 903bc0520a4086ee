"""`prefcurate encode`, `prefcurate train` and `prefcurate sample`: Diffusion-DPO / Adaptive-DPO on a curated dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli.common import (DashboardOpt, DatasetArg, Device, Precision, ExecutorName, ExecutorOpt, ResumeOpt, SchedulerOpt, WorkersOpt, fail,
                               print_counts)
from curate.cli.output import json_summary
from curate.options import (Attention, Compile, Filtered, Finetune, Loss, LrScheduler, Method, Minority, Missing,
                            MixedPrecision)


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Hub id, local diffusers folder (SD 1.x/2.x or SDXL), or world (the small "
                                       "pipeline of the synthetic world shipped with prefcurate). "
                                       "Honours HF_HUB_OFFLINE.")]


@json_summary
def encode(
    dataset_dir: DatasetArg,
    model: ModelOpt,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of --model.")] = None,
    resolution: Annotated[int, typer.Option(min=8, help="Square side in pixels: the short side is resized to it, "
                          "then centre-cropped (the same crop for every image, so for both images of a pair).")] = 512,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Also encode each image flipped (twice the time "
                    "and storage), so `train --flip` can flip a pair (both images) afresh every epoch.")] = False,
    device: Annotated[Device, typer.Option(help="auto: cuda when available, else cpu.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(help="Precision of the VAE and text encoders. SDXL's VAE "
                         "overflows in fp16: use fp32 or bf16 for it.")] = Precision.fp32,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images (and prompts) per forward pass; "
                          "with --flip each image is two samples.")] = 16,
    images_per_shard: Annotated[int, typer.Option("--images-per-shard", min=1, help="Images per task and output "
                                "file; a task holds one images shard at a time.")] = 4096,
    executor: ExecutorOpt = ExecutorName.local,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = 2,
    dashboard: DashboardOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Precompute VAE latents and text embeddings once, so training never runs the VAE or the text encoders.

    Writes the latents and text_embeddings tables, keyed by image / prompt and the model's encoder
    key (a hash of its VAE and text-encoder weights). Incremental: what this model already encoded
    (per image: resolution and orientation) is skipped; only images and prompts of non-tie pairs
    are encoded. Latents are the VAE posterior mean (deterministic: no seed).
    """
    from curate.dataset import DatasetError
    from curate.cli.common import stage_executor
    from curate.runner import FingerprintMismatch
    from curate.train.encode import EncodeError, encode_dataset

    try:
        with stage_executor(executor, scheduler, workers, dashboard) as ex:
            summary = encode_dataset(dataset_dir, model, revision=revision, resolution=resolution, flip=flip,
                                     device=_device(device.value), precision=precision.value, batch_size=batch_size,
                                     images_per_shard=images_per_shard, executor=ex, resume=resume)
    except (EncodeError, DatasetError, FingerprintMismatch, FileNotFoundError) as exc:
        fail(str(exc))
    print_encode_summary(summary, dataset_dir)
    return {"dataset": str(dataset_dir), "model_key": summary.key, "generation": summary.generation, **summary.counts,
            "stats": summary.stats, "kept_shards": summary.kept_shards, "encode_seconds": summary.seconds}


def print_encode_summary(summary, dataset_dir: Path) -> None:
    c, s = summary.counts, summary.stats
    encoded = s.get("latents_encoded", 0)
    rows = [("model key", summary.key),
            ("generation", summary.generation or "none (nothing new to encode)"),
            ("images of non-tie pairs", c["images_needed"]),
            ("  not in the images table", c["images_missing"]),
            ("latents already encoded", c["latents_already_encoded"]),
            ("latents encoded", encoded),
            ("  of which flipped", s.get("latents_flipped", 0)),
            ("images undecodable", s.get("images_undecodable", 0)),
            ("prompts already encoded", c["prompts_already_encoded"]),
            ("prompts encoded", s.get("prompts_encoded", 0))]
    if summary.kept_shards:
        rows.append(("shards kept from the interrupted run", summary.kept_shards))
    if summary.seconds:
        rows.append(("latents/s", f"{encoded / summary.seconds:.1f}"))
    print_counts(f"encode -> {dataset_dir}", rows)


@json_summary
def train(
    dataset_dir: DatasetArg,
    model: ModelOpt,
    output_dir: Annotated[Path, typer.Option("--output-dir", "--out", "-o", help="Checkpoints, metrics.jsonl, "
                          "data.json (what was selected) and final/.", file_okay=False)],
    method: Annotated[Method, typer.Option(help="dpo; adaptive-dpo (online EMA annotators); adaptive-offline "
                      "(per-pair u from pair_scores: run `prefcurate flag` first).")] = Method.dpo,
    loss: Annotated[Loss, typer.Option(help="Loss on h. Adaptive methods take dpo or ipo.")] = Loss.dpo,
    beta: Annotated[float, typer.Option(help="Multiplies h directly: loss = -log sigmoid(beta h). diffusers' "
                    "beta_dpo 2500 = 2500 here; Salesforce's 5000 with its -0.5 factor = 2500; the Adaptive-DPO "
                    "README's 1000 = 1000.")] = 2500.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output-dir from its latest "
                      "checkpoint (same config and data selection, or it refuses).")] = False,
    # what is trained
    split: Annotated[str, typer.Option(help="Split of the pairs table to train on; 'all' for every split.")] = "train",
    filtered: Annotated[Filtered, typer.Option(help="drop: leave out pairs the filters table removed (keep = "
                        "false); keep: train them. Without a filters table nothing is filtered.")] = Filtered.drop,
    minority: Annotated[Minority, typer.Option(help="Pairs flagged in pair_scores: keep, drop, or weight (per-pair "
                        "pair_scores.weight multiplies each pair's loss; refused with adaptive-offline, whose "
                        "W from pair_scores.u is the same weight).")] = Minority.keep,
    missing_latents: Annotated[Missing, typer.Option(help="Pairs without latents or text embeddings: error (names "
                               "the encode command) or drop (counted).")] = Missing.error,
    resolution: Annotated[Optional[int], typer.Option(help="Latent resolution to train on (default: the only one "
                          "encoded for the model).")] = None,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Flip each pair (both images) with probability 1/2, "
                    "drawn afresh every epoch; needs `encode --flip`.")] = False,
    # model and optimisation
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of --model.")] = None,
    finetune: Annotated[Finetune, typer.Option(help="lora (reference = adapters off) or full (frozen "
                        "copy).")] = Finetune.lora,
    lora_rank: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = 8,
    lora_alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha (scale alpha / rank; default: the rank). "
                          "Saved with the adapter, so it reloads at the same scale.")] = None,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate (> 0).")] = 1e-5,
    lr_scheduler: Annotated[LrScheduler, typer.Option(metavar="<schedule>", help="diffusers.optimization."
                            "get_scheduler schedule: " + ", ".join(s.value for s in LrScheduler) + ".")] = LrScheduler.constant_with_warmup,
    lr_warmup_steps: Annotated[int, typer.Option(min=0, help="Optimizer steps of lr warm-up.")] = 0,
    max_steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per device per micro-batch.")] = 16,
    grad_accum: Annotated[int, typer.Option(min=1, help="Micro-batches per optimizer step. A resumed run may "
                          "change it if batch size x grad accum x processes stays the same.")] = 1,
    mixed_precision: Annotated[MixedPrecision, typer.Option(help="Autocast dtype; frozen weights (LoRA base, "
                               "reference) are loaded in it, trainable ones stay fp32. fp16 adds a loss scaler "
                               "(checkpointed; a step it skips advances nothing).")] = MixedPrecision.no,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute the policy UNet's activations in "
                                      "backward: less memory, about a third more time.")] = False,
    attention: Annotated[Attention, typer.Option(help="sdpa: torch scaled_dot_product_attention (fused "
                         "kernels on GPU); eager: plain matmuls.")] = Attention.sdpa,
    tf32: Annotated[bool, typer.Option("--tf32/--no-tf32", help="TF32 matmuls and convolutions on GPUs that "
                    "have them (Ampere and later).")] = True,
    torch_compile: Annotated[Compile, typer.Option("--compile", help="torch.compile mode for the policy forward (no: eager). "
                       "The first steps are slow while it compiles.")] = Compile.no,
    use_8bit_adam: Annotated[bool, typer.Option("--use-8bit-adam", help="bitsandbytes AdamW8bit (pip install "
                             "bitsandbytes; CUDA).")] = False,
    label_smoothing: Annotated[float, typer.Option(help="eps for cdpo / rdpo.")] = 0.0,
    ipo_tau: Annotated[float, typer.Option(help="--loss ipo: (h - 1/(2 tau))^2. Default 100, the Adaptive-DPO "
                       "authors' IPO beta (their config.py).")] = 100.0,
    prompt_dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="Probability that a pair (both images) "
                              "trains on the empty prompt, as Salesforce's DiffusionDPO does with 0.2. Needs the "
                              "empty prompt's embedding, which `prefcurate encode` stores.")] = 0.0,
    rho: Annotated[float, typer.Option(help="Adaptive-DPO scale of the normalised margins.")] = 15.0,
    weight_k: Annotated[float, typer.Option(help="Adaptive-DPO weight W = 1 / (k u + c): k.")] = 10.0,
    weight_c: Annotated[float, typer.Option(help="Adaptive-DPO weight W = 1 / (k u + c): c.")] = 1.0,
    adaptive_warmup_steps: Annotated[int, typer.Option(min=0, help="adaptive-dpo: optimizer steps with u = 0 "
                                     "while the EMA annotators warm up; 2, as the authors' code "
                                     "(ema_warmup_steps).")] = 2,
    checkpoint_every: Annotated[int, typer.Option(min=0, help="Optimizer steps between checkpoints (0: only "
                                "at the end).")] = 500,
    seed: Annotated[int, typer.Option(help="Seeds LoRA init, noise, timesteps, pair order and flips.")] = 0,
) -> None:
    """Train a LoRA or a full UNet with Diffusion-DPO or Adaptive-DPO on a curated dataset.

    Reads the pairs with their latents and text embeddings (run `prefcurate encode` first with the
    same --model), leaves out ties (a tie names no winner), filtered and (optionally) minority pairs
    as the options say, and prints how many pairs each reason removed before training starts. Every
    option is checked before any data is read. Several processes: `accelerate launch
    --num_processes N -m curate.cli train ...` or `torchrun --nproc_per_node N -m curate.cli train
    ...` (only the main one writes).
    """
    from curate.dataset import DatasetError
    from curate.train.config import TrainConfig
    from curate.train.dataset_source import Selection
    from curate.train.from_dataset import train_from_dataset
    from curate.train.loop import NonFiniteLoss

    def selected(source) -> None:
        print_counts(f"training pairs <- {dataset_dir}", source.summary_rows())
        for note in source.notes:
            typer.echo(f"note: {note}")

    try:
        cfg = TrainConfig(model=model, revision=revision, output_dir=str(output_dir), method=method, loss=loss,
                          beta=beta, finetune=finetune, lora_rank=lora_rank, lora_alpha=lora_alpha,
                          learning_rate=learning_rate, lr_scheduler=lr_scheduler, lr_warmup_steps=lr_warmup_steps,
                          max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
                          mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing,
                          attention=attention, allow_tf32=tf32, compile=torch_compile, use_8bit_adam=use_8bit_adam,
                          label_smoothing=label_smoothing, ipo_tau=ipo_tau, prompt_dropout=prompt_dropout, rho=rho,
                          weight_k=weight_k, weight_c=weight_c, adaptive_warmup_steps=adaptive_warmup_steps,
                          checkpoint_every=checkpoint_every, seed=seed)
        selection = Selection(split=None if split == "all" else split, filtered=filtered, minority=minority,
                              missing=missing_latents)
        result, source = train_from_dataset(dataset_dir, cfg, selection, resolution=resolution, flip=flip,
                                            resume=resume, on_selected=selected)
    except (ValueError, FileNotFoundError, DatasetError, NonFiniteLoss) as err:
        fail(str(err))
    typer.echo(f"trained {result.step} steps; dropped pairs: {dict(source.dropped) or 'none'}; "
               f"model: {result.exported}")
    return {"output_dir": str(output_dir), "steps": result.step, "pairs": dict(source.summary_rows()),
            "dropped": dict(source.dropped), "model": str(result.exported)}


def sample(
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write (row 1 base, row 2 tuned).", dir_okay=False)],
    lora: Annotated[Optional[Path], typer.Option(help="LoRA folder (train's final/ with --finetune lora).",
                                                 exists=True, file_okay=False)] = None,
    tuned: Annotated[Optional[Path], typer.Option(help="Full fine-tuned pipeline folder (train's final/).",
                                                  exists=True, file_okay=False)] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="Repeatable.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Denoising steps per image.")] = 25,
    size: Annotated[Optional[int], typer.Option(help="Image side in pixels (default: the model's).")] = None,
    guidance_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    seed: Annotated[int, typer.Option(help="Seed of column i is seed + i, the same in both rows.")] = 0,
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
                    guidance_scale=guidance_scale, seed=seed, device=_device("auto"))
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    typer.echo(f"wrote {out}")


def _device(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
