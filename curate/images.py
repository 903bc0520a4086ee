"""Image bytes: the one decoder (ingest, CLIP, scorers and encode all decode through it), and
fetching the bytes of a few images by id without reading the images table into memory.

The images table is written uncompressed (curate.dataset), so a memory-mapped shard is read
zero-copy: only the rows taken are ever touched. The index keeps the ids as fixed-width bytes
(32 bytes per image), sorted, so a lookup is a binary search.
"""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from curate import schema as schemas
from curate.dataset import Dataset


def decode_image(data: bytes, min_side: int | None = None):
    """The RGB PIL image in ``data``, decoded in full; ValueError for empty bytes, PIL's errors for
    corrupt ones (a truncated file fails here, not later inside a transform).

    ``min_side``: a JPEG may be decoded at a reduced DCT scale, never below this side (the model's
    input size), which makes large JPEGs several times cheaper to decode.
    """
    from PIL import Image

    if not data:
        raise ValueError("no bytes")
    with Image.open(io.BytesIO(data)) as image:
        if min_side and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))
        image.load()
        return image.convert("RGB")


class ImageIndex:
    """Where each image of a dataset lives: shard and row, found by binary search over sorted ids."""

    def __init__(self, dataset: Dataset):
        self._tables: list[pa.Table] = []
        keys, shard_of, row_of = [], [], []
        for i, path in enumerate(dataset.shards("images")):
            with ipc.open_file(pa.memory_map(str(path))) as reader:
                table = reader.read_all()  # zero-copy over the memory map
            self._tables.append(table)
            ids = table.column("image_id").to_numpy(zero_copy_only=False).astype("S")
            keys.append(ids)
            shard_of.append(np.full(len(ids), i, np.int32))
            row_of.append(np.arange(len(ids), dtype=np.int64))
        keys_all = np.concatenate(keys) if keys else np.zeros(0, "S32")
        order = np.argsort(keys_all, kind="stable")
        self._keys = keys_all[order]
        self._shard = np.concatenate(shard_of)[order] if keys else np.zeros(0, np.int32)
        self._row = np.concatenate(row_of)[order] if keys else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._keys)

    def locate(self, image_ids) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row) per id; shard -1 where the dataset holds no bytes for that id."""
        query = np.asarray(image_ids, dtype=object).astype("S")
        if not len(self._keys):
            return np.full(len(query), -1, np.int32), np.zeros(len(query), np.int64)
        pos = np.clip(np.searchsorted(self._keys, query), 0, len(self._keys) - 1)
        found = self._keys[pos] == query
        return np.where(found, self._shard[pos], -1), np.where(found, self._row[pos], 0)

    def take(self, image_ids, columns: tuple[str, ...] = ("bytes", "format")) -> pa.Table:
        """The rows of ``image_ids`` in the order given (nulls for unknown ids), only ``columns``."""
        shard, row = self.locate(image_ids)
        n = len(shard)
        declared = schemas.load("images").arrow().remove_metadata()
        schema = pa.schema([pa.field(c, declared.field(c).type) for c in columns])  # nullable: unknown ids
        if n == 0:
            return schema.empty_table()
        parts, positions = [], []
        for s in np.unique(shard[shard >= 0]):
            where = np.flatnonzero(shard == s)
            parts.append(self._tables[s].select(list(columns)).take(pa.array(row[where])))
            positions.append(where)
        missing = np.flatnonzero(shard < 0)
        if len(missing):
            parts.append(pa.table({c: pa.nulls(len(missing), schema.field(c).type) for c in columns}, schema=schema))
            positions.append(missing)
        stacked = pa.concat_tables([p.replace_schema_metadata(None).cast(schema) for p in parts])
        # stacked row k holds the id at position order[k]; invert to return rows in the order asked.
        order = np.concatenate(positions)
        inverse = np.empty(n, np.int64)
        inverse[order] = np.arange(n)
        return stacked.take(pa.array(inverse))

