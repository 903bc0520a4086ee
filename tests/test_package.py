"""Packaging: the wheel carries the schemas, the command starts without heavy imports."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curate import schema
from curate.cli import app

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pyarrow", "polars", "dask", "diffusers", "open_clip", "numpy", "datasets")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(out), str(ROOT)], check=True, capture_output=True, timeout=300)
    return next(out.glob("prefcurate-*.whl"))


def test_wheel_ships_every_schema(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for declared in (ROOT / "schemas").glob("*.json"):
        assert f"curate/schemas/{declared.name}" in names
    assert not [n for n in names if n.startswith("schemas/")]  # no importable top-level `schemas`
    assert any(n.endswith("entry_points.txt") for n in names)
    # the demo's scorer must come with a plain `pip install .`
    assert "curate/assets/domain_clip/open_clip_model.safetensors" in names
    # and so must `--model world`: a whole diffusers folder
    for part in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"):
        assert f"curate/assets/world_model/{part}" in names


def test_the_installed_wheel_runs_from_its_own_schemas(wheel, tmp_path):
    """Installed into a fresh venv (the dependencies seen from this one), away from the source tree."""
    import sysconfig

    from ingest_data import write_pickapic

    venv, env = tmp_path / "venv", {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True, env=env, timeout=300)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # then this environment's packages, after the venv's own (so its curate is the wheel's)
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run([venv / "bin" / "python", "-c", "import curate.schema as s; print(s.schema_dir())"],
                           capture_output=True, text=True, check=True, env=env, cwd=tmp_path).stdout.strip()
    assert Path(where) == site / "curate" / "schemas"
    prefcurate = str(venv / "bin" / "prefcurate")
    assert "ingest" in subprocess.run([prefcurate, "--help"], capture_output=True, text=True, check=True, env=env).stdout
    source, _ = write_pickapic(tmp_path / "raw")
    done = subprocess.run([prefcurate, "ingest", str(source), "-f", "pickapic", "-o", str(tmp_path / "ds")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "reconciles" in done.stdout, done.stderr
    assert len(list((tmp_path / "ds" / "tables" / "pairs").glob("*.arrow"))) == 1


def test_one_schema_folder_and_no_setup_py():
    assert not (ROOT / "setup.py").exists() and not (ROOT / "schemas" / "__init__.py").exists()
    link = ROOT / "curate" / "schemas"  # what the package, editable or not, reads: a link to the one folder
    assert link.is_symlink() and link.resolve() == ROOT / "schemas"
    assert schema.schema_dir() == Path(schema.__file__).with_name("schemas")


def test_help_imports_nothing_heavy():
    code = "import sys; import curate.cli; print(','.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_every_command_has_help():
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in app.registered_commands:
        name = command.name
        out = runner.invoke(app, [name, "--help"])
        assert out.exit_code == 0 and "Usage" in out.output, name


def test_declared_schemas_load_and_validate():
    for name in schema.declared_tables():
        declared = schema.load(name)
        dims = {f["name"]: 4 for f in declared.fields if f["type"].endswith(",*>")}
        assert declared.empty(**dims).schema.metadata[b"prefcurate.schema"] == name.encode()


def test_version_flag_needs_no_command():
    from curate import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"prefcurate {__version__}"


def _commands(group, path=()):
    import click

    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_option_has_help_and_reads_whole_at_80_columns():
    import typer

    for path, command in _commands(typer.main.get_command(app)):
        undocumented = [p.name for p in command.params if getattr(p, "help", "x") in (None, "") and not p.hidden]
        assert undocumented == [], (path, undocumented)
        out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
        assert out.exit_code == 0 and "…" not in out.output, (path, out.output)
        assert max(len(line) for line in out.output.splitlines()) <= 80, path
