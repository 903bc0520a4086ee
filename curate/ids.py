"""Stable identifiers: the keys that join every table.

- ``image_id``: content hash of the encoded bytes, so an image reused across pairs is stored once.
- ``prompt_id``: hash of the normalised prompt text.
- ``pair_id``: hash of where the judgement came from (source, record, item within the record), so it
  is stable across re-ingests of the same files whatever the sharding or executor.
"""
from __future__ import annotations

import hashlib
import unicodedata

import numpy as np
import xxhash



def image_id(data: bytes) -> str:
    """First 32 hex digits (128 bits) of the SHA-256 of the encoded image bytes."""
    return hashlib.sha256(data).hexdigest()[:32]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijection on 64-bit integers with good avalanche (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def pair_id_words(source: str, source_rows, source_items) -> tuple[np.ndarray, np.ndarray]:
    """The two 64-bit words of the pair ids of rows of one source (vectorised)."""
    seed = np.uint64(int(hashlib.sha256(source.encode()).hexdigest()[:16], 16))
    rows = np.asarray(source_rows, dtype=np.int64).astype(np.uint64)
    items = np.asarray(source_items, dtype=np.int64).astype(np.uint64)
    key = _splitmix64(_splitmix64(seed ^ rows) ^ items)
    return key, _splitmix64(key ^ seed)


def hex_words(hi: np.ndarray, lo: np.ndarray):
    """32-character lowercase hex strings of two uint64 words, as an Arrow string array, without a Python loop."""
    import pyarrow as pa

    n = len(hi)
    raw = np.empty((n, 2), dtype=">u8")
    raw[:, 0], raw[:, 1] = hi, lo
    nibbles = raw.view(np.uint8).reshape(n, 16)
    chars = np.empty((n, 32), dtype=np.uint8)
    chars[:, 0::2] = _HEX[nibbles >> 4]
    chars[:, 1::2] = _HEX[nibbles & 15]
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def pair_ids(source: str, source_rows, source_items):
    """Arrow string array of pair ids: 128 bits of SplitMix64 over (hash of source, row, item).

    Not cryptographic, but stable across versions and machines, and fast enough for millions of rows.
    """
    return hex_words(*pair_id_words(source, source_rows, source_items))


def pair_id(source: str, source_row: int, source_item: int = 0) -> str:
    """Stable pair id from ``source`` (``"<format>:<file name>"``), the record index and the item within it."""
    return pair_ids(source, [source_row], [source_item])[0].as_py()


def normalize_prompt(text: str) -> str:
    """NFC, runs of (Unicode) whitespace collapsed to one space, trimmed; case is kept (it can matter to a model)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def prompt_id(text: str) -> str:
    """XXH3-128 of the normalised prompt's UTF-8 bytes, as 32 hex digits (stable: XXH3 is a frozen spec)."""
    return xxhash.xxh3_128_hexdigest(normalize_prompt(text).encode())


def uid_image_id(uid: str) -> str:
    """Id of an image known only by a source uid (metadata-only sources such as pickapic_v2_no_images)."""
    return xxhash.xxh3_128_hexdigest(b"uid:" + uid.encode())


def _map_distinct(fn, strings):
    """Apply ``fn`` to each distinct non-null string once; an Arrow string array, nulls kept."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(pa.array(strings, pa.string()) if isinstance(strings, list) else strings)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return pa.array([fn(s) for s in encoded.dictionary.to_pylist()], pa.string()).take(encoded.indices)


def prompt_ids(prompts):
    """prompt_id of each prompt in an Arrow array (or list), hashing each distinct prompt once."""
    return _map_distinct(prompt_id, prompts)


def uid_image_ids(uids):
    """uid_image_id of each uid in an Arrow array (or list); null uids stay null."""
    return _map_distinct(uid_image_id, uids)


def source_name(fmt: str, file_name: str) -> str:
    """The ``source`` column: the format and the file's name (not its folder, so moving data keeps ids)."""
    return f"{fmt}:{file_name}"
