"""The layouts the field publishes, end to end from the CLI on real files: every vote its own judgement
with its annotator (and trust), HPDv3, Hub repos read shard by shard, --format auto."""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate import schema as schemas
from curate.cli import app
from curate.dataset import Dataset, write_shard
from curate.ingest.columns import label_from_sign
from curate.ingest.planning import record_ranges
from curate.ingest.reasons import Rejected
from curate.synth.world import WorldConfig, build_world
from curate.verify import commit_files
from ingest_data import image_bytes, write_hpdv3, write_pickapic, write_rapidata

runner = CliRunner()


def ingest(*args: str) -> str:
    result = runner.invoke(app, ["ingest", *args])
    assert result.exit_code == 0, result.output
    return result.output


def outcome(root: Path) -> tuple[dict, dict]:
    ds = Dataset(root)
    pairs = {(p["source_row"], p["source_item"]): p for p in ds.read_table("pairs").to_pylist()}
    rejects = {(r["source_row"], r["source_item"]): r["reason"] for r in ds.read_table("rejects").to_pylist()} \
        if ds.has("rejects") else {}
    return pairs, rejects


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats") / "world"
    build_world(root, WorldConfig(pairs=300, seed=5, image_size=16, formats=("multivote", "votes", "hpdv2_pref", "hpdv3")))
    return root


def test_record_ranges_and_sign_labels_by_hand():
    assert record_ranges([1, 1, 1, 1, 1], 2) == [(0, 2), (2, 4), (4, 5)]
    assert record_ranges([5, 1, 1], 3) == [(0, 1), (1, 3)]  # a record larger than a shard is a shard
    assert record_ranges([], 3) == []
    assert [label_from_sign(v) for v in (1, -1, 0, "1", "-1.0")] == ["a", "b", "tie", "a", "b"]
    for bad in (2, "left", None, True):
        with pytest.raises(Rejected):
            label_from_sign(bad)


def test_rapidata_every_vote_is_a_judgement_with_its_voter(tmp_path):
    path, expected, reasons = write_rapidata(tmp_path / "raw")
    output = ingest(str(path), "-o", str(tmp_path / "ds"))
    assert "reading as rapidata" in output
    assert re.search(r"votes read with no voter id \(named SOURCE#ROW:K\)\W+3\b", output)  # row 0 (two), row 3 (one)
    pairs, rejects = outcome(tmp_path / "ds")
    assert {k: (p["label"], p["annotator_id"], p["annotator_trust"]) for k, p in pairs.items()} == expected
    assert rejects == reasons
    assert pairs[(4, 0)]["votes_a"] == 3 and pairs[(4, 0)]["votes_b"] == 1  # a counts-only row stays one pair
    assert {p["model_a"] for p in pairs.values()} == {"flux"}
    assert len(Dataset(tmp_path / "ds").read_table("images")) == 2


def test_synthetic_rapidata_set_gives_one_pair_per_vote(world, tmp_path):
    ingest(str(world / "multivote"), "-o", str(tmp_path / "ds"))
    table = pq.read_table(world / "multivote" / "train.parquet")
    votes = sum(len(json.loads(d)) for d in table.column("detailed_results").to_pylist())
    pairs, rejects = outcome(tmp_path / "ds")
    assert len(pairs) + len(rejects) == votes and not rejects
    assert all(0.05 <= p["annotator_trust"] <= 1 for p in pairs.values())


def test_votes_with_trust_and_pref_tables_match_the_truth(world, tmp_path):
    truth = pq.read_table(world / "truth" / "pairs.parquet").to_pandas().set_index("pair_id")
    ingest(str(world / "votes" / "votes.csv"), "-o", str(tmp_path / "votes"), "--image-root", str(world / "votes" / "images"))
    ingest(str(world / "hpdv2_pref"), "-o", str(tmp_path / "pref"))
    for name in ("votes", "pref"):
        pairs = Dataset(tmp_path / name).read_table("pairs").to_pandas().set_index("pair_id")
        joined = pairs.join(truth, rsuffix="_truth", how="inner")
        assert len(joined) == len(pairs) > 0
        assert (joined.label == joined.label_truth).all() and (joined.annotator_id == joined.annotator_id_truth).all()
        assert (joined.image_a_id == joined.image_a_id_truth).all()
    votes = Dataset(tmp_path / "votes").read_table("pairs").to_pandas()
    assert votes.annotator_trust.between(0.05, 1).all()
    assert votes.groupby(["image_a_id", "image_b_id"]).annotator_id.nunique().min() >= 8  # a panel per pair


def test_pref_minus_one_in_a_label_column_says_how_to_read_it(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(2):
        (tmp_path / "images" / f"{i}.png").write_bytes(image_bytes(["red", "blue"][i]))
    path = tmp_path / "t.csv"
    path.write_text("prompt,image_a,image_b,label\nq,images/0.png,images/1.png,-1\n")
    ingest(str(path), "-o", str(tmp_path / "ds"), "--image-root", str(tmp_path))
    reject = Dataset(tmp_path / "ds").read_table("rejects").to_pylist()[0]
    assert reject["reason"] == "unparseable_label" and "--map pref=COLUMN" in reject["message"]
    ingest(str(path), "-o", str(tmp_path / "ds2"), "--image-root", str(tmp_path), "--map", "pref=label")
    assert Dataset(tmp_path / "ds2").read_table("pairs")["label"].to_pylist() == ["b"]


def test_hpdv3_path1_is_the_winner(tmp_path):
    path, reasons = write_hpdv3(tmp_path / "hpd")
    output = ingest(str(path), "-o", str(tmp_path / "ds"))
    assert "reading as hpdv3" in output
    pairs, rejects = outcome(tmp_path / "ds")
    assert rejects == {(row, 0): reason for row, reason in reasons.items()}
    assert [(p["label"], p["model_a"], p["model_b"]) for _, p in sorted(pairs.items())] == [("a", "m1", "m2"), ("a", "m2", "m1")]


def test_auto_refuses_what_it_cannot_tell_naming_the_candidates(tmp_path):
    both = tmp_path / "both.json"
    both.write_text(json.dumps([{"prompt": "p", "path1": "a", "path2": "b", "image_path": ["x"], "rank": [1]}]))
    result = runner.invoke(app, ["ingest", str(both), "-o", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "fits hpdv2 and hpdv3" in result.output.replace("\n", " ")
    odd = tmp_path / "odd.json"
    odd.write_text('[{"question": 1}]')
    result = runner.invoke(app, ["ingest", str(odd), "-o", str(tmp_path / "ds")])
    assert result.exit_code == 2
    assert all(f in result.output for f in ("pickapic needs", "rapidata needs", "hpdv3 needs", "pass --format"))


def _mirror(tmp_path: Path, files: int = 3) -> Path:
    """A folder laid out like the Hub repo yuvalkirstain/pickapic_v2 (data/train-0000k-of-0000n.parquet)."""
    path, _ = write_pickapic(tmp_path / "raw")
    table = pq.read_table(path)
    data = tmp_path / "mirror" / "yuvalkirstain" / "pickapic_v2" / "data"
    data.mkdir(parents=True)
    step = -(-table.num_rows // files)
    for k in range(files):
        pq.write_table(table.slice(k * step, step), data / f"train-{k:05d}-of-{files:05d}.parquet")
    (data.parent / "README.md").write_text("---\nconfigs: []\n---\n")
    return tmp_path / "mirror"


def test_hub_id_is_read_shard_by_shard_and_resumes_without_rereading(tmp_path):
    mirror = _mirror(tmp_path)
    args = ["yuvalkirstain/pickapic_v2", "--hub-mirror", str(mirror)]
    ingest(*args, "-o", str(tmp_path / "full"))
    full = Dataset(tmp_path / "full")
    assert len(full.read_table("pairs")) + len(full.read_table("rejects")) == 9 + 9  # write_pickapic's rows
    sources = full.read_table("pairs")["source"].to_pylist() + full.read_table("rejects")["source"].to_pylist()
    assert set(sources) == {f"pickapic:train-{k:05d}-of-00003.parquet" for k in range(3)}

    from curate.ingest.sources import expand_sources, resolve_format
    from curate.ingest.stage import IngestStage
    from curate.options import Format
    from curate.runner import LocalExecutor, run_stage

    files = expand_sources(["yuvalkirstain/pickapic_v2"], Format.auto, str(mirror))
    fmt, files, _ = resolve_format(Format.auto, files, str(mirror))
    stage = lambda: IngestStage(files=list(files), format=fmt.value, hub_mirror=str(mirror))  # noqa: E731

    class Crash(LocalExecutor):
        def map(self, fn, items, desc):
            fn(items[0])
            raise KeyboardInterrupt  # dies after the first Hub file

    with pytest.raises(KeyboardInterrupt):
        run_stage(stage(), tmp_path / "resumed", Crash())
    first = mirror / "yuvalkirstain" / "pickapic_v2" / "data" / "train-00000-of-00003.parquet"
    stat = first.stat()
    first.write_bytes(b"\0" * stat.st_size)  # same size and time: a resume that read it again would fail
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    report = run_stage(stage(), tmp_path / "resumed", resume=True)
    assert report.skipped_shards == 1
    assert Dataset(tmp_path / "resumed").read_table("pairs").equals(full.read_table("pairs"))


def test_hub_id_offline_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["ingest", "yuvalkirstain/pickapic_v2", "-o", str(tmp_path / "ds")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "yuvalkirstain/pickapic_v2" in result.output and "--hub-mirror" in result.output
    assert not (tmp_path / "ds").exists()


def _no_images_mirror(tmp_path: Path, base_url: str) -> Path:
    build_world(tmp_path / "w", WorldConfig(pairs=20, seed=2, formats=("pickapic",), images=False))
    src = next((tmp_path / "w" / "pickapic").glob("*.parquet"))
    table = pq.read_table(src)
    for column in ("image_0_url", "image_1_url"):
        urls = [u.replace("https://images.pickapic.invalid", base_url) for u in table.column(column).to_pylist()]
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(urls))
    data = tmp_path / "mirror" / "yuvalkirstain" / "pickapic_v2_no_images" / "data"
    data.mkdir(parents=True)
    pq.write_table(table, data / "train-00000-of-00001.parquet")
    return tmp_path / "mirror"


def test_no_images_variant_keeps_uids_and_fetches_only_when_allowed(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mirror = _no_images_mirror(tmp_path, f"http://127.0.0.1:{server.server_port}")
        table = pq.read_table(next(mirror.rglob("*.parquet")))
        names = sorted({u.rsplit("/", 1)[1] for c in ("image_0_url", "image_1_url")  # five rows' images exist
                        for u in table.column(c).to_pylist()[:5]})
        for k, name in enumerate(names):  # a colour per image; every other URL is a 404
            (served / name).write_bytes(image_bytes(f"#{40 * k % 256:02x}{90 + k:02x}30"))
        repo = ["yuvalkirstain/pickapic_v2_no_images", "--hub-mirror", str(mirror)]
        ingest(*repo, "-o", str(tmp_path / "offline"))
        offline = Dataset(tmp_path / "offline")
        assert len(offline.read_table("pairs")) == 20 and offline.num_rows("images") == 0  # known by uid only
        ingest(*repo, "-o", str(tmp_path / "online"), "--allow-network")
        pairs, rejects = outcome(tmp_path / "online")
        served_rows = [r for r, (u, v) in enumerate(zip(table.column("image_0_url").to_pylist(),
                                                         table.column("image_1_url").to_pylist()))
                       if {u.rsplit("/", 1)[1], v.rsplit("/", 1)[1]} <= set(names)]
        assert sorted(r for r, _ in pairs) == served_rows and len(served_rows) >= 5
        assert set(rejects.values()) == {"fetch_failed"} and len(rejects) == 20 - len(served_rows)
        assert Dataset(tmp_path / "online").num_rows("images") == len(names)  # each fetched image stored once
    finally:
        server.shutdown()


def test_a_v1_dataset_without_annotator_trust_is_still_read(tmp_path):
    v1 = schemas.load("pairs", 1)
    row = {"pair_id": "p", "prompt": "q", "prompt_id": "x", "image_a_id": "a", "image_b_id": "b", "label": "a",
           "annotator_id": None, "votes_a": None, "votes_b": None, "model_a": None, "model_b": None,
           "created_at": None, "source": "s", "source_row": 0, "source_item": 0, "split": "train"}
    written = write_shard(tmp_path / "tables" / "pairs" / "old-00000.arrow", v1,
                          [v1.table({k: [v] for k, v in row.items()})])
    commit_files(tmp_path, "old", {"pairs": [written]})
    manifest = json.loads((tmp_path / "runs" / "old" / "manifest.json").read_text())
    manifest["schemas"]["pairs"]["version"] = 1
    (tmp_path / "runs" / "old" / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert Dataset(tmp_path).read_table("pairs", ["pair_id", "label"]).to_pylist() == [{"pair_id": "p", "label": "a"}]
