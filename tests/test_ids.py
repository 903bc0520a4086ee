"""prompt_id and uid_image_id are persisted keys: pinned here against xxhash itself, for the odd strings
(whitespace, Unicode forms) whose vectorised fast path must agree with the plain definition."""
from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow as pa
import pytest
import xxhash

from curate import ids

# (raw prompt, its normal form written out by hand)
ODD_PROMPTS = [
    ("plain prompt", "plain prompt"),
    ("  leading and trailing  ", "leading and trailing"),
    ("double  space", "double space"),
    ("tab\there\nand\r\nlines", "tab here and lines"),
    ("vt\x0bff\x0cfs\x1cus\x1f", "vt ff fs us"),
    ("no\u00a0break\u3000ideographic\u2028line", "no break ideographic line"),
    (unicodedata.normalize("NFD", "caf\u00e9"), "caf\u00e9"),
    ("caf\u00e9", "caf\u00e9"),
    ("\u2126hm sign", "\u03a9hm sign"),  # the Ohm sign's NFC is the Greek capital omega
    ("delete\x7fkept", "delete\x7fkept"),  # a control character that is not whitespace stays
    ("emoji \U0001F600 ok ", "emoji \U0001F600 ok"),
    ("   ", ""),
    ("", ""),
]


def xxh3(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def test_prompt_id_is_xxh3_of_the_normal_form_pinned():
    assert ids.prompt_id("  caf\u0065\u0301 ") == "fc88ba8ad8a06b6234b319bdcedd52af" == xxh3("caf\u00e9".encode())


def test_uid_image_id_is_xxh3_of_the_prefixed_uid_pinned():
    uid = "607e0c25-d8f7-488a-a6d8-ace2692ce22e"
    assert ids.uid_image_id(uid) == "3c1ef73bdcad5045a2272b47d0bcef5e" == xxh3(b"uid:" + uid.encode())


@pytest.mark.parametrize("raw,normal", ODD_PROMPTS)
def test_prompt_id_of_odd_prompts_hashes_like_their_normal_form(raw, normal):
    assert ids.normalize_prompt(raw) == normal
    assert ids.prompt_id(raw) == xxh3(normal.encode())


def test_vectorised_prompt_ids_match_xxhash_with_repeats_and_nulls():
    raws = [raw for raw, _ in ODD_PROMPTS] * 2 + [None]
    expected = [xxh3(normal.encode()) for _, normal in ODD_PROMPTS] * 2 + [None]
    assert ids.prompt_ids(raws).to_pylist() == expected
    chunked = pa.chunked_array([pa.array(raws[:5], pa.string()), pa.array(raws[5:], pa.string())])
    assert ids.prompt_ids(chunked).to_pylist() == expected


def test_vectorised_uid_image_ids_match_xxhash_with_repeats_and_nulls():
    uids = ["u1", "\u00e9-uid", None, "u1", "", "a b\t"]
    expected = [None if u is None else xxh3(b"uid:" + u.encode()) for u in uids]
    assert ids.uid_image_ids(pa.array(uids, pa.string())).to_pylist() == expected
    assert ids.uid_image_ids([None, None]).to_pylist() == [None, None]
    assert ids.uid_image_ids(np.array(uids[:2])).to_pylist() == expected[:2]


def test_already_normal_never_claims_a_string_that_normalising_changes():
    strings = [raw for raw, _ in ODD_PROMPTS] + ["a b", "a", "x  ", " x", "x\ty"]
    claimed = ids.already_normal(pa.array(strings, pa.string()))
    for s, normal in zip(strings, claimed):
        if normal:
            assert ids.normalize_prompt(s) == s, repr(s)
    assert dict(zip(strings, claimed))["a b"] and not dict(zip(strings, claimed))["x\ty"]


def test_already_normal_reads_a_slice_of_an_array_at_its_own_offset():
    strings = pa.array(["a  b", " x", "fine", "tab\tx", "ok too", "", "end "], pa.string())
    assert ids.already_normal(strings.slice(2, 4)).tolist() == [True, False, True, True]
    assert ids.already_normal(strings.slice(0, 0)).tolist() == []
    assert ids.prompt_ids([None]).to_pylist() == [None]
    assert ids.prompt_ids(pa.array(["a b"], pa.large_string())).to_pylist() == [xxh3(b"a b")]


def test_vectorised_ids_match_xxhash_at_every_length():
    # XXH3 switches algorithm at 16, 128 and 240 bytes: a faster path must agree on every side of them
    rng = np.random.default_rng(0)
    lengths = [*range(0, 300), *rng.integers(0, 300, 2000).tolist()]
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789-", dtype=np.uint8)
    words = [bytes(alphabet[rng.integers(0, len(alphabet), n)]).decode() for n in lengths]
    uids = pa.array(words, pa.string()).slice(3)  # a slice: offsets that do not start at zero
    assert ids.uid_image_ids(uids).to_pylist() == [xxh3(b"uid:" + w.encode()) for w in words[3:]]
    prompts = [w.replace("-", " ").strip() or "x" for w in words]  # already normal unless a double space
    assert ids.prompt_ids(prompts).to_pylist() == [xxh3(ids.normalize_prompt(p).encode()) for p in prompts]
    unicode = [w[: len(w) // 2] + "\u00e9\u3000" + w[len(w) // 2:] for w in words[:400]]
    assert ids.prompt_ids(unicode).to_pylist() == [xxh3(ids.normalize_prompt(u).encode()) for u in unicode]
