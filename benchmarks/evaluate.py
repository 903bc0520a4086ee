"""Evaluation throughput: `prefcurate evaluate` against the bare diffusers pipeline call, in one run.

    python benchmarks/evaluate.py [--prompts 16] [--images-per-prompt 2] [--steps 10] [--batch 8] [--rounds 2]

Tiny SD1.5-shaped pipeline (curate.train.models.tiny_sd15) and a LoRA on it, 32 px images, DDIM:
  bare pipeline: StableDiffusionPipeline.from_pretrained, then (prompts, generators) calls for the base
    and the LoRA-loaded pipeline, images kept in memory, nothing scored (the floor of any evaluation);
  evaluate: curate.evaluation.render.evaluate into a fresh folder: the same loading and renders, plus
    each image saved as PNG, scored by world and clip:domain (loaded in the clock too), batch shards
    committed, the table and the summary.
Prints images/s for both (wall and this thread's CPU time; run with --threads 1 so the CPU figure
counts all the work) and their ratio, the median of interleaved rounds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

SCORERS = ("world", "clip:domain")


def build_models(root: Path) -> None:
    from peft import LoraConfig

    from curate.train.export import save_lora
    from curate.train.models import tiny_sd15

    tiny_sd15(0).save_pretrained(root / "base")
    tuned = tiny_sd15(0)
    torch.manual_seed(1)
    tuned.unet.add_adapter(LoraConfig(r=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    save_lora(tuned.unet, tuned, root / "lora")


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def bare_pipeline(root: Path, config) -> tuple[float, float]:
    """Seconds (wall, CPU) for loading the pipeline and the base and LoRA renders through its plain call."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    wall, cpu = clocks()
    pipe = StableDiffusionPipeline.from_pretrained(str(root / "base"), safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for lora in (False, True):
        if lora:
            pipe.load_lora_weights(str(root / "lora"))
        for batch in config.batches():
            prompts = [config.prompts[i // config.images_per_prompt] for i in batch]
            pipe(prompt=prompts, generator=[torch.Generator().manual_seed(config.seed + i) for i in batch],
                 num_inference_steps=config.steps, guidance_scale=config.guidance_scale)
    end_wall, end_cpu = clocks()
    return end_wall - wall, end_cpu - cpu


def prefcurate_evaluate(root: Path, config) -> tuple[float, float]:
    from curate.evaluation.render import evaluate

    out = root / "evaluation"
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = clocks()
    evaluate(config, out, device="cpu")
    end_wall, end_cpu = clocks()
    return end_wall - wall, end_cpu - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from curate.evaluation.run import make_config
    from curate.evaluation.suites import world_suite
    from curate.scorers import load_scorer

    for name in SCORERS:  # the world judge's calibration and the CLIP load happen once, outside the clock
        load_scorer(name)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_models(root)
        config = make_config(str(root / "base"), world_suite(args.prompts), list(SCORERS), loras=[str(root / "lora")],
                             images_per_prompt=args.images_per_prompt, steps=args.steps, batch_size=args.batch)
        images = 2 * config.n_images
        times = {"bare pipeline": [], "evaluate": []}
        for _ in range(args.rounds):
            times["bare pipeline"].append(bare_pipeline(root, config))
            times["evaluate"].append(prefcurate_evaluate(root, config))
    print(f"{images} images (2 models x {args.prompts} prompts x {args.images_per_prompt}), {args.steps} DDIM steps, "
          f"batch {args.batch}, 32 px, torch threads {torch.get_num_threads()}, rounds {args.rounds}")
    print("| run | images/s (wall) | images/s (thread CPU) |\n| --- | ---: | ---: |")
    rates = {}
    for name, runs in times.items():
        wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
        rates[name] = (images / wall, images / cpu)
        print(f"| {name} | {images / wall:.2f} | {images / cpu:.2f} |")
    print(f"evaluate / bare pipeline: {rates['evaluate'][0] / rates['bare pipeline'][0]:.2f}x (wall), "
          f"{rates['evaluate'][1] / rates['bare pipeline'][1]:.2f}x (thread CPU)")


if __name__ == "__main__":
    main()
