"""The layout of ingest's partials: each shard's keys split into hash buckets.

A later pass (curate.ingest.duplicates) finds first occurrences one bucket at a time, reading only
that bucket of every shard's partial: the merge is spread over tasks, and no task holds more than
one bucket of the input's keys. A bucket is a key's top bits, so a key's every occurrence lands in
the same bucket whichever shard it is in.

How many: the power of two at or above the number of shards, at most ``MAX_BUCKETS``. Up to 64
shards a bucket then holds about a shard's worth of rows, as a pass-1 task does (and a one-shard
input writes one bucket file, not 64); above that, 1/64 of the rows. More buckets would shrink a
task further but cost shards x buckets partial reads in all. The count depends only on the plan,
so a resumed run lays its partials out as the interrupted one did.

Per bucket ``b`` a partial holds ``pairs_bb``: a (n, 4) uint64 array of (duplicate key, row of the
pair in the shard's pairs file, pair id high word, low word), sorted by (key, row); and
``images_bb``: the sorted image keys (first 64 bits of each id) of the images the shard stored.
"""
from __future__ import annotations

import numpy as np

MAX_BUCKETS = 64


def bucket_count(shards: int) -> int:
    """Buckets for an ingest of ``shards`` shards (a power of two, 1 to MAX_BUCKETS)."""
    return min(MAX_BUCKETS, 1 << max(0, shards - 1).bit_length())


def pairs_key(bucket: int) -> str:
    return f"pairs_{bucket:02d}"


def images_key(bucket: int) -> str:
    return f"images_{bucket:02d}"


def _bounds(sorted_keys: np.ndarray, buckets: int) -> np.ndarray:
    """Where each bucket starts in keys sorted ascending (buckets + 1 offsets)."""
    bits = buckets.bit_length() - 1
    if bits == 0:  # one bucket (and a shift by 64 bits is undefined)
        return np.array([0, len(sorted_keys)])
    return np.searchsorted(sorted_keys >> np.uint64(64 - bits), np.arange(buckets + 1, dtype=np.uint64))


def bucketed(dup_keys: np.ndarray, pair_hi: np.ndarray, pair_lo: np.ndarray, image_keys: np.ndarray,
             buckets: int) -> dict[str, np.ndarray]:
    """A shard's partial: its pairs' duplicate keys (in pairs-file order, with their pair ids) and its
    stored images' keys, split into ``buckets`` and sorted within each."""
    if buckets < 1 or buckets & (buckets - 1) or buckets > MAX_BUCKETS:
        raise ValueError(f"buckets {buckets}: must be a power of two from 1 to {MAX_BUCKETS} (see bucket_count)")
    rows = np.arange(len(dup_keys), dtype=np.uint64)
    order = np.lexsort((rows, dup_keys))
    table = np.stack([dup_keys, rows, pair_hi, pair_lo], axis=1).astype(np.uint64)[order]
    images = np.sort(image_keys.astype(np.uint64))
    pb, ib = _bounds(table[:, 0], buckets), _bounds(images, buckets)
    out = {pairs_key(b): table[pb[b]:pb[b + 1]] for b in range(buckets)}
    out.update({images_key(b): images[ib[b]:ib[b + 1]] for b in range(buckets)})
    return out
