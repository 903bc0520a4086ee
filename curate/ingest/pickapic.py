"""Pick-a-Pic v1/v2 parquet: one judgement per row (see the dataset card's columns).

Labels are decoded column-wise (no Python loop per row): label_0/label_1 of 1/0, 0/1 or 0.5/0.5.
``jpg_0``/``jpg_1`` may be absent (``pickapic_v2_no_images``): images are then known by their uids
and no bytes are stored, unless ``--allow-network`` fetches them from ``image_0_url``/``image_1_url``
(a URL that fails rejects its row as ``fetch_failed``; the links of the published set are mostly dead).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.ingest.candidates import CANDIDATE_SCHEMA
from curate.ingest.columns import coerce
from curate.ingest.images import load_image_ref
from curate.ingest.reasons import Reason, Rejected

REQUIRED = ("caption", "label_0", "label_1")


class SourceError(RuntimeError):
    """An input file cannot be read as the format asked for: fatal, names the file and the fix."""


def one_line(exc: BaseException) -> str:
    """A library's error message on one line (Arrow's span several)."""
    return " ".join(str(exc).split())


def check_file(path: Path) -> pq.ParquetFile:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise SourceError(f"{path}: not a readable parquet file ({one_line(exc)}); --format pickapic expects the "
                          f"Pick-a-Pic parquet shards (e.g. data/train-00000-of-00645.parquet)") from None
    names = set(parquet.schema_arrow.names)
    missing = [c for c in REQUIRED if c not in names]
    if not ({"jpg_0", "jpg_1"} <= names or {"image_0_uid", "image_1_uid"} <= names):
        missing.append("jpg_0/jpg_1 (or image_0_uid/image_1_uid)")
    if missing:
        raise SourceError(f"{path}: columns {missing} missing for --format pickapic (found {sorted(names)}); "
                          f"for another layout use --format table with --map")
    return parquet


class _Reasons:
    """The first failed check of each row of a batch: its reason code and message (None while it passes)."""

    def __init__(self, n: int):
        self.codes = np.full(n, None, dtype=object)
        self.messages = np.full(n, None, dtype=object)
        self._free = np.ones(n, dtype=bool)  # rows without a reason yet, kept so no check compares objects

    def add(self, mask: np.ndarray, code: str, message: str) -> None:
        """Give ``code`` to rows in ``mask`` that have no reason yet: the first failed check wins."""
        hit = mask & self._free
        if hit.any():
            self.codes[hit] = code
            self.messages[hit] = message
            self._free &= ~hit


def _labels(a: np.ndarray, b: np.ndarray) -> pa.Array:
    """label_0/label_1 as a, b or tie; null for any other pair of values."""
    code = np.select([(a == 1) & (b == 0), (a == 0) & (b == 1), (a == 0.5) & (b == 0.5)], [0, 1, 2], -1)
    # Built here, not at import: pyarrow's first array from Python imports pandas (half a second at start-up).
    return pa.array(["a", "b", "tie"], pa.string()).take(pa.array(code, mask=code < 0))


def candidates(batch: pa.RecordBatch, first_row: int) -> pa.Table:
    n = batch.num_rows
    cols = set(batch.schema.names)
    col = batch.column
    reasons = _Reasons(n)

    l0, bad0 = coerce(col("label_0"), pa.float64())
    l1, bad1 = coerce(col("label_1"), pa.float64())
    reasons.add(bad0 | bad1, Reason.BAD_TYPE.value, "label_0/label_1 are not numbers")
    if "has_label" in cols:
        has_label, bad = coerce(col("has_label"), pa.bool_())
        reasons.add(bad, Reason.BAD_TYPE.value, "has_label is not a boolean")
        reasons.add(~pc.fill_null(has_label, True).to_numpy(zero_copy_only=False), Reason.NO_LABEL.value,
                    "has_label is false: the source row has no judgement")
    a = l0.to_numpy(zero_copy_only=False).astype(float)
    b = l1.to_numpy(zero_copy_only=False).astype(float)
    reasons.add(np.isnan(a) | np.isnan(b), Reason.MISSING_LABEL.value, "label_0/label_1 missing")
    label = _labels(a, b)
    reasons.add(label.is_null().to_numpy(zero_copy_only=False), Reason.UNPARSEABLE_LABEL.value,
                "label_0/label_1 must be 1/0, 0/1 or 0.5/0.5")
    if "are_different" in cols:
        different, _ = coerce(col("are_different"), pa.bool_())
        reasons.add(~pc.fill_null(different, True).to_numpy(zero_copy_only=False), Reason.IDENTICAL_IMAGES.value,
                    "the source marks the two images as the same (are_different false)")

    def optional(name: str, typ: pa.DataType) -> pa.Array:
        if name not in cols:
            return pa.nulls(n, typ)
        values, bad = coerce(col(name), typ)
        reasons.add(bad, Reason.BAD_TYPE.value, f"{name} has the wrong type")
        return values

    images = [optional(name, pa.binary()) for name in ("jpg_0", "jpg_1")]
    for name, column in zip(("jpg_0", "jpg_1"), images):
        if name in cols:
            reasons.add(column.is_null().to_numpy(zero_copy_only=False), Reason.MISSING_IMAGE.value,
                        f"{name} is null: the file carries image bytes, but not for this row")
    created = optional("created_at", pa.timestamp("us"))
    if created.type.tz is None:  # naive times are UTC; the values stay, so relabelling them is enough
        created = created.view(pa.timestamp(created.type.unit, tz="UTC"))
    prompt = optional("caption", pa.string())
    return pa.Table.from_arrays([
        pa.array(np.arange(first_row, first_row + n, dtype=np.int64)), pa.array(np.zeros(n, np.int32)),
        prompt, *images,
        optional("image_0_uid", pa.string()), optional("image_1_uid", pa.string()),
        label, optional("user_id", pa.string()), pa.nulls(n, pa.float64()), pa.nulls(n, pa.int32()),
        pa.nulls(n, pa.int32()), optional("model_0", pa.string()), optional("model_1", pa.string()),
        created, pa.array(reasons.codes, pa.string()), pa.array(reasons.messages, pa.string()),
        pa.array(np.arange(n, dtype=np.int64)),
    ], schema=CANDIDATE_SCHEMA)


def plan(path: Path, shard_rows: int) -> list[dict]:
    """Shards of whole row groups, about ``shard_rows`` rows each (never splitting a row group)."""
    meta = check_file(path).metadata
    specs, groups, rows, first = [], [], 0, 0
    for g in range(meta.num_row_groups):
        groups.append(g)
        rows += meta.row_group(g).num_rows
        if rows >= shard_rows:
            specs.append({"file": str(path), "row_groups": groups, "first_row": first})
            first += rows
            groups, rows = [], 0
    if groups:
        specs.append({"file": str(path), "row_groups": groups, "first_row": first})
    return specs


# What ``candidates`` reads; the other columns (URLs, ranking ids, ...) only appear in a rejected row's
# JSON, so they are decoded only for a row group that has a rejected row.
USED = (*REQUIRED, "has_label", "are_different", "jpg_0", "jpg_1", "image_0_uid", "image_1_uid", "user_id",
        "model_0", "model_1", "created_at")


def read(spec: dict, batch_rows: int, allow_network: bool = False):
    """Yield (candidates, raw_row) per batch of the shard's row groups."""
    parquet = check_file(Path(spec["file"]))
    names = parquet.schema_arrow.names
    fetch = allow_network and not {"jpg_0", "jpg_1"} & set(names) and {"image_0_url", "image_1_url"} <= set(names)
    used = [n for n in names if n in USED or (fetch and n in ("image_0_url", "image_1_url"))]
    first = spec["first_row"]
    for group in spec["row_groups"]:
        rest = _RestOfGroup(parquet, group, [n for n in names if n not in used], spec["file"])
        start = 0
        for batch in _group_batches(parquet, group, batch_rows, spec["file"], used):
            cand = candidates(batch, first)
            raw_row = (lambda i, raw=batch, at=start: rest.row(raw, at, i, names))
            yield (fetch_images(cand, batch) if fetch else cand), raw_row
            first += batch.num_rows
            start += batch.num_rows


class _RestOfGroup:
    """The columns of a row group that ``candidates`` does not read, decoded on the first rejected row."""

    def __init__(self, parquet: pq.ParquetFile, group: int, columns: list[str], path: str):
        self.parquet, self.group, self.columns, self.path = parquet, group, columns, path
        self._table: pa.Table | None = None

    def row(self, batch: pa.RecordBatch, start: int, i: int, names: list[str]) -> dict:
        """Row ``i`` of ``batch`` (which starts at row ``start`` of the group) with every column, in file order."""
        values = batch.slice(i, 1).to_pylist()[0]
        if self.columns:
            if self._table is None:
                self._table = _read_group(self.path, self.parquet, self.group, self.columns)
            values.update(self._table.slice(start + i, 1).to_pylist()[0])
        return {name: values[name] for name in names}


def _read_group(path: str, parquet: pq.ParquetFile, group: int, columns: list[str]) -> pa.Table:
    """``columns`` of one row group, through a reader of its own: the shared one's batch size belongs to
    the batches being read (setting it here would regroup them)."""
    try:
        return pq.ParquetFile(path).read_row_group(group, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise _damaged(parquet, group, path, exc) from None


def fetch_images(cand: pa.Table, batch: pa.RecordBatch) -> pa.Table:
    """``pickapic_v2_no_images`` with --allow-network: each unrejected row's images fetched from its URLs."""
    reasons, messages = cand["reason"].to_pylist(), cand["message"].to_pylist()
    fetched = {"a": [None] * cand.num_rows, "b": [None] * cand.num_rows}
    for side, column in (("a", "image_0_url"), ("b", "image_1_url")):
        for i, url in enumerate(batch.column(column).to_pylist()):
            if reasons[i] is None:
                try:
                    fetched[side][i] = load_image_ref(url, None, allow_network=True)
                except Rejected as exc:
                    reasons[i], messages[i] = exc.reason.value, exc.message
    cand = cand.set_column(cand.schema.get_field_index("bytes_a"), "bytes_a", pa.array(fetched["a"], pa.binary()))
    cand = cand.set_column(cand.schema.get_field_index("bytes_b"), "bytes_b", pa.array(fetched["b"], pa.binary()))
    cand = cand.set_column(cand.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
    return cand.set_column(cand.schema.get_field_index("message"), "message", pa.array(messages, pa.string()))


def _group_batches(parquet: pq.ParquetFile, group: int, batch_rows: int, path: str, columns: list[str]):
    """The row group's batches of ``columns``; a group that cannot be decoded is fatal, named with its first byte."""
    try:
        yield from parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise _damaged(parquet, group, path, exc) from None


def _damaged(parquet: pq.ParquetFile, group: int, path: str, exc: BaseException) -> SourceError:
    start = min(c.data_page_offset for c in map(parquet.metadata.row_group(group).column,
                                                 range(parquet.metadata.num_columns)))
    return SourceError(f"{path}: row group {group} (from byte {start}) cannot be decoded ({one_line(exc)}); "
                       f"the file is damaged: get it again")
