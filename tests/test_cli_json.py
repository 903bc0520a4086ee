"""`--json`: every stage command prints its summary as one JSON object on stdout, the table on stderr."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.dataset import Dataset

runner = CliRunner()
COMMON = {"command", "seconds"}
STAGE = {"dataset", "dataset_stage", "tables", "stats", "stage_seconds"}


def summary(*args: str) -> dict:
    """Run a command with --json; stdout must be exactly one JSON object (one line), the table on stderr."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (args, result.output, repr(result.exception))
    assert result.stdout.count("\n") == 1, result.stdout
    out = json.loads(result.stdout)
    assert COMMON <= set(out) and result.stderr.strip(), (args, out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("json")
    made = summary("demo-data", str(root / "world"), "--pairs", "60", "--seed", "3", "--image-size", "32",
                   "--formats", "pickapic", "--malformed", "2")
    assert made["command"] == "demo-data" and {"files", "minority", "annotators", "planted"} <= set(made)
    ingested = summary("ingest", str(root / "world" / "pickapic"), "-f", "pickapic", "-o", str(root / "ds"))
    assert STAGE | {"records", "accepted", "rejected"} <= set(ingested)
    assert ingested["records"] == ingested["accepted"] + sum(ingested["rejected"].values())
    assert ingested["tables"]["pairs"] == ingested["accepted"]
    return root


def test_curation_commands(world):
    ds = str(world / "ds")
    crowd = summary("annotators", ds)
    assert STAGE | {"annotators", "verdicts", "taste_groups"} <= set(crowd)
    assert sum(crowd["verdicts"].values()) == crowd["annotators"] > 0
    flagged = summary("flag", ds)
    assert flagged["tables"]["pair_scores"] == flagged["pairs"] and 0 < flagged["flagged"] < flagged["pairs"]
    assert set(flagged["reasons"]) and flagged["share"] == pytest.approx(flagged["flagged"] / flagged["pairs"])
    scored = summary("scores", "compute", ds, "--scorer", "world", "--device", "cpu")
    assert scored["command"] == "scores compute" and scored["scores_rows"] > 0 and STAGE <= set(scored)
    embedded = summary("embed", ds, "--model", "domain", "--decode-workers", "0", "--device", "cpu")
    assert embedded["embed"]["stats"]["images_embedded"] > 0 and embedded["scores"]["tables"]["clip_scores"] > 0
    filtered = summary("filter", ds)
    assert STAGE | {"model", "pairs"} <= set(filtered) and filtered["tables"]["filters"] == filtered["pairs"]
    pair_id = Dataset(ds).scan("pairs").select("pair_id").head(1).collect().item()
    assert summary("flag", ds, "--explain", pair_id)["pair_id"] == pair_id
    keys = Dataset(ds).scan("pairs").select(image_id="image_a_id", prompt_id="prompt_id").unique().collect()
    keys.with_columns(score=pl.lit(0.5)).write_csv(world / "outside.csv")
    imported = summary("scores", "import", str(world / "outside.csv"), "--scorer", "outside", "-d", ds)
    assert imported["scores"] == keys.height and imported["unmatched_rows"] == 0
    # Again with the scores stored (world, the domain CLIP's, outside): several scorers as evidence.
    rescored = summary("annotators", ds)
    assert rescored["annotators"] == crowd["annotators"]
    checked = summary("verify", ds)
    assert checked["problems"] == [] and checked["tables"]["pairs"]["rows"] == flagged["pairs"]


def test_output_commands(world):
    ds = str(world / "ds")
    exported = summary("export", ds, str(world / "hf"))
    assert {"out", "rows", "splits", "dropped", "columns", "bytes"} <= set(exported) and exported["rows"] > 0
    tables = summary("export", ds, str(world / "parquet"), "--tables", "parquet", "--table", "pairs")
    assert list(tables["tables"]) == ["pairs"] and tables["tables"]["pairs"]["key"] == ["pair_id"]
    plan = summary("publish", str(world / "hf"), "--repo-id", "me/prefs", "--dry-run")
    assert plan["dry_run"] and plan["bytes"] == sum(f["size"] for f in plan["files"])
    page = summary("report", ds, "-o", str(world / "report.html"))
    assert page["out"] == str(world / "report.html") and page["bytes"] == (world / "report.html").stat().st_size


def test_training_commands(world, torch_one_thread):
    ds = str(world / "ds")
    encoded = summary("encode", ds, "--model", "world", "--resolution", "32", "--device", "cpu")
    assert encoded["stats"]["latents_encoded"] > 0 and encoded["model_key"]
    run = world / "run"
    trained = summary("train", ds, "--model", "world", "--output-dir", str(run), "--max-steps", "1",
                      "--batch-size", "2", "--checkpoint-every", "0")
    assert trained["steps"] == 1 and Path(trained["model"]).is_dir() and "dropped" in trained
    evaluated = summary("evaluate", "--model", "world", "--lora", trained["model"], "--prompts", "world:2",
                        "--scorers", "world", "--images-per-prompt", "1", "--steps", "1", "--device", "cpu",
                        "--out", str(world / "eval"))
    assert evaluated["summary"]["prompts"] == 2 and "world" in evaluated["summary"]["scorers"]


def test_run_prints_the_pipeline_summary_only(tmp_path):
    (tmp_path / "p.toml").write_text(f"""
[pipeline]
dataset = "{tmp_path}/ds"

[[stage]]
command = "demo-data"
out_dir = "{tmp_path}/world"
pairs = 20
image_size = 16
formats = "pickapic"

[[stage]]
command = "ingest"
sources = ["{tmp_path}/world/pickapic"]
format = "pickapic"
""")
    out = summary("run", str(tmp_path / "p.toml"))
    assert out["steps"] == 2 and out["funnel"]["accepted"] == 20 and out["stages_skipped"] == []
    assert summary("run", str(tmp_path / "p.toml"))["stages_skipped"] == ["ingest"]


def test_verify_prints_its_problems_and_exits_1(world, tmp_path):
    shutil.copytree(world / "ds", tmp_path / "ds")
    shard = sorted((tmp_path / "ds" / "tables" / "pairs").glob("*.arrow"))[0]
    shard.write_bytes(shard.read_bytes() + b"changed")
    result = runner.invoke(app, ["verify", str(tmp_path / "ds"), "--json"])
    out = json.loads(result.stdout)
    assert result.exit_code == 1 and out["command"] == "verify" and "error:" in result.stderr
    assert out["tables"]["pairs"]["problems"] and set(out["tables"]["pairs"]["problems"]) <= set(out["problems"])


def test_without_json_the_table_is_on_stdout(world):
    result = runner.invoke(app, ["verify", str(world / "ds")])
    assert result.exit_code == 0 and "every table matches its manifest" in result.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)
