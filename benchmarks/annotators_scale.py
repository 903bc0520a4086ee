"""annotators + flag at scale: 10M judgements from 200k annotators (Zipf activity) on this machine.

    python benchmarks/annotators_scale.py                      # 10M judgements
    python benchmarks/annotators_scale.py --judgements 1000000 # quicker

A pairs table is generated directly (vectorised; prompts with 4 images each, labels from a latent
quality with noise), written as ingest would write it. Then, each in a fresh process so its peak RSS
is its own: (1) `prefcurate annotators` + `prefcurate flag` in-process, with the crowd model (taste
groups by EM) and without it (--no-bradley-terry); (2) the baseline: plain pandas computing the same
statistics as the run without the model (vote groups, other votes, per-annotator counts, agreement,
position bias, shrunk reliability, minority scores and flags) on the same table, in memory.
Bradley-Terry is timed against choix on a size choix handles.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUTPUT_TABLES = ("consensus", "annotators", "pair_scores", "taste_groups", "image_strengths", "vote_groups",
                 "signal_scales", "bt_stability", "minority_sketch")

def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over from the parent across fork+exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def generate(root: Path, judgements: int, annotators: int, shard_rows: int = 500_000, seed: int = 0) -> None:
    import pyarrow as pa

    from curate import ids
    from curate import schema as schemas
    from curate.dataset import write_shard
    from curate.verify import commit_files

    rng = np.random.default_rng(seed)
    written = []
    prompts = max(judgements // 10, 1)
    quality = rng.normal(size=prompts * 4)
    activity = 1.0 / np.arange(1, annotators + 1) ** 1.1  # Zipf-like long tail
    activity /= activity.sum()
    noise = rng.uniform(0.0, 0.5, annotators)  # each person's error rate
    pairs_schema = schemas.load("pairs")
    for start in range(0, judgements, shard_rows):
        n = min(shard_rows, judgements - start)
        prompt = rng.integers(0, prompts, n)
        a = prompt * 4 + rng.integers(0, 4, n)
        b = prompt * 4 + (a - prompt * 4 + rng.integers(1, 4, n)) % 4
        who = rng.choice(annotators, n, p=activity)
        a_better = quality[a] > quality[b]
        flip = rng.random(n) < noise[who]
        label = np.where(a_better ^ flip, "a", "b").astype(object)
        label[rng.random(n) < 0.03] = "tie"
        hex_of = lambda x, salt: ids.pair_ids(f"bench-{salt}", x, np.zeros(len(x)))  # noqa: E731 (hash-like ids)
        table = pairs_schema.table({
            "pair_id": ids.pair_ids("bench", np.arange(start, start + n), np.zeros(n)),
            "prompt": pa.array(["p"] * n), "prompt_id": hex_of(prompt, 1), "image_a_id": hex_of(a, 2),
            "image_b_id": hex_of(b, 2), "label": pa.array(label), "annotator_id": pa.array(who.astype(str)),
            "annotator_trust": pa.nulls(n, pa.float64()),
            "votes_a": pa.nulls(n, pa.int32()), "votes_b": pa.nulls(n, pa.int32()), "model_a": pa.nulls(n, pa.string()),
            "model_b": pa.nulls(n, pa.string()), "created_at": pa.nulls(n, pa.timestamp("us", tz="UTC")),
            "source": pa.array(["bench"] * n), "source_row": pa.array(np.arange(start, start + n)),
            "source_item": pa.array(np.zeros(n, np.int32)), "split": pa.array(["train"] * n)})
        written.append(write_shard(root / "tables" / "pairs" / f"ingest-{start // shard_rows:05d}.arrow", pairs_schema, [table]))
    commit_files(root, "bench", {"pairs": written})  # hand-written tables are data once a manifest lists them


def child(kind: str, root: Path, bradley_terry: bool, executor: str = "local", workers: int = 2) -> None:
    if kind == "prefcurate":
        from curate.annotators.flag import FlagStage
        from curate.annotators.stage import AnnotatorsStage
        from curate.executors import make_executor
        from curate.runner import run_stage

        # With Dask the shard passes run on the workers; cpu_seconds is then the driver's alone.
        with make_executor(executor, workers=workers) as pool:
            started, cpu = time.perf_counter(), time.process_time()
            report = run_stage(AnnotatorsStage(bradley_terry=bradley_terry), root, pool)
            middle = time.perf_counter()
            run_stage(FlagStage(), root, pool)
            ended, cpu = time.perf_counter(), time.process_time() - cpu  # before the cluster closes
        consensus = report.passes[0].wall_seconds
        times = {"annotators (model)": middle - started - consensus, "annotators (consensus)": consensus,
                 "flag": ended - middle}
    else:
        started, cpu = time.perf_counter(), time.process_time()
        pandas_same_statistics(root)
        times, cpu = {"pandas": time.perf_counter() - started}, time.process_time() - cpu
    print(json.dumps({"times": times, "cpu_seconds": cpu, "peak_rss_mb": peak_rss_mb()}))


def pandas_same_statistics(root: Path):
    """What `annotators --no-bradley-terry` + `flag` compute, in plain pandas (in memory, nothing written):
    votes per (prompt, image pair) group, each judgement's other votes (agreeing share, entropy) and
    log-odds consensus, per-annotator counts, agreement, position-bias p-value and shrunk reliability,
    and each judgement's minority score and flag."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from curate.annotators.crowd import combine
    from curate.stats import position_bias_pvalue, reliability_verdict, shrunk_reliability

    frame = pd.concat([ipc.open_file(pa.memory_map(str(p))).read_all().select(
        ["annotator_id", "label", "prompt_id", "image_a_id", "image_b_id"]).to_pandas()
        for p in sorted((root / "tables" / "pairs").glob("*.arrow"))], ignore_index=True)
    a_first = frame["image_a_id"] < frame["image_b_id"]
    frame["group"] = frame["prompt_id"] + frame["image_a_id"].where(a_first, frame["image_b_id"]) \
        + frame["image_b_id"].where(a_first, frame["image_a_id"])
    frame["lo"] = np.where(a_first, frame["label"] == "a", frame["label"] == "b")
    frame["hi"] = np.where(a_first, frame["label"] == "b", frame["label"] == "a")
    frame["tie"] = frame["label"] == "tie"
    totals = frame.groupby("group")[["lo", "hi", "tie"]].transform("sum")
    others = totals - frame[["lo", "hi", "tie"]].astype(int)
    agree = np.where(frame["label"] == "a", np.where(a_first, others["lo"], others["hi"]),
                     np.where(a_first, others["hi"], others["lo"]))
    total = others["lo"] + others["hi"]
    shares = totals.to_numpy() / totals.to_numpy().sum(axis=1, keepdims=True)
    frame["entropy"] = -np.nansum(np.where(shares > 0, shares * np.log2(np.where(shares > 0, shares, 1)), 0), axis=1)
    decided = ~frame["tie"].to_numpy()
    agreement = np.where(decided & (total > 0), 1 / (1 + (total - agree + 1) / (agree + 1)), np.nan)
    frame["compared"], frame["agreed"] = ~np.isnan(agreement), agreement > 0.5
    frame["chose_a"] = frame["label"] == "a"
    people = frame.groupby("annotator_id").agg(judgements=("label", "size"), ties=("tie", "sum"), chose_a=("chose_a", "sum"),
                                               compared=("compared", "sum"), agreed=("agreed", "sum"))
    people["position_pvalue"] = position_bias_pvalue(people["chose_a"], people["judgements"] - people["ties"])
    rel = shrunk_reliability(people["agreed"].to_numpy(), people["compared"].to_numpy())
    people["reliability"], people["verdict"] = rel.mean, reliability_verdict(rel)
    r = people["reliability"].where(people["compared"] > 0).reindex(frame["annotator_id"]).to_numpy()
    score = np.where(decided, combine(agreement, r), np.nan)
    return people, score >= 0.5


def clear_outputs(root: Path) -> None:
    """Remove every stage's outputs and run folder but the generated pairs and their `bench` manifest."""
    runs = [p for p in (root / "runs").glob("*") if p.name != "bench"]
    for path in (*runs, *(root / "tables" / t for t in OUTPUT_TABLES)):
        shutil.rmtree(path, ignore_errors=True)


def measure(kind: str, root: Path, bradley_terry: bool = True, executor: str = "local", workers: int = 2) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(root), str(int(bradley_terry)),
                           "--executor", executor, "--workers", str(workers)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bt_against_choix(comparisons: int = 50_000, items: int = 5_000) -> None:
    import choix

    from curate.bradley_terry import fit_bradley_terry

    rng = np.random.default_rng(1)
    strength = rng.normal(size=items)
    i, j = rng.integers(0, items, comparisons), rng.integers(0, items, comparisons)
    keep = i != j
    i, j = i[keep], j[keep]
    i_wins = rng.random(len(i)) < 1 / (1 + np.exp(-(strength[i] - strength[j])))
    winners, losers = np.where(i_wins, i, j), np.where(i_wins, j, i)
    started = time.perf_counter()
    fit_bradley_terry(winners, losers, items, ridge=1e-2)
    ours = time.perf_counter() - started
    started = time.perf_counter()
    choix.ilsr_pairwise(items, list(zip(winners, losers)), alpha=1e-2)
    theirs = time.perf_counter() - started
    print(f"Bradley-Terry, {len(i):,} comparisons over {items:,} items: prefcurate {ours:.2f} s, "
          f"choix.ilsr_pairwise {theirs:.2f} s (x{theirs / ours:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judgements", type=int, default=10_000_000)
    parser.add_argument("--annotators", type=int, default=200_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/prefcurate-bench-annotators"))
    parser.add_argument("--model-only", action="store_true", help="Only the run with the crowd model (no baseline).")
    parser.add_argument("--executor", choices=("local", "dask"), default="local",
                        help="Where the shard passes run: in-process, or a Dask LocalCluster of --workers (the fit stays on the driver).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), bool(int(args.child[2])), args.executor, args.workers)
        return
    root = args.work / f"{args.judgements}"
    if not (root / "tables" / "pairs").is_dir():
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        generate(root, args.judgements, args.annotators)
        print(f"generated {args.judgements:,} judgements in {time.perf_counter() - started:.0f} s")
    for bt in (True,) if args.model_only else (True, False):
        clear_outputs(root)
        ours = measure("prefcurate", root, bt, args.executor, args.workers)
        total = sum(ours["times"].values())
        where = "in-process" if args.executor == "local" else f"Dask x{args.workers}, driver"
        print(f"prefcurate annotators + flag ({'with the crowd model' if bt else 'without it'}, {where}): {total:.1f} s wall, "
              f"{ours['cpu_seconds']:.1f} s CPU ({', '.join(f'{k} {v:.1f} s' for k, v in ours['times'].items())}), "
              f"peak RSS {ours['peak_rss_mb']:,.0f} MB (targets: <= 60 s, <= 6,000 MB)")
    if args.model_only:
        return
    base = measure("pandas", root)
    print(f"pandas, the same statistics as `annotators --no-bradley-terry` + `flag` (in memory, nothing written): "
          f"{base['times']['pandas']:.1f} s wall, {base['cpu_seconds']:.1f} s CPU, peak RSS {base['peak_rss_mb']:,.0f} MB; "
          f"ratio prefcurate (without the model) / pandas = {total / base['times']['pandas']:.2f} wall, "
          f"{ours['cpu_seconds'] / base['cpu_seconds']:.2f} CPU")
    bt_against_choix()


if __name__ == "__main__":
    main()
