"""A scaling model of the pipeline, built from measured runs of benchmarks/pipeline.py, and checked.

    python benchmarks/scaling.py --fit results-100000.json results-300000-p7500.json \\
        --check results-1000000-p25000.json

Each stage is its executor maps (the shards workers divide) and its driver time (planning, finalize
merges, global fits: what they do not), read from the in-process runs of the --fit files. A map's
shard count is fitted as proportional to its size x (images for the embedding map, pairs for every
other) and a shard's seconds as t0 + t1 z, z being the dataset's pairs (t1 = 0 for a shard that reads
only its own rows; t1 > 0 where every shard scans a whole table, whose work then grows as the
square of the data) or, for ingest, the distinct images per pair (a shard checks and writes the
images its rows bring). The driver is fitted as
a + b pairs. On W workers a stage takes

    driver + sum over its maps of warm-up + ceil(shards / W) * (t0 + t1 z)

(whole shards per worker: granularity shows up as the ceiling), plus the executor's start-up. The
--check file's measured runs (in-process, Dask x1, Dask x2) are set against the prediction for the
same sizes; then the model predicts 1M pairs with Pick-a-Pic's images (about two distinct images per
pair) and 10M pairs at 1, 8 and 64 workers, with each stage's speed-up from 1 to 64 workers, and names
the first stage to stop scaling: the first, in pipeline order, whose speed-up at 64 workers is below
8x (an eighth of linear), else the one that takes longest at 64.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

def size_of(desc: str) -> str:
    """What a map's shard count grows with: images for the embedding map, pairs for every other."""
    return "images" if desc.startswith("embed") else "pairs"


def covariate(key: str, pairs: float, images: float) -> float:
    """What a map's shard time may grow with: distinct images per pair for ingest (a shard checks and
    writes the images its rows bring), the dataset's pairs for every other map (a shard that scans
    a whole table)."""
    return images / pairs if key == "ingest" else pairs


def map_key(desc: str) -> str:
    return desc.split("-")[0] if desc.startswith(("embed", "clip")) else desc


def stage_points(results: list[dict]) -> dict[str, dict]:
    """stage -> {"driver": [(pairs, seconds)], "maps": {map: [(x, tasks, mean task seconds)]}} from in-process runs."""
    points: dict[str, dict] = {}
    for run in results:
        local = run["local"]
        for stage, s in local["stages"].items():
            entry = points.setdefault(stage, {"driver": [], "maps": {}})
            entry["driver"].append((local["pairs"], s["driver"]))
            for m in s["maps"]:
                key = map_key(m["desc"])
                x, z = local[size_of(m["desc"])], covariate(key, local["pairs"], local["images"])
                entry["maps"].setdefault(key, []).append((x, z, sorted(m["tasks"])))
    return points


def linear_fit(xs: list[float], ys: list[float], weights: list[float] | None = None) -> tuple[float, float]:
    """Weighted least-squares a + b x (one distinct x: a constant); b kept >= 0, a >= 0."""
    w = weights or [1.0] * len(xs)
    total = sum(w)
    mx, my = sum(wi * x for wi, x in zip(w, xs)) / total, sum(wi * y for wi, y in zip(w, ys)) / total
    spread = sum(wi * (x - mx) ** 2 for wi, x in zip(w, xs))
    b = max(sum(wi * (x - mx) * (y - my) for wi, x, y in zip(w, xs, ys)) / spread, 0.0) if spread else 0.0
    return max(my - b * mx, 0.0), b


def median(values: list[float]) -> float:
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


class MapModel:
    """One executor map: shards proportional to x, each taking t0 + t1 x seconds (fitted to each run's
    median shard, weighted by its shard count), plus a once-per-worker warm-up (the slowest shard
    beyond the median at the largest fitted size: a model loaded, a first import) that every worker
    pays once. t1 > 0 means a shard's time grows with the whole dataset (it scans a whole table), so
    the map's work grows as x squared."""

    def __init__(self, points):
        self.tasks_per_x = max(len(tasks) / x for x, _, tasks in points)
        self.task = linear_fit([z for _, z, _ in points], [median(t) for _, _, t in points], [len(t) for _, _, t in points])
        largest = max(points, key=lambda p: p[0])[2]
        self.warmup = largest[-1] - median(largest) if len(largest) > 1 else 0.0

    def predict(self, x: float, z: float, workers: int) -> float:
        tasks = max(1, math.ceil(self.tasks_per_x * x))
        return self.warmup + math.ceil(tasks / workers) * (self.task[0] + self.task[1] * z)


class StageModel:
    def __init__(self, points):
        self.driver = linear_fit([x for x, _ in points["driver"]], [y for _, y in points["driver"]])
        self.maps = {key: MapModel(p) for key, p in points["maps"].items()}

    def predict(self, pairs: float, images: float, workers: int) -> tuple[float, float]:
        """(wall seconds, driver seconds) on ``workers``."""
        driver = self.driver[0] + self.driver[1] * pairs
        maps = sum(m.predict(images if size_of(key) == "images" else pairs, covariate(key, pairs, images), workers)
                   for key, m in self.maps.items())
        return driver + maps, driver


def predict(models: dict[str, StageModel], pairs: float, images: float, workers: int) -> dict[str, tuple[float, float]]:
    return {stage: m.predict(pairs, images, workers) for stage, m in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", nargs="+", type=Path, required=True, help="results files whose in-process runs fit the model")
    parser.add_argument("--check", type=Path, help="a results file (in-process, Dask x1, x2) to set against the prediction")
    parser.add_argument("--at", nargs=2, type=float, action="append", default=[], metavar=("PAIRS", "IMAGES"),
                        help="also print the per-stage prediction at this size on 1 and 2 workers (repeatable)")
    args = parser.parse_args()
    fits = [json.loads(p.read_text()) for p in args.fit]
    models = {stage: StageModel(points) for stage, points in stage_points(fits).items()}
    startup = max(r.get(c, {}).get("startup", 0.0) for r in fits for c in ("dask1", "dask2"))

    print("per stage, fitted on " + ", ".join(f"{r['local']['pairs']:,} pairs / {r['local']['images']:,} images" for r in fits))
    print(f"  {'stage / map':<22} {'shards per 1M x':>15} {'s a shard':>10} {'+ s per 1M z':>13} {'warm-up s':>9}   {'driver s':>8} {'+ s per 1M pairs':>16}")
    for stage, m in models.items():
        print(f"  {stage:<22} {'':>15} {'':>10} {'':>13} {'':>9}   {m.driver[0]:8.2f} {m.driver[1] * 1e6:16.2f}")
        for key, mm in m.maps.items():
            print(f"    {key:<20} {mm.tasks_per_x * 1e6:15.0f} {mm.task[0]:10.2f} {mm.task[1] * (1 if key == 'ingest' else 1e6):13.2f} {mm.warmup:9.2f}   x = {size_of(key)}, z = {'images per pair (per 1, not 1M)' if key == 'ingest' else 'pairs'}")

    if args.check:
        check = json.loads(args.check.read_text())
        any_run = next(iter(check.values()))
        pairs, images = any_run["pairs"], any_run["images"]
        print(f"\nmeasured against predicted, {pairs:,} pairs / {images:,} images")
        print(f"  {'run':<11} {'measured':>9} {'predicted':>10} {'error':>7}")
        for config, workers in (("local", 1), ("dask1", 1), ("dask2", 2)):
            if config not in check:
                continue
            predicted = sum(w for w, _ in predict(models, pairs, images, workers).values())
            predicted += 0.0 if config == "local" else check[config]["startup"]
            measured = check[config]["total"]
            print(f"  {config:<11} {measured:8.1f}s {predicted:9.1f}s {predicted / measured - 1:+7.0%}")
            for stage, (wall, _) in predict(models, pairs, images, workers).items():
                got = check[config]["stages"][stage]["wall"]
                print(f"    {stage:<9} {got:8.1f}s {wall:9.1f}s {wall / got - 1:+7.0%}")

    for pairs, images in args.at:
        print(f"\npredicted, {pairs:,.0f} pairs / {images:,.0f} images (startup {startup:.1f} s not included)")
        print(f"  {'stage':<11} {'1 worker':>9} {'2 workers':>10}")
        one, two = predict(models, pairs, images, 1), predict(models, pairs, images, 2)
        for stage in models:
            print(f"  {stage:<11} {one[stage][0]:8.1f}s {two[stage][0]:9.1f}s")
        print(f"  {'total':<11} {sum(w for w, _ in one.values()):8.1f}s {sum(w for w, _ in two.values()):9.1f}s")

    for label, pairs, images in (("1M pairs, Pick-a-Pic's images (~2 per pair)", 1e6, 2e6),
                                 ("10M pairs, ~2 images per pair", 1e7, 2e7)):
        print(f"\npredicted, {label}:")
        print(f"  {'stage':<11}" + "".join(f"{f'{w} workers':>14}" for w in (1, 8, 64)) + "   driver share at 64   1->64")
        totals = {w: startup if w > 1 else 0.0 for w in (1, 8, 64)}
        speedups = {}
        for stage in models:
            row = {w: predict(models, pairs, images, w)[stage] for w in (1, 8, 64)}
            for w, (wall, _) in row.items():
                totals[w] += wall
            speedups[stage] = row[1][0] / row[64][0]
            print(f"  {stage:<11}" + "".join(f"{row[w][0]:13.0f}s" for w in (1, 8, 64))
                  + f"   {row[64][1] / row[64][0]:>6.0%}   {speedups[stage]:6.1f}x")
        print(f"  {'total':<11}" + "".join(f"{totals[w]:13.0f}s" for w in (1, 8, 64))
              + f"            {totals[1] / totals[64]:6.1f}x")
        slow = [stage for stage, x in speedups.items() if x < 8]
        longest = max(models, key=lambda st: predict(models, pairs, images, 64)[st][0])
        print(f"  first stage to stop scaling: {slow[0] if slow else longest}"
              f" (longest at 64 workers: {longest})")

if __name__ == "__main__":
    main()
