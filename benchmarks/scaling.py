"""A scaling model of the pipeline, built from measured runs of benchmarks/pipeline.py, and checked.

    python benchmarks/scaling.py --fit results-100000.json results-300000-p7500.json \\
        --check results-1000000-p25000.json

For each stage, the in-process runs of the --fit files give two measured quantities at each size:
the work of its shards (the sum of every task's seconds: what workers divide) and its driver time
(planning, finalize merges, global fits: what they do not). Each is fitted as a + b x, x being the
stage's own size (images for embed, pairs for the rest), and the shard count as proportional to x.
The predicted wall time of a stage on W workers is

    driver(x) + ceil(tasks(x) / W) * work(x) / tasks(x)

(whole shards per worker: granularity shows up as the ceiling), plus the executor's start-up. The
--check file's measured runs (in-process, Dask x1, Dask x2) are set against the model's prediction
for the same sizes, then the model predicts 1M pairs with Pick-a-Pic's images (about two distinct
images per pair) and 10M pairs at 1, 8 and 64 workers, and names the first stage that stops
scaling (where the driver's share passes half of the stage's time).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

SIZE_OF = {"embed": "images"}  # every other stage grows with the pairs


def stage_points(results: list[dict]) -> dict[str, list[tuple[float, float, float, int]]]:
    """stage -> [(x, work, driver, tasks)] from the in-process run of each results file."""
    points: dict[str, list] = {}
    for run in results:
        local = run["local"]
        for stage, s in local["stages"].items():
            x = local[SIZE_OF.get(stage, "pairs")]
            work = sum(sum(m["tasks"]) for m in s["maps"])
            tasks = sum(len(m["tasks"]) for m in s["maps"])
            points.setdefault(stage, []).append((x, work, s["driver"], tasks))
    return points


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares a + b x (through the points; one point: proportional); a and b kept >= 0."""
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    b = max(b, 0.0)
    return max(my - b * mx, 0.0), b


class StageModel:
    def __init__(self, points):
        xs = [p[0] for p in points]
        self.work = linear_fit(xs, [p[1] for p in points])
        self.driver = linear_fit(xs, [p[2] for p in points])
        self.tasks_per_x = max(p[3] / p[0] for p in points)

    def predict(self, x: float, workers: int) -> tuple[float, float]:
        """(wall seconds, driver seconds) on ``workers`` at size ``x``."""
        work = self.work[0] + self.work[1] * x
        driver = self.driver[0] + self.driver[1] * x
        tasks = max(1, math.ceil(self.tasks_per_x * x))
        return driver + math.ceil(tasks / workers) * work / tasks, driver


def predict(models: dict[str, StageModel], pairs: float, images: float, workers: int) -> dict[str, tuple[float, float]]:
    return {stage: m.predict(images if SIZE_OF.get(stage) == "images" else pairs, workers) for stage, m in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", nargs="+", type=Path, required=True, help="results files whose in-process runs fit the model")
    parser.add_argument("--check", type=Path, help="a results file (in-process, Dask x1, x2) to set against the prediction")
    args = parser.parse_args()
    fits = [json.loads(p.read_text()) for p in args.fit]
    models = {stage: StageModel(points) for stage, points in stage_points(fits).items()}
    startup = max(r.get(c, {}).get("startup", 0.0) for r in fits for c in ("dask1", "dask2"))

    print("per stage, fitted on " + ", ".join(f"{r['local']['pairs']:,} pairs / {r['local']['images']:,} images" for r in fits))
    print(f"  {'stage':<11} {'work s per 1M x':>16} {'driver s':>9} {'+ s per 1M x':>13}  x")
    for stage, m in models.items():
        print(f"  {stage:<11} {m.work[1] * 1e6:16.1f} {m.driver[0]:9.2f} {m.driver[1] * 1e6:13.1f}  {SIZE_OF.get(stage, 'pairs')}")

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

    for label, pairs, images in (("1M pairs, Pick-a-Pic's images (~2 per pair)", 1e6, 2e6),
                                 ("10M pairs, ~2 images per pair", 1e7, 2e7)):
        print(f"\npredicted, {label}:")
        print(f"  {'stage':<11}" + "".join(f"{f'{w} workers':>14}" for w in (1, 8, 64)) + "   driver share at 64")
        totals = {w: startup if w > 1 else 0.0 for w in (1, 8, 64)}
        first_bound = None
        for stage in models:
            row = {w: predict(models, pairs, images, w)[stage] for w in (1, 8, 64)}
            for w, (wall, _) in row.items():
                totals[w] += wall
            share = row[64][1] / row[64][0]
            if share > 0.5 and first_bound is None:
                first_bound = stage
            print(f"  {stage:<11}" + "".join(f"{row[w][0]:13.0f}s" for w in (1, 8, 64)) + f"   {share:>6.0%}")
        print(f"  {'total':<11}" + "".join(f"{totals[w]:13.0f}s" for w in (1, 8, 64))
              + f"   ({totals[1] / totals[64]:.1f}x at 64)")
        print(f"  first stage to stop scaling: {first_bound or 'none within 64 workers'}")


if __name__ == "__main__":
    main()
