"""Parquet shards of one split, as the Hugging Face Hub reads them: row groups bounded by rows and
bytes, a new file started before one would pass its size cap, final ``-of-N`` names once the
split is complete (curate.publish.export drives it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the Hugging Face Image feature in Arrow
# The Hub's dataset viewer reads one row group at a time and gives up past ~286 MiB: stay well below.
MAX_ROW_GROUP_BYTES = 128 * 2**20


def row_group_cap(max_shard_bytes: int) -> int:
    """Bytes a row group may hold: a quarter of a shard (several groups per file), never past MAX_ROW_GROUP_BYTES."""
    return max(1, min(max_shard_bytes // 4, MAX_ROW_GROUP_BYTES))


def plan_row_groups(row_bytes: np.ndarray, max_rows: int, max_bytes: int) -> list[tuple[int, int]]:
    """Cut rows into consecutive [start, end) groups of at most ``max_rows`` rows and ``max_bytes``
    bytes; a single row larger than ``max_bytes`` gets a group of its own."""
    groups, start, size = [], 0, 0
    for i, b in enumerate(np.asarray(row_bytes, dtype=np.int64)):
        if i > start and (i - start >= max_rows or size + b > max_bytes):
            groups.append((start, i))
            start, size = i, 0
        size += int(b)
    if start < len(row_bytes):
        groups.append((start, len(row_bytes)))
    return groups


class ShardedParquetWriter:
    """Writes row groups of one split into numbered files, starting a new file before ``max_bytes``."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, max_bytes: int):
        self.folder, self.split, self.schema, self.max_bytes = folder, split, schema, max_bytes
        self.files: list[dict] = []
        self._writer = self._sink = None
        self._groups = 0

    def _footer_reserve(self) -> int:
        # The footer holds per-column-chunk metadata of every row group: keep room for it.
        return 4096 + 400 * len(self.schema) * (self._groups + 1)

    def write(self, table: pa.Table, nbytes: int) -> None:
        if self._writer is not None and self._sink.tell() + nbytes + self._footer_reserve() > self.max_bytes:
            self._close_file()
        if self._writer is None:
            path = self.folder / f".tmp-{self.split}-{len(self.files):05d}.parquet"
            self._sink = open(path, "wb")
            images = [f"{c.name}.bytes" for c in self.schema if c.type == IMAGE]
            binaries = images + [c.name for c in self.schema if c.type == pa.binary()]
            # Encoded images do not compress: spend no time trying.
            compression = {name: "none" if name in binaries else "zstd" for name in _leaf_paths(self.schema)}
            # Min/max statistics of image bytes would copy whole images into the footer: none for those.
            stats = [c for c in _leaf_paths(self.schema) if c not in binaries]
            self._writer = pq.ParquetWriter(self._sink, self.schema, compression=compression, write_statistics=stats,
                                            write_page_index=True)
            self.files.append({"tmp": path, "rows": 0, "num_bytes": 0})
            self._groups = 0
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._groups += 1
        self.files[-1]["rows"] += table.num_rows
        self.files[-1]["num_bytes"] += table.nbytes

    def _close_file(self) -> None:
        self._writer.close()
        self._sink.close()
        self._writer = self._sink = None

    def close(self) -> list[dict]:
        """Finish the split: rename its files to ``<split>-NNNNN-of-NNNNN.parquet``."""
        if self._writer is not None:
            self._close_file()
        n = len(self.files)
        for i, entry in enumerate(self.files):
            final = self.folder / f"{self.split}-{i:05d}-of-{n:05d}.parquet"
            entry["tmp"].replace(final)
            entry["file"] = f"data/{final.name}"
            entry["size"] = final.stat().st_size
            del entry["tmp"]
        return self.files

    def abort(self) -> None:
        if self._writer is not None:
            self._close_file()
        for entry in self.files:
            if "tmp" in entry:
                entry["tmp"].unlink(missing_ok=True)


def _leaf_paths(schema: pa.Schema) -> list[str]:
    out = []
    for f in schema:
        if pa.types.is_struct(f.type):
            out += [f"{f.name}.{child.name}" for child in f.type]
        elif pa.types.is_list(f.type):
            out.append(f"{f.name}.list.element")
        else:
            out.append(f.name)
    return out
