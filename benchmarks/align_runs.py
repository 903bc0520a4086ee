"""One alignment run: train the world model on a curated dataset with one method, judge its samples.

Methods (the same pairs, steps, batch, learning rate and seeds for all):
- dpo: Diffusion-DPO on every judgement;
- rdpo: Robust-DPO with eps = the nominal minority rate (it is told the rate);
- adaptive-dpo: Adaptive-DPO with the online EMA annotators;
- adaptive-offline: Adaptive-DPO's W and G from u of `prefcurate flag`;
- dpo-kept: DPO on the judgements `prefcurate flag` did not flag (`train --minority drop`);
- dpo-weighted: DPO with the flag weights (`train --minority weight`).
Training goes through curate.train: DatasetPairSource over the dataset's latents, loop.train.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METHODS = ("dpo", "rdpo", "adaptive-dpo", "adaptive-offline", "dpo-kept", "dpo-weighted")
# method -> (train --method, --loss, --minority, needs u)
RECIPES = {"dpo": ("dpo", "dpo", "keep"), "rdpo": ("dpo", "rdpo", "keep"), "adaptive-dpo": ("adaptive-dpo", "dpo", "keep"),
           "adaptive-offline": ("adaptive-offline", "dpo", "keep"), "dpo-kept": ("dpo", "dpo", "drop"),
           "dpo-weighted": ("dpo", "dpo", "weight")}


@dataclass(frozen=True)
class RunSettings:
    steps: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    beta: float = 1000.0
    finetune: str = "lora"
    lora_rank: int = 8
    adaptive_warmup: int = 10
    sample_steps: int = 10
    guidance: float = 3.0


@dataclass
class HeldOut:
    """Held-out prompts, one noise seed per sample, and the base model's judged samples of them."""

    prompts: list[str]
    targets: np.ndarray         # (N, 9): one row per sample
    seeds: np.ndarray
    base_reward: np.ndarray
    base: dict


def held_out(components, n_prompts: int, per_prompt: int, s: RunSettings) -> HeldOut:
    from world_eval import held_out_prompts

    prompts, codes = held_out_prompts(n_prompts, seed=400)
    prompts, targets = list(np.repeat(prompts, per_prompt)), np.repeat(codes, per_prompt, axis=0)
    seeds = np.arange(len(prompts)) + 9_000_000
    judged = judge(components, None, prompts, targets, seeds, s)
    return HeldOut(prompts, targets, seeds, judged["reward"], judged)


def judge(components, unet, prompts, targets, seeds, s: RunSettings) -> dict:
    from curate.scorers.judge import judge_images
    from world_eval import sample_images

    images = sample_images(components, prompts, seeds, unet=unet, steps=s.sample_steps, guidance=s.guidance)
    return judge_images(images, targets)


def train_config(method: str, rate: float, seed: int, s: RunSettings, out: Path):
    from curate.train.config import TrainConfig

    kind, loss, _ = RECIPES[method]
    return TrainConfig(model="world", finetune=s.finetune, lora_rank=s.lora_rank, method=kind, loss=loss,
                       label_smoothing=rate if method == "rdpo" else 0.0, beta=s.beta, learning_rate=s.lr,
                       lr_scheduler="constant", max_steps=s.steps, batch_size=s.batch_size, seed=seed,
                       adaptive_warmup_steps=s.adaptive_warmup, output_dir=str(out), checkpoint_every=0,
                       keep_checkpoints=1, tensorboard=False, progress=False, log_every=max(s.steps // 10, 1))


def run_one(ds: Path, method: str, rate: float, seed: int, evals: HeldOut, s: RunSettings, work: Path) -> dict:
    """Train from the shipped world model on ``ds`` and judge the tuned model's held-out samples."""
    from curate.train.dataset_source import DatasetPairSource, Selection
    from curate.train.encode import encoder_key
    from curate.train.loop import train
    from curate.train.models import load_components

    kind, _, minority = RECIPES[method]
    components = load_components("world")
    source = DatasetPairSource(ds, encoder_key(components), s.batch_size, seed=seed,
                               selection=Selection(split=None, minority=minority, need_u=kind == "adaptive-offline"))
    out = work / f"run-{method}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = train(train_config(method, rate, seed, s, out), source, components, export=False)
    took = time.perf_counter() - started
    got = judge(components, result.unet, evals.prompts, evals.targets, evals.seeds, s)
    shutil.rmtree(out, ignore_errors=True)
    reward = got["reward"]
    last = result.history[-1] if result.history else {}
    return {"method": method, "seed": seed, "reward_mean": float(reward.mean()), "reward": np.round(reward, 5).tolist(),
            "fidelity": float(got["fidelity"].mean()), "quality": float(got["quality"].mean()),
            "win_rate": float(np.mean((reward > evals.base_reward) + 0.5 * (reward == evals.base_reward))),
            "train_pairs": int(len(source.pair_ids)), "dropped": {k: int(v) for k, v in source.dropped.items()},
            "train_s": round(took, 1), "eval_s": round(time.perf_counter() - started - took, 1),
            "final_loss": last.get("loss"), "final_u_mean": last.get("u_mean"), "history": [
                {k: round(h[k], 4) for k in ("step", "loss", "implicit_acc", "h_mean", "h_std")} for h in result.history]}
