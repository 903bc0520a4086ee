"""Shard partials as declared data: a dict of numpy arrays in an .npz, read back without pickle.

A partial is what a shard leaves for its stage's ``finalize`` to merge. Stored this way, a file
planted in a run folder can never run code when ``--resume`` reads it back: loading refuses
anything but plain arrays of numbers, bools and fixed-width strings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.dataset import DatasetError


class UnsafePartial(DatasetError):
    """A stored partial that is not declared data (a pickle, or arrays of Python objects): never loaded."""


def save_partial(path: Path, partial: dict[str, np.ndarray], stage: str) -> None:
    """Store a shard's partial as .npz (atomic rename); only arrays of numbers, bools or fixed strings."""
    if not isinstance(partial, dict):
        raise TypeError(f"stage {stage}: ctx.partial must be a dict of numpy arrays; got {type(partial).__name__}")
    arrays = {}
    for key, value in partial.items():
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"stage {stage}: partial {key!r} holds Python objects ({array.dtype}); store numbers, "
                            f"bools or fixed-width strings (np.array(values, dtype=str)) so it reads back without pickle")
        arrays[key] = array
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def load_partial(path: Path) -> dict[str, np.ndarray]:
    """Read a stored partial without pickle; anything else is refused with the file and the fix."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    except (ValueError, OSError) as exc:
        raise UnsafePartial(f"refusing partial {path}: not plain arrays ({exc}); delete {path.parent} "
                            f"and run again without --resume") from None
