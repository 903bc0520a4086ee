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


HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _vote(voted_for: str, score=None, **extra) -> dict:
    details = {"country": "DE", "language": "de"}
    if score is not None:
        details["userScore"] = score
    return {"votedFor": voted_for, "userDetails": details, **extra}


def write_rapidata(folder: Path) -> tuple[Path, dict, dict]:
    """A Rapidata-layout parquet; returns it, {(row, item): (label, annotator, trust)} of the pairs it must
    give and {(row, item): reason} of its rejects. Voters have no id unless a record carries userId."""
    one, two = image_bytes("red"), image_bytes("blue", "JPEG")
    image1, image2 = {"bytes": one, "path": "flux_1.png"}, {"bytes": two, "path": "dalle_1.jpg"}
    nested = {"votedFor": "dalle_1.jpg", "userDetails": {"country": "IN", "userScores": {"global": 0.25}}}
    rows = [
        ("three votes", [_vote("flux_1.png", 0.9), nested, _vote("flux_1.png", 0.4, userId="u7")], 2, 1),
        ("counts disagree", [_vote("flux_1.png"), _vote("dalle_1.jpg")], 5, 5),
        ("not json", "[{'votedFor':", 1, 0),
        ("unknown image", [_vote("image2", 0.1), _vote("nobody.png", 0.2)], 0, 1),
        ("counts only", None, 3, 1),
    ]
    table = pa.table({
        "prompt": [r[0] for r in rows], "image1": pa.array([image1] * len(rows), HF_IMAGE),
        "image2": pa.array([image2] * len(rows), HF_IMAGE),
        "votes_image1": pa.array([r[2] for r in rows], pa.int64()), "votes_image2": pa.array([r[3] for r in rows], pa.int64()),
        "model1": ["flux"] * len(rows), "model2": ["dalle"] * len(rows),
        "detailed_results": [r[1] if isinstance(r[1], str) or r[1] is None else json.dumps(r[1]) for r in rows],
    })
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-00000-of-00001.parquet"
    pq.write_table(table, path)
    anon = "rapidata:train-00000-of-00001.parquet#{}:{}".format
    pairs = {(0, 0): ("a", anon(0, 0), 0.9), (0, 1): ("b", anon(0, 1), 0.25), (0, 2): ("a", "u7", 0.4),
             (3, 0): ("b", anon(3, 0), 0.1), (4, 0): ("a", None, None)}
    return path, pairs, {(1, 0): "unparseable_label", (2, 0): "bad_type", (3, 1): "unparseable_label"}


def write_hpdv3(folder: Path) -> tuple[Path, dict[int, str]]:
    """HPDv3 train.json (path1 preferred) with images beside it; returns it and {row: reason} of its rejects."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(COLOURS[:3]):
        (folder / "images" / f"{i}.png").write_bytes(image_bytes(colour))
    records = [
        {"prompt": "p0", "path1": "images/0.png", "path2": "images/1.png", "model1": "m1", "model2": "m2",
         "confidence": 0.8, "choice_dist": [8, 2]},
        {"prompt": "p1", "path1": "images/2.png", "path2": "images/0.png", "model1": "m2", "model2": "m1"},
        {"prompt": "p2", "path1": "images/9.png", "path2": "images/0.png"},
        {"prompt": "p3", "path1": ["images/0.png"], "path2": "images/1.png"},
    ]
    (folder / "train.json").write_text(json.dumps(records))
    return folder / "train.json", {2: "missing_file", 3: "bad_type"}
