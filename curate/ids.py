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
# The hex characters of each 16-bit value, as one 4-byte unit: one lookup per two bytes of a digest
# (built from the 256 two-character pairs, so the bytes land in order whatever the machine's endianness).
_HEX_PAIRS = np.frombuffer(b"".join(b"%02x" % i for i in range(256)), dtype=np.uint16)
_HEX_QUADS = np.empty((256, 256, 2), dtype=np.uint16)
_HEX_QUADS[:, :, 0], _HEX_QUADS[:, :, 1] = _HEX_PAIRS[:, None], _HEX_PAIRS[None, :]
_HEX_QUADS = _HEX_QUADS.reshape(-1).view(np.uint32)


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
    raw = np.empty((len(hi), 2), dtype=">u8")
    raw[:, 0], raw[:, 1] = hi, lo
    return _hex_rows(raw.view(np.uint8).reshape(len(hi), 16))


def _hex_rows(raw: np.ndarray):
    """Lowercase hex of each row of an (n, 16) uint8 array (big-endian digests), as an Arrow string array."""
    import pyarrow as pa

    n = len(raw)
    chars = _HEX_QUADS[np.ascontiguousarray(raw).view(">u2")]
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars))


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


def _xxh3_128_hex(keys: list[bytes]):
    """``xxh3_128_hexdigest`` of each key, as an Arrow string array: the digests are joined in C and
    turned to hex in numpy, so Python pays one call per key and builds no strings."""
    digests = b"".join(map(xxhash.xxh3_128_digest, keys))  # canonical big-endian: its hex is the hexdigest
    return _hex_rows(np.frombuffer(digests, dtype=np.uint8).reshape(len(keys), 16))


def _utf8_keys(strings) -> np.ndarray:
    """The UTF-8 bytes of each string of an Arrow string array (no nulls), as a numpy object array."""
    import pyarrow as pa

    return strings.cast(pa.binary()).to_numpy(zero_copy_only=False)


def _string_array(strings):
    """One Arrow ``string`` array from a list or numpy array of str, or an Arrow array or chunked array
    of any string type (polars hands over large or view strings)."""
    import pyarrow as pa

    if not isinstance(strings, (pa.Array, pa.ChunkedArray)):
        return pa.array(strings, pa.string())
    if isinstance(strings, pa.ChunkedArray):  # a table's column: usually one chunk, taken without a copy
        strings = strings.chunk(0) if strings.num_chunks == 1 else strings.combine_chunks()
    return strings if strings.type == pa.string() else strings.cast(pa.string())


def already_normal(strings) -> np.ndarray:
    """Where ``normalize_prompt`` is the identity, decided on the UTF-8 bytes in numpy (no Python per
    string): printable ASCII (NFC-invariant, and its only whitespace is the space) with no leading,
    trailing or double space. ``strings``: an Arrow string array without nulls. Strings outside this
    (tabs, non-ASCII, ...) may still be normal; they only take the slow path."""
    n = len(strings)
    if n == 0:  # an empty array may have no offsets buffer at all
        return np.zeros(0, dtype=bool)
    _, offsets_buffer, data_buffer = strings.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[strings.offset:strings.offset + n + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0]:offsets[-1]] if data_buffer else np.zeros(0, np.uint8)
    offsets = offsets - offsets[0]
    space = data == 0x20
    bad = (data < 0x20) | (data > 0x7E)
    # A double space that straddles two strings flags one that ends in a space: flagged anyway.
    bad[:-1] |= space[:-1] & space[1:]
    flagged = np.zeros(n, dtype=bool)
    flagged[np.searchsorted(offsets, np.flatnonzero(bad), side="right") - 1] = True
    nonempty = offsets[1:] > offsets[:-1]
    flagged[nonempty] |= space[offsets[:-1][nonempty]] | space[offsets[1:][nonempty] - 1]
    return ~flagged


def _prompt_hex(prompts) -> "pa.StringArray":
    """prompt_id of each string of an Arrow string array (no nulls); Python normalises only the strings
    that are not already normal."""
    keys = _utf8_keys(prompts)
    odd = np.flatnonzero(~already_normal(prompts))
    if len(odd):
        keys[odd] = [normalize_prompt(p).encode() for p in prompts.take(odd).to_pylist()]
    return _xxh3_128_hex(keys.tolist())


def _uid_hex(uids) -> "pa.StringArray":
    """uid_image_id of each string of an Arrow string array (no nulls)."""
    import pyarrow.compute as pc

    return _xxh3_128_hex(_utf8_keys(pc.binary_join_element_wise("uid:", uids, "")).tolist())


def prompt_ids(prompts):
    """prompt_id of each prompt in an Arrow array (or list), hashing each distinct prompt once; nulls stay null."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(_string_array(prompts))
    return _prompt_hex(encoded.dictionary).take(encoded.indices)


def uid_image_ids(uids):
    """uid_image_id of each uid in an Arrow array (or list); null uids stay null. Every value is hashed:
    uids barely repeat within a batch, so finding the distinct ones would cost more than it saves."""
    import pyarrow as pa

    uids = _string_array(uids)
    hexes = _uid_hex(uids.drop_null())
    if not uids.null_count:
        return hexes
    valid = uids.is_valid().to_numpy(zero_copy_only=False)
    return hexes.take(pa.array(np.cumsum(valid) - 1, mask=~valid))


def source_name(fmt: str, file_name: str) -> str:
    """The ``source`` column: the format and the file's name (not its folder, so moving data keeps ids)."""
    return f"{fmt}:{file_name}"
