"""What a prompt bucket's inputs cost the CLIP stages: a scan of the tables per bucket against the shuffle.

    python benchmarks/clip_buckets.py --dataset DATASET [--buckets 10 20 40]

clip-scores and filter work per prompt bucket; each task needs its bucket's pairs and the
embeddings of its images and prompts. The straightforward way (what they did before
curate.clip.partition) scans the pairs and embedding tables once per bucket and keeps the
bucket's rows: B buckets read the data B times, and B grows with the data (one per 100k pairs).
The shuffle reads every table once (two passes) and each bucket then reads only its own rows.
Both run here, in-process, on the same embedded dataset (e.g. the 1M-pair one that
benchmarks/pipeline.py leaves in --work/local/dataset), for several bucket counts: the
baseline's time grows with B, the shuffle's should not. Both must find the same rows; the script
checks it on every bucket.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from curate.clip import partition as shuffle  # noqa: E402
from curate.clip.embed import bucket_of  # noqa: E402
from curate.dataset import Dataset  # noqa: E402
from curate.runner import run_stage  # noqa: E402


def scan_bucket(ds: Dataset, model: str, buckets: int, bucket: int) -> tuple[int, int, int]:
    """The baseline: the bucket's pairs, images and prompts found by scanning every table."""
    parts = []
    for batch in ds.read_batches("pairs", list(shuffle.PAIR_COLUMNS)):
        parts.append(batch.filter(pa.array(bucket_of(batch.column(0), buckets) == bucket)))
    pairs = pa.Table.from_batches(parts)
    images = pc.unique(pa.chunked_array(pairs["image_a_id"].chunks + pairs["image_b_id"].chunks, pa.string()))
    found = {}
    for table, key, wanted in (("image_embeddings", "image_id", images),
                               ("prompt_embeddings", "prompt_id", pc.unique(pairs["prompt_id"]))):
        n = 0
        for batch in ds.read_batches(table, [key, "model", "embedding"]):
            rows = batch.filter(pc.and_(pc.equal(batch.column(1), model), pc.is_in(batch.column(0), value_set=wanted)))
            emb = rows.column(2)
            matrix = emb.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(emb), emb.type.list_size)
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
            n += dict(zip(rows.column(0).to_pylist(), matrix)).__len__()
        found[table] = n
    return pairs.num_rows, found["image_embeddings"], found["prompt_embeddings"]


def shuffled_bucket(ds: Dataset, part: shuffle.Partition, bucket: int) -> tuple[int, int, int]:
    pairs = shuffle.bucket_pairs(ds, part, bucket, list(shuffle.PAIR_COLUMNS))
    images = shuffle.bucket_embeddings(ds, part, bucket, "image_embeddings")
    prompts = shuffle.bucket_embeddings(ds, part, bucket, "prompt_embeddings")
    return pairs.num_rows, len(images), len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--buckets", type=int, nargs="+", default=[10, 20, 40])
    args = parser.parse_args()
    ds = Dataset(args.dataset)
    model = pc.unique(ds.read_table("prompt_embeddings", ["model"])["model"]).to_pylist()[0]
    pairs = ds.num_rows("pairs")
    print(f"{args.dataset}: {pairs:,} pairs, {ds.num_rows('image_embeddings'):,} image and "
          f"{ds.num_rows('prompt_embeddings'):,} prompt embeddings, model {model}, {os.cpu_count()} cores")
    print(f"{'buckets':>8} {'scan per bucket':>16} {'shuffle passes':>15} {'bucket reads':>13} {'shuffle total':>14} {'scan/shuffle':>13}")
    for buckets in args.buckets:
        started = time.perf_counter()
        scanned = [scan_bucket(ds, model, buckets, b) for b in range(buckets)]
        scan = time.perf_counter() - started
        started = time.perf_counter()
        stage = shuffle.partition_stage(ds, model, buckets)
        run_stage(stage, ds)
        passes = time.perf_counter() - started
        part = shuffle.partition_of(ds, stage)
        started = time.perf_counter()
        read = [shuffled_bucket(ds, part, b) for b in range(buckets)]
        reads = time.perf_counter() - started
        if read != scanned:
            raise SystemExit(f"{buckets} buckets: the shuffle found {read[:3]}... rows, the scan {scanned[:3]}...")
        total = passes + reads
        print(f"{buckets:>8} {scan:>15.1f}s {passes:>14.1f}s {reads:>12.1f}s {total:>13.1f}s {scan / total:>12.2f}x", flush=True)


if __name__ == "__main__":
    main()
