"""`prefcurate run`: declarative pipelines, skipping finished stages, and the planted rows of every layout."""
from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.dataset import Dataset
from curate.pipeline import PipelineError, load

runner = CliRunner()

PIPELINE = """
[pipeline]
dataset = "{out}/dataset"

[params]
out = "OUT"
pairs = 300

[[stage]]
command = "demo-data"
out_dir = "{out}/world"
pairs = "{pairs}"
formats = "pickapic,hpdv2,table"
malformed = 6

[[stage]]
command = "ingest"
sources = ["{out}/world/pickapic"]
format = "pickapic"

[[stage]]
command = "annotators"

[[stage]]
command = "flag"
"""


def test_run_then_rerun_skips_everything(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE.replace("OUT", str(tmp_path / "out")))
    first = runner.invoke(app, ["run", str(path)])
    assert first.exit_code == 0, first.output
    assert "funnel of" in first.output and "flagged as minority" in first.output
    manifest = (tmp_path / "out" / "dataset" / "runs" / "flag" / "manifest.json").read_bytes()
    second = runner.invoke(app, ["run", str(path)])
    assert second.exit_code == 0, second.output
    assert second.output.count("skipped") == 4
    assert (tmp_path / "out" / "dataset" / "runs" / "flag" / "manifest.json").read_bytes() == manifest
    changed = runner.invoke(app, ["run", str(path), "--param", "pairs=320"])
    assert changed.exit_code == 0 and changed.output.count("skipped") == 0


def test_planted_rows_get_their_reasons_in_every_layout(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE.replace("OUT", str(tmp_path / "out")))
    assert runner.invoke(app, ["run", str(path)]).exit_code == 0
    world = tmp_path / "out" / "world"
    runs = [("hpdv2", [str(world / "hpdv2" / "train.json"), str(world / "hpdv2" / "test.json")], []),
            ("table", [str(world / "table" / "pairs.csv")], ["--image-root", str(world / "table" / "images")])]
    got = [pl.from_arrow(Dataset(tmp_path / "out" / "dataset").read_table("rejects"))]
    for fmt, sources, extra in runs:
        out = tmp_path / fmt
        result = runner.invoke(app, ["ingest", *sources, "-f", fmt, "-o", str(out), *extra])
        assert result.exit_code == 0, result.output
        got.append(pl.from_arrow(Dataset(out).read_table("rejects")))
    rejects = pl.concat(got).select("source", "source_row", "source_item", "reason")
    planted = pl.read_parquet(world / "truth" / "planted.parquet")
    planted = planted.filter(pl.col("source").str.starts_with("pickapic") | pl.col("source").str.starts_with("hpdv2")
                             | (pl.col("source") == "table:pairs.csv"))
    joined = planted.join(rejects, on=["source", "source_row", "source_item"], how="left", suffix="_got")
    assert joined.height > 12
    wrong = joined.filter(pl.col("reason_got").is_null() | (pl.col("reason") != pl.col("reason_got")))
    assert wrong.height == 0, wrong


def test_pipeline_errors_name_the_fix(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[pipeline]\ndataset = "{nowhere}/x"\n[[stage]]\ncommand = "flag"\n')
    with pytest.raises(PipelineError, match="unknown parameter {nowhere}"):
        load(path)
    path.write_text('[pipeline]\ndataset = "x"\n[[stage]]\ncommand = "flg"\n')
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "'flg' is not a prefcurate command" in result.output


def test_a_stage_under_a_run_shares_its_executor_unless_it_sets_its_own():
    from curate.cli.common import PipelineRun, pipeline_run, stage_executor
    from curate.options import ExecutorName
    from curate.executors import LocalExecutor

    shared = LocalExecutor()
    with pipeline_run(PipelineRun(shared, ("local", None, 2, False))) as run:
        with stage_executor(ExecutorName.local, None, 2) as ex:
            assert ex is shared
        with stage_executor(ExecutorName.dask, None, 1) as ex:  # the stage's own: a real LocalCluster
            assert ex is not shared and ex.name == "dask"
        assert run.skipped == []
    with stage_executor(ExecutorName.local, None, 2) as ex:  # outside the run: each command its own
        assert ex is not shared


def test_positional_arguments_come_from_the_commands(tmp_path):
    import typer

    from curate.cli.run import positionals

    found = positionals(typer.main.get_command(app))
    assert found["export"] == ["dataset", "out"] and found["ingest"] == ["sources"] and found["evaluate"] == []
    path = tmp_path / "p.toml"
    path.write_text('[pipeline]\ndataset = "ds"\n[[stage]]\ncommand = "verify"\n'
                    '[[stage]]\ncommand = "export"\nout = "hf"\noverwrite = true\n')
    steps = load(path, positionals=found).steps
    assert [s.argv for s in steps] == [["verify", "ds"], ["export", "ds", "hf", "--overwrite"]]


def test_a_failing_stage_stops_the_run_and_names_itself(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(f'[pipeline]\ndataset = "{tmp_path}/ds"\n[[stage]]\ncommand = "demo-data"\n'
                    f'out_dir = "{tmp_path}/w"\npairs = 40\nformats = "pickapic"\n[[stage]]\ncommand = "ingest"\n'
                    f'sources = ["{tmp_path}/w/pickapic"]\nformat = "pickapic"\n[[stage]]\ncommand = "flag"\n')
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2, result.output
    assert "no 'consensus' table" in result.output and "stage 3: `flag` failed (exit 2)" in result.output
    assert "funnel of" not in result.output
