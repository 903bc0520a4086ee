"""Nothing is used unverified, and one writer at a time: killed runs, damaged folders, planted files, two processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.dataset import Dataset, DatasetError
from curate.ingest.stage import IngestStage
from curate.lock import DatasetLocked, holder_description, writer_lock
from curate.runner import LocalExecutor, run_stage
from ingest_data import write_pickapic

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _stage(path: Path) -> IngestStage:
    return IngestStage(files=[str(path)], format="pickapic", shard_rows=3)


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """A committed ingest of 6 shards (18 rows, 3 per row group)."""
    folder = tmp_path_factory.mktemp("trust")
    path, _ = write_pickapic(folder / "raw", row_group_size=3)
    run_stage(_stage(path), folder / "ds")
    return folder / "ds"


@pytest.fixture
def ds(committed, tmp_path) -> Path:
    return Path(shutil.copytree(committed, tmp_path / "ds"))


def one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def test_a_killed_ingest_is_refused_by_every_reader(tmp_path):
    path, _ = write_pickapic(tmp_path / "raw", row_group_size=3)

    class KilledAfterFour(LocalExecutor):
        def map(self, fn, items, desc):
            for item in items[:4]:
                fn(item)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(_stage(path), tmp_path / "ds", KilledAfterFour())
    ds = tmp_path / "ds"
    assert len(list((ds / "tables" / "pairs").glob("*.arrow"))) == 4 and not (ds / "runs/ingest/manifest.json").exists()
    for args in (["annotators", str(ds)], ["report", str(ds), "-o", str(tmp_path / "r.html")],
                 ["export", str(ds), str(tmp_path / "hf")]):
        message = one_line_error(args)
        assert "never committed" in message and "table 'pairs'" in message, message
        assert f"rerun `prefcurate ingest {path} --format pickapic --out {ds}`" in message  # the fix, spelled out
    run_stage(_stage(path), ds, resume=True)  # the fix the message names
    assert Dataset(ds).num_rows("pairs") + Dataset(ds).num_rows("rejects") == 18


def test_a_deleted_shard_is_refused(ds):
    (ds / "tables/pairs/ingest-00002.arrow").unlink()
    message = one_line_error(["annotators", str(ds)])
    assert "ingest-00002.arrow is listed in runs/ingest/manifest.json but missing" in message


@pytest.mark.parametrize("name", ["ingest-00001 (copy).arrow", "old.arrow"])
def test_a_stray_copy_is_refused_not_double_counted(ds, name):
    shutil.copy(ds / "tables/pairs/ingest-00001.arrow", ds / "tables/pairs" / name)
    with pytest.raises(DatasetError, match=r"is listed in no manifest \(a stray copy\?\)"):
        Dataset(ds).scan("pairs")


def test_flipped_bytes_are_refused_on_read_and_by_verify(ds):
    target = ds / "tables/pairs/ingest-00003.arrow"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stat = target.stat()
    target.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="ingest-00003.arrow differs from the checksum in runs/ingest/manifest.json"):
        Dataset(ds).read_table("pairs")
    # the same damage with the mtime put back: the cheap check trusts size+mtime, verify hashes everything
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    Dataset(ds).read_table("images")  # other tables stay readable
    result = runner.invoke(app, ["verify", str(ds)])
    assert result.exit_code == 1 and "ingest-00003.arrow differs from the checksum" in result.output


def test_verify_passes_a_good_dataset(ds):
    result = runner.invoke(app, ["verify", str(ds)])
    assert result.exit_code == 0, result.output
    pairs = Dataset(ds).num_rows("pairs")
    assert "every table matches its manifest" in result.output and f"{pairs} rows in 6 files" in result.output


def _edit_manifest(ds: Path, edit) -> None:
    path = ds / "runs/ingest/manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_an_edited_manifest_is_refused(ds):
    _edit_manifest(ds, lambda m: m["tables"]["pairs"]["shards"][0].update(sha256="0" * 64))
    with pytest.raises(DatasetError, match="differs from the checksum"):
        Dataset(ds).scan("pairs")


def test_a_manifest_edited_to_other_rows_is_refused(ds):
    pairs = json.loads((ds / "runs/ingest/manifest.json").read_text())["tables"]["pairs"]
    total, first = pairs["rows"], pairs["shards"][0]["rows"]
    _edit_manifest(ds, lambda m: m["tables"]["pairs"]["shards"][0].update(rows=first + 1))
    assert f"has {total} rows but its files add up to {total + 1} (edited?)" in one_line_error(["annotators", str(ds)])
    # edited with care, the totals agreeing: the full check, which counts rows, still finds it
    _edit_manifest(ds, lambda m: m["tables"]["pairs"].update(rows=total + 1))
    result = runner.invoke(app, ["verify", str(ds)])
    assert result.exit_code == 1
    assert f"holds {first} rows, runs/ingest/manifest.json says {first + 1}" in " ".join(result.output.split())


def test_a_broken_or_deleted_manifest_is_refused(ds):
    manifest = ds / "runs/ingest/manifest.json"
    manifest.write_text("{ not json")
    assert "not a readable manifest" in one_line_error(["annotators", str(ds)])
    manifest.unlink()
    assert "never committed" in one_line_error(["annotators", str(ds)])


def test_temporary_files_live_outside_tables_and_are_cleaned(tmp_path):
    path, _ = write_pickapic(tmp_path / "raw", row_group_size=3)
    ds = tmp_path / "ds"

    class KilledMidShard(LocalExecutor):
        def map(self, fn, items, desc):
            fn(items[0])
            (ds / ".tmp").mkdir(exist_ok=True)
            (ds / ".tmp" / "half-written.arrow").write_bytes(b"ARROW1")  # what a kill -9 mid-write leaves
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(_stage(path), ds, KilledMidShard())
    assert not [p for p in (ds / "tables").rglob(".*")]
    assert (ds / ".tmp" / "half-written.arrow").exists()
    run_stage(_stage(path), ds)
    assert not (ds / ".tmp" / "half-written.arrow").exists()


def test_the_writer_lock_is_reentrant_and_names_its_holder(tmp_path):
    with writer_lock(tmp_path, "ingest") as fresh:
        assert fresh
        who = holder_description(tmp_path)
        assert who["pid"] == os.getpid() and who["stage"] == "ingest" and who["since"].endswith("UTC")
        with writer_lock(tmp_path, "flag") as again:
            assert not again
    assert holder_description(tmp_path) == {}


_HOLD = "import sys, time; from curate.lock import writer_lock\nwith writer_lock(sys.argv[1], 'ingest'):\n" \
        "    print('held', flush=True); time.sleep(120)\n"


def test_a_second_writer_is_refused_until_the_first_dies(tmp_path):
    path, _ = write_pickapic(tmp_path / "raw", row_group_size=3)
    ds = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(ds)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        ingest = [sys.executable, "-m", "curate.cli", "ingest", str(path), "-f", "pickapic", "-o", str(ds)]
        refused = subprocess.run(ingest, capture_output=True, text=True, env=env, timeout=120)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        message = " ".join(refused.stderr.split())
        assert f"being written by pid {holder.pid} on " in message and "since" in message and "ingest" in message
        with pytest.raises(DatasetLocked):
            run_stage(_stage(path), ds)
    finally:
        holder.kill()  # kill -9: its lock is stale now
        holder.wait()
    assert holder_description(ds)["pid"] == holder.pid  # the dead holder's note is still there...
    done = subprocess.run(ingest, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr  # ...and the next writer takes the lock over
    assert holder_description(ds) == {}


def test_a_commit_records_its_checksums_and_a_skipped_rerun_launders_nothing(ds, tmp_path):
    cache = json.loads((ds / ".verified.json").read_text())
    files = sorted(f"{p.parent.name}/{p.name}" for p in (ds / "tables").rglob("*.arrow"))
    assert sorted(cache) == files  # the first read after the commit needs no re-hash
    target = ds / "tables/pairs/ingest-00000.arrow"
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    raw = json.loads((ds / "runs/ingest/manifest.json").read_text())["config"]["files"][0]
    report = run_stage(_stage(Path(raw)), ds, skip_complete=True)
    assert report.already_complete
    with pytest.raises(DatasetError, match="differs from the checksum"):
        Dataset(ds).scan("pairs")


def test_verify_refuses_a_folder_that_is_no_dataset(tmp_path):
    result = runner.invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and "not a prefcurate dataset" in result.output
