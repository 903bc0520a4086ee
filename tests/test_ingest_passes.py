"""Ingest's later passes: repeated judgements and images across shards, first occurrence in input order
winning, counts that describe the final tables, and every way a run can stop and start again."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.dataset import Dataset, read_shard
from curate.ids import pair_id
from curate.ingest.buckets import bucket_count, bucketed, images_key, pairs_key
from curate.ingest.stage import IngestStage
from curate.runner import LocalExecutor, is_complete, run_stage
from curate.verify import verify_dataset
from ingest_data import COLOURS, image_bytes

SOURCE = "pickapic:train-repeats.parquet"


def write_repeats(folder: Path, rows: int = 80) -> tuple[Path, list[tuple]]:
    """A Pick-a-Pic file drawn from 4 prompts and 5 images: many judgements and images repeat, across
    any sharding. Returns the path and each row's judgement (prompt, image a, image b, label)."""
    rng, images = random.Random(0), [image_bytes(c) for c in COLOURS[:5]]
    drawn = []
    for _ in range(rows):
        a, b = rng.sample(range(5), 2)
        drawn.append((f"p{rng.randrange(4)}", a, b, float(rng.randrange(2))))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-repeats.parquet"
    pq.write_table(pa.table({"caption": [d[0] for d in drawn], "jpg_0": [images[d[1]] for d in drawn],
                             "jpg_1": [images[d[2]] for d in drawn], "label_0": [d[3] for d in drawn],
                             "label_1": [1 - d[3] for d in drawn], "has_label": [True] * rows}), path, row_group_size=7)
    return path, drawn


def tables_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "tables").rglob("*.arrow"))}


def manifest(root: Path, stage: str = "ingest") -> dict:
    return json.loads((root / "runs" / stage / "manifest.json").read_text())


def stage(path: Path, shard_rows: int = 5) -> IngestStage:
    return IngestStage(files=[str(path)], format="pickapic", shard_rows=shard_rows)


def assert_clean(root: Path) -> None:
    checks, problems = verify_dataset(root)
    assert problems == [] and all(not c.problems for c in checks), (problems, [c.problems for c in checks])


@pytest.mark.parametrize("shard_rows", [5, 13, 1000])
def test_the_first_occurrence_in_input_order_wins(tmp_path, shard_rows):
    path, drawn = write_repeats(tmp_path / "raw")
    report = run_stage(stage(path, shard_rows), tmp_path / "ds")
    ds = Dataset(tmp_path / "ds")

    first: dict[tuple, int] = {}
    for row, judgement in enumerate(drawn):
        first.setdefault(judgement, row)
    kept = sorted(first.values())
    pairs, rejects = ds.read_table("pairs"), ds.read_table("rejects")
    assert sorted(pairs["source_row"].to_pylist()) == kept
    expected = {row: pair_id(SOURCE, first[j], 0) for row, j in enumerate(drawn) if first[j] != row}
    assert len(expected) > 20  # the input does repeat itself
    got = {r["source_row"]: r["message"] for r in rejects.to_pylist()}
    assert set(got) == set(expected) and set(rejects["reason"].to_pylist()) == {"duplicate_row"}
    assert all(f"pair {expected[row]} earlier" in message for row, message in got.items())

    # each image once, in the shard of the first pair (input order) that shows it
    folder = ds.table_dir("images")
    stored = {i: f.name for f in sorted(folder.glob("*.arrow")) for i in read_shard(f)["image_id"].to_pylist()}
    shown: dict[str, str] = {}
    for f in sorted(ds.table_dir("pairs").glob("*.arrow")):
        for p in sorted(read_shard(f).to_pylist(), key=lambda p: p["source_row"]):
            for image in (p["image_a_id"], p["image_b_id"]):
                shown.setdefault(image, f.name)
    assert stored == shown and len(stored) == 5

    # the counts describe the final tables, in the report and in the manifest the CLI reads back
    for stats, tables in ((report.stats, report.tables), (manifest(ds.root)["stats"], manifest(ds.root)["tables"])):
        assert stats["accepted"] == len(kept) == tables["pairs"]["rows"]
        assert stats["rejected:duplicate_row"] == len(expected) == tables["rejects"]["rows"]
        assert stats["items"] == stats["accepted"] + stats["rejected:duplicate_row"]
    assert [p.stage for p in report.passes] == ["ingest_duplicates", "ingest_rewrite"]
    assert ds.num_rows("duplicate_pairs") == len(expected)
    assert_clean(ds.root)


class Watching(LocalExecutor):
    """Runs every task in process, keeping what each map returned to the driver."""

    def __init__(self):
        self.seen: dict[str, list] = {}

    def map(self, fn, items, desc):
        results = super().map(fn, items, desc)
        self.seen[desc.split(" ")[0]] = results
        return results


def test_the_merge_is_planned_as_tasks_and_no_keys_reach_the_driver(tmp_path):
    path, _ = write_repeats(tmp_path / "raw")
    watching = Watching()
    run_stage(stage(path), tmp_path / "ds", watching)
    assert len(watching.seen["ingest"]) == 12 and all(r.partial is None for r in watching.seen["ingest"])
    assert len(watching.seen["ingest_duplicates"]) == bucket_count(12) == 16
    rewritten = watching.seen["ingest_rewrite"]
    assert 0 < len(rewritten) < 12  # only the shards with something to remove
    assert not any((tmp_path / "ds" / "runs" / "ingest_rewrite").glob("*.partial.npz"))


class CrashInRewrite(LocalExecutor):
    """Runs the passes before ``stage`` whole, then dies after ``tasks`` tasks of ``stage``."""

    def __init__(self, tasks: int, stage: str = "ingest_rewrite"):
        self.tasks, self.stage = tasks, stage

    def map(self, fn, items, desc):
        if not desc.startswith(f"{self.stage} "):
            return super().map(fn, items, desc)
        for item in items[: self.tasks]:
            fn(item)
        raise KeyboardInterrupt


@pytest.fixture
def full(tmp_path):
    path, _ = write_repeats(tmp_path / "raw")
    run_stage(stage(path), tmp_path / "full")
    return path, tmp_path / "full"


def test_an_interrupted_rewrite_resumes_to_the_same_bytes(tmp_path, full):
    path, done = full
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage(path), tmp_path / "ds", CrashInRewrite(2))
    # half rewritten: ingest is not complete, and verify says so rather than passing the files
    assert not is_complete(stage(path), Dataset(tmp_path / "ds"))
    checks, _ = verify_dataset(tmp_path / "ds")
    problems = [p for c in checks for p in c.problems]
    assert any("'ingest' that never committed" in p for p in problems), problems
    report = run_stage(stage(path), tmp_path / "ds", resume=True)
    assert report.passes[1].skipped_shards == 2
    assert tables_bytes(tmp_path / "ds") == tables_bytes(done)
    assert manifest(tmp_path / "ds")["stats"] == manifest(done)["stats"] == report.stats
    assert_clean(tmp_path / "ds")


def test_an_interrupted_duplicates_pass_resumes_to_the_same_bytes(tmp_path, full):
    path, done = full
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage(path), tmp_path / "ds", CrashInRewrite(5, "ingest_duplicates"))
    assert is_complete(stage(path), Dataset(tmp_path / "ds"))  # nothing of ingest's was replaced yet
    report = run_stage(stage(path), tmp_path / "ds", resume=True)
    assert report.skipped_shards == 12 and report.passes[0].skipped_shards == 5
    assert tables_bytes(tmp_path / "ds") == tables_bytes(done)
    assert manifest(tmp_path / "ds")["stats"] == manifest(done)["stats"] == report.stats
    assert_clean(tmp_path / "ds")


def test_a_pipeline_rerun_after_the_crash_finishes_it(tmp_path, full):
    path, done = full
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage(path), tmp_path / "ds", CrashInRewrite(3))
    report = run_stage(stage(path), tmp_path / "ds", skip_complete=True)
    assert not report.already_complete  # ingest was withdrawn: done again, and its later passes with it
    assert tables_bytes(tmp_path / "ds") == tables_bytes(done)
    assert manifest(tmp_path / "ds")["stats"] == manifest(done)["stats"]
    assert_clean(tmp_path / "ds")


def test_a_crash_between_a_rename_and_its_record_is_put_right(tmp_path, full):
    path, done = full
    ds = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage(path), ds, CrashInRewrite(0))
    records = {p.name: p.read_bytes() for p in (ds / "runs" / "ingest" / "shards").glob("*.json")}
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage(path), ds, CrashInRewrite(1), resume=True)
    # as if the first task died after renaming its files over ingest's, before any record was written
    task = ds / "runs" / "ingest_rewrite" / "shards" / "00000.json"
    target = json.loads(task.read_text())["replaced"]["shard"]
    task.unlink()
    name = f"{target:05d}.json"
    (ds / "runs" / "ingest" / "shards" / name).write_bytes(records[name])
    run_stage(stage(path), ds, resume=True)
    assert tables_bytes(ds) == tables_bytes(done)
    assert manifest(ds)["tables"] == manifest(done)["tables"] and manifest(ds)["stats"] == manifest(done)["stats"]
    assert_clean(ds)


def test_rerunning_a_finished_run_changes_nothing(tmp_path, full):
    path, done = full
    shutil.copytree(done, tmp_path / "ds")
    again = run_stage(stage(path), tmp_path / "ds", skip_complete=True)
    assert again.already_complete and all(p.already_complete for p in again.passes)
    resumed = run_stage(stage(path), tmp_path / "ds", resume=True)  # every pass reopened and committed again
    assert resumed.stats == manifest(done)["stats"]  # the corrections counted once
    assert tables_bytes(tmp_path / "ds") == tables_bytes(done)
    assert_clean(tmp_path / "ds")


def test_a_rewrite_that_commits_again_corrects_the_counts_once(tmp_path, full):
    path, done = full
    shutil.copytree(done, tmp_path / "ds")
    # as if the run died after ingest's manifest was committed again, before the rewrite pass's own
    (tmp_path / "ds" / "runs" / "ingest_rewrite" / "manifest.json").unlink()
    report = run_stage(stage(path), tmp_path / "ds", skip_complete=True)
    assert report.already_complete and not report.passes[1].already_complete
    assert report.stats == manifest(tmp_path / "ds")["stats"] == manifest(done)["stats"]
    assert tables_bytes(tmp_path / "ds") == tables_bytes(done)
    assert_clean(tmp_path / "ds")


def test_bucket_counts_follow_the_shards_up_to_64():
    assert [bucket_count(n) for n in (0, 1, 2, 3, 12, 64, 65, 5000)] == [1, 1, 2, 4, 16, 64, 64, 64]


@pytest.mark.parametrize("buckets", [1, 4, 64])
def test_a_key_lands_in_its_top_bits_bucket_sorted(buckets):
    import numpy as np

    rng = np.random.default_rng(1)
    keys = rng.integers(0, 2**63, 500, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    keys[::7] = keys[0]  # repeats, which keep their rows in order
    hi, lo = np.arange(500, dtype=np.uint64), np.arange(500, dtype=np.uint64) + np.uint64(1000)
    partial = bucketed(keys, hi, lo, keys[:50], buckets)
    bits = buckets.bit_length() - 1
    rows = []
    for b in range(buckets):
        part = partial[pairs_key(b)]
        assert all((int(k) >> (64 - bits) if bits else 0) == b for k in part[:, 0])
        assert part[:, 0].tolist() == sorted(part[:, 0].tolist())
        assert (part[:, 2] == part[:, 1]).all()  # a row keeps its own pair id
        rows += part[:, 1].tolist()
        assert set(partial[images_key(b)].tolist()) <= set(part[:, 0].tolist())
    assert sorted(rows) == list(range(500))
    same = partial[pairs_key(int(keys[0]) >> (64 - bits) if bits else 0)]
    assert same[same[:, 0] == keys[0], 1].tolist() == list(range(0, 500, 7))
    with pytest.raises(ValueError, match="power of two"):
        bucketed(keys, hi, lo, keys[:5], 3)


def test_a_one_shard_input_writes_one_bucket(tmp_path):
    path, _ = write_repeats(tmp_path / "raw")
    run_stage(stage(path, 1000), tmp_path / "ds")
    ds = Dataset(tmp_path / "ds")
    assert [len(ds.shards(t)) for t in ("pairs", "duplicate_pairs", "redundant_images")] == [1, 1, 1]
