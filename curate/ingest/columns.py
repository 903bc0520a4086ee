"""Column helpers shared by the readers: typed coercion with per-row failures, label encodings."""
from __future__ import annotations

import datetime as dt
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
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError, TypeError, OverflowError):
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
        hint = "; for 1 = left / -1 = right use --map pref=COLUMN" if value == -1 else ""
        raise Rejected(Reason.UNPARSEABLE_LABEL, f"label {value!r}: numeric labels must be 0 (A wins), 1 (B wins) or "
                                                 f"0.5 (tie){hint}")
    if isinstance(value, str):
        key = value.strip().lower()
        if key == "":
            raise Rejected(Reason.MISSING_LABEL, "label is empty")
        if key in _TEXT_LABELS:
            return _TEXT_LABELS[key]
        raise Rejected(Reason.UNPARSEABLE_LABEL, f"label {value!r} is no known encoding; expected one of "
                                                 f"{sorted(set(_TEXT_LABELS))}")
    raise Rejected(Reason.BAD_TYPE, f"label {value!r} has type {type(value).__name__}; expected text or a number")


def label_from_sign(value) -> str:
    """HPDv2-test-style ``pref``: 1 = the left image (A) wins, -1 = the right (B), 0 = tie. A separate
    encoding from ``label_from_value``, whose 1 means B: which one applies is the column's, never the value's."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        raise Rejected(Reason.MISSING_LABEL, "pref is empty")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise Rejected(Reason.UNPARSEABLE_LABEL, f"pref {value!r}: expected 1 (left wins), -1 (right wins) "
                                                     f"or 0 (tie)") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(Reason.BAD_TYPE, f"pref {value!r} has type {type(value).__name__}; expected 1, -1 or 0")
    if value in (1, -1, 0):
        return {1: "a", -1: "b", 0: "tie"}[value]
    raise Rejected(Reason.UNPARSEABLE_LABEL, f"pref {value!r}: expected 1 (left wins), -1 (right wins) or 0 (tie)")


def trust_value(value, name: str = "trust") -> float | None:
    """An annotator's trust score: a finite number (text parsed), or None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise Rejected(Reason.BAD_TYPE, f"{name} {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(Reason.BAD_TYPE, f"{name} {value!r} has type {type(value).__name__}; expected a number")
    if math.isnan(value):
        return None
    if not math.isfinite(value):
        raise Rejected(Reason.OUT_OF_RANGE, f"{name} {value!r} is not a finite number")
    return float(value)


INT32_MAX = 2**31 - 1  # votes are stored as int32
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _count(value) -> int:
    """A whole number from an int, a float or text ('3', '3.0'); TypeError/ValueError otherwise."""
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, int):
        return value
    number = float(value)
    if not number.is_integer():  # also NaN and infinity
        raise ValueError(value)
    return int(number)


def label_from_votes(votes_a, votes_b) -> tuple[str, int, int]:
    """Vote counts: the side with more votes wins; equal counts are a tie."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (votes_a, votes_b)):
        raise Rejected(Reason.MISSING_LABEL, f"votes {votes_a!r}/{votes_b!r}: a count is missing")
    try:
        va, vb = _count(votes_a), _count(votes_b)
    except (TypeError, ValueError):
        raise Rejected(Reason.BAD_TYPE, f"votes {votes_a!r}/{votes_b!r} are not whole numbers") from None
    if va < 0 or vb < 0:
        raise Rejected(Reason.UNPARSEABLE_LABEL, f"votes {va}/{vb}: counts cannot be negative")
    if max(va, vb) > INT32_MAX:
        raise Rejected(Reason.OUT_OF_RANGE, f"votes {va}/{vb}: a count above {INT32_MAX:,} is no real vote count")
    if va == vb == 0:
        raise Rejected(Reason.MISSING_LABEL, "votes 0/0: nobody voted")
    return ("a" if va > vb else "b" if vb > va else "tie"), va, vb


def timestamp_value(value, name: str = "created_at") -> dt.datetime | None:
    """A time from an ISO string, epoch seconds or a datetime; Rejected (bad_type, out_of_range) otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise Rejected(Reason.BAD_TYPE, f"{name} {value!r} is not a time")
        try:
            return _EPOCH + dt.timedelta(seconds=value)
        except OverflowError:
            raise Rejected(Reason.OUT_OF_RANGE, f"{name} {value!r} as epoch seconds is past the year 9999 "
                                                f"(milliseconds? divide by 1000)") from None
    if not isinstance(value, str):
        raise Rejected(Reason.BAD_TYPE, f"{name} {value!r} is not an ISO time or epoch seconds")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Rejected(Reason.BAD_TYPE, f"{name} {value!r} is not an ISO time or epoch seconds") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def identifier(value, name: str) -> str | None:
    """An annotator or model name: text, or a number written as text (NaN: none); lists, objects,
    booleans and infinities are bad_type."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    raise Rejected(Reason.BAD_TYPE, f"{name} {value!r} is a {type(value).__name__}; expected text or a number")
