"""Does curation and Adaptive-DPO pay off? The alignment benchmark on the synthetic world (CPU).

    python benchmarks/alignment.py run               # reduced size (see REDUCED), under an hour on 2 cores
    python benchmarks/alignment.py run --full        # the GPU configuration (see FULL)
    python benchmarks/alignment.py report            # redraw results/alignment.md + .png from the rows

Pairs are made the way Pick-a-Pic's were (benchmarks/align_data.py): for every prompt two images
from generators of different quality (the world's render pool and the shipped world model), one
judgement per pair by the world's annotator population with 0-40% minority labels from the
minority tastes; variants: the paper's synthetic noise (a random share flipped) and three
judgements per pair. prefcurate's stages curate each labelled set (ingest, embed, annotators,
flag, encode); every method (benchmarks/align_runs.py) trains the world model on it through
curate.train with the same pairs, steps and seeds, and the world judge scores the tuned model's
samples of held-out prompts against the base model's samples from the same noise.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from align_runs import METHODS, RunSettings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
READING_MARK = "<!-- reading: text below this line is kept when the tables are redrawn -->"
# variant -> (label variant, judgements per pair)
VARIANTS = {"minority": ("minority", 1), "flip": ("flip", 1), "votes3": ("minority", 3)}


@dataclass(frozen=True)
class BenchConfig:
    train_prompts: int = 400            # one pair per prompt
    eval_prompts: int = 48
    eval_per_prompt: int = 2            # noise seeds per held-out prompt
    rates: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)     # dpo runs at each (variant minority)
    method_rates: tuple[float, ...] = (0.3,)                  # every method runs at these
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    methods: tuple[str, ...] = METHODS
    variants: tuple[str, ...] = ("minority", "flip", "votes3")
    variant_rates: tuple[float, ...] = (0.3,)                 # rates of the variants other than minority
    variant_methods: tuple[str, ...] = ("dpo", "adaptive-offline", "dpo-kept")
    use_clip: bool = True
    data_seed: int = 0
    run: RunSettings = field(default_factory=RunSettings)

    def runs(self) -> list[tuple[int, str, float, str]]:
        """(seed, variant, rate, method), variant-major then seed-major: a run cut short holds the first
        variants with every seed and every rate."""
        out = []
        for variant in self.variants:
            for seed in self.seeds:
                minority = variant == "minority"
                for rate in (self.rates if minority else self.variant_rates):
                    chosen = self.methods if minority and rate in self.method_rates else \
                        ("dpo",) if minority else self.variant_methods
                    out += [(seed, variant, rate, m) for m in self.methods if m in chosen]
        return out


# What a shared 2-core machine finishes in about an hour (about 80 CPU s per run): dpo at every rate,
# every method at 30%, the synthetic flips at 30% for dpo and the offline prefcurate methods; one
# judgement per pair. The trainer's settings are the clean-data calibration's (BENCHMARKS.md,
# results/alignment_calibration.jsonl): full fine-tuning of the tiny UNet, 40 steps of 32 pairs,
# lr 3e-4, beta 10 (beta * h is O(1): h's spread is 0.1-0.25 here).
# Seeds 3 and 5 are left out: their labels at 30% and 20% crash `prefcurate annotators` (an IndexError
# in curate/annotators/crowd.taste_margins when the largest image key belongs to a tie-only pair).
CALIBRATED = RunSettings(steps=40, batch_size=32, lr=3e-4, beta=10.0, finetune="full")
REDUCED = BenchConfig(eval_prompts=64, seeds=(0, 1, 2, 4, 6), variants=("minority", "flip"), run=CALIBRATED)
FULL = BenchConfig(train_prompts=4000, eval_prompts=256, method_rates=(0.0, 0.1, 0.2, 0.3, 0.4),
                   variant_rates=(0.1, 0.2, 0.3, 0.4), variant_methods=METHODS,
                   run=replace(CALIBRATED, steps=500, batch_size=64, sample_steps=20))


def key(cfg: BenchConfig) -> str:
    """What makes rows comparable: the data and the run settings. Which seeds, rates, methods and
    variants run is left out (every row names its own), so processes can share a results file, each
    running its own seeds, and a narrower run reuses the rows of a wider one."""
    scope = ("seeds", "rates", "method_rates", "methods", "variants", "variant_rates", "variant_methods")
    return json.dumps({k: v for k, v in asdict(cfg).items() if k not in scope}, sort_keys=True)


class Rows:
    """The results file: JSON lines, one per finished piece, appended as they finish; a rerun skips them."""

    def __init__(self, path: Path, cfg: BenchConfig):
        self.path, self.key = path, key(cfg)
        self.rows = [r for r in map(json.loads, path.read_text().splitlines())] if path.exists() else []
        self.rows = [r for r in self.rows if r.get("config_key") == self.key]

    def find(self, **match) -> dict | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in match.items())), None)

    def add(self, row: dict) -> dict:
        row = {"config_key": self.key, **row}
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return row


def candidates(components, cfg: BenchConfig, work: Path, log):
    """The training pairs' images, made once per configuration and kept in ``work``."""
    import pickle

    from align_data import make_candidates

    import hashlib

    from curate.train.models import WORLD_MODEL

    weights = hashlib.sha256((WORLD_MODEL / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()[:12]
    path = work / f"candidates-{weights}-{cfg.train_prompts}-{cfg.data_seed}-{cfg.run.sample_steps}-{cfg.run.guidance}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    started = time.perf_counter()
    made = make_candidates(components, cfg.train_prompts, cfg.data_seed, sample_steps=cfg.run.sample_steps,
                           guidance=cfg.run.guidance)
    log(f"candidates: {len(made.images)} images in {time.perf_counter() - started:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_bytes(pickle.dumps(made))
    path.with_suffix(".tmp").replace(path)
    return made


def run_benchmark(cfg: BenchConfig, results: Path, work: Path, log=print) -> list[dict]:
    import numpy as np

    from align_data import curate_dataset, flag_quality, label_pairs
    from align_runs import held_out, run_one
    from curate.train.models import load_components

    rows = Rows(results, cfg)
    components = load_components("world")
    made = candidates(components, cfg, work, log)
    base = rows.find(kind="base")
    if base is None:
        ev = held_out(components, cfg.eval_prompts, cfg.eval_per_prompt, cfg.run)
        base = rows.add({"kind": "base", "reward": np.round(ev.base_reward, 5).tolist(),
                         "fidelity": float(ev.base["fidelity"].mean()), "quality": float(ev.base["quality"].mean()),
                         "pairs_by_generator": {str(g): int((made.generator == g).sum()) for g in np.unique(made.generator)}})
    ev = held_out_from(base, cfg)
    datasets: dict = {}
    for seed, variant, rate, method in cfg.runs():
        if rows.find(kind="run", seed=seed, variant=variant, rate=rate, method=method):
            continue
        if (seed, variant, rate) not in datasets:
            for old in datasets.values():
                shutil.rmtree(old.parent, ignore_errors=True)
            datasets.clear()
            label_variant, votes = VARIANTS[variant]
            labels = label_pairs(made, rate, seed, variant=label_variant, votes=votes)
            started = time.perf_counter()
            ds = curate_dataset(work, f"data-{variant}-{rate}-{seed}", made, labels, quantile=rate or None,
                                use_clip=cfg.use_clip)
            datasets[(seed, variant, rate)] = ds
            if not rows.find(kind="data", seed=seed, variant=variant, rate=rate):
                q = rows.add({"kind": "data", "seed": seed, "variant": variant, "rate": rate, **flag_quality(ds, labels),
                              "curation_s": round(time.perf_counter() - started, 1)})
                log(f"data {variant} {rate:.0%} seed {seed}: realised minority {q['realised_minority']:.3f}, "
                    f"AUROC {q['auroc_minority_score']:.3f}, flagged {q['flagged_share']:.3f} [{q['curation_s']} s]")
        row = rows.add({"kind": "run", "variant": variant, "rate": rate,
                        **run_one(datasets[(seed, variant, rate)], method, rate, seed, ev, cfg.run, work)})
        log(f"{variant} {rate:.0%} {method:16s} seed {seed}: reward {row['reward_mean']:.4f} (base "
            f"{np.mean(base['reward']):.4f}) win {row['win_rate']:.3f} [{row['train_s']} + {row['eval_s']} s]")
    return rows.rows


def held_out_from(base: dict, cfg: BenchConfig):
    """The held-out prompts and seeds again (deterministic), with the base model's stored rewards."""
    import numpy as np

    from align_runs import HeldOut
    from world_eval import held_out_prompts

    prompts, codes = held_out_prompts(cfg.eval_prompts, seed=400)
    n = cfg.eval_per_prompt
    return HeldOut(list(np.repeat(prompts, n)), np.repeat(codes, n, axis=0), np.arange(len(prompts) * n) + 9_000_000,
                   np.array(base["reward"]), {})


def write_report(results: Path, cfg: BenchConfig, md: Path, png: Path, minutes: float | None = None) -> None:
    import numpy as np

    import align_report as rep

    rows = [r for r in Rows(results, cfg).rows if r.get("seed") is None or r["seed"] in cfg.seeds]
    base = next(r for r in rows if r["kind"] == "base")
    methods = [m for m in METHODS if m in cfg.methods]
    lines = ["# Alignment benchmark: curation and Adaptive-DPO on the synthetic world", "",
             "Generated by `python benchmarks/alignment.py run` (tables and plot); the reading at the end is "
             "written by hand. Intervals: 95% paired bootstrap over seeds and held-out samples.", "",
             "Configuration: `" + json.dumps(asdict(cfg)) + "`", "",
             f"Wall time of the run that wrote these rows: {minutes:.1f} min (a shared 2-core machine)." if minutes else "",
             "", f"Base (world model) on the held-out samples: reward {np.mean(base['reward']):.4f}, fidelity "
             f"{base['fidelity']:.4f}, quality {base['quality']:.4f}. Training pairs by generator: "
             f"{base['pairs_by_generator']}.", ""]
    for variant in cfg.variants:
        summary = rep.summarise(rows, variant)
        if not summary:
            continue
        rates = sorted({r for r, _ in summary})
        seeds = max(c["seeds"] for c in summary.values())
        lines += [f"## Variant `{variant}` (up to {seeds} seeds)", ""]
        lines += rep.table(summary, rates, methods, "gain", "Reward gain over the base model:")
        lines += rep.table(summary, rates, methods, "vs_dpo", "Difference against dpo at the same rate:")
        lines += rep.table(summary, rates, methods, "kept", "Share of dpo's clean-data (0%) gain kept:", pct=True)
        lines += ["Flags on the training judgements (means over seeds):", ""] + rep.flag_table(rows, variant)
        if variant == "minority":
            rep.plot(summary, rates, methods, png, f"Reward gain over the world model ({seeds} seeds)")
            lines += [f"![reward gain]({png.name})", ""]
    kept = md.read_text().split(READING_MARK, 1)[1] if md.exists() and READING_MARK in md.read_text() else "\n"
    md.write_text("\n".join(lines) + "\n" + READING_MARK + kept)
    print(f"wrote {md} and {png}")


def configure(args) -> BenchConfig:
    cfg = FULL if args.full else REDUCED
    run = replace(cfg.run, **{k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("beta", args.beta)) if v is not None})
    over = {"seeds": tuple(args.seeds) if args.seeds else None, "rates": tuple(args.rates) if args.rates else None,
            "methods": tuple(args.methods) if args.methods else None, "variants": tuple(args.variants) if args.variants else None,
            "train_prompts": args.train_prompts, "eval_prompts": args.eval_prompts}
    return replace(cfg, run=run, **{k: v for k, v in over.items() if v is not None})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--full", action="store_true", help="the GPU configuration (FULL)")
        p.add_argument("--seeds", type=int, nargs="+")
        p.add_argument("--rates", type=float, nargs="+")
        p.add_argument("--methods", nargs="+", choices=METHODS)
        p.add_argument("--variants", nargs="+", choices=tuple(VARIANTS))
        p.add_argument("--steps", type=int)
        p.add_argument("--lr", type=float)
        p.add_argument("--beta", type=float)
        p.add_argument("--train-prompts", type=int)
        p.add_argument("--eval-prompts", type=int)
        p.add_argument("--results", type=Path, default=RESULTS / "alignment.jsonl", help="JSON lines; reruns skip what is in it")
        p.add_argument("--md", type=Path, default=RESULTS / "alignment.md")
        p.add_argument("--png", type=Path, default=RESULTS / "alignment.png")
        p.add_argument("--work", type=Path, default=Path("/tmp/prefcurate-bench-alignment"))
        p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    args = parser.parse_args()
    cfg = configure(args)
    started = time.perf_counter()
    if args.command == "run":
        import torch

        torch.set_num_threads(args.threads)
        rows = run_benchmark(cfg, args.results, args.work)
        print(f"benchmark done in {(time.perf_counter() - started) / 60:.1f} min ({len(rows)} rows in {args.results})")
    write_report(args.results, cfg, args.md, args.png, minutes=(time.perf_counter() - started) / 60 if args.command == "run" else None)


if __name__ == "__main__":
    main()
