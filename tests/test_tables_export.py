"""Reading a dataset from outside: `export --tables parquet`, and README's snippets run as written."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curated_data import build_with_clip
from curate.cli import app
from curate.dataset import Dataset
from curate.publish.tables import export_tables

runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "README.md"


def reading_blocks() -> list[tuple[str, str]]:
    """(language, code) of every code block in README's "Reading the tables from outside" section."""
    section = README.read_text().split("## Reading the tables from outside\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(python|bash)\n(.*?)```", section, re.S)


BLOCKS = reading_blocks()
PYTHON = [code for lang, code in BLOCKS if lang == "python"]


@pytest.fixture(scope="module")
def reading_dir(tmp_path_factory) -> Path:
    """A folder holding `ds` (a curated dataset with CLIP scores), after README's shell lines ran in it."""
    root = tmp_path_factory.mktemp("reading")
    shutil.copytree(build_with_clip(), root / "ds")
    here = Path.cwd()
    os.chdir(root)
    try:
        for line in (line for lang, code in BLOCKS if lang == "bash" for line in code.splitlines() if line):
            program, *args = shlex.split(line)
            assert program == "prefcurate", line
            result = runner.invoke(app, args)
            assert result.exit_code == 0, (line, result.output)
    finally:
        os.chdir(here)
    return root


def test_readme_has_a_block_per_reader():
    assert [next(w for w in ("polars", "pandas", "pyarrow.dataset", "duckdb") if f"import {w}" in code)
            for code in PYTHON] == ["polars", "pandas", "pyarrow.dataset", "duckdb"]


@pytest.mark.parametrize("code", PYTHON, ids=["polars", "pandas", "pyarrow.dataset", "duckdb"])
def test_readme_snippet_runs(code, reading_dir, monkeypatch, capsys):
    if "import duckdb" in code:
        pytest.importorskip("duckdb", reason="duckdb comes with the dev extra (pip install '.[dev]')")
    monkeypatch.chdir(reading_dir)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip()


def test_every_table_keeps_its_rows_types_and_schema_metadata(tmp_path):
    ds = Dataset(build_with_clip())
    listing = export_tables(ds.root, tmp_path / "out")
    assert sorted(listing) == ds.tables() and "image_embeddings" in listing
    assert json.loads((tmp_path / "out" / "tables.json").read_text())["tables"] == listing
    for table, entry in listing.items():
        shards = ds.shards(table)
        assert entry["files"] == [f"{s.stem}.parquet" for s in shards] and entry["rows"] == ds.num_rows(table)
        for shard in shards:
            with ipc.open_file(str(shard)) as reader:
                arrow_schema = reader.schema
            written = pq.read_schema(tmp_path / "out" / table / f"{shard.stem}.parquet")
            assert written.equals(arrow_schema, check_metadata=True), table
        assert written.metadata[b"prefcurate.schema"].decode() == entry["schema"]
    assert listing["scores"]["key"] == ["image_id", "prompt_id", "scorer"]


def test_a_failed_export_leaves_nothing(tmp_path):
    def stop_after_first(task, done, total, note=""):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_tables(build_with_clip(), tmp_path / "out", progress=stop_after_first)
    assert list(tmp_path.iterdir()) == []


def test_export_tables_refuses_what_it_cannot_do(tmp_path):
    ds = str(build_with_clip())
    assert runner.invoke(app, ["export", ds, str(tmp_path / "o"), "--tables", "parquet", "--table", "pairs"]).exit_code == 0
    again = runner.invoke(app, ["export", ds, str(tmp_path / "o"), "--tables", "parquet"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    replaced = runner.invoke(app, ["export", ds, str(tmp_path / "o"), "--tables", "parquet", "--table", "annotators",
                                   "--overwrite"])
    assert replaced.exit_code == 0 and sorted(p.name for p in (tmp_path / "o").iterdir()) == ["annotators", "tables.json"]
    unknown = runner.invoke(app, ["export", ds, str(tmp_path / "u"), "--tables", "parquet", "--table", "paris"])
    assert unknown.exit_code == 2 and "paris" in unknown.output and "pairs" in unknown.output
    alone = runner.invoke(app, ["export", ds, str(tmp_path / "a"), "--table", "pairs"])
    assert alone.exit_code == 2 and "--tables parquet" in alone.output
