"""Column helpers shared by the readers: typed coercion with per-row failures, label encodings."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.ingest.reasons import Reason, Rejected


def coerce(column: pa.Array | pa.ChunkedArray, typ: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast ``column`` to ``typ``; values that cannot be cast become null and are marked in the mask."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.type == typ:
        return column, np.zeros(len(column), dtype=bool)
    try:
        return pc.cast(column, typ), np.zeros(len(column), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    values, bad = [], np.zeros(len(column), dtype=bool)
    for i, value in enumerate(column.to_pylist()):
        try:
            values.append(None if value is None else pa.scalar(value).cast(typ).as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError, TypeError):
            values.append(None)
            bad[i] = True
    return pa.array(values, typ), bad


def label_from_pair(l0: float | None, l1: float | None) -> str:
    """Pick-a-Pic style (label_0, label_1): 1/0 -> a, 0/1 -> b, 0.5/0.5 -> tie."""
    if l0 is None or l1 is None or (isinstance(l0, float) and math.isnan(l0)) or (isinstance(l1, float) and math.isnan(l1)):
        raise Rejected(Reason.MISSING_LABEL, f"label_0={l0!r}, label_1={l1!r}: no label")
    if (l0, l1) == (1, 0):
        return "a"
    if (l0, l1) == (0, 1):
        return "b"
    if l0 == l1 == 0.5:
        return "tie"
    raise Rejected(Reason.UNPARSEABLE_LABEL, f"label_0={l0!r}, label_1={l1!r}: expected 1/0, 0/1 or 0.5/0.5")


_TEXT_LABELS = {"a": "a", "b": "b", "tie": "tie", "0": "a", "1": "b", "0.5": "tie", "image_a": "a",
                "image_b": "b", "left": "a", "right": "b", "first": "a", "second": "b", "draw": "tie", "equal": "tie"}


def label_from_value(value) -> str:
    """One label column: a/b/tie (and left/right, first/second), or the index of the winner 0/1 (0.5 = tie)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise Rejected(Reason.MISSING_LABEL, "label is empty")
    if isinstance(value, bool):
        raise Rejected(Reason.BAD_TYPE, f"label {value!r} is a boolean; expected a/b/tie or 0/1")
    if isinstance(value, (int, float)):
        if value in (0, 1, 0.5):
            return {0: "a", 1: "b", 0.5: "tie"}[value]
        raise Rejected(Reason.UNPARSEABLE_LABEL, f"label {value!r}: numeric labels must be 0 (A wins), 1 (B wins) or 0.5 (tie)")
    if isinstance(value, str):
        key = value.strip().lower()
        if key == "":
            raise Rejected(Reason.MISSING_LABEL, "label is empty")
        if key in _TEXT_LABELS:
            return _TEXT_LABELS[key]
        raise Rejected(Reason.UNPARSEABLE_LABEL, f"label {value!r} is no known encoding; expected one of "
                                                 f"{sorted(set(_TEXT_LABELS))}")
    raise Rejected(Reason.BAD_TYPE, f"label {value!r} has type {type(value).__name__}; expected text or a number")


def label_from_votes(votes_a, votes_b) -> tuple[str, int, int]:
    """Vote counts: the side with more votes wins; equal counts are a tie."""
    try:
        va, vb = int(votes_a), int(votes_b)
        if va != float(votes_a) or vb != float(votes_b):
            raise ValueError
    except (TypeError, ValueError):
        if votes_a is None or votes_b is None:
            raise Rejected(Reason.MISSING_LABEL, f"votes {votes_a!r}/{votes_b!r}: a count is missing") from None
        raise Rejected(Reason.BAD_TYPE, f"votes {votes_a!r}/{votes_b!r} are not whole numbers") from None
    if va < 0 or vb < 0:
        raise Rejected(Reason.UNPARSEABLE_LABEL, f"votes {va}/{vb}: counts cannot be negative")
    if va == vb == 0:
        raise Rejected(Reason.MISSING_LABEL, "votes 0/0: nobody voted")
    return ("a" if va > vb else "b" if vb > va else "tie"), va, vb
