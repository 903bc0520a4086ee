"""Ingest on real files: every format, every reject reason, counts that reconcile, resume, executors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from curate.cli import app
from curate.dataset import Dataset
from curate.ids import pair_id
from curate.ingest.stage import IngestStage
from curate.runner import FingerprintMismatch, LocalExecutor, run_stage
from ingest_data import image_bytes, write_hpdv2, write_pickapic, write_table

runner = CliRunner()


def table_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "tables").rglob("*.arrow"))}


def ingest_cli(*args: str) -> None:
    result = runner.invoke(app, ["ingest", *args])
    assert result.exit_code == 0, result.output


def reasons_by_row(ds: Dataset) -> dict[tuple[int, int], str]:
    rejects = ds.read_table("rejects").to_pylist()
    return {(r["source_row"], r["source_item"]): r["reason"] for r in rejects}


def test_pickapic_every_reason_and_reconciles(tmp_path):
    path, bad = write_pickapic(tmp_path / "raw")
    ingest_cli(str(path), "--format", "pickapic", "--out", str(tmp_path / "ds"), "--shard-rows", "4")
    ds = Dataset(tmp_path / "ds")
    total = pq.ParquetFile(path).metadata.num_rows
    pairs, rejects = ds.read_table("pairs"), ds.read_table("rejects")
    assert pairs.num_rows + rejects.num_rows == total
    assert reasons_by_row(ds) == {(row, 0): reason for row, reason in bad.items()}
    assert sorted(pairs["source_row"].to_pylist()) == [r for r in range(total) if r not in bad]
    labels = pairs["label"].to_pylist()
    assert labels.count("tie") == 1 and set(labels) == {"a", "b", "tie"}
    # stable ids: derived from source and row, never from position in the output
    row0 = pairs.filter(pa.compute.equal(pairs["source_row"], 0)).to_pylist()[0]
    assert row0["pair_id"] == pair_id("pickapic:train-00000-of-00001.parquet", 0, 0)
    assert row0["annotator_id"] == "0" and row0["model_a"] == "sdxl"
    # images: each distinct image once, formats sniffed from the bytes (the jpg_* columns hold PNGs too)
    images = ds.read_table("images")
    assert images.num_rows == len(set(images["image_id"].to_pylist()))
    assert set(images["format"].to_pylist()) == {"png", "jpeg"}
    referenced = set(pairs["image_a_id"].to_pylist()) | set(pairs["image_b_id"].to_pylist())
    assert referenced == set(images["image_id"].to_pylist())
    # the rejected row is kept, bytes replaced by their length
    dup = [r for r in rejects.to_pylist() if r["reason"] == "duplicate_row"][0]
    assert "pair " + row0["pair_id"] in dup["message"]
    garbage = [r for r in rejects.to_pylist() if r["reason"] == "undecodable_image"][0]
    assert json.loads(garbage["row"])["jpg_0"] == "<20 bytes>"


def test_manifest_records_schemas_counts_and_checksums(tmp_path):
    path, _ = write_pickapic(tmp_path / "raw")
    ingest_cli(str(path), "-f", "pickapic", "-o", str(tmp_path / "ds"))
    manifest = json.loads((tmp_path / "ds" / "runs" / "ingest" / "manifest.json").read_text())
    assert manifest["schemas"]["pairs"] == {"name": "pairs", "version": 2}  # v2: annotator_trust
    ds = Dataset(tmp_path / "ds")
    read = sum(pa.ipc.open_file(str(p)).read_all().num_rows for p in ds.shards("pairs"))
    assert manifest["tables"]["pairs"]["rows"] == read == ds.num_rows("pairs")  # num_rows: the manifests' counts
    import hashlib

    for shard in manifest["tables"]["images"]["shards"]:
        data = (tmp_path / "ds" / "tables" / "images" / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]


def test_hpdv2_expands_rankings_per_annotator(tmp_path):
    train, test = write_hpdv2(tmp_path / "hpd")
    ingest_cli(str(train), str(test), "-f", "hpdv2", "-o", str(tmp_path / "ds"))
    ds = Dataset(tmp_path / "ds")
    pairs = ds.read_table("pairs").to_pylist()
    test_pairs = [p for p in pairs if p["source"] == "hpdv2:test.json"]
    # 3 annotators x C(3,2) = 9 pairs, numbered annotation-major
    assert [(p["source_item"], p["annotator_id"], p["label"]) for p in sorted(test_pairs, key=lambda p: p["source_item"])] == [
        (0, "u1", "a"), (1, "u1", "a"), (2, "u1", "a"), (3, "u2", "b"), (4, "u2", "b"), (5, "u2", "b"),
        (6, "u3", "tie"), (7, "u3", "a"), (8, "u3", "a")]
    assert {p["split"] for p in test_pairs} == {"test"}
    train_pairs = sorted((p["source_item"], p["label"]) for p in pairs if p["source"] == "hpdv2:train.json")
    assert train_pairs == [(0, "b"), (1, "tie"), (2, "a")]  # image 1 was chosen of three
    reasons = reasons_by_row(ds)
    assert reasons == {(1, 0): "path_outside_root", (2, 0): "missing_file", (3, 0): "bad_type"}


def test_table_csv_and_jsonl_with_mapping(tmp_path):
    csv, jsonl, bad = write_table(tmp_path / "t")
    for path in (csv, jsonl):
        out = tmp_path / f"ds-{path.suffix[1:]}"
        ingest_cli(str(path), "-f", "table", "-o", str(out), "--image-root", str(tmp_path / "t"),
                   "--map", "prompt=caption", "--map", "image_a=left", "--map", "image_b=right", "--map", "label=winner")
        ds = Dataset(out)
        expected = {(row, 0): reason for row, reason in bad.items()}
        if path == jsonl:
            expected[(8, 0)] = "bad_type"  # the trailing line that is not JSON
        assert reasons_by_row(ds) == expected
        pairs = ds.read_table("pairs").to_pylist()
        assert [(p["label"], p["annotator_id"]) for p in pairs] == [("a", "x"), ("b", "y"), ("tie", "y")]


def test_table_mapping_errors_name_the_fix(tmp_path):
    csv, _, _ = write_table(tmp_path / "t")
    odd = tmp_path / "odd.csv"
    odd.write_text("words,l,r,w\nhello,images/0.png,images/1.png,a\n")
    result = runner.invoke(app, ["ingest", str(odd), "-f", "table", "-o", str(tmp_path / "ds")])
    assert result.exit_code == 2
    assert "no column found for ['prompt', 'image_a', 'image_b', 'label']" in result.output.replace("\n", "")
    assert "--map prompt=COLUMN" in result.output.replace("\n", "")
    result = runner.invoke(app, ["ingest", str(csv), "-f", "pickapic", "-o", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "--format" in result.output  # a CSV is not a Pick-a-Pic parquet
    result = runner.invoke(app, ["ingest", str(csv), "-f", "nope", "-o", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "'pickapic', 'hpdv2', 'hpdv3', 'rapidata', 'table'" in result.output  # an Enum now


def test_unreadable_parquet_is_fatal_with_the_file_named(tmp_path):
    bad = tmp_path / "train-0.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    result = runner.invoke(app, ["ingest", str(bad), "-f", "pickapic", "-o", str(tmp_path / "ds")])
    assert result.exit_code == 2 and str(bad) in result.output.replace("\n", "")


def _stage(path: Path, **kw) -> IngestStage:
    return IngestStage(files=[str(path)], format="pickapic", shard_rows=4, **kw)


def test_interrupted_run_resumes_to_the_same_bytes(tmp_path):
    path, _ = write_pickapic(tmp_path / "raw")
    run_stage(_stage(path), tmp_path / "full")

    class Crash(LocalExecutor):
        def map(self, fn, items, desc):
            fn(items[0])
            fn(items[1])
            raise KeyboardInterrupt  # the run dies after two shards

    with pytest.raises(KeyboardInterrupt):
        run_stage(_stage(path), tmp_path / "resumed", Crash())
    assert not (tmp_path / "resumed" / "runs" / "ingest" / "manifest.json").exists()
    report = run_stage(_stage(path), tmp_path / "resumed", resume=True)
    assert report.skipped_shards == 2
    assert table_files(tmp_path / "resumed") == table_files(tmp_path / "full")


def test_resume_refuses_a_changed_config(tmp_path):
    path, _ = write_pickapic(tmp_path / "raw")
    run_stage(_stage(path), tmp_path / "ds")
    with pytest.raises(FingerprintMismatch, match="without --resume"):
        run_stage(_stage(path, split="validation"), tmp_path / "ds", resume=True)


def test_dask_output_is_byte_identical_to_in_process(tmp_path):
    path, _ = write_pickapic(tmp_path / "raw")
    ingest_cli(str(path), "-f", "pickapic", "-o", str(tmp_path / "local"), "--shard-rows", "3")
    ingest_cli(str(path), "-f", "pickapic", "-o", str(tmp_path / "dask"), "--shard-rows", "3",
               "--executor", "dask", "--workers", "2")
    assert table_files(tmp_path / "dask") == table_files(tmp_path / "local")


def test_cli_as_a_subprocess(tmp_path):
    path, _ = write_pickapic(tmp_path / "raw")
    done = subprocess.run([sys.executable, "-m", "curate.cli", "ingest", str(path), "-f", "pickapic", "-o",
                           str(tmp_path / "ds")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "reconciles" in done.stdout and "yes" in done.stdout


# ---------------------------------------------------------------- property: nothing is ever lost
_IMAGES = [image_bytes(c) for c in ("red", "green", "blue")]
_label = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(allow_nan=True), st.none())
_image = st.one_of(st.sampled_from(_IMAGES), st.binary(max_size=40), st.sampled_from([_IMAGES[0][:-9]]))
_row = st.tuples(st.one_of(st.text(max_size=8), st.none()), _image, _image, _label, _label,
                 st.one_of(st.booleans(), st.none()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_row, min_size=1, max_size=12))
def test_malformed_rows_always_reconcile(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("prop")
    columns = {"caption": [r[0] for r in rows], "jpg_0": [r[1] for r in rows], "jpg_1": [r[2] for r in rows],
               "label_0": pa.array([r[3] for r in rows], pa.float64()),
               "label_1": pa.array([r[4] for r in rows], pa.float64()), "has_label": [r[5] for r in rows]}
    path = folder / "train.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=5)
    report = run_stage(IngestStage(files=[str(path)], format="pickapic", shard_rows=5), folder / "ds")
    ds = Dataset(folder / "ds")
    pairs, rejects = ds.read_table("pairs"), ds.read_table("rejects")
    assert pairs.num_rows + rejects.num_rows == len(rows)
    seen = sorted(pairs["source_row"].to_pylist() + rejects["source_row"].to_pylist())
    assert seen == list(range(len(rows)))  # each input row exactly once
    assert report.stats["items"] == report.stats["accepted"] + sum(
        v for k, v in report.stats.items() if k.startswith("rejected:"))


def test_a_hub_dataset_id_offline_says_so_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["ingest", "yuvalkirstain/pickapic_v2", "-f", "pickapic", "-o", str(tmp_path / "ds")])
    assert result.exit_code == 2
    assert "HF_HUB_OFFLINE is set" in result.output and "pass their folder" in result.output.replace("\n", " ")
