"""How input records are grouped into shards: by the pairs they expand into, not by their count.

A Pick-a-Pic or table row is one pair; a Rapidata row is one pair per vote; an HPDv2 record one per
image pair and annotator. ``--shard-rows`` counts pairs, so a shard's memory and size follow it
whatever the layout.
"""
from __future__ import annotations


def record_ranges(pairs_per_record: list[int], shard_pairs: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) ranges of records, each closed once its pairs reach ``shard_pairs``
    (a record is never split; one record larger than the limit is a shard of its own)."""
    ranges, start, total = [], 0, 0
    for index, pairs in enumerate(pairs_per_record):
        total += max(1, pairs)
        if total >= shard_pairs:
            ranges.append((start, index + 1))
            start, total = index + 1, 0
    if start < len(pairs_per_record):
        ranges.append((start, len(pairs_per_record)))
    return ranges
