"""Generic tables (CSV, JSONL, Parquet) with a column mapping.

Logical columns and the names they are looked for under (``--map logical=column`` overrides):
prompt; image_a / image_b (bytes, an HF Image struct, a path under --image-root, or a URL with
--allow-network); one label column (a/b/tie, left/right, or the winner's index 0/1 with 0.5 a tie),
or label_0/label_1 (Pick-a-Pic floats), or votes_a/votes_b counts; annotator; model_a/model_b; created_at.
CSV is read as text and every value parsed per row, so a bad value rejects its row, not the file.
"""
from __future__ import annotations

import datetime as dt
import json
from itertools import islice
from pathlib import Path

import pyarrow as pa

from curate.ingest.candidates import CANDIDATE_SCHEMA
from curate.ingest.columns import label_from_pair, label_from_value, label_from_votes
from curate.ingest.images import load_image_ref
from curate.ingest.pickapic import SourceError
from curate.ingest.reasons import Reason, Rejected

ALIASES = {
    "prompt": ["prompt", "caption", "text"],
    "image_a": ["image_a", "image1", "image_0", "jpg_0", "img_a", "left"],
    "image_b": ["image_b", "image2", "image_1", "jpg_1", "img_b", "right"],
    "label": ["label", "winner", "preference", "choice"],
    "label_0": ["label_0"], "label_1": ["label_1"],
    "votes_a": ["votes_a", "votes_image1", "votes_0"], "votes_b": ["votes_b", "votes_image2", "votes_1"],
    "annotator": ["annotator", "annotator_id", "user_id", "user", "rater", "user_hash"],
    "model_a": ["model_a", "model1", "model_0"], "model_b": ["model_b", "model2", "model_1"],
    "created_at": ["created_at", "timestamp", "time"],
}
SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


def kind_of(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SourceError(f"{path}: --format table reads .csv, .tsv, .jsonl, .ndjson or .parquet files, "
                          f"not {path.suffix or 'files without a suffix'}")
    return kind


def header(path: Path) -> list[str]:
    kind = kind_of(path)
    try:
        if kind == "csv":
            import polars as pl

            return pl.read_csv(path, n_rows=0, infer_schema=False, separator="\t" if path.suffix == ".tsv" else ",").columns
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).schema_arrow.names
        with open(path, encoding="utf-8") as f:
            names: dict[str, None] = {}
            for line in islice(f, 1000):
                if line.strip():
                    try:
                        names.update(dict.fromkeys(json.loads(line)))
                    except (json.JSONDecodeError, TypeError):
                        continue
            return list(names)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{path}: cannot read it as {kind} ({exc})") from None


def resolve_mapping(path: Path, overrides: dict[str, str]) -> dict[str, str]:
    """Logical column -> column of the file: overrides first, then the first alias present."""
    unknown = sorted(set(overrides) - set(ALIASES))
    if unknown:
        raise SourceError(f"--map {unknown}: unknown logical columns; expected some of {sorted(ALIASES)}")
    names = header(path)
    mapping = {}
    for logical, aliases in ALIASES.items():
        if logical in overrides:
            if overrides[logical] not in names:
                raise SourceError(f"{path}: --map {logical}={overrides[logical]} but the file has no such column "
                                  f"(columns: {names})")
            mapping[logical] = overrides[logical]
        elif (found := next((a for a in aliases if a in names), None)) is not None:
            mapping[logical] = found
    has_label = "label" in mapping or {"label_0", "label_1"} <= set(mapping) or {"votes_a", "votes_b"} <= set(mapping)
    missing = [c for c in ("prompt", "image_a", "image_b") if c not in mapping] + ([] if has_label else ["label"])
    if missing:
        raise SourceError(f"{path}: no column found for {missing} (columns: {names}); name them with "
                          f"--map {missing[0]}=COLUMN")
    return mapping


def count_rows(path: Path) -> int:
    kind = kind_of(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if kind == "csv":
        import polars as pl

        return pl.scan_csv(path, infer_schema=False, separator="\t" if path.suffix == ".tsv" else ",").select(pl.len()).collect().item()
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def plan(path: Path, shard_rows: int, options: dict) -> list[dict]:
    mapping = resolve_mapping(path, options.get("mapping", {}))
    total = count_rows(path)
    return [{"file": str(path), "first_row": start, "rows": min(shard_rows, total - start), "mapping": mapping,
             **{k: options[k] for k in ("image_root", "allow_network")}} for start in range(0, total, shard_rows)]


def _raw_rows(spec: dict):
    """The shard's raw rows as dicts (CSV values stay text; a bad JSONL line becomes a marker)."""
    path, start, n = Path(spec["file"]), spec["first_row"], spec["rows"]
    kind = kind_of(path)
    if kind == "csv":
        import polars as pl

        frame = pl.scan_csv(path, infer_schema=False, separator="\t" if path.suffix == ".tsv" else ",").slice(start, n).collect()
        return frame.to_dicts()
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).slice(start, n).to_pylist()
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in islice(f, start, start + n):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                value = {"__bad_json__": line.rstrip("\n"), "__error__": str(exc)}
            rows.append(value if isinstance(value, dict) else {"__bad_json__": line.rstrip("\n"), "__error__": "not an object"})
    return rows


def _timestamp(value) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise Rejected(Reason.BAD_TYPE, f"created_at {value!r} is not an ISO time or epoch seconds") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _number(value):
    """CSV gives text: '1' -> 1, '0.5' -> 0.5; other text stays text for the label parser."""
    if isinstance(value, str):
        try:
            return float(value) if value.strip() not in ("",) else None
        except ValueError:
            return value
    return value


def _candidate(row: dict, m: dict[str, str], root: Path | None, allow_network: bool) -> dict:
    if "__bad_json__" in row:
        raise Rejected(Reason.BAD_TYPE, f"line is not a JSON object: {row['__error__']}")
    get = lambda logical: row.get(m[logical]) if logical in m else None  # noqa: E731
    if "label" in m:
        label, votes = label_from_value(_number(get("label"))), (None, None)
    elif "label_0" in m:
        label, votes = label_from_pair(_number(get("label_0")), _number(get("label_1"))), (None, None)
    else:
        label, *votes = label_from_votes(_number(get("votes_a")), _number(get("votes_b")))
    prompt = get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise Rejected(Reason.BAD_TYPE, f"prompt {prompt!r} is not text")
    annotator = get("annotator")
    return {"prompt": prompt, "label": label, "votes_a": votes[0], "votes_b": votes[1],
            "annotator_id": None if annotator in (None, "") else str(annotator),
            "model_a": None if get("model_a") is None else str(get("model_a")),
            "model_b": None if get("model_b") is None else str(get("model_b")),
            "created_at": _timestamp(get("created_at")),
            "bytes_a": load_image_ref(get("image_a"), root, allow_network),
            "bytes_b": load_image_ref(get("image_b"), root, allow_network)}


def read(spec: dict, batch_rows: int):
    raw = _raw_rows(spec)
    root = Path(spec["image_root"]) if spec["image_root"] else None
    first = spec["first_row"]
    for start in range(0, len(raw), batch_rows):
        rows = []
        for offset, record in enumerate(raw[start:start + batch_rows], start):
            row = dict.fromkeys(CANDIDATE_SCHEMA.names)
            row.update(source_row=first + offset, source_item=0, raw_index=offset)
            try:
                row.update(_candidate(record, spec["mapping"], root, spec["allow_network"]))
            except Rejected as exc:
                row.update(reason=exc.reason.value, message=exc.message)
            rows.append(row)
        yield pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA), (lambda i: raw[i])
