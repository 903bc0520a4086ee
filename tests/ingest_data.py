"""Small raw inputs in each layout, written as real files, with the reason each bad row must get."""
from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def image_bytes(colour: str, fmt: str = "PNG", size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, fmt)
    return buf.getvalue()


def pickapic_rows() -> tuple[dict, dict[int, str]]:
    """Columns of a Pick-a-Pic file, and {row: expected reason} for the rows that must be rejected."""
    good = [(image_bytes(COLOURS[i % 8]), image_bytes(COLOURS[(i + 1) % 8], "JPEG")) for i in range(8)]
    rows = []  # (caption, jpg_0, jpg_1, label_0, label_1, has_label, are_different, user)
    for i, (a, b) in enumerate(good):
        rows.append((f"prompt {i}", a, b, float(i % 2), float(1 - i % 2), True, True, i % 3))
    rows.append(("tie prompt", good[0][0], good[1][0], 0.5, 0.5, True, True, 1))
    bad = {
        len(rows): "missing_label", len(rows) + 1: "unparseable_label", len(rows) + 2: "no_label",
        len(rows) + 3: "identical_images", len(rows) + 4: "undecodable_image", len(rows) + 5: "truncated_image",
        len(rows) + 6: "empty_prompt", len(rows) + 7: "duplicate_row", len(rows) + 8: "identical_images",
    }
    a, b = good[2]
    rows += [
        ("no label", a, b, float("nan"), float("nan"), True, True, 1),
        ("odd label", a, b, 0.3, 0.7, True, True, 1),
        ("unlabelled", a, b, 0.0, 0.0, False, True, 1),
        ("same image", a, a, 1.0, 0.0, True, True, 1),
        ("garbage", b"\x00not an image at all", b, 1.0, 0.0, True, True, 1),
        ("cut", a[: len(a) - 30], b, 1.0, 0.0, True, True, 1),
        ("   ", a, b, 1.0, 0.0, True, True, 1),
        rows[0],  # an exact repeat of row 0
        ("flagged same", a, b, 1.0, 0.0, True, False, 1),
    ]
    n = len(rows)
    columns = {
        "caption": [r[0] for r in rows], "jpg_0": [r[1] for r in rows], "jpg_1": [r[2] for r in rows],
        "label_0": [r[3] for r in rows], "label_1": [r[4] for r in rows], "has_label": [r[5] for r in rows],
        "are_different": [r[6] for r in rows], "user_id": [r[7] for r in rows],
        "image_0_uid": [f"u{i}a" for i in range(n)], "image_1_uid": [f"u{i}b" for i in range(n)],
        "model_0": ["sdxl"] * n, "model_1": ["sd15"] * n, "ranking_id": list(range(n)),
        "created_at": [dt.datetime(2023, 5, 1)] * n, "num_example_per_prompt": [1] * n,
    }
    columns["created_at"][len(good)] = dt.datetime(2023, 5, 2)  # the tie row differs from the rest in time
    return columns, bad


def write_pickapic(folder: Path, row_group_size: int = 4) -> tuple[Path, dict[int, str]]:
    columns, bad = pickapic_rows()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-00000-of-00001.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path, bad


def write_hpdv2(folder: Path) -> tuple[Path, Path]:
    """train.json and test.json with images under folder/images; returns their paths."""
    img = folder / "images"
    img.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(COLOURS):
        (img / f"{i}.png").write_bytes(image_bytes(colour))
    train = [
        {"prompt": "three", "file_path": ["images/0.png", "images/1.png", "images/2.png"], "human_preference": [0, 1, 0]},
        {"prompt": "escape", "file_path": ["images/0.png", "../../etc/passwd"], "human_preference": [1, 0]},
        {"prompt": "missing", "file_path": ["images/0.png", "images/404.png"], "human_preference": [1, 0]},
        {"prompt": "broken", "file_path": "images/0.png", "human_preference": [1]},
    ]
    test = [{"prompt": "multi", "image_path": ["images/3.png", "images/4.png", "images/5.png"], "rank": [1, 2, 3],
             "raw_annotations": [{"rank": [1, 2, 3], "user_hash": "u1"}, {"rank": [3, 2, 1], "user_hash": "u2"},
                                 {"rank": [1, 1, 2], "user_hash": "u3"}]}]
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "test.json").write_text(json.dumps(test))
    return folder / "train.json", folder / "test.json"


def write_table(folder: Path) -> tuple[Path, Path, dict[int, str]]:
    """The same rows as CSV and JSONL, images as paths under folder/images; bad rows with expected reasons."""
    img = folder / "images"
    img.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(COLOURS[:4]):
        (img / f"{i}.png").write_bytes(image_bytes(colour))
    rows = [
        {"caption": "one", "left": "images/0.png", "right": "images/1.png", "winner": "a", "user": "x"},
        {"caption": "two", "left": "images/1.png", "right": "images/2.png", "winner": "1", "user": "y"},
        {"caption": "tie", "left": "images/2.png", "right": "images/3.png", "winner": "tie", "user": "y"},
        {"caption": "bad", "left": "images/0.png", "right": "images/1.png", "winner": "maybe", "user": "z"},
        {"caption": "url", "left": "https://example.invalid/a.png", "right": "images/1.png", "winner": "a", "user": "z"},
        {"caption": "out", "left": "/etc/hostname", "right": "images/1.png", "winner": "b", "user": "z"},
        {"caption": "gone", "left": "images/9.png", "right": "images/1.png", "winner": "b", "user": "z"},
        {"caption": "empty", "left": "images/0.png", "right": "images/1.png", "winner": "", "user": "z"},
    ]
    bad = {3: "unparseable_label", 4: "url_not_allowed", 5: "path_outside_root", 6: "missing_file", 7: "missing_label"}
    csv = folder / "pairs.csv"
    csv.write_text("caption,left,right,winner,user\n" + "".join(
        ",".join(r[k] for k in ("caption", "left", "right", "winner", "user")) + "\n" for r in rows))
    jsonl = folder / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    return csv, jsonl, bad
