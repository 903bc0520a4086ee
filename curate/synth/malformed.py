"""Planted malformed rows: which rows of a layout are broken, and how, so ingest's rejects can be checked.

A planted row is an extra record (the layout holds ``--pairs`` good records plus the planted
ones); it has no row in truth/pairs.parquet and one in truth/planted.parquet with the reason code
ingest is expected to give.
"""
from __future__ import annotations

import numpy as np

REASONS = (
    "missing_label", "unparseable_label", "no_label", "identical_images", "undecodable_image", "truncated_image",
    "missing_file", "path_outside_root", "empty_prompt", "duplicate_row", "bad_type",
)
# What each layout can carry. Image-byte defects need bytes; files and paths need file references.
KINDS = {
    "pickapic": ("missing_label", "unparseable_label", "no_label", "identical_images", "undecodable_image",
                 "truncated_image", "empty_prompt", "duplicate_row"),
    "pickapic_no_images": ("missing_label", "unparseable_label", "no_label", "identical_images", "empty_prompt", "duplicate_row"),
    "hpdv2": ("missing_label", "bad_type", "identical_images", "undecodable_image", "truncated_image",
              "missing_file", "path_outside_root", "empty_prompt"),
    "multivote": ("missing_label", "identical_images", "undecodable_image", "truncated_image",
                  "empty_prompt", "duplicate_row"),
    # bad_type: a JSON list as the label in pairs.jsonl; the same cell in pairs.csv is text, so
    # there it is recorded as unparseable_label.
    "table": ("missing_label", "unparseable_label", "bad_type", "identical_images", "undecodable_image",
              "truncated_image", "missing_file", "path_outside_root", "empty_prompt", "duplicate_row"),
}
GARBAGE = b"\x00\x01 this is not an image \xff\xfe" * 4  # no known magic bytes
OUTSIDE_ROOT = "../../etc/passwd"


def plan(rng: np.random.Generator, n_good: int, n_planted: int, kinds: tuple[str, ...]) -> dict[int, str]:
    """Rows (of n_good + n_planted) to break, each with its reason; kinds cycle in order so every
    kind appears once n_planted >= len(kinds). Row 0 is never planted, so a duplicate always has
    an earlier good row to copy."""
    total = n_good + n_planted
    if n_planted == 0:
        return {}
    if n_good < 1:
        raise ValueError(f"cannot plant {n_planted} malformed rows among {n_good} good ones; ask for at least 1 pair")
    rows = np.sort(rng.choice(np.arange(1, total), size=n_planted, replace=False))
    order = rng.permutation(n_planted)  # which planted row gets which kind
    return {int(rows[i]): kinds[k % len(kinds)] for k, i in enumerate(order)}


def previous_good(row: int, planted: dict[int, str]) -> int:
    while row in planted:
        row -= 1
    return row


def repeats(*keys: np.ndarray) -> np.ndarray:
    """Mask of rows whose key (int columns) already occurred earlier. By chance a simulated
    annotator can judge the same pair the same way twice; ingest rightly rejects the later one as a
    duplicate_row, so the truth must say so too."""
    stacked = np.stack([np.asarray(k, dtype=np.int64) for k in keys], axis=1)
    if len(stacked) == 0:
        return np.zeros(0, dtype=bool)
    _, first = np.unique(stacked, axis=0, return_index=True)
    mask = np.ones(len(stacked), dtype=bool)
    mask[first] = False
    return mask


def truncate(data: bytes) -> bytes:
    """Keep the magic bytes and a third of the file: sniffable, not decodable."""
    return data[: max(16, len(data) // 3)]


# ------------------------------------------------------------------ fuzzing: malformed files of every format
FUZZ_FORMATS = ("pickapic", "hpdv2_train", "hpdv2_test", "csv", "tsv", "jsonl", "table_parquet", "rapidata", "hpdv3")
_DEEP = "[" * 5000 + "]" * 5000  # past any JSON parser's nesting limit


def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG that claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    import struct

    return b"\xff\xd8\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00" + b"\0" * 16 + b"\xff\xd9"


def fuzz_images(folder) -> dict[str, list]:
    """Good and bad image bytes and file references (files written under ``folder/images``)."""
    import io
    from pathlib import Path

    from PIL import Image

    good = []
    for i, (colour, fmt) in enumerate([("red", "PNG"), ("blue", "JPEG"), ("green", "PNG"), ("white", "JPEG")]):
        buf = io.BytesIO()
        Image.new("RGB", (8 + i, 8), colour).save(buf, fmt)
        good.append(buf.getvalue())
    images = Path(folder) / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(good):
        (images / f"{i}.img").write_bytes(data)
    bad_bytes = [GARBAGE, truncate(good[0]), b"", png_header(100_000, 100_000), jpeg_header(65_500, 65_500),
                 png_header(65_500, 65_500), good[1][:3], b"\x89PNG\r\n\x1a\n" + b"\0" * 40]
    bad_refs = ["images/404.img", OUTSIDE_ROOT, "/etc/hostname", "images/0\x00.img", "file:///etc/passwd",
                "ftp://example.invalid/a.png", "HTTP://example.invalid/a.png", "https://example.invalid/b.png", "",
                "  ", "images", "images/../images/0.img/..", "\\\\server\\share\\a.png"]
    return {"good_bytes": good, "bad_bytes": bad_bytes, "good_refs": [f"images/{i}.img" for i in range(len(good))],
            "bad_refs": bad_refs}


_BAD_VALUES = {
    "text": ["", "   ", "\x00", "caf\u00e9 \u2603", "x" * 3000, "\ud800 lone", 5, 1.5, True, [1, 2], {"a": 1}],
    "label": ["maybe", "", "  ", "A ", "-1", "0.3", 2, 0.3, -1, True, [0], {"x": 1}, float("nan"), float("inf")],
    "float": [float("nan"), 0.3, -1.0, 2.0, 1e308, "x", "", True, [1.0]],
    "votes": [3_000_000_000, 99999999999999999999, -1, 1.5, 0, "x", "", True, float("nan"), float("inf"), [1]],
    "who": [5, [1, 2], {"a": 1}, True, 3.5, "", "\ud800"],
    "time": ["not a time", "2023-13-45", 1e300, -1e20, float("nan"), True, [], {"t": 1}, "", 1.5e12],
}


def _pick(rng: np.random.Generator, good: list, bad: list, p_bad: float = 0.35):
    pool = bad if rng.random() < p_bad else good
    return pool[rng.integers(len(pool))]


def _table_record(rng, imgs, votes: bool) -> dict:
    """One table row: logical columns under their default names, each cell good or malformed; the
    label as one column, or as ``votes`` counts."""
    refs = (imgs["good_refs"], imgs["bad_refs"] + [None, 7, {"bytes": 5}, {"path": OUTSIDE_ROOT}])
    row = {"prompt": _pick(rng, ["a red cube", "two cats"], _BAD_VALUES["text"] + [None]),
           "image_a": _pick(rng, *refs), "image_b": _pick(rng, *refs),
           "annotator": _pick(rng, ["u1", "u2", None], _BAD_VALUES["who"]),
           "created_at": _pick(rng, ["2023-05-01T10:00:00", 1.7e9, None], _BAD_VALUES["time"]),
           "model_a": _pick(rng, ["sdxl", None], _BAD_VALUES["who"])}
    if not votes:
        row["label"] = _pick(rng, ["a", "b", "tie", "0", "1", 0, 1, 0.5, "left"], _BAD_VALUES["label"] + [None])
    else:
        row["votes_a"], row["votes_b"] = (_pick(rng, [0, 1, 3], _BAD_VALUES["votes"] + [None]) for _ in range(2))
    return row


def _hpdv2_record(rng, imgs, test: bool):
    if rng.random() < 0.05:
        return _pick(rng, [None], [None, 7, "record", [1, 2], True], p_bad=1.0)
    n = int(rng.integers(1, 5))
    paths = [_pick(rng, imgs["good_refs"], imgs["bad_refs"] + [None, 3], p_bad=0.15) for _ in range(n)]
    numbers = lambda: [_pick(rng, [0, 1, 2, 3], _BAD_VALUES["float"] + [None], p_bad=0.1) for _ in range(n)]  # noqa: E731
    prompt = _pick(rng, ["a red cube", "a dog"], _BAD_VALUES["text"] + [None], p_bad=0.15)
    if not test:
        return {"prompt": prompt, "file_path": _pick(rng, [paths], ["images/0.img", None, {"a": 1}], 0.05),
                "human_preference": _pick(rng, [numbers()], [None, "1,0", 1, {"a": 1}], 0.05)}
    annotation = lambda: {"rank": numbers(), "user_hash": _pick(rng, ["h1", "h2"], _BAD_VALUES["who"] + [None])}  # noqa: E731
    raw = _pick(rng, [[annotation() for _ in range(int(rng.integers(1, 4)))], None],
                ["abc", {"rank": [1, 2]}, [None], [annotation(), 5], 3, []], p_bad=0.2)
    record = {"prompt": prompt, "image_path": paths, "rank": numbers()}
    if raw is not None:
        record["raw_annotations"] = raw
    return record


def _hpdv3_record(rng, imgs):
    refs = (imgs["good_refs"], imgs["bad_refs"] + [None, 3, ["images/0.img"]])
    return {"prompt": _pick(rng, ["a red cube", "a dog"], _BAD_VALUES["text"] + [None], p_bad=0.15),
            "path1": _pick(rng, *refs, p_bad=0.15), "path2": _pick(rng, *refs, p_bad=0.15),
            "model1": _pick(rng, ["sdxl", None], _BAD_VALUES["who"], p_bad=0.1), "confidence": 0.7}


def _rapidata_row(rng, imgs) -> dict:
    """A Rapidata row: Image structs good or bad, a vote list well or badly formed, counts that match or not."""
    image = lambda: {"bytes": _pick(rng, imgs["good_bytes"], imgs["bad_bytes"] + [None], 0.2),  # noqa: E731
                     "path": _pick(rng, ["a.png", "b.jpg"], [None, "", "images/404.img"], 0.2)}
    voted = lambda: _pick(rng, ["a.png", "b.jpg", "image1", "image2"], [None, "", "c.png", 5, ["a.png"]], 0.15)  # noqa: E731
    score = lambda: _pick(rng, [0.3, 0.9, None], _BAD_VALUES["float"] + ["x", {"g": 1}], 0.15)  # noqa: E731
    votes = [{"votedFor": voted(), "userDetails": _pick(rng, [{"userScore": score()}, {"userScores": {"global": score()}}],
                                                        [None, 5, "x", {"userId": [1]}], 0.1)}
             for _ in range(int(rng.integers(0, 5)))]
    details = _pick(rng, [_json_text(votes), None], ["{oops", "[1, 2]", "{}", "", _DEEP, "[]"], 0.15)
    counts = [sum(v["votedFor"] == n for v in votes) for n in ("a.png", "b.jpg")]
    return {"prompt": _pick(rng, ["a red cube", "a dog"], ["", "  ", None], 0.15), "image1": image(), "image2": image(),
            "votes_image1": _pick(rng, [counts[0]], [None, 99, -1], 0.2), "votes_image2": _pick(rng, [counts[1]], [None, 0], 0.2),
            "model1": "m1", "model2": _pick(rng, ["m2"], ["m1", None], 0.2), "detailed_results": details}


def _json_text(value) -> str:
    import json

    return json.dumps(value, allow_nan=True)


def write_fuzz_file(folder, fmt: str, rows: int, rng: np.random.Generator) -> tuple:
    """Write ``rows`` malformed records in ``fmt`` under ``folder``: (path, --format, records)."""
    import csv
    import io
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    imgs = fuzz_images(folder)
    if fmt == "pickapic":
        return _write_pickapic_fuzz(folder / f"train-{rng.integers(1 << 30):09d}.parquet", rows, rng, imgs), "pickapic", rows
    if fmt == "rapidata":
        image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        rows_ = [_rapidata_row(rng, imgs) for _ in range(rows)]
        types = {"image1": image, "image2": image, "votes_image1": pa.int64(), "votes_image2": pa.int64()}
        table = pa.table({c: pa.array([r[c] for r in rows_], types.get(c, pa.string())) for c in rows_[0]})
        path = folder / f"rapidata-{rng.integers(1 << 30):09d}.parquet"
        pq.write_table(table, path, row_group_size=max(1, rows // 3))
        return path, "rapidata", rows
    if fmt == "hpdv3":
        items = [_json_text(_hpdv3_record(rng, imgs)) if rng.random() > 0.02 else _DEEP for _ in range(rows)]
        path = folder / f"hpdv3-{rng.integers(1 << 30):09d}.json"
        path.write_text("[" + ",\n".join(items) + "]")
        return path, "hpdv3", rows
    if fmt.startswith("hpdv2"):
        items = [_json_text(_hpdv2_record(rng, imgs, fmt == "hpdv2_test")) if rng.random() > 0.02 else _DEEP
                 for _ in range(rows)]
        path = folder / f"{fmt}-{rng.integers(1 << 30):09d}.json"
        path.write_text("[" + ",\n".join(items) + "]")
        return path, "hpdv2", rows
    votes = bool(rng.random() < 0.4)
    records = [_table_record(rng, imgs, votes) for _ in range(rows)]
    columns = ["prompt", "image_a", "image_b", *(["votes_a", "votes_b"] if votes else ["label"]), "annotator",
               "created_at", "model_a"]
    path = folder / f"{fmt}-{rng.integers(1 << 30):09d}.{ {'csv': 'csv', 'tsv': 'tsv', 'jsonl': 'jsonl'}.get(fmt, 'parquet')}"
    if fmt == "jsonl":
        path.write_text("".join((_json_text(r) if rng.random() > 0.03 else _pick(rng, [], ["{oops", _DEEP, "[1]", ""], 1.0))
                                + "\n" for r in records))
    elif fmt in ("csv", "tsv"):
        text = io.StringIO()
        writer = csv.writer(text, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
        writer.writerow(columns)
        for r in records:
            cells = ["" if r.get(c) is None else str(r.get(c)).replace("\ud800", "?") for c in columns]
            writer.writerow(cells + (["extra"] if rng.random() < 0.05 else []))
        path.write_text(text.getvalue())
    else:
        as_text = lambda v: None if v is None else str(v).replace("\ud800", "?")  # noqa: E731 (parquet holds valid text)
        pq.write_table(pa.table({c: pa.array([as_text(r.get(c)) for r in records], pa.string()) for c in columns}), path,
                       row_group_size=max(1, rows // 3))
    return path, "table", rows


def _write_pickapic_fuzz(path, rows: int, rng, imgs):
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    label_type, labels = [(pa.float64(), [0.0, 1.0, 0.5, float("nan"), 0.3, -1.0, None]),
                          (pa.string(), ["1", "0", "0.5", "x", "", None]), (pa.int64(), [0, 1, 2, -5, None])][rng.integers(3)]
    cols = {"caption": [_pick(rng, ["a red cube", "a dog"], ["", "  ", "\x00", None, "x" * 3000]) for _ in range(rows)],
            "jpg_0": [_pick(rng, imgs["good_bytes"], imgs["bad_bytes"] + [None]) for _ in range(rows)],
            "jpg_1": [_pick(rng, imgs["good_bytes"], imgs["bad_bytes"] + [None]) for _ in range(rows)],
            "label_0": [None] * rows, "label_1": [None] * rows,
            "has_label": [_pick(rng, [True], [False, None]) for _ in range(rows)],
            "image_0_uid": [f"a{i}" for i in range(rows)], "image_1_uid": [f"b{i}" for i in range(rows)]}
    for row in range(rows):  # mostly a coherent pair (1/0, 0/1, 0.5/0.5), else any two values
        k = int(rng.integers(3)) if rng.random() < 0.7 else None
        pair = (labels[k], labels[(1, 0, 2)[k]]) if k is not None else tuple(labels[i] for i in rng.integers(len(labels), size=2))
        cols["label_0"][row], cols["label_1"][row] = pair
    cols["label_0"], cols["label_1"] = pa.array(cols["label_0"], label_type), pa.array(cols["label_1"], label_type)
    if rng.random() < 0.5:
        cols["created_at"] = [_pick(rng, [dt.datetime(2023, 5, 1)], [None, dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31)])
                              for _ in range(rows)]
    else:
        cols["created_at"] = pa.array([_pick(rng, [1_700_000_000], [10**17, -(10**17), None]) for _ in range(rows)], pa.int64())
    user = pa.array([_pick(rng, [1, 2], [None, 10**18]) for _ in range(rows)], pa.int64()) if rng.random() < 0.7 else \
        pa.array([[1, 2]] * rows, pa.list_(pa.int64()))
    cols["user_id"] = user
    pq.write_table(pa.table(cols), path, row_group_size=max(1, rows // 3))
    return path


def corrupt_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """Byte-level damage to a whole file: flipped bytes, a cut, an inserted or zeroed block, a Latin-1
    byte, inserted separators and quotes (text stays UTF-8), a deleted range."""
    data = bytearray(data)
    kind = rng.integers(7)
    if not data:
        return bytes(data)
    at = int(rng.integers(len(data)))
    if kind == 0:
        for i in rng.integers(len(data), size=max(1, len(data) // 500)):
            data[i] ^= int(rng.integers(1, 256))
    elif kind == 1:
        del data[at:]
    elif kind == 2:
        data[at:at] = rng.bytes(int(rng.integers(1, 64)))
    elif kind == 3:
        data[at:at + 256] = b"\0" * len(data[at:at + 256])
    elif kind == 4:
        data[at:at] = b"\xe9"
    elif kind == 5:
        data[at:at] = bytes(rng.choice(list(b'",{}[]:\n\t\\ 0'), size=int(rng.integers(1, 8))).astype(np.uint8))
    else:
        del data[at:at + int(rng.integers(1, 200))]
    return bytes(data)


def ingest_outcome(path, fmt: str, out, image_root) -> dict:
    """Ingest one file and account for it: ``{"refused": message}`` for a clean one-line error, else
    the records read, pairs, rejects by reason and whether every record is accounted exactly once.
    Anything else raised is a crash and propagates."""
    from pathlib import Path

    from curate.dataset import Dataset
    from curate.ingest.pickapic import SourceError
    from curate.ingest.stage import IngestStage
    from curate.runner import run_stage

    stage = IngestStage(files=[str(path)], format=fmt, shard_rows=int(np.random.default_rng(len(str(path))).integers(7, 60)),
                        image_root=None if fmt in ("hpdv2", "hpdv3") else str(image_root))
    try:
        report = run_stage(stage, out)
    except SourceError as exc:
        message = str(exc)
        return {"refused": message, "one_line": "\n" not in message and str(Path(path)) in message}
    ds = Dataset(out)
    seen = []
    for table in ("pairs", "rejects"):
        if ds.has(table):
            part = ds.read_table(table, ["source_row", "source_item"])
            seen += list(zip(part["source_row"].to_pylist(), part["source_item"].to_pylist()))
    reasons = {k.split(":", 1)[1]: v for k, v in report.stats.items() if k.startswith("rejected:") and v}
    records = report.stats.get("records", 0)
    accounted = (len(set(seen)) == len(seen) == report.stats.get("items", 0)
                 and {row for row, _ in seen} == set(range(records))
                 and report.stats.get("items", 0) == report.stats.get("accepted", 0) + sum(reasons.values()))
    return {"records": records, "accepted": report.stats.get("accepted", 0), "reasons": reasons, "accounted": accounted}
