"""Ingest throughput and memory against a plain pyarrow read + write of the same files.

    python benchmarks/ingest.py                       # both cases: 200k pairs with images, 5M metadata-only
    python benchmarks/ingest.py --case images --pairs 20000   # a quick run

For each case: the synthetic world's Pick-a-Pic parquet files are made once (cached under --work),
then, each in a fresh process so peak RSS is its own: (1) baseline: pyarrow reads every file batch by
batch and writes it as an Arrow IPC file, nothing else, with Arrow's threads; (2) the same copy
written zstd-compressed, the IPC format prefcurate's metadata tables use (the codec's cost is the
format's, not ingest's); (3) that zstd copy on one core (`pa.set_cpu_count(1)`), as an in-process
shard runs: like for like; (4) `prefcurate ingest` in-process; (5) `prefcurate ingest --executor dask
--workers 2`, a LocalCluster started before the clock (its start-up is printed apart): two cores, as
the threaded copy (1) has. The ratio ingest/baseline is the cost of validation, hashing, dedup and
the rejects path (target <= 1.5, against the plain copy).
Peak RSS is printed for the input and for a quarter of it: flat means memory follows the shard size.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over from the parent across fork+exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_world(folder: Path, pairs: int, images: bool) -> Path:
    marker = folder / "world.json"
    if not marker.exists():
        from curate.synth.world import WorldConfig, build_world

        shutil.rmtree(folder, ignore_errors=True)
        build_world(folder, WorldConfig(pairs=pairs, seed=0, images=images, formats=("pickapic",)))
    return folder / "pickapic"


def baseline(files: list[Path], out: Path, compression: str | None = None) -> None:
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    options = ipc.IpcWriteOptions(compression=compression)
    for i, f in enumerate(files):
        parquet = pq.ParquetFile(f)
        with ipc.new_file(str(out / f"{i:05d}.arrow"), parquet.schema_arrow, options=options) as writer:
            for batch in parquet.iter_batches(batch_size=2000):
                writer.write_batch(batch)


def ingest(files: list[Path], out: Path, executor=None) -> dict:
    from curate.ingest.stage import IngestStage
    from curate.runner import run_stage

    return run_stage(IngestStage(files=[str(f) for f in files], format="pickapic"), out, executor).stats


def child(kind: str, source: Path, out: Path) -> None:
    from contextlib import ExitStack

    if kind.startswith("ingest"):  # import once before the clock starts: throughput, not start-up, is measured
        import polars  # noqa: F401

        import curate.ingest.stage  # noqa: F401
    with ExitStack() as stack:
        pool, started = None, time.perf_counter()
        if kind == "ingest-dask2":
            from curate.executors import make_executor

            pool = stack.enter_context(make_executor("dask", workers=2))
        startup = time.perf_counter() - started
        files = sorted(source.glob("*.parquet"))
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        if kind.startswith("ingest"):
            stats = ingest(files, out, pool)
        else:
            if kind == "baseline-zstd-1core":
                import pyarrow as pa

                pa.set_cpu_count(1)
            stats = baseline(files, out, compression="zstd" if kind.startswith("baseline-zstd") else None)
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "startup": startup if pool else 0.0, "peak_rss_mb": peak_rss_mb(),
                      "stats": stats or {}}))


def measure(kind: str, source: Path, work: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(source), str(work / f"out-{kind}")],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_case(name: str, pairs: int, images: bool, work: Path) -> None:
    source = make_world(work / f"world-{name}-{pairs}", pairs, images)
    small = make_world(work / f"world-{name}-{pairs // 4}", pairs // 4, images)
    size_mb = sum(f.stat().st_size for f in source.glob("*.parquet")) / 2**20
    base, base_zstd = measure("baseline", source, work), measure("baseline-zstd", source, work)
    base_one = measure("baseline-zstd-1core", source, work)
    ours = measure("ingest", source, work)
    ours_dask = measure("ingest-dask2", source, work)
    ours_small = measure("ingest", small, work)
    rows = ours["stats"].get("items", 0)
    print(f"\n== {name}: {rows:,} pairs, {size_mb:,.0f} MB of parquet ==")
    print(f"baseline pyarrow read+write : {base['seconds']:7.2f} s  {rows / base['seconds']:>10,.0f} pairs/s  "
          f"{size_mb / base['seconds']:7.1f} MB/s  peak RSS {base['peak_rss_mb']:,.0f} MB")
    print(f"baseline, zstd IPC          : {base_zstd['seconds']:7.2f} s  {rows / base_zstd['seconds']:>10,.0f} pairs/s  "
          f"{size_mb / base_zstd['seconds']:7.1f} MB/s  peak RSS {base_zstd['peak_rss_mb']:,.0f} MB")
    print(f"baseline, zstd, one core    : {base_one['seconds']:7.2f} s  {rows / base_one['seconds']:>10,.0f} pairs/s  "
          f"{size_mb / base_one['seconds']:7.1f} MB/s  peak RSS {base_one['peak_rss_mb']:,.0f} MB")
    print(f"prefcurate ingest           : {ours['seconds']:7.2f} s  {rows / ours['seconds']:>10,.0f} pairs/s  "
          f"{size_mb / ours['seconds']:7.1f} MB/s  peak RSS {ours['peak_rss_mb']:,.0f} MB")
    print(f"prefcurate ingest, Dask x2  : {ours_dask['seconds']:7.2f} s  {rows / ours_dask['seconds']:>10,.0f} pairs/s  "
          f"{size_mb / ours_dask['seconds']:7.1f} MB/s  (+ {ours_dask['startup']:.1f} s cluster start-up)  driver peak RSS "
          f"{ours_dask['peak_rss_mb']:,.0f} MB")
    print(f"ratio ingest / baseline     : {ours['seconds'] / base['seconds']:.2f}  (target <= 1.5); against the zstd copy: "
          f"{ours['seconds'] / base_zstd['seconds']:.2f}, on one core: {ours['seconds'] / base_one['seconds']:.2f}")
    print(f"ratio Dask x2 / baseline    : {ours_dask['seconds'] / base['seconds']:.2f} (both on two cores); against the zstd "
          f"copy: {ours_dask['seconds'] / base_zstd['seconds']:.2f}")
    print(f"peak RSS at 1/4 the input   : {ours_small['peak_rss_mb']:,.0f} MB (vs {ours['peak_rss_mb']:,.0f} MB at full size)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["images", "metadata", "both"], default="both")
    parser.add_argument("--pairs", type=int, default=None, help="override the case's pair count")
    parser.add_argument("--work", type=Path, default=Path("/tmp/prefcurate-bench-ingest"))
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SOURCE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    if args.case in ("images", "both"):
        run_case("images", args.pairs or 200_000, True, args.work)
    if args.case in ("metadata", "both"):
        run_case("metadata", args.pairs or 5_000_000, False, args.work)


if __name__ == "__main__":
    main()
