"""From candidate rows (what a format reader understood) to pairs, images and rejects batches.

Every reader produces the same candidate table (``CANDIDATE_SCHEMA``); the checks shared by all
formats (prompt, image bytes, identical sides) and the building of the output tables happen here,
once. A row a reader already rejected carries its ``reason``; later checks never override it.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import ids
from curate import schema as schemas
from curate.ingest.images import inspect_image
from curate.ingest.reasons import Reason, Rejected

CANDIDATE_SCHEMA = pa.schema([
    ("source_row", pa.int64()), ("source_item", pa.int32()), ("prompt", pa.string()),
    ("bytes_a", pa.binary()), ("bytes_b", pa.binary()), ("uid_a", pa.string()), ("uid_b", pa.string()),
    ("label", pa.string()), ("annotator_id", pa.string()), ("votes_a", pa.int32()), ("votes_b", pa.int32()),
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

    def partial(self) -> dict:
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.uint64)  # noqa: E731
        return {"dup_keys": cat(self.dup_keys), "pair_hi": cat(self.pair_hi), "pair_lo": cat(self.pair_lo),
                "image_keys": image_keys(self.image_ids)}


def image_keys(image_ids: list[str]) -> np.ndarray:
    """The first 64 bits of each image id, for the global first-owner merge."""
    return np.array([int(i[:16], 16) for i in image_ids], dtype=np.uint64)


def _check_side(data: bytes | None, uid: str | None, state: ShardState) -> str:
    """Image id of one side, checking each distinct image once per shard."""
    if data is None:
        if uid is None:
            raise Rejected(Reason.BAD_TYPE, "row has neither image bytes nor an image uid")
        return ids.uid_image_id(uid)
    image_id = hashlib.sha256(data).hexdigest()[:32]
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


def assemble(cand: pa.Table, *, source: str, split: str, raw_row: Callable[[int], dict], state: ShardState,
             stats) -> Iterator[tuple[str, pa.Table]]:
    """Check candidates and yield ``("pairs"|"images"|"rejects", table)``; update ``stats`` and ``state``."""
    n = cand.num_rows
    reasons = cand["reason"].to_pylist()
    messages = cand["message"].to_pylist()
    prompts = cand["prompt"]
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(prompts), ""), True).to_pylist()
    bytes_a, bytes_b = cand["bytes_a"].to_pylist(), cand["bytes_b"].to_pylist()
    uid_a, uid_b = cand["uid_a"].to_pylist(), cand["uid_b"].to_pylist()
    id_a: list[str | None] = [None] * n
    id_b: list[str | None] = [None] * n
    for i in range(n):
        if reasons[i] is not None:
            continue
        try:
            if empty[i]:
                raise Rejected(Reason.EMPTY_PROMPT, "prompt is empty")
            id_a[i] = _check_side(bytes_a[i], uid_a[i], state)
            id_b[i] = _check_side(bytes_b[i], uid_b[i], state)
            if id_a[i] == id_b[i]:
                raise Rejected(Reason.IDENTICAL_IMAGES, f"both images are the same image ({id_a[i]}): no preference signal")
        except Rejected as exc:
            reasons[i], messages[i] = exc.reason.value, exc.message
    accepted = np.array([r is None for r in reasons], dtype=bool)
    stats["items"] += n
    stats["accepted"] += int(accepted.sum())
    for r in reasons:
        if r is not None:
            stats[f"rejected:{r}"] += 1

    if accepted.any():
        keep = pa.array(np.flatnonzero(accepted))
        yield "pairs", _pairs_table(cand.take(keep), [id_a[i] for i in keep.to_pylist()],
                                    [id_b[i] for i in keep.to_pylist()], source, split, state)
        images = _new_images(accepted, id_a, id_b, bytes_a, bytes_b, state)
        if images is not None:
            yield "images", images
    if not accepted.all():
        yield "rejects", _rejects_table(cand, reasons, messages, ~accepted, source, raw_row)


def _prompt_ids(prompts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """prompt_id per row, hashing each distinct prompt once."""
    encoded = pc.dictionary_encode(prompts)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    uniques = pa.array([ids.prompt_id(p) for p in encoded.dictionary.to_pylist()], pa.string())
    return uniques.take(encoded.indices)


def _pairs_table(cand: pa.Table, id_a: list[str], id_b: list[str], source: str, split: str,
                 state: ShardState) -> pa.Table:
    import polars as pl

    rows = cand["source_row"].to_numpy()
    items = cand["source_item"].to_numpy()
    hi, lo = ids.pair_id_words(source, rows, items)
    n = cand.num_rows
    table = schemas.load("pairs").table({
        "pair_id": ids.hex_words(hi, lo), "prompt": cand["prompt"], "prompt_id": _prompt_ids(cand["prompt"]),
        "image_a_id": pa.array(id_a, pa.string()), "image_b_id": pa.array(id_b, pa.string()),
        "label": cand["label"], "annotator_id": cand["annotator_id"], "votes_a": cand["votes_a"],
        "votes_b": cand["votes_b"], "model_a": cand["model_a"], "model_b": cand["model_b"],
        "created_at": cand["created_at"], "source": pa.array([source] * n, pa.string()),
        "source_row": cand["source_row"], "source_item": cand["source_item"], "split": pa.array([split] * n, pa.string()),
    })
    # The same judgement (prompt, both images, label, annotator, votes, time) seen twice is a duplicate row;
    # the keys are only compared within this run, so polars' (version-dependent) row hash is fine here.
    key_cols = ["prompt_id", "image_a_id", "image_b_id", "label", "annotator_id", "votes_a", "votes_b", "created_at"]
    state.dup_keys.append(pl.from_arrow(table.select(key_cols)).hash_rows(seed=0).to_numpy().astype(np.uint64))
    state.pair_hi.append(hi)
    state.pair_lo.append(lo)
    return table


def _new_images(accepted, id_a, id_b, bytes_a, bytes_b, state: ShardState) -> pa.Table | None:
    rows: dict[str, list] = {"image_id": [], "bytes": [], "format": [], "width": [], "height": []}
    for i in np.flatnonzero(accepted):
        for image_id, data in ((id_a[i], bytes_a[i]), (id_b[i], bytes_b[i])):
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
    idx = np.flatnonzero(rejected)
    raw_index = cand["raw_index"].to_pylist()
    return schemas.load("rejects").table({
        "source": [source] * len(idx),
        "source_row": cand["source_row"].take(pa.array(idx)),
        "source_item": cand["source_item"].take(pa.array(idx)),
        "reason": [reasons[i] for i in idx],
        "message": [messages[i] or reasons[i] for i in idx],
        "row": [describe_row(raw_row(raw_index[i])) for i in idx],
    })
