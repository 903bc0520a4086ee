"""Export to a Hugging Face folder, the dataset card, and publish --dry-run, on a curated synthetic world."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from curate.cli import app
from curate.dataset import Dataset
from curate.publish.export import ExportError, parse_size
from curate.publish.parquet import MAX_ROW_GROUP_BYTES, plan_row_groups, row_group_cap
from curated_data import build_curated, build_with_clip, cli

runner = CliRunner()


@pytest.fixture(scope="module")
def curated():
    return build_curated()


def card_header(out: Path) -> dict:
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# ----------------------------------------------------------------------------------- pure helpers
def test_parse_size_follows_hugging_face_units():
    assert parse_size("500MB") == 500_000_000
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("2048") == 2048
    with pytest.raises(ExportError, match="500MB"):
        parse_size("five hundred")


def test_row_groups_are_bounded_by_rows_and_bytes():
    assert plan_row_groups(np.array([10, 10, 10, 10, 10]), max_rows=2, max_bytes=100) == [(0, 2), (2, 4), (4, 5)]
    assert plan_row_groups(np.array([40, 40, 40, 5]), max_rows=10, max_bytes=100) == [(0, 2), (2, 4)]
    # a row larger than the limit stands alone rather than being lost
    assert plan_row_groups(np.array([5, 500, 5]), max_rows=10, max_bytes=100) == [(0, 1), (1, 2), (2, 3)]
    assert plan_row_groups(np.array([], dtype=np.int64), max_rows=10, max_bytes=100) == []


def test_row_groups_stay_under_the_viewer_limit_whatever_the_shard_size():
    assert row_group_cap(150_000) == 37_500  # a quarter of a small shard
    assert row_group_cap(2 * 10**9) == MAX_ROW_GROUP_BYTES == 128 * 2**20  # 2GB shards: still 128 MiB groups
    assert MAX_ROW_GROUP_BYTES < 286 * 2**20


# ------------------------------------------------------------------------------------------ export
def test_exported_parquet_has_statistics_and_a_column_index(curated, tmp_path):
    out = tmp_path / "hf"
    cli("export", str(curated), str(out), "--pickapic-columns")
    meta = pq.ParquetFile(next((out / "data").glob("train-*.parquet"))).metadata
    group = meta.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    for name in ("pair_id", "caption", "label_0", "created_at"):
        stats = columns[name].statistics
        assert stats is not None and stats.has_min_max and stats.min <= stats.max, name
        assert columns[name].has_column_index, name
    assert columns["jpg_0"].statistics is None or not columns["jpg_0"].statistics.has_min_max  # no image copies


def test_export_loads_back_with_datasets(curated, tmp_path):
    from datasets import load_dataset
    from PIL import Image

    out = tmp_path / "hf"
    limit = 150_000
    cli("export", str(curated), str(out), "--max-shard-size", "150kB", "--license", "cc-by-4.0")
    files = sorted(p.name for p in (out / "data").iterdir())
    assert all(re.fullmatch(r"(train|validation)-\d{5}-of-\d{5}\.parquet", f) for f in files), files
    train = [f for f in files if f.startswith("train")]
    assert len(train) > 1 and train[-1].endswith(f"-of-{len(train):05d}.parquet")
    assert all((out / "data" / f).stat().st_size <= limit for f in files)
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind

    loaded = load_dataset(str(out))
    pairs = Dataset(curated).scan("pairs").select("pair_id", "split", "label", "image_a_id").collect()
    for split in ("train", "validation"):
        expected = pairs.filter(pl.col("split") == split)
        assert loaded[split].num_rows == expected.height
        assert loaded[split]["pair_id"] == expected["pair_id"].to_list()  # same rows, in pairs order
        assert loaded[split]["label"] == expected["label"].to_list()
    row = loaded["train"][0]
    assert isinstance(row["image_a"], Image.Image) and row["image_a"].size == (64, 64)
    images = Dataset(curated).read_table("images", ["image_id", "bytes"]).to_pydict()
    raw = dict(zip(images["image_id"], images["bytes"]))
    first = loaded["train"].cast_column("image_a", loaded["train"].features["image_a"].__class__(decode=False))[0]
    assert first["image_a"]["bytes"] == raw[pairs["image_a_id"][0]]  # the very bytes ingested, not re-encoded

    scores = Dataset(curated).scan("pair_scores").collect()
    exported = pl.concat([loaded[s].select_columns(["pair_id", "is_minority", "weight"]).to_polars() for s in loaded])
    joined = exported.join(scores, on="pair_id")
    assert joined.height == scores.height
    assert (joined["is_minority"] == joined["is_minority_right"]).all()
    assert np.allclose(joined["weight"], joined["weight_right"])

    header = card_header(out)
    assert header["license"] == "cc-by-4.0" and header["task_categories"] == ["text-to-image"]
    assert set(header["tags"]) >= {"preference", "dpo", "prefcurate"}
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"},
                                                  {"split": "validation", "path": "data/validation-*"}]
    sizes = {s["name"]: s["num_examples"] for s in header["dataset_info"]["splits"]}
    assert sizes == {s: loaded[s].num_rows for s in loaded}
    assert {"name": "image_a", "dtype": "image"} in header["dataset_info"]["features"]
    card = (out / "README.md").read_text()
    funnel = Dataset(curated).scan("rejects").group_by("reason").len().collect()
    for reason, n in funnel.iter_rows():
        assert f"| rejected: {reason} | {n:,} |" in card  # the funnel names every reject reason with its count
    assert "## How the flags were made" in card and "r q / (r q + (1 - r)(1 - q))" in card
    assert "## Annotators" in card and "Not filtered" in card and "prefcurate filter" in card


def test_export_drops_are_explicit_and_counted_in_pickapic_layout(curated, tmp_path):
    out = tmp_path / "pickapic"
    cli("export", str(curated), str(out), "--pickapic-columns", "--drop-ties", "--drop-flagged")
    pairs = Dataset(curated).scan("pairs").join(Dataset(curated).scan("pair_scores"), on="pair_id").collect()
    ties = int((pairs["label"] == "tie").sum())
    flagged = int((pairs["is_minority"] & (pairs["label"] != "tie")).sum())
    assert ties > 0 and flagged > 0
    table = pq.ParquetDataset(str(out / "data")).read()
    assert table.num_rows == pairs.height - ties - flagged
    assert {"caption", "jpg_0", "jpg_1", "label_0", "label_1"} <= set(table.column_names)
    assert str(table.schema.field("jpg_0").type) == "binary"
    label_0 = np.array(table["label_0"].to_pylist())
    assert set(label_0) <= {0.0, 1.0} and np.allclose(label_0 + np.array(table["label_1"].to_pylist()), 1.0)
    assert not any(table["is_minority"].to_pylist())
    card = (out / "README.md").read_text()
    assert f"tie {ties:,}" in card and f"flagged {flagged:,}" in card

    again = runner.invoke(app, ["export", str(curated), str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    missing = runner.invoke(app, ["export", str(curated), str(tmp_path / "x"), "--drop-filtered"])
    assert missing.exit_code == 2 and "prefcurate filter" in missing.output


def test_publish_dry_run_lists_exactly_the_upload(curated, tmp_path):
    out = tmp_path / "hf"
    cli("export", str(curated), str(out))
    listing = cli("publish", str(out), "--repo-id", "someone/curated", "--dry-run")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    lines = [line.split() for line in listing.splitlines() if line.startswith("  ")]
    assert sorted(line[0] for line in lines) == sorted(p.relative_to(out).as_posix() for p in files)
    assert lines[-1][0] == "README.md"  # the card goes last
    sizes = {line[0]: int(line[1].replace(",", "")) for line in lines}
    assert all(sizes[p.relative_to(out).as_posix()] == p.stat().st_size for p in files)
    total = sum(p.stat().st_size for p in files)
    assert f"total: {len(files)} files, {total:,} B" in listing

    offline = runner.invoke(app, ["publish", str(out), "--repo-id", "someone/curated"])  # HF_HUB_OFFLINE=1 in tests
    assert offline.exit_code == 2 and "HF_HUB_OFFLINE" in offline.output and "--dry-run" in offline.output
    not_export = runner.invoke(app, ["publish", str(tmp_path), "--repo-id", "someone/curated", "--dry-run"])
    assert not_export.exit_code == 2 and "prefcurate export" in not_export.output


def test_export_carries_clip_scores_and_filters(tmp_path):
    ds_dir = build_with_clip()
    from datasets import load_dataset

    out = tmp_path / "hf"
    cli("export", str(ds_dir), str(out), "--drop-filtered")
    filters = Dataset(ds_dir).scan("filters").collect()
    removed = int((~filters["keep"]).sum())
    loaded = load_dataset(str(out))
    assert sum(loaded[s].num_rows for s in loaded) == filters.height - removed
    assert all(loaded["train"]["filter_keep"])
    clip = Dataset(ds_dir).scan("clip_scores").collect()
    row = loaded["train"][0]
    expected = clip.filter(pl.col("pair_id") == row["pair_id"]).row(0, named=True)
    assert row["clip_score_a"] == pytest.approx(expected["score_a"]) and row["clip_margin"] == pytest.approx(expected["margin"])
    card = (out / "README.md").read_text()
    assert "## How the filters were made" in card and f"filtered {removed:,}" in card
