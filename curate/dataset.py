"""A dataset directory: tables stored as Arrow IPC shard files, written atomically, read verified.

    DATASET_DIR/
      tables/<table>/<shard>.arrow     one file per shard, declared schema (see schemas/)
      runs/<stage>/                     fingerprint, per-shard completion records, manifest
      .tmp/                             files being written (renamed into tables/ when complete)
      .lock                             who is writing (curate.lock)
      .verified.json                    size and mtime of each file whose checksum was last checked

A shard file is written under .tmp/ (same filesystem) and renamed into place, so a reader never
sees a half-written shard. A table's data is the files listed by the manifests of the stages that
committed them (see curate.verify): every read checks that each listed file is present with its
recorded checksum (hashed once, then trusted while its size and mtime stay the same), and refuses
a table with files no manifest lists.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from curate.schema import TableSchema

TMP_DIR = ".tmp"
# Image bytes are already compressed (PNG/JPEG); latents barely compress (8%) and decompressing them
# makes every training batch about 5x slower to read.
_UNCOMPRESSED = {"images", "latents", "text_embeddings"}


class DatasetError(RuntimeError):
    """A dataset directory is missing, incomplete, or holds something unexpected."""


@dataclass(frozen=True)
class WrittenShard:
    """What a shard writer produced: file name, rows and the SHA-256 of the file's bytes."""

    file: str
    rows: int
    sha256: str


class _HashingSink:
    """A binary file that hashes what passes through it, so a checksum costs no second read."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")
        self._hash = hashlib.sha256()
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self._hash.update(view)
        return self._file.write(view)

    def flush(self) -> None:
        self._file.flush()

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if not self.closed:
            self._file.close()
            self.closed = True

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before its rename: DATASET/.tmp/ for a table file, else a hidden name beside it."""
    if path.parent.parent.name == "tables":
        folder = path.parent.parent.parent / TMP_DIR
        folder.mkdir(exist_ok=True)
        return folder / f"{uuid.uuid4().hex}-{path.parent.name}-{path.name}"
    return path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")


class ShardWriter:
    """Streams validated batches of one declared table into ``path``; ``close()`` renames it into place.

    Until ``close()`` the data sits under a temporary name (``temporary_path``); ``abort()`` removes it.
    """

    def __init__(self, path: Path, schema: TableSchema, **dims: int):
        self.path, self.schema = Path(path), schema
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temporary_path(self.path)
        self._arrow_schema = schema.arrow(**dims)
        options = ipc.IpcWriteOptions(compression=None if schema.name in _UNCOMPRESSED else "zstd")
        self._sink = _HashingSink(self._tmp)
        self._writer = ipc.new_file(pa.PythonFile(self._sink, mode="w"), self._arrow_schema, options=options)
        self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        if batch.schema.metadata != self._arrow_schema.metadata:
            batch = batch.replace_schema_metadata(self._arrow_schema.metadata)
        self.schema.validate(batch, where=str(self.path))
        if isinstance(batch, pa.Table):
            self._writer.write_table(batch)
        else:
            self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> WrittenShard:
        self._writer.close()
        self._sink.close()
        os.replace(self._tmp, self.path)
        return WrittenShard(file=self.path.name, rows=self.rows, sha256=self._sink.hexdigest())

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # the writer may already be broken; the temporary file goes either way
            pass
        self._sink.close()
        self._tmp.unlink(missing_ok=True)


def write_shard(path: Path, schema: TableSchema, batches: Iterable[pa.RecordBatch], **dims: int) -> WrittenShard:
    """Write ``batches`` (validated against ``schema``) to ``path`` atomically; return rows and checksum."""
    writer = ShardWriter(path, schema, **dims)
    try:
        for batch in batches:
            writer.write(batch)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def remove_temporary_files(root: Path) -> None:
    """Leftovers of killed runs: DATASET/.tmp/ and the hidden ``.tmp-*`` files older versions left in tables/."""
    shutil.rmtree(root / TMP_DIR, ignore_errors=True)
    for leftover in root.glob("tables/*/.tmp-*"):
        leftover.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` via a temporary file and a rename; keys sorted so bytes are reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Dataset:
    """A dataset directory. Reading streams shard by shard, batch by batch: memory follows the shard.

    ``writing`` names the stage this process is running (set under ``writer()``): that stage may read
    the files of its own run before the run commits; no one else may.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.writing: str | None = None
        self._trusted: dict[Path, tuple] = {}

    @contextmanager
    def writer(self, stage: str):
        """Hold the dataset's writer lock (curate.lock) while ``stage`` runs; temporary files of
        killed runs are removed when the lock is first taken."""
        from curate.lock import writer_lock
        from curate.verify import committed_files, trust_committed

        with writer_lock(self.root, stage) as fresh:
            if fresh:
                remove_temporary_files(self.root)
            committed_files(self)  # an unreadable manifest stops the stage here, with the fix
            before = _stamp(self.run_dir(stage) / "manifest.json")
            previous, self.writing = self.writing, stage
            try:
                yield self
            finally:
                self.writing = previous
            if _stamp(self.run_dir(stage) / "manifest.json") not in (None, before):  # this run committed
                trust_committed(self, stage)

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r})"

    def table_dir(self, table: str) -> Path:
        return self.root / "tables" / table

    def run_dir(self, stage: str) -> Path:
        return self.root / "runs" / stage

    def has(self, table: str) -> bool:
        """Whether the table exists at all, committed or not (reading an uncommitted one is an error)."""
        from curate.verify import committed_files, present_files

        return bool(present_files(self, table) or committed_files(self).get(table))

    def tables(self) -> list[str]:
        base = self.root / "tables"
        return sorted(p.name for p in base.iterdir() if p.is_dir() and self.has(p.name)) if base.is_dir() else []

    def shards(self, table: str) -> list[Path]:
        """The table's files, checked against the manifests that committed them (DatasetError if they differ)."""
        from curate.verify import verified_shards

        return verified_shards(self, table, self._trusted)

    def require(self, table: str, hint: str) -> list[Path]:
        shards = self.shards(table)
        if not shards:
            raise DatasetError(f"{self.root}: no '{table}' table (looked in {self.table_dir(table)}); {hint}")
        return shards

    def read_batches(self, table: str, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        for shard in self.shards(table):
            yield from read_shard_batches(shard, columns)

    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """The whole table in memory: for small tables (annotators, per-prompt aggregates) only."""
        parts = [read_shard(s, columns) for s in self.shards(table)]
        if not parts:
            raise DatasetError(f"{self.root}: no '{table}' table to read")
        return pa.concat_tables(parts)

    def num_rows(self, table: str) -> int:
        """The table's rows as the manifests that committed its (verified) files record them: no file is
        decompressed (reading every batch of a 1M-row pairs table took 0.7 s). A file the current run
        wrote and has not committed yet is counted from its batches."""
        from curate.verify import committed_files

        listed = committed_files(self).get(table, {})
        total = 0
        for shard in self.shards(table):
            if shard.name in listed:
                total += listed[shard.name].rows
                continue
            with ipc.open_file(pa.memory_map(str(shard))) as reader:
                total += sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        return total

    def scan(self, table: str):
        """A polars LazyFrame over the table's shards (polars imported here, not at start-up)."""
        import polars as pl

        shards = self.shards(table)
        if not shards:
            raise DatasetError(f"{self.root}: no '{table}' table to scan")
        return pl.scan_ipc([str(s) for s in shards])


def _open_shard(path: Path, columns: list[str] | None) -> ipc.RecordBatchFileReader:
    """The shard's reader, decoding only ``columns`` (all when None): a compressed table's other
    columns are never decompressed (reading 4 of the pairs table's 17 columns: 2.6x faster)."""
    source = pa.memory_map(str(path))
    if not columns:
        return ipc.open_file(source)
    schema = ipc.open_file(source).schema
    fields = [schema.get_field_index(c) for c in columns]
    if min(fields) < 0:  # an unknown column: read everything and let select() name it
        return ipc.open_file(source)
    return ipc.open_file(source, options=ipc.IpcReadOptions(included_fields=sorted(set(fields))))


def read_shard_batches(path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    with _open_shard(path, columns) as reader:
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            yield batch.select(columns) if columns else batch


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    with _open_shard(path, columns) as reader:
        table = reader.read_all()
    return table.select(columns) if columns else table
