"""The curation pipeline in-process against Dask with 1 and 2 workers, and where each stage's time goes.

    python benchmarks/pipeline.py --pairs 100000                  # in-process, Dask x1, Dask x2
    python benchmarks/pipeline.py --pairs 1000000 --max-prompts 25000   # 1M pairs, 100k images

The world is made once and cached under --work (not timed). Each run executes ingest -> embed ->
annotators -> flag -> filter on a fresh dataset in a fresh process, as `prefcurate run` does (the
same stage commands on one shared executor), with the executor wrapped so that each stage's time
splits into the time its shards ran (``map``: what more workers divide) and the time on the driver
(planning, finalize merges and global fits: what they do not). Every task's own seconds are kept
too: their sum is the work, their spread the granularity. Results go to --work/results-PAIRS.json
(read by benchmarks/scaling.py) and a table. Targets (issue 15, 1M pairs on 2 cores): Dask x2 >=
1.8x Dask x1, Dask x1 within 10% of in-process, Dask x2 >= 1.6x in-process; at 100k, Dask no slower
than in-process by more than its start-up. The runs' tables are compared byte for byte.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

STAGES = """
[pipeline]
dataset = "{out}/dataset"

[params]
out = "OUT"
world = "WORLD"

[[stage]]
command = "ingest"
sources = ["{world}/pickapic"]
format = "pickapic"

[[stage]]
command = "embed"
model = "domain"

[[stage]]
command = "annotators"

[[stage]]
command = "flag"

[[stage]]
command = "filter"
min_score_quantile = 0.05
"""
CONFIGS = {"local": ("local", 1), "dask1": ("dask", 1), "dask2": ("dask", 2)}
LABELS = {"local": "in-process", "dask1": "Dask x1", "dask2": "Dask x2"}


class Timed:
    """A task function that also returns its own wall seconds and the process it ran in."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, item):
        started = time.perf_counter()
        result = self.fn(item)
        return result, time.perf_counter() - started, os.getpid()


class TimingExecutor:
    """Wraps an executor: records every map (its description, wall seconds, each task's seconds)."""

    def __init__(self, inner):
        self.inner, self.maps = inner, []
        self.name = inner.name

    def map(self, fn, items, desc):
        started = time.perf_counter()
        out = self.inner.map(Timed(fn), items, desc)
        self.maps.append({"desc": desc.split(" (")[0], "wall": time.perf_counter() - started,
                          "tasks": [round(t, 4) for _, t, _ in out], "processes": len({p for *_, p in out})})
        return [r for r, _, _ in out]

    def close(self):
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def child(config: str, out: Path, world: Path) -> None:
    """One run, in this process: the pipeline's steps on one shared (timed) executor, as `prefcurate run`."""
    import typer

    from curate.cli import app
    from curate.cli.common import PipelineRun, pipeline_run
    from curate.cli.run import _run_steps, positionals
    from curate.executors import make_executor
    from curate.pipeline import load

    kind, workers = CONFIGS[config]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "stages.toml").write_text(STAGES.replace("OUT", str(out)).replace("WORLD", str(world)))
    command = typer.main.get_command(app)
    pipeline = load(out / "stages.toml", {}, positionals=positionals(command))
    started = time.perf_counter()
    executor = TimingExecutor(make_executor(kind, workers=workers))
    startup = time.perf_counter() - started
    given = {"executor": kind, "scheduler": None, "workers": workers, "dashboard": False, "resume": False}
    stages = {}
    with executor, pipeline_run(PipelineRun(executor, (kind, None, workers, False))) as run:
        for step in pipeline.steps:
            before, t0 = len(executor.maps), time.perf_counter()
            _run_steps(replace(pipeline, steps=[step]), command, given, run)
            maps = executor.maps[before:]
            wall = time.perf_counter() - t0
            stages[step.command] = {"wall": wall, "map": sum(m["wall"] for m in maps),
                                    "driver": wall - sum(m["wall"] for m in maps), "maps": maps}
    total = time.perf_counter() - started
    rows = json.loads((out / "dataset" / "runs" / "ingest" / "manifest.json").read_text())["tables"]
    print("RESULT " + json.dumps({"config": config, "total": total, "startup": startup, "stages": stages,
                                  "pairs": rows["pairs"]["rows"], "images": rows["images"]["rows"]}))


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted((folder / "dataset" / "tables").rglob("*.arrow")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run(config: str, work: Path, world: Path) -> dict:
    out = work / config
    done = subprocess.run([sys.executable, "-u", __file__, "--child", config, str(out), str(world)],
                          capture_output=True, text=True)
    lines = done.stdout.splitlines()
    result = next((line for line in lines if line.startswith("RESULT ")), None)
    if done.returncode or result is None:
        raise SystemExit("\n".join(lines[-40:]) + done.stderr[-4000:])
    return {**json.loads(result[len("RESULT "):]), "digest": digest(out)}


def make_world(work: Path, pairs: int, max_prompts: int | None) -> Path:
    world = work / (f"world-{pairs}" + (f"-p{max_prompts}" if max_prompts else ""))
    if not (world / "world.json").exists():
        from curate.synth.world import WorldConfig, build_world

        started = time.perf_counter()
        build_world(world, WorldConfig(pairs=pairs, seed=0, formats=("pickapic",), max_prompts=max_prompts))
        print(f"world of {pairs:,} pairs made in {time.perf_counter() - started:.0f} s (not timed below)")
    return world


def table(results: dict[str, dict]) -> None:
    names = list(results)
    print(f"  {'stage':<11}" + "".join(f"{LABELS[n]:>12}" for n in names) + "   driver share (in-process)"
          + ("   x2/x1  x1/in  x2/in" if len(names) == 3 else ""))
    first = results[names[0]]
    for stage in first["stages"]:
        walls = [results[n]["stages"][stage]["wall"] for n in names]
        s = first["stages"][stage]
        line = f"  {stage:<11}" + "".join(f"{w:11.1f}s" for w in walls) + f"   {s['driver'] / s['wall']:>6.0%}" + " " * 19
        if len(names) == 3:
            line += f"  {walls[1] / walls[2]:5.2f}  {walls[1] / walls[0]:5.2f}  {walls[0] / walls[2]:5.2f}"
        print(line)
    print(f"  {'start-up':<11}" + "".join(f"{results[n]['startup']:11.1f}s" for n in names))
    totals = [results[n]["total"] for n in names]
    line = f"  {'total':<11}" + "".join(f"{t:11.1f}s" for t in totals)
    if len(names) == 3:
        line += " " * 28 + f"  {totals[1] / totals[2]:5.2f}  {totals[1] / totals[0]:5.2f}  {totals[0] / totals[2]:5.2f}"
    print(line)
    if len(names) == 3:
        print("  targets: x2/x1 >= 1.8 (scaling), x1/in <= 1.10, x2/in >= 1.6 (speed-up): x2/in is in-process / Dask x2")
    same = len({r["digest"] for r in results.values()}) == 1
    print(f"  tables identical across runs: {'yes' if same else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--max-prompts", type=int, default=None, help="prompts in the world (x4 images); "
                        "default: the world's own cap (1,000 with images)")
    parser.add_argument("--configs", default="local,dask1,dask2", help="which runs, comma-separated: "
                        + ", ".join(CONFIGS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/prefcurate-bench-pipeline"))
    parser.add_argument("--child", nargs=3, metavar=("CONFIG", "OUT", "WORLD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]), Path(args.child[2]))
    world = make_world(args.work, args.pairs, args.max_prompts)
    results = {c: run(c, args.work, world) for c in args.configs.split(",")}
    stem = f"results-{args.pairs}" + (f"-p{args.max_prompts}" if args.max_prompts else "")
    (args.work / f"{stem}.json").write_text(json.dumps(results, indent=1))
    any_run = next(iter(results.values()))
    print(f"ingest -> embed -> annotators -> flag -> filter: {any_run['pairs']:,} pairs, {any_run['images']:,} images, "
          f"{os.cpu_count()} cores; results in {args.work / (stem + '.json')}")
    table(results)


if __name__ == "__main__":
    main()
