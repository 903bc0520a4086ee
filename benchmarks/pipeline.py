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


def run(work: Path, world: Path, name: str, extra: list[str]) -> float:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pipeline = out / "stages.toml"
    pipeline.write_text(STAGES.replace("OUT", str(out)).replace("WORLD", str(world)))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "curate.cli", "run", str(pipeline), *extra],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
    return seconds


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
    local = run(args.work, world, "local", [])
    dask = run(args.work, world, "dask", ["--executor", "dask", "--workers", "2"])
    same = digest(args.work / "local") == digest(args.work / "dask")
    print(f"ingest -> embed -> annotators -> flag -> filter on {args.pairs:,} pairs")
    print(f"  in-process          : {local:7.1f} s")
    print(f"  Dask, 2 workers     : {dask:7.1f} s")
    print(f"  speed-up            : {local / dask:.2f}x (target >= 1.6x)")
    print(f"  tables identical    : {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
