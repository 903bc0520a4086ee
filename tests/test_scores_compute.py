"""`prefcurate scores compute`: registry scorers as AI annotators, on real files of the synthetic world."""
from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from curate import schema as schemas
from curate.cli import app
from curate.clip.decode import decode_image
from curate.dataset import Dataset, write_shard
from curate.ids import normalize_prompt
from curate.scorers import load_scorer
from curate.verify import commit_files
from curate.synth.world import WorldConfig, build_world
from scorer_models import tiny_pickscore

runner = CliRunner()


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def files(root) -> dict[str, bytes]:
    """Every file's bytes, less the verification cache (size/mtime/checksum of files already checked)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".verified.json"}


def damage_images(ds: Dataset) -> dict[str, str]:
    """Rewrite the images table with one image emptied, one garbled and one dropped; returns id -> reason."""
    [shard] = ds.shards("images")
    table = ds.read_table("images")
    ids = table["image_id"].to_pylist()
    blobs = table["bytes"].to_pylist()
    blobs[0], blobs[1] = b"", b"not an image"
    columns = {c: table[c].to_pylist()[:2] + table[c].to_pylist()[3:] for c in table.column_names}
    columns["bytes"] = blobs[:2] + blobs[3:]
    written = write_shard(shard, schemas.load("images"), schemas.load("images").table(columns).to_batches())
    recommit_in_manifest(ds, "ingest", "images", written)
    return {ids[0]: "empty_image", ids[1]: "undecodable_image", ids[2]: "missing_image"}


def recommit_in_manifest(ds: Dataset, stage: str, table: str, written) -> None:
    """Record a deliberately rewritten shard in its stage's manifest, as if the stage had written it."""
    path = ds.run_dir(stage) / "manifest.json"
    manifest = json.loads(path.read_text())
    [entry] = manifest["tables"][table]["shards"]
    entry.update(rows=written.rows, sha256=written.sha256)
    manifest["tables"][table]["rows"] = written.rows
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 300-pair world ingested, with three images it cannot score; kept pristine (tests copy it)."""
    root = tmp_path_factory.mktemp("world")
    build_world(root / "world", WorldConfig(pairs=300, seed=11, minority_rate=0.2, image_size=32, formats=("pickapic",)))
    cli("ingest", str(root / "world" / "pickapic"), "-f", "pickapic", "-o", str(root / "ds"))
    return root, damage_images(Dataset(root / "ds"))


def copy_of(world, tmp_path):
    root, damaged = world
    shutil.copytree(root / "ds", tmp_path / "ds")
    return tmp_path / "ds", damaged


def distinct_keys(ds: Dataset) -> pl.DataFrame:
    pairs = ds.scan("pairs").collect()
    return pl.concat([pairs.select(image_id="image_a_id", prompt_id="prompt_id", prompt="prompt"),
                      pairs.select(image_id="image_b_id", prompt_id="prompt_id", prompt="prompt")]) \
        .unique(["image_id", "prompt_id"], keep="first").sort("image_id", "prompt_id")


def registry_scores(ds: Dataset, keys: pl.DataFrame, spec: str) -> np.ndarray:
    """The registry scorer called directly on the decoded images and their prompts."""
    images = ds.read_table("images").to_pylist()
    data = {row["image_id"]: row["bytes"] for row in images}
    pictures = [decode_image(data[i]) for i in keys["image_id"]]
    return load_scorer(spec).score(pictures, [normalize_prompt(p) for p in keys["prompt"]], batch_size=7)


def test_world_scores_every_key_once_as_the_registry_does_resumes_and_matches_dask(world, tmp_path):
    path, damaged = copy_of(world, tmp_path)
    out = cli("scores", "compute", str(path), "--scorer", "world", "--images-per-shard", "60", "--device", "cpu")
    assert "(image, prompt) scores stored" in out
    ds = Dataset(path)
    keys = distinct_keys(ds)
    scorable = keys.filter(~pl.col("image_id").is_in(list(damaged)))
    stored = ds.scan("scores").collect().sort("image_id", "prompt_id")
    assert len(ds.shards("scores")) > 1 and stored.height == scorable.height  # several shards, each key once
    assert stored.select("image_id", "prompt_id").equals(scorable.select("image_id", "prompt_id"))
    assert set(stored["scorer"]) == {"world"}
    np.testing.assert_allclose(stored["score"].to_numpy(), registry_scores(ds, scorable, "world"), rtol=1e-6)
    failures = ds.read_table("score_failures").to_pylist()
    assert {f["image_id"]: f["reason"] for f in failures} == damaged
    assert all("0x" not in f["message"] for f in failures)  # no object addresses: bytes must not vary per run

    before = files(path)
    again = cli("scores", "compute", str(path), "--scorer", "world", "--resume")
    assert "already scored" in again and files(path) == before

    dask_path = tmp_path / "dask"
    shutil.copytree(world[0] / "ds", dask_path)
    cli("scores", "compute", str(dask_path), "--scorer", "world", "--images-per-shard", "60", "--executor", "dask",
        "--workers", "2")
    tables = lambda root: {k: v for k, v in files(root).items() if k.startswith("tables/")}  # noqa: E731
    assert tables(dask_path) == tables(path)


def test_a_computed_scorer_is_an_ai_annotator_for_flag(world, tmp_path):
    path, _ = copy_of(world, tmp_path)
    cli("scores", "compute", str(path), "--scorer", "world:fidelity")
    out = cli("annotators", str(path))
    assert "scorers used" in out
    cli("flag", str(path))
    scored = Dataset(path).scan("pair_scores").collect()
    assert scored["signals"].max() >= 2 and scored["u"].drop_nulls().len() > 0


def test_a_local_pickscore_folder_scores_under_its_spec(world, tmp_path, torch_one_thread):
    path, damaged = copy_of(world, tmp_path)
    tiny_pickscore(tmp_path / "pick")
    spec = f"pickscore:{tmp_path / 'pick'}"
    cli("scores", "compute", str(path), "--scorer", spec, "--batch-size", "32")
    ds = Dataset(path)
    stored = ds.scan("scores").collect().sort("image_id", "prompt_id")
    scorable = distinct_keys(ds).filter(~pl.col("image_id").is_in(list(damaged)))
    assert set(stored["scorer"]) == {spec} and stored.height == scorable.height
    np.testing.assert_allclose(stored["score"].to_numpy(), registry_scores(ds, scorable, spec), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown scorer 'nope'"),
    ("pickscore", "yuvalkirstain/PickScore_v1/config.json"),
    ("hps", "xswu/HPSv2/HPS_v2.1_compressed.pt"),
    ("aesthetic", "aesthetic needs its weight file"),
])
def test_unknown_or_missing_scorers_are_one_line_and_change_nothing(world, tmp_path, spec, message):
    path, _ = copy_of(world, tmp_path)
    before = files(path)
    result = runner.invoke(app, ["scores", "compute", str(path), "--scorer", spec])
    assert result.exit_code == 2 and message in result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert files(path) == before


def test_an_import_that_matches_nothing_is_an_error_and_keeps_the_earlier_import(world, tmp_path):
    path, _ = copy_of(world, tmp_path)
    keys = distinct_keys(Dataset(path))
    keys.select("image_id", "prompt", score=pl.lit(1.0)).write_csv(tmp_path / "good.csv")
    assert "scores stored" in cli("scores", "import", str(tmp_path / "good.csv"), "--scorer", "world", "-d", str(path))
    before = files(path)
    pl.DataFrame({"pair_id": ["0012"], "score_a": [1.0], "score_b": [2.0]}).write_csv(tmp_path / "pairs.csv")
    keys.select("image_id", prompt_id=pl.lit("0" * 32), score=pl.lit(1.0)).write_csv(tmp_path / "images.csv")
    for name, columns in (("pairs.csv", "on pair_id"), ("images.csv", "on image_id, prompt_id")):
        result = runner.invoke(app, ["scores", "import", str(tmp_path / name), "--scorer", "world", "-d", str(path)])
        assert result.exit_code == 2 and f"matches a pair of {path} {columns}; nothing to store" in result.output
        assert files(path) == before
    computed = runner.invoke(app, ["scores", "compute", str(path), "--scorer", "world"])  # keys would repeat
    assert computed.exit_code == 2 and "scores named 'world' are already stored by another stage" in computed.output
    assert files(path) == before


def test_an_interrupted_run_is_resumed_keeping_its_finished_shards(world, tmp_path):
    from curate.scorers.stage import compute_scores

    path, _ = copy_of(world, tmp_path)
    first = compute_scores(path, "world", images_per_shard=60).report
    tables = {k: v for k, v in files(path).items() if k.startswith("tables/")}
    run = Dataset(path).run_dir(first.stage)
    (run / "manifest.json").unlink()  # as if killed after its shards, before the commit
    (run / "shards" / "00001.json").unlink()  # ... and before one shard's record
    resumed = compute_scores(path, "world", images_per_shard=60, resume=True).report
    assert resumed.stage == first.stage and resumed.skipped_shards == len(first.tables["scores"]["shards"]) - 1
    assert {k: v for k, v in files(path).items() if k.startswith("tables/")} == tables


def test_new_pairs_are_scored_by_a_new_generation_only(world, tmp_path):
    path, damaged = copy_of(world, tmp_path)
    cli("scores", "compute", str(path), "--scorer", "world")
    ds = Dataset(path)
    first = ds.scan("scores").collect()
    pairs = ds.scan("pairs").collect().filter(~pl.col("image_a_id").is_in(list(damaged)))
    moved = pairs.head(6).with_columns(pl.col(c).reverse() for c in ("prompt", "prompt_id")) \
        .with_columns(pair_id=pl.col("pair_id") + "-moved")  # the same images under other prompts: new keys
    extra = write_shard(ds.table_dir("pairs") / "extra-00000.arrow", schemas.load("pairs"),
                        schemas.load("pairs").table({c: moved[c].to_arrow() for c in moved.columns}).to_batches())
    commit_files(path, "extra", {"pairs": [extra]})
    cli("scores", "compute", str(path), "--scorer", "world")
    both = ds.scan("scores").collect()
    new = both.join(first, on=["image_id", "prompt_id"], how="anti")
    assert [p.parent.name[-4:] for p in sorted((ds.root / "runs").glob("scorer-world-*/manifest.json"))] == ["g001", "g002"]
    scorable = distinct_keys(ds).filter(~pl.col("image_id").is_in(list(damaged)))
    assert both.height == first.height + new.height == scorable.height and new.height > 0  # each key once
    keys = distinct_keys(ds).join(new, on=["image_id", "prompt_id"], how="semi")
    np.testing.assert_allclose(new.sort("image_id", "prompt_id")["score"].to_numpy(),
                               registry_scores(ds, keys, "world"), rtol=1e-6)


def test_the_world_scorer_refuses_a_foreign_prompt_before_any_work(world, tmp_path):
    path, _ = copy_of(world, tmp_path)
    ds = Dataset(path)
    [shard] = ds.shards("pairs")
    pairs = ds.read_table("pairs")
    prompts = ["a photo of a cat"] + pairs["prompt"].to_pylist()[1:]
    written = write_shard(shard, schemas.load("pairs"), schemas.load("pairs").table(
        {c: (prompts if c == "prompt" else pairs[c]) for c in pairs.column_names}).to_batches())
    recommit_in_manifest(ds, "ingest", "pairs", written)
    before = files(path)
    result = runner.invoke(app, ["scores", "compute", str(path), "--scorer", "world"])
    assert result.exit_code == 2 and "'a photo of a cat' is not a prompt of the synthetic world" in result.output
    assert result.output.count("\n") == 1 and files(path) == before
