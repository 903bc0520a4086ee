"""The demo pipeline's CPU-bound stages, in-process against Dask with 2 worker processes.

    python benchmarks/pipeline.py                 # 200k pairs
    python benchmarks/pipeline.py --pairs 20000   # quicker

The world is made once (not timed). Then `prefcurate run` executes ingest -> embed -> annotators ->
flag -> filter on a fresh dataset, once with the in-process executor and once with
`--executor dask --workers 2` (one LocalCluster for the whole run, its start-up included), each in
its own process. Per-stage times come from the progress lines; the speed-up target is >= 1.6x on
2 cores. The two runs' tables are compared byte for byte.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
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


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted((folder / "dataset" / "tables").rglob("*.arrow")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run(work: Path, world: Path, name: str, extra: list[str]) -> tuple[float, dict[str, float]]:
    """Wall time of the run, and of each stage (from the moment its `[i/N] prefcurate STAGE` line appears)."""
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pipeline = out / "stages.toml"
    pipeline.write_text(STAGES.replace("OUT", str(out)).replace("WORLD", str(world)))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-u", "-m", "curate.cli", "run", str(pipeline), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks, lines = [("start", started)], []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[") and "] prefcurate " in line:
            marks.append((line.split("] prefcurate ")[1].split()[0], time.perf_counter()))
    proc.wait()
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit("".join(lines[-60:]))
    marks.append(("end", started + seconds))
    stages = {name: marks[i + 1][1] - t for i, (name, t) in enumerate(marks[:-1]) if name not in ("start",)}
    stages["start-up"] = marks[1][1] - started
    return seconds, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/prefcurate-bench-pipeline"))
    args = parser.parse_args()
    world = args.work / f"world-{args.pairs}"
    if not (world / "world.json").exists():
        from curate.synth.world import WorldConfig, build_world

        started = time.perf_counter()
        build_world(world, WorldConfig(pairs=args.pairs, seed=0, formats=("pickapic",)))
        print(f"world of {args.pairs:,} pairs made in {time.perf_counter() - started:.0f} s (not timed below)")
    local, local_stages = run(args.work, world, "local", [])
    dask, dask_stages = run(args.work, world, "dask", ["--executor", "dask", "--workers", "2"])
    same = digest(args.work / "local") == digest(args.work / "dask")
    print(f"ingest -> embed -> annotators -> flag -> filter on {args.pairs:,} pairs")
    print(f"  {'stage':<12} {'in-process':>11} {'Dask x2':>9} {'speed-up':>9}")
    for stage in local_stages:
        a, b = local_stages[stage], dask_stages.get(stage, float("nan"))
        print(f"  {stage:<12} {a:10.1f}s {b:8.1f}s {a / b:8.2f}x")
    print(f"  {'total':<12} {local:10.1f}s {dask:8.1f}s {local / dask:8.2f}x (target >= 1.6x)")
    print(f"  tables identical: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
