"""HPDv2 JSON: train.json rankings and test.json per-annotator rankings, expanded into pairs.

Expansion order (it numbers ``source_item``, which the ground truth of the synthetic world uses):
- train.json record: ``file_path``/``human_preference``; for each i < j in order, one pair (A = i,
  B = j); the higher preference wins, equal preferences are a tie.
- test.json record: for each raw annotation k in order, for each i < j in order, one pair from that
  annotator's ``rank`` (lower rank wins; equal ranks tie); ``source_item = k * C(n,2) + pair index``.
  A record without ``raw_annotations`` uses its averaged ``rank`` once, with no annotator.
"""
from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import pyarrow as pa

from curate.ingest.candidates import CANDIDATE_SCHEMA
from curate.ingest.columns import identifier
from curate.ingest.images import load_image_ref
from curate.ingest.pickapic import SourceError
from curate.ingest.planning import record_ranges
from curate.ingest.reasons import Reason, Rejected
from curate.ingest.textfiles import json_array_items


def load_records(path: Path, fmt: str = "hpdv2") -> list:
    try:
        return json_array_items(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror}); --format {fmt} expects the train.json or "
                          f"test.json of the {fmt.upper()} release") from None


def _pairs_of(record) -> int:
    """How many pairs a record expands into (1 for one that will be rejected)."""
    if not isinstance(record, dict):
        return 1
    paths = record.get("file_path", record.get("image_path"))
    annotations = record.get("raw_annotations")
    n = len(paths) if isinstance(paths, list) else 0
    return max(1, n * (n - 1) // 2 * (len(annotations) if isinstance(annotations, list) and annotations else 1))


def plan(path: Path, shard_rows: int, image_root: Path) -> list[dict]:
    """Shards of whole records, grouped until the pairs they expand into reach ``shard_rows``."""
    records = load_records(path)
    return [{"file": str(path), "first_row": start, "records": records[start:stop], "image_root": str(image_root)}
            for start, stop in record_ranges([_pairs_of(r) for r in records], shard_rows)]


def _rankings(record: dict) -> tuple[list, list[tuple[list, str | None]]]:
    """(image paths, [(ranking, annotator)]) with rank semantics 'lower wins' for every ranking."""
    if "file_path" in record:  # train.json: preference 1 marks the chosen image(s); negated once checked
        paths, prefs = record["file_path"], record.get("human_preference")
        if prefs is None:
            raise Rejected(Reason.MISSING_LABEL, "human_preference is missing")
        return paths, [(prefs, None)]
    paths = record.get("image_path")
    annotations = record.get("raw_annotations") or []
    if not isinstance(annotations, list):
        raise Rejected(Reason.BAD_TYPE, f"raw_annotations {annotations!r} must be a list of {{rank, user_hash}} objects")
    for k, a in enumerate(annotations):
        if not isinstance(a, dict):
            raise Rejected(Reason.BAD_TYPE, f"raw annotation {k} is {a!r}, expected an object with rank and user_hash")
    if annotations:
        return paths, [(a.get("rank"), identifier(a.get("user_hash"), "user_hash")) for a in annotations]
    if record.get("rank") is None:
        raise Rejected(Reason.MISSING_LABEL, "record has neither raw_annotations nor rank")
    return paths, [(record["rank"], None)]


def _check_record(record) -> tuple[str, list, list]:
    if not isinstance(record, dict):
        raise Rejected(Reason.BAD_TYPE, f"record is {type(record).__name__}, expected an object")
    if "__bad_json__" in record:
        raise Rejected(Reason.BAD_TYPE, f"record is not usable JSON: {record['__error__']}")
    paths, rankings = _rankings(record)
    if not isinstance(paths, list) or len(paths) < 2 or not all(isinstance(p, str) for p in paths):
        raise Rejected(Reason.BAD_TYPE, f"image paths {paths!r} must be a list of at least two strings")
    for ranking, _ in rankings:
        if not isinstance(ranking, list) or len(ranking) != len(paths) or not all(
                isinstance(r, (int, float)) and not isinstance(r, bool) for r in ranking):
            raise Rejected(Reason.BAD_TYPE, f"ranking {ranking!r} must hold one number per image ({len(paths)})")
        if not all(math.isfinite(r) for r in ranking):
            raise Rejected(Reason.MISSING_LABEL, f"ranking {ranking!r} holds NaN or infinity: no judgement there")
    if "file_path" in record:  # higher preference wins there; lower rank everywhere else
        rankings = [([-p for p in prefs], who) for prefs, who in rankings]
    prompt = record.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise Rejected(Reason.BAD_TYPE, f"prompt {prompt!r} is not text")
    return prompt, paths, rankings


def _row(row: int, item: int, prompt, **values) -> dict:
    base = dict.fromkeys(CANDIDATE_SCHEMA.names)
    base.update(source_row=row, source_item=item, prompt=prompt, raw_index=row, **values)
    return base


def read(spec: dict, batch_rows: int):
    records, first, root = spec["records"], spec["first_row"], Path(spec["image_root"])
    rows: list[dict] = []
    for offset, record in enumerate(records):
        row_index = first + offset
        try:
            prompt, paths, rankings = _check_record(record)
        except Rejected as exc:
            rows.append(_row(row_index, 0, None, reason=exc.reason.value, message=exc.message))
            continue
        images: list = []
        for p in paths:
            try:
                images.append(load_image_ref(p, root, allow_network=False))
            except Rejected as exc:
                images.append(exc)
        pairs = list(combinations(range(len(paths)), 2))
        for k, (ranking, annotator) in enumerate(rankings):
            for p_index, (i, j) in enumerate(pairs):
                item = k * len(pairs) + p_index
                bad = next((x for x in (images[i], images[j]) if isinstance(x, Rejected)), None)
                label = "a" if ranking[i] < ranking[j] else "b" if ranking[j] < ranking[i] else "tie"
                values = dict(annotator_id=annotator, label=label)
                if bad is not None:
                    values.update(reason=bad.reason.value, message=bad.message)
                else:
                    values.update(bytes_a=images[i], bytes_b=images[j])
                rows.append(_row(row_index, item, prompt, **values))
        if len(rows) >= batch_rows:
            yield _flush(rows, records, first)
            rows = []
    if rows:
        yield _flush(rows, records, first)


def _flush(rows: list[dict], records: list, first: int):
    table = pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
    return table, (lambda i: records[i - first] if isinstance(records[i - first], dict) else {"record": records[i - first]})
