"""HPDv3 (MizzenAI/HPDv3: 1.08M images, 1.17M comparisons): train.json / test.json of image pairs.

Published layout (the dataset repo, and the readers that train HPSv3 on it): each JSON file holds a
list of records ``{"prompt": str, "path1": str, "path2": str, "model1": str, "model2": str,
"confidence": float, "choice_dist": [...], ...}`` where ``path1`` is the preferred image and
``path2`` the rejected one, both relative to the JSON file's folder (the images ship as archives
unpacked beside it). One record is one judgement: A = path1, B = path2, label a; ``model1`` /
``model2`` are the generators. The records name no annotator, and ``confidence`` / ``choice_dist``
(the annotators' agreement) have no column in pairs: they are not kept.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from curate.ingest.candidates import CANDIDATE_SCHEMA
from curate.ingest.columns import identifier
from curate.ingest.hpdv2 import load_records
from curate.ingest.images import load_image_ref
from curate.ingest.reasons import Reason, Rejected


def plan(path: Path, shard_rows: int, image_root: Path) -> list[dict]:
    records = load_records(path, "hpdv3")
    return [{"file": str(path), "first_row": start, "records": records[start:start + shard_rows],
             "image_root": str(image_root)} for start in range(0, len(records), shard_rows)]


def _judgement(record, root: Path) -> dict:
    if not isinstance(record, dict):
        raise Rejected(Reason.BAD_TYPE, f"record is {type(record).__name__}, expected an object")
    if "__bad_json__" in record:
        raise Rejected(Reason.BAD_TYPE, f"record is not usable JSON: {record['__error__']}")
    prompt = record.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise Rejected(Reason.BAD_TYPE, f"prompt {prompt!r} is not text")
    for key in ("path1", "path2"):
        if not isinstance(record.get(key), str):
            raise Rejected(Reason.BAD_TYPE, f"{key} {record.get(key)!r} must be an image path (text)")
    return {"prompt": prompt, "label": "a", "model_a": identifier(record.get("model1"), "model1"),
            "model_b": identifier(record.get("model2"), "model2"),
            "bytes_a": load_image_ref(record["path1"], root, allow_network=False),
            "bytes_b": load_image_ref(record["path2"], root, allow_network=False)}


def read(spec: dict, batch_rows: int):
    records, first, root = spec["records"], spec["first_row"], Path(spec["image_root"])
    raw = lambda i: records[i] if isinstance(records[i], dict) else {"record": records[i]}  # noqa: E731
    for start in range(0, len(records), batch_rows):
        rows = []
        for offset in range(start, min(start + batch_rows, len(records))):
            row = dict.fromkeys(CANDIDATE_SCHEMA.names)
            row.update(source_row=first + offset, source_item=0, raw_index=offset)
            try:
                row.update(_judgement(records[offset], root))
            except Rejected as exc:
                row.update(reason=exc.reason.value, message=exc.message)
            rows.append(row)
        yield pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA), raw
