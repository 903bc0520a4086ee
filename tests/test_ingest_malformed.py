"""Bad input never crashes ingest and nothing bad is accepted silently: each failure found so far,
then properties over every format, every column type and byte-level damage of whole files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from curate import schema as schemas
from curate.cli import app
from curate.dataset import Dataset
from curate.ingest.reasons import Reason
from curate.synth import malformed as mf
from ingest_data import image_bytes

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
GOOD = {"prompt": "q", "image_a": "images/0.png", "image_b": "images/1.png", "label": "a"}


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    for i, colour in enumerate(("red", "green", "blue")):
        (tmp_path / "images" / f"{i}.png").write_bytes(image_bytes(colour))
    return tmp_path


def ingest(path: Path, fmt: str, root: Path | None = None):
    args = ["ingest", str(path), "-f", fmt, "-o", str(path.parent / f"ds-{path.name}")]
    result = runner.invoke(app, args + (["--image-root", str(root)] if root else []))
    assert "Traceback" not in result.output and result.exit_code in (0, 2), result.output  # 1: an unhandled exception
    return result, Dataset(path.parent / f"ds-{path.name}")


def outcome(path: Path, fmt: str, root: Path | None = None) -> tuple[dict, list[dict]]:
    """{(row, item): reason} of the rejects, and the accepted pairs, of a run that must succeed."""
    result, ds = ingest(path, fmt, root)
    assert result.exit_code == 0, result.output
    rejects = {(r["source_row"], r["source_item"]): r["reason"] for r in ds.read_table("rejects").to_pylist()} \
        if ds.has("rejects") else {}
    return rejects, ds.read_table("pairs").to_pylist() if ds.has("pairs") else []


def refusal(path: Path, fmt: str, root: Path | None = None) -> str:
    result, _ = ingest(path, fmt, root)
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
    assert str(path) in result.output
    return result.output


def jsonl(path: Path, lines: list[str]) -> Path:
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass"))
    return path


@pytest.mark.parametrize("rows, expected", [
    ([{**GOOD, "image_a": "images/0\x00.png"}], {1: "bad_type"}),                               # NUL in a path
    ([{**GOOD, "label": None, "votes_a": 3000000000, "votes_b": 1},
      {**GOOD, "label": None, "votes_a": 99999999999999999999, "votes_b": 1}], {1: "out_of_range", 2: "out_of_range"}),
    ([{**GOOD, "created_at": 1e300}, {**GOOD, "created_at": 1.5e12}], {1: "out_of_range", 2: "out_of_range"}),
    ([{**GOOD, "user_hash": [1, 2]}, {**GOOD, "user_hash": {"a": 1}}, {**GOOD, "user_hash": True},
      {**GOOD, "user_hash": float("inf")}], {1: "bad_type", 2: "bad_type", 3: "bad_type", 4: "bad_type"}),
    ([{**GOOD, "image_a": "file:///etc/passwd"}, {**GOOD, "image_a": "ftp://x/y.png"},
      {**GOOD, "image_a": "HTTP://example.invalid/y.png"}], {1: "unsupported_url", 2: "unsupported_url", 3: "url_not_allowed"}),
])
def test_jsonl_rows_that_crashed_or_slipped_through_get_their_reason(folder, rows, expected):
    if "votes_a" in rows[0]:  # a votes file: the good row carries counts too
        rows = [{**GOOD, "label": None, "votes_a": 2, "votes_b": 1}] + rows
        rows = [{k: v for k, v in r.items() if k != "label"} for r in rows]
    else:
        rows = [GOOD] + rows
    rejects, pairs = outcome(jsonl(folder / "t.jsonl", [json.dumps(r) for r in rows]), "table", folder)
    assert rejects == {(row, 0): reason for row, reason in expected.items()} and len(pairs) == 1


def test_json_lines_a_parser_cannot_hold_are_rejected(folder):
    good = json.dumps(GOOD)
    lines = [good, good.replace('"q"', '"p\\ud800x"'), '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}",
             good.replace('"a"}', '"a", "created_at": NaN}'), '{"prompt": ' + "[" * 70 + "]" * 70 + "}"]
    rejects, pairs = outcome(jsonl(folder / "t.jsonl", lines), "table", folder)
    assert rejects == {(1, 0): "bad_type", (2, 0): "bad_type", (3, 0): "bad_type", (4, 0): "bad_type"}
    assert [p["annotator_id"] for p in pairs] == [None]


def test_a_csv_row_with_extra_fields_is_rejected(folder):
    path = folder / "t.csv"
    path.write_text("prompt,image_a,image_b,label\nq,images/0.png,images/1.png,a\nq,images/0.png,images/2.png,a,x,y\n")
    rejects, pairs = outcome(path, "table", folder)
    assert rejects == {(1, 0): "bad_type"} and len(pairs) == 1


def test_text_that_is_not_utf8_stops_the_run_naming_line_byte_and_fix(folder):
    latin = folder / "latin.csv"
    latin.write_bytes("prompt,image_a,image_b,label\ncaf\u00e9,images/0.png,images/1.png,a\n".encode("latin-1"))
    assert "line 2, byte 32: 0xe9 is not UTF-8" in refusal(latin, "table", folder)
    lines = [json.dumps({**GOOD, "prompt": f"p{i}"}).encode() for i in range(1200)]
    lines[1100] = lines[1100].replace(b'"p1100"', b'"p\xff"')
    late = folder / "late.jsonl"
    late.write_bytes(b"\n".join(lines) + b"\n")
    message = refusal(late, "table", folder)
    assert "line 1101, byte" in message and "iconv -f latin1 -t utf-8" in message


def test_hpdv2_records_that_crashed_or_slipped_through(folder):
    pair = ["images/0.png", "images/1.png"]
    records = [
        {"prompt": "ok", "image_path": pair, "raw_annotations": [{"rank": [1, 2], "user_hash": 7}]},
        {"prompt": "x", "image_path": pair, "raw_annotations": "abc"},
        {"prompt": "x", "image_path": pair, "raw_annotations": {"rank": [1, 2]}},
        {"prompt": "x", "image_path": pair, "raw_annotations": [None]},
        {"prompt": "x", "image_path": pair, "raw_annotations": [{"rank": [1, 2], "user_hash": [1]}]},
        {"prompt": "x", "file_path": pair, "human_preference": [float("nan"), 1]},
        {"prompt": "x", "image_path": pair, "rank": [float("nan"), 1]},
    ]
    text = json.dumps(records)
    text = text[:-1] + ', {"deep": ' + "[" * 100_000 + "]" * 100_000 + "}]"
    path = folder / "test.json"
    path.write_text(text)
    rejects, pairs = outcome(path, "hpdv2")
    assert rejects == {(1, 0): "bad_type", (2, 0): "bad_type", (3, 0): "bad_type", (4, 0): "bad_type",
                       (5, 0): "missing_label", (6, 0): "missing_label", (7, 0): "bad_type"}
    assert [(p["annotator_id"], p["label"]) for p in pairs] == [("7", "a")]


def test_damaged_hpdv2_json_is_one_line_naming_the_place(folder):
    path = folder / "train.json"
    path.write_text('[{"prompt": "x", "file_path": ["images/0.png", "images/1.png"], "human_preference": [1, 0]},\n {"pro')
    assert "line 2, column" in refusal(path, "hpdv2")


def test_bomb_headers_and_missing_bytes_are_rejected(folder):
    good_a, good_b = image_bytes("red"), image_bytes("green", "JPEG")
    bombs = [mf.png_header(100_000, 100_000), mf.jpeg_header(65_500, 65_500), mf.png_header(65_500, 65_500)]
    cols = {"caption": ["p"] * 6, "jpg_0": [good_a, bombs[0], bombs[1], good_a, None, good_a],
            "jpg_1": [good_b, good_b, good_b, bombs[2], good_b, None], "label_0": [1.0] * 6,
            "label_1": [0.0] * 6, "image_0_uid": [f"a{i}" for i in range(6)], "image_1_uid": [f"b{i}" for i in range(6)]}
    path = folder / "train-0.parquet"
    pq.write_table(pa.table(cols), path)
    rejects, pairs = outcome(path, "pickapic")
    assert rejects == {(1, 0): "image_too_large", (2, 0): "image_too_large", (3, 0): "image_too_large",
                       (4, 0): "missing_image", (5, 0): "missing_image"} and len(pairs) == 1


def test_a_parquet_file_damaged_in_its_middle_names_the_row_group(folder):
    n = 2000
    cols = {"caption": [f"p{i}" for i in range(n)], "jpg_0": [image_bytes("red")] * n,
            "jpg_1": [image_bytes("blue")] * n, "label_0": [1.0] * n, "label_1": [0.0] * n}
    path = folder / "train-1.parquet"
    pq.write_table(pa.table(cols), path, row_group_size=500)
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 200] = b"\xaa" * 200
    path.write_bytes(bytes(data))
    message = refusal(path, "pickapic")
    assert "row group" in message and "from byte" in message and "get it again" in message


def test_every_reason_is_declared_and_documented():
    declared = next(f for f in schemas.load("rejects").fields if f["name"] == "reason")["allowed"]
    assert sorted(declared) == sorted(r.value for r in Reason)
    readme = (ROOT / "README.md").read_text()
    assert [r.value for r in Reason if f"`{r.value}`" not in readme] == []


def test_value_checks_by_hand():
    import datetime as dt

    from curate.ingest.columns import identifier, label_from_votes, timestamp_value
    from curate.ingest.images import MAX_PIXELS, inspect_image
    from curate.ingest.reasons import Rejected
    from curate.ingest.textfiles import structure_problem

    assert label_from_votes("3", 2.0) == ("a", 3, 2) and label_from_votes(2**31 - 1, 2**31 - 1)[0] == "tie"
    for votes, reason in (((2**31, 0), "out_of_range"), (("1e20", 1), "out_of_range"), ((1.5, 1), "bad_type"),
                          ((True, 1), "bad_type"), ((float("nan"), 1), "missing_label"), ((float("inf"), 1), "bad_type")):
        with pytest.raises(Rejected) as caught:
            label_from_votes(*votes)
        assert caught.value.reason.value == reason, votes
    assert timestamp_value(86_400.5) == dt.datetime(1970, 1, 2, 0, 0, 0, 500_000, tzinfo=dt.timezone.utc)
    assert timestamp_value("2023-05-01") == dt.datetime(2023, 5, 1, tzinfo=dt.timezone.utc)
    for value, reason in ((1e300, "out_of_range"), (float("nan"), "bad_type"), (True, "bad_type"), ([1], "bad_type")):
        with pytest.raises(Rejected) as caught:
            timestamp_value(value)
        assert caught.value.reason.value == reason, value
    assert (identifier(7, "a"), identifier(float("nan"), "a"), identifier("", "a")) == ("7", None, None)
    assert structure_problem({"a": [[1]]}, max_depth=3) is None
    assert structure_problem({"a": [[[1]]]}, max_depth=3) == "nests deeper than 3 levels"
    assert structure_problem({"prompt": "x\ud800"}) == "'prompt' holds '\\ud800', a lone surrogate (not valid Unicode)"
    side = int(MAX_PIXELS ** 0.5)  # 9459 x 9459 = 89,472,681: just inside the limit
    assert inspect_image(mf.png_header(side, side)) == ("png", side, side)
    with pytest.raises(Rejected, match="9460x9460 pixels"):
        inspect_image(mf.png_header(side + 1, side + 1))


# ------------------------------------------------------------------------------------- properties
def _accounted(result: dict) -> None:
    if "refused" in result:
        assert result["one_line"], result["refused"]
    else:
        assert result["accounted"], result


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(mf.FUZZ_FORMATS), seed=st.integers(0, 2**32 - 1), damaged=st.booleans())
def test_malformed_files_of_every_format_are_refused_cleanly_or_fully_accounted(tmp_path_factory, fmt, seed, damaged):
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(seed)
    path, ingest_format, _ = mf.write_fuzz_file(folder, fmt, 12, rng)
    if damaged:
        path.write_bytes(mf.corrupt_bytes(path.read_bytes(), rng))
    _accounted(mf.ingest_outcome(path, ingest_format, folder / "ds", folder))


_cell = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=6),
                  st.sampled_from(["a", "b", "tie", "images/0.png", "images/1.png", "\ud800", "file:///x", "1", "0.5"]),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({k: _cell for k in ("prompt", "image_a", "image_b", "label", "annotator",
                                                                "created_at", "votes_a")}), min_size=1, max_size=8),
       suffix=st.sampled_from([".jsonl", ".csv", ".parquet"]))
def test_any_cell_of_any_type_in_a_table_is_accepted_or_rejected(tmp_path_factory, rows, suffix):
    folder = tmp_path_factory.mktemp("cells")
    mf.fuzz_images(folder)
    path = folder / f"rows{suffix}"
    if suffix == ".jsonl":
        jsonl(path, [json.dumps(r) for r in rows])
    elif suffix == ".csv":
        import csv

        with open(path, "w", newline="", encoding="utf-8", errors="replace") as f:
            writer = csv.writer(f)
            writer.writerow(rows[0])
            writer.writerows([["" if v is None else str(v) for v in r.values()] for r in rows])
    else:
        text = {k: pa.array([None if r[k] is None else str(r[k]).encode("utf-8", "replace").decode() for r in rows],
                            pa.string()) for k in rows[0]}
        pq.write_table(pa.table(text), path)
    _accounted(mf.ingest_outcome(path, "table", folder / "ds", folder))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(mf.FUZZ_FORMATS), at=st.floats(0, 1), junk=st.binary(min_size=1, max_size=16),
       cut=st.booleans())
@example(fmt="table_parquet", at=0.005, junk=b"\x00", cut=False)  # a text cell of invalid UTF-8 (parquet does not check)
def test_bytes_spliced_into_or_cut_from_a_file_never_crash(tmp_path_factory, fmt, at, junk, cut):
    folder = tmp_path_factory.mktemp("bytes")
    path, ingest_format, _ = mf.write_fuzz_file(folder, fmt, 8, np.random.default_rng(0))
    data = path.read_bytes()
    i = int(at * len(data))
    path.write_bytes(data[:i] if cut else data[:i] + junk + data[i + len(junk):])
    _accounted(mf.ingest_outcome(path, ingest_format, folder / "ds", folder))


def test_an_input_that_cannot_be_opened_is_one_line(tmp_path):
    from curate.ingest.pickapic import SourceError
    from curate.ingest.stage import IngestStage
    from curate.runner import run_stage

    odd = tmp_path / "pairs.csv"
    odd.mkdir()  # what open() refuses, as an unreadable file would be for a user without the permission
    with pytest.raises(SourceError, match=r"pairs.csv: cannot be read \(Is a directory\)"):
        run_stage(IngestStage(files=[str(odd)], format="table"), tmp_path / "ds")
