"""Planted malformed rows: which rows of a layout are broken, and how, so ingest's rejects can be checked.

A planted row is an extra record (the layout holds ``--pairs`` good records plus the planted
ones); it has no row in truth/pairs.parquet and one in truth/planted.parquet with the reason code
ingest is expected to give.
"""
from __future__ import annotations

import numpy as np

REASONS = (
    "missing_label", "unparseable_label", "no_label", "identical_images", "undecodable_image", "truncated_image",
    "missing_file", "path_outside_root", "empty_prompt", "duplicate_row", "bad_type",
)
# What each layout can carry. Image-byte defects need bytes; files and paths need file references.
KINDS = {
    "pickapic": ("missing_label", "unparseable_label", "no_label", "identical_images", "undecodable_image",
                 "truncated_image", "empty_prompt", "duplicate_row"),
    "pickapic_no_images": ("missing_label", "unparseable_label", "no_label", "identical_images", "empty_prompt", "duplicate_row"),
    "hpdv2": ("missing_label", "bad_type", "identical_images", "undecodable_image", "truncated_image",
              "missing_file", "path_outside_root", "empty_prompt"),
    "multivote": ("missing_label", "identical_images", "undecodable_image", "truncated_image",
                  "empty_prompt", "duplicate_row"),
    # bad_type: a JSON list as the label in pairs.jsonl; the same cell in pairs.csv is text, so
    # there it is recorded as unparseable_label.
    "table": ("missing_label", "unparseable_label", "bad_type", "identical_images", "undecodable_image",
              "truncated_image", "missing_file", "path_outside_root", "empty_prompt", "duplicate_row"),
}
GARBAGE = b"\x00\x01 this is not an image \xff\xfe" * 4  # no known magic bytes
OUTSIDE_ROOT = "../../etc/passwd"


def plan(rng: np.random.Generator, n_good: int, n_planted: int, kinds: tuple[str, ...]) -> dict[int, str]:
    """Rows (of n_good + n_planted) to break, each with its reason; kinds cycle in order so every
    kind appears once n_planted >= len(kinds). Row 0 is never planted, so a duplicate always has
    an earlier good row to copy."""
    total = n_good + n_planted
    if n_planted == 0:
        return {}
    if n_good < 1:
        raise ValueError(f"cannot plant {n_planted} malformed rows among {n_good} good ones; ask for at least 1 pair")
    rows = np.sort(rng.choice(np.arange(1, total), size=n_planted, replace=False))
    order = rng.permutation(n_planted)  # which planted row gets which kind
    return {int(rows[i]): kinds[k % len(kinds)] for k, i in enumerate(order)}


def previous_good(row: int, planted: dict[int, str]) -> int:
    while row in planted:
        row -= 1
    return row


def repeats(*keys: np.ndarray) -> np.ndarray:
    """Mask of rows whose key (int columns) already occurred earlier. By chance a simulated
    annotator can judge the same pair the same way twice; ingest rightly rejects the later one as a
    duplicate_row, so the truth must say so too."""
    stacked = np.stack([np.asarray(k, dtype=np.int64) for k in keys], axis=1)
    if len(stacked) == 0:
        return np.zeros(0, dtype=bool)
    _, first = np.unique(stacked, axis=0, return_index=True)
    mask = np.ones(len(stacked), dtype=bool)
    mask[first] = False
    return mask


def truncate(data: bytes) -> bytes:
    """Keep the magic bytes and a third of the file: sniffable, not decodable."""
    return data[: max(16, len(data) // 3)]
