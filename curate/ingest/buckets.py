"""The layout of ingest's partials: each shard's keys split into ``BUCKETS`` hash buckets.

A later pass (curate.ingest.duplicates) finds first occurrences one bucket at a time, reading only
that bucket of every shard's partial: the merge is spread over tasks, and no process ever holds
more than about 1/BUCKETS of the input's keys. A bucket is a key's top bits, so a key's every
occurrence lands in the same bucket whichever shard it is in.

Per bucket ``b`` a partial holds ``pairs_bb``: a (n, 4) uint64 array of (duplicate key, row of the
pair in the shard's pairs file, pair id high word, low word), sorted by (key, row); and
``images_bb``: the sorted image keys (first 64 bits of each id) of the images the shard stored.
"""
from __future__ import annotations

import numpy as np

BUCKETS = 64  # fixed: a partial's layout must not depend on the input size, so a resumed run reads the same
_SHIFT = np.uint64(64 - 6)  # 2**6 == BUCKETS: the top 6 bits of a key name its bucket
assert 1 << (64 - int(_SHIFT)) == BUCKETS


def pairs_key(bucket: int) -> str:
    return f"pairs_{bucket:02d}"


def images_key(bucket: int) -> str:
    return f"images_{bucket:02d}"


def _bounds(sorted_keys: np.ndarray) -> np.ndarray:
    """Where each bucket starts in keys sorted ascending (BUCKETS + 1 offsets)."""
    return np.searchsorted(sorted_keys >> _SHIFT, np.arange(BUCKETS + 1, dtype=np.uint64))


def bucketed(dup_keys: np.ndarray, pair_hi: np.ndarray, pair_lo: np.ndarray,
             image_keys: np.ndarray) -> dict[str, np.ndarray]:
    """A shard's partial: its pairs' duplicate keys (in pairs-file order, with their pair ids) and its
    stored images' keys, split by bucket and sorted within each."""
    rows = np.arange(len(dup_keys), dtype=np.uint64)
    order = np.lexsort((rows, dup_keys))
    table = np.stack([dup_keys, rows, pair_hi, pair_lo], axis=1).astype(np.uint64)[order]
    images = np.sort(image_keys.astype(np.uint64))
    pb, ib = _bounds(table[:, 0]), _bounds(images)
    out = {pairs_key(b): table[pb[b]:pb[b + 1]] for b in range(BUCKETS)}
    out.update({images_key(b): images[ib[b]:ib[b + 1]] for b in range(BUCKETS)})
    return out
