"""Generic tables (CSV, JSONL, Parquet) with a column mapping.

Logical columns and the names they are looked for under (``--map logical=column`` overrides):
prompt; image_a / image_b (bytes, an HF Image struct, a path under --image-root, or a URL with
--allow-network), or uid_a / uid_b (image ids without bytes, e.g. HPDv2-test-style image_left_id);
one label column (a/b/tie, left/right, or the winner's index 0/1 with 0.5 a tie), or pref (1 = left
wins, -1 = right, 0 = tie: HPDv2-test-style), or label_0/label_1 (Pick-a-Pic floats), or
votes_a/votes_b counts; annotator and trust (one row per vote: Datapoint's 2M-vote set gives every
vote its annotator's trust score at voting time; its column names sit behind the dataset's access
gate, so where the aliases below miss, name them with --map annotator=... --map trust=...; kept as
pairs.annotator_trust); model_a/model_b; created_at.
CSV is read as text and every value parsed per row, so a bad value rejects its row, not the file.
"""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import pyarrow as pa

from curate.ingest.candidates import CANDIDATE_SCHEMA
from curate.ingest import textfiles
from curate.ingest.columns import (identifier, label_from_pair, label_from_sign, label_from_value, label_from_votes,
                                   timestamp_value, trust_value)
from curate.ingest.images import load_image_ref
from curate.ingest.pickapic import SourceError, one_line
from curate.ingest.reasons import Reason, Rejected

ALIASES = {
    "prompt": ["prompt", "caption", "text"],
    "image_a": ["image_a", "image1", "image_0", "jpg_0", "img_a", "left"],
    "image_b": ["image_b", "image2", "image_1", "jpg_1", "img_b", "right"],
    "uid_a": ["uid_a", "image_left_id", "image_a_id", "image_0_uid"],
    "uid_b": ["uid_b", "image_right_id", "image_b_id", "image_1_uid"],
    "label": ["label", "winner", "preference", "choice"],
    "pref": ["pref"],
    "label_0": ["label_0"], "label_1": ["label_1"],
    "votes_a": ["votes_a", "votes_image1", "votes_0"], "votes_b": ["votes_b", "votes_image2", "votes_1"],
    "annotator": ["annotator", "annotator_id", "user_id", "user", "rater", "user_hash", "voter_id"],
    "trust": ["annotator_trust", "trust", "trust_score", "user_score", "userScore"],
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


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def header(path: Path) -> list[str]:
    kind = kind_of(path)
    if kind == "csv":
        return next((fields for _, _, fields in textfiles.csv_records(path, _delimiter(path))), [])
    if kind == "parquet":
        return open_parquet(path).schema_arrow.names
    names: dict[str, None] = {}
    for _, _, text in islice(textfiles.lines(path), 1000):
        if text.strip() and "__bad_json__" not in (row := textfiles.parse_json_line(text)):
            names.update(dict.fromkeys(row))
    return list(names)


def open_parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:
        raise SourceError(f"{path}: not a readable parquet file ({one_line(exc)}); check the file, or get it again") from None


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
    for chosen, other in (("pref", "label"), ("label", "pref")):  # one label encoding: the one asked for
        if chosen in overrides and other not in overrides:
            mapping.pop(other, None)
    has_label = bool({"label", "pref"} & set(mapping)) or {"label_0", "label_1"} <= set(mapping) or \
        {"votes_a", "votes_b"} <= set(mapping)
    missing = ["prompt"] * ("prompt" not in mapping) + [side for side in ("image_a", "image_b") if side not in mapping
                                                        and f"uid_{side[-1]}" not in mapping]
    missing += [] if has_label else ["label"]
    if missing:
        raise SourceError(f"{path}: no column found for {missing} (columns: {names}); name them with "
                          f"--map {missing[0]}=COLUMN")
    return mapping


def _record_starts(path: Path, every: int) -> tuple[int, list[tuple[int, int]]]:
    """(records, [(byte offset, line) of record 0, every, 2*every, ...]); reads the whole file once, so a
    file that is not UTF-8 fails here, before any work starts."""
    kind, starts, count = kind_of(path), [], 0
    if kind == "csv":
        records = ((offset, line) for offset, line, _ in islice(textfiles.csv_records(path, _delimiter(path)), 1, None))
    else:
        records = ((end - len(text.encode()), line) for line, end, text in textfiles.lines(path))
    for count, start in enumerate(records, 1):
        if (count - 1) % every == 0:
            starts.append(start)
    return count, starts


def plan(path: Path, shard_rows: int, options: dict) -> list[dict]:
    mapping = resolve_mapping(path, options.get("mapping", {}))
    common = {"file": str(path), "mapping": mapping, **{k: options[k] for k in ("image_root", "allow_network")}}
    if kind_of(path) == "parquet":
        total = open_parquet(path).metadata.num_rows
        return [{**common, "first_row": s, "rows": min(shard_rows, total - s)} for s in range(0, total, shard_rows)]
    total, starts = _record_starts(path, shard_rows)
    return [{**common, "first_row": i * shard_rows, "rows": min(shard_rows, total - i * shard_rows), "offset": offset,
             "line": line} for i, (offset, line) in enumerate(starts)]


def _raw_rows(spec: dict) -> list[dict]:
    """The shard's raw rows as dicts (CSV values stay text; a bad line or record becomes a marker row)."""
    path, n = Path(spec["file"]), spec["rows"]
    kind = kind_of(path)
    if kind == "parquet":
        return parquet_rows(path, spec["first_row"], n)
    if kind == "jsonl":
        return [textfiles.parse_json_line(text) for _, _, text in islice(textfiles.lines(path, spec["offset"], spec["line"]), n)]
    names = header(path)
    rows = []
    for _, _, fields in islice(textfiles.csv_records(path, _delimiter(path), spec["offset"], spec["line"]), n):
        row = {name: (value if value != "" else None) for name, value in zip(names, fields)}
        if len(fields) != len(names):
            row["__fields__"] = f"the record has {len(fields)} fields and the header {len(names)}"
            row["__extra__"] = fields[len(names):]
        rows.append(row)
    return rows


def parquet_rows(path: Path, first: int, n: int) -> list[dict]:
    parquet, rows, start = open_parquet(path), [], 0
    for group in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        if start + size > first and start < first + n:
            try:
                table = parquet.read_row_group(group)
            except Exception as exc:
                raise SourceError(f"{path}: row group {group} (rows {start}-{start + size - 1}) cannot be decoded "
                                  f"({one_line(exc)}); the file is damaged, get it again") from None
            rows += _pylist(table.slice(max(0, first - start), first + n - max(first, start)))
        start += size
    return rows


def _pylist(table) -> list[dict]:
    """Rows as dicts; parquet does not validate text on read, so a row holding bytes that are not
    UTF-8 becomes a marker row (rejected with a reason) instead of failing the whole row group."""
    try:
        return table.to_pylist()
    except UnicodeDecodeError:
        rows = []
        for i in range(table.num_rows):
            try:
                rows.extend(table.slice(i, 1).to_pylist())
            except UnicodeDecodeError as exc:
                rows.append({"__bad_text__": f"a text cell holds bytes that are not UTF-8 ({exc.reason} at byte "
                                             f"{exc.start})"})
        return rows


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
        raise Rejected(Reason.BAD_TYPE, f"line is not a usable JSON object: {row['__error__']}")
    if "__bad_text__" in row:
        raise Rejected(Reason.BAD_TYPE, row["__bad_text__"])
    if "__fields__" in row:
        raise Rejected(Reason.BAD_TYPE, f"{row['__fields__']} (an unquoted separator?)")
    get = lambda logical: row.get(m[logical]) if logical in m else None  # noqa: E731
    if "label" in m:
        label, votes = label_from_value(_number(get("label"))), (None, None)
    elif "pref" in m:
        label, votes = label_from_sign(_number(get("pref"))), (None, None)
    elif "label_0" in m:
        label, votes = label_from_pair(_number(get("label_0")), _number(get("label_1"))), (None, None)
    else:
        label, *votes = label_from_votes(_number(get("votes_a")), _number(get("votes_b")))
    prompt = get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise Rejected(Reason.BAD_TYPE, f"prompt {prompt!r} is not text")
    return {"prompt": prompt, "label": label, "votes_a": votes[0], "votes_b": votes[1],
            "annotator_id": identifier(get("annotator"), "annotator"), "annotator_trust": trust_value(get("trust")),
            "model_a": identifier(get("model_a"), "model_a"), "model_b": identifier(get("model_b"), "model_b"),
            "created_at": timestamp_value(get("created_at")),
            **_image(get, m, "a", root, allow_network), **_image(get, m, "b", root, allow_network)}


def _image(get, m: dict[str, str], side: str, root: Path | None, allow_network: bool) -> dict:
    """One side's image: bytes when an image column is mapped, else its id (uid_a/uid_b) with no bytes."""
    if f"image_{side}" in m:
        return {f"bytes_{side}": load_image_ref(get(f"image_{side}"), root, allow_network)}
    uid = identifier(get(f"uid_{side}"), f"uid_{side}")
    if uid is None:
        raise Rejected(Reason.BAD_TYPE, f"uid_{side} is empty: the row names no image {side.upper()}")
    return {f"uid_{side}": uid}


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
