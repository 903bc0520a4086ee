"""From candidate rows (what a format reader understood) to pairs, images and rejects batches.

Every reader produces the same candidate table (``CANDIDATE_SCHEMA``); the checks shared by all
formats (prompt, image bytes, identical sides) and the building of the output tables happen here,
once. A row a reader already rejected carries its ``reason``; later checks never override it.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import ids
from curate import schema as schemas
from curate.ingest.buckets import bucketed
from curate.ingest.images import inspect_image
from curate.ingest.reasons import Reason, Rejected

CANDIDATE_SCHEMA = pa.schema([
    ("source_row", pa.int64()), ("source_item", pa.int32()), ("prompt", pa.string()),
    ("bytes_a", pa.binary()), ("bytes_b", pa.binary()), ("uid_a", pa.string()), ("uid_b", pa.string()),
    ("label", pa.string()), ("annotator_id", pa.string()), ("annotator_trust", pa.float64()),
    ("votes_a", pa.int32()), ("votes_b", pa.int32()),
    ("model_a", pa.string()), ("model_b", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
    ("reason", pa.string()), ("message", pa.string()), ("raw_index", pa.int64()),
])


@dataclass
class ShardState:
    """What a shard remembers across its batches: checked images and the ids it has already written."""

    full_decode: bool = False
    checked: dict[str, tuple | Rejected] = field(default_factory=dict)
    emitted: set[str] = field(default_factory=set)
    dup_keys: list[np.ndarray] = field(default_factory=list)
    pair_hi: list[np.ndarray] = field(default_factory=list)
    pair_lo: list[np.ndarray] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)
    last_bytes: dict[str, list] = field(default_factory=dict)  # the current batch's decoded byte columns

    def partial(self, buckets: int) -> dict:
        """The shard's keys for the duplicates pass, in ``buckets`` hash buckets (curate.ingest.buckets)."""
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.uint64)  # noqa: E731
        return bucketed(cat(self.dup_keys), cat(self.pair_hi), cat(self.pair_lo), image_keys(self.image_ids), buckets)


def image_keys(image_ids: list[str]) -> np.ndarray:
    """The first 64 bits of each image id, for the global first-owner merge."""
    return np.array([int(i[:16], 16) for i in image_ids], dtype=np.uint64)


def _check_bytes(data: bytes, state: ShardState) -> str:
    """Image id of encoded bytes, checking each distinct image once per shard."""
    image_id = ids.image_id(data)
    verdict = state.checked.get(image_id)
    if verdict is None:
        try:
            verdict = inspect_image(data, state.full_decode)
        except Rejected as exc:
            verdict = exc
        state.checked[image_id] = verdict
    if isinstance(verdict, Rejected):
        raise verdict
    return image_id


def _image_ids(cand: pa.Table, side: str, reasons: np.ndarray, messages: np.ndarray, state: ShardState) -> pa.Array:
    """Ids of one side's images (an Arrow string array); rows whose image fails a check get its reason
    (if they had none)."""
    uid_ids = ids.uid_image_ids(cand[f"uid_{side}"])
    data = cand[f"bytes_{side}"]
    if data.null_count == len(data):
        return uid_ids
    result = uid_ids.to_numpy(zero_copy_only=False).astype(object)
    values = data.to_pylist()
    for i in np.flatnonzero(reasons == None):  # noqa: E711 (numpy object comparison)
        if values[i] is None:
            continue
        try:
            result[i] = _check_bytes(values[i], state)
        except Rejected as exc:
            reasons[i], messages[i] = exc.reason.value, exc.message
    state.last_bytes[side] = values
    return pa.array(result, pa.string())


def _reject(mask: np.ndarray, reasons: np.ndarray, messages: np.ndarray, reason: Reason, message) -> None:
    """Give ``reason`` to rows in ``mask`` that have none yet: the first failed check wins."""
    hit = mask & (reasons == None)  # noqa: E711
    reasons[hit] = reason.value
    messages[hit] = message if isinstance(message, str) else message[hit]


def assemble(cand: pa.Table, *, source: str, split: str, raw_row: Callable[[int], dict], state: ShardState,
             stats) -> Iterator[tuple[str, pa.Table]]:
    """Check candidates and yield ``("pairs"|"images"|"rejects", table)``; update ``stats`` and ``state``."""
    n = cand.num_rows
    reasons = cand["reason"].to_numpy(zero_copy_only=False).astype(object)
    messages = cand["message"].to_numpy(zero_copy_only=False).astype(object)
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(cand["prompt"]), ""), True).to_numpy(zero_copy_only=False)
    _reject(empty, reasons, messages, Reason.EMPTY_PROMPT, "prompt is empty")
    state.last_bytes = {}
    id_a = _image_ids(cand, "a", reasons, messages, state)
    id_b = _image_ids(cand, "b", reasons, messages, state)
    _reject(pc.or_(id_a.is_null(), id_b.is_null()).to_numpy(zero_copy_only=False), reasons, messages,
            Reason.BAD_TYPE, "row has neither image bytes nor an image uid")
    same = pc.fill_null(pc.equal(id_a, id_b), False).to_numpy(zero_copy_only=False)
    _reject(same, reasons, messages, Reason.IDENTICAL_IMAGES,
            pc.binary_join_element_wise("both images are the same image (", id_a, "): no preference signal", "")
            .to_numpy(zero_copy_only=False) if same.any() else "")
    accepted = reasons == None  # noqa: E711
    stats["items"] += n
    stats["accepted"] += int(accepted.sum())
    codes, counts = np.unique(reasons[~accepted].astype(str), return_counts=True)
    for code, count in zip(codes, counts):
        stats[f"rejected:{code}"] += int(count)

    if accepted.any():
        keep = np.flatnonzero(accepted)
        kept = (cand, id_a, id_b) if len(keep) == n else (cand.take(pa.array(keep)), id_a.take(keep), id_b.take(keep))
        yield "pairs", _pairs_table(*kept, source, split, state)
        images = _new_images(keep, id_a, id_b, state)
        if images is not None:
            yield "images", images
    if not accepted.all():
        yield "rejects", _rejects_table(cand, reasons, messages, ~accepted, source, raw_row)


def _pairs_table(cand: pa.Table, id_a: pa.Array, id_b: pa.Array, source: str, split: str,
                 state: ShardState) -> pa.Table:
    import polars as pl

    rows = cand["source_row"].to_numpy()
    items = cand["source_item"].to_numpy()
    hi, lo = ids.pair_id_words(source, rows, items)
    n = cand.num_rows
    table = schemas.load("pairs").table({
        "pair_id": ids.hex_words(hi, lo), "prompt": cand["prompt"], "prompt_id": ids.prompt_ids(cand["prompt"]),
        "image_a_id": id_a, "image_b_id": id_b,
        "label": cand["label"], "annotator_id": cand["annotator_id"], "annotator_trust": cand["annotator_trust"],
        "votes_a": cand["votes_a"],
        "votes_b": cand["votes_b"], "model_a": cand["model_a"], "model_b": cand["model_b"],
        "created_at": cand["created_at"], "source": pa.repeat(pa.scalar(source, pa.string()), n),
        "source_row": cand["source_row"], "source_item": cand["source_item"],
        "split": pa.repeat(pa.scalar(split, pa.string()), n),
    })
    # The same judgement (prompt, both images, label, annotator, votes, time) seen twice is a duplicate row;
    # the keys are only compared within this run, so polars' (version-dependent) row hash is fine here.
    key_cols = ["prompt_id", "image_a_id", "image_b_id", "label", "annotator_id", "votes_a", "votes_b", "created_at"]
    state.dup_keys.append(pl.from_arrow(table.select(key_cols)).hash_rows(seed=0).to_numpy().astype(np.uint64))
    state.pair_hi.append(hi)
    state.pair_lo.append(lo)
    return table


def _new_images(keep: np.ndarray, id_a: pa.Array, id_b: pa.Array, state: ShardState) -> pa.Table | None:
    """Images of accepted pairs that this shard has not written yet (sources with bytes only)."""
    rows: dict[str, list] = {"image_id": [], "bytes": [], "format": [], "width": [], "height": []}
    bytes_a, bytes_b = state.last_bytes.get("a"), state.last_bytes.get("b")
    if bytes_a is None and bytes_b is None:
        return None
    id_a, id_b = id_a.to_pylist(), id_b.to_pylist()
    for i in keep:
        for image_id, data in ((id_a[i], bytes_a and bytes_a[i]), (id_b[i], bytes_b and bytes_b[i])):
            if data is None or image_id in state.emitted:
                continue
            state.emitted.add(image_id)
            state.image_ids.append(image_id)
            fmt, width, height = state.checked[image_id]
            for key, value in zip(rows, (image_id, data, fmt, width, height)):
                rows[key].append(value)
    return schemas.load("images").table(rows) if rows["image_id"] else None


def describe_row(row: dict) -> str:
    """A rejected row as JSON, with image bytes replaced by their length (rejects stay small)."""
    def clean(value):
        if isinstance(value, (bytes, bytearray, memoryview)):
            return f"<{len(value)} bytes>"
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, float) and value != value:
            return "NaN"
        return value

    return json.dumps(clean(row), default=str, sort_keys=True)


def _rejects_table(cand, reasons, messages, rejected, source, raw_row) -> pa.Table:
    idx = np.flatnonzero(rejected).tolist()
    raw_index = cand["raw_index"].to_pylist()
    return schemas.load("rejects").table({
        "source": [source] * len(idx),
        "source_row": cand["source_row"].take(pa.array(idx)),
        "source_item": cand["source_item"].take(pa.array(idx)),
        "reason": [reasons[i] for i in idx],
        "message": [messages[i] or reasons[i] for i in idx],
        "row": [describe_row(raw_row(raw_index[i])) for i in idx],
    })
