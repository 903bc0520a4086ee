"""Calibrate the trainer on clean labels: plain DPO at 0% minority, one trainer setting per probe.

    python benchmarks/align_calibrate.py finetune=full,steps=80,lr=3e-4,beta=30 steps=50 --seed 0

Each probe trains the world model with `dpo` on the benchmark's clean (0% minority) pairs and prints
its held-out reward gain over the base model with a paired bootstrap 95% interval over the held-out
samples, its win rate, and the logged loss / implicit accuracy / mean h of its last steps; rows go to
results/alignment_calibration.jsonl. Only the trainer's settings vary: the world, its annotators and
the judge stay as the benchmark has them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alignment import REDUCED, RESULTS, candidates  # noqa: E402


def parse_probe(spec: str, base):
    """'finetune=full,steps=80' -> base with those RunSettings fields replaced (typed as the field)."""
    types = {f.name: type(getattr(base, f.name)) for f in fields(base)}
    pairs = [kv.split("=", 1) for kv in spec.split(",") if kv]
    unknown = [k for k, _ in pairs if k not in types]
    if unknown:
        raise SystemExit(f"probe {spec!r}: unknown setting(s) {unknown}; expected some of {sorted(types)}")
    return replace(base, **{k: types[k](v) for k, v in pairs})


def main() -> None:
    import numpy as np
    import torch

    from align_data import curate_dataset, label_pairs
    from align_report import paired_interval
    from align_runs import held_out, run_one
    from curate.train.models import load_components

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probes", nargs="+", help="comma-separated RunSettings overrides, one probe each")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the pairs stay those of seed 0)")
    parser.add_argument("--eval-prompts", type=int, default=REDUCED.eval_prompts)
    parser.add_argument("--work", type=Path, default=Path("/tmp/prefcurate-bench-alignment"))
    parser.add_argument("--out", type=Path, default=RESULTS / "alignment_calibration.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    components = load_components("world")
    made = candidates(components, REDUCED, args.work, print)
    ds = args.work / "calibration-clean" / "dataset"
    if not (ds / "tables").exists():
        ds = curate_dataset(args.work, "calibration-clean", made, label_pairs(made, 0.0, 0), quantile=None,
                            use_clip=False)
    evals = held_out(components, args.eval_prompts, REDUCED.eval_per_prompt, REDUCED.run)
    for spec in args.probes:
        settings = parse_probe(spec, REDUCED.run)
        cpu = time.process_time()
        row = run_one(ds, "dpo", 0.0, args.seed, evals, settings, args.work)
        gain = np.array(row["reward"]) - evals.base_reward
        out = {"probe": spec, "settings": asdict(settings), "seed": args.seed, "eval_samples": len(gain), "gain": paired_interval(gain[None]),
               "win_rate": row["win_rate"], "fidelity": row["fidelity"], "quality": row["quality"],
               "base_fidelity": float(evals.base["fidelity"].mean()), "base_quality": float(evals.base["quality"].mean()),
               "last_steps": row["history"][-4:], "cpu_s": round(time.process_time() - cpu, 1),
               "train_s": row["train_s"], "eval_s": row["eval_s"]}
        print(json.dumps(out), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
