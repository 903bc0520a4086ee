"""The demo pipeline on Dask, for real: a LocalCluster of 2 worker processes, and a separately started
`dask scheduler` + `dask worker` on loopback; every table byte-identical to the in-process run."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curate.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run_demo(out: Path, *extra: str) -> None:
    result = runner.invoke(app, ["run", str(ROOT / "pipelines" / "demo.toml"), "--param", f"out={out}",
                                 "--param", "pairs=300", "--param", "train_steps=1", "--param", "eval_prompts=2",
                                 *extra])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "evaluation" / "summary.json").read_text())  # the loop closed: trained, evaluated
    assert summary["tuned"] == ["dpo", "adaptive-offline"] and summary["images_per_prompt"] == 2, summary["tuned"]


def tables(out: Path) -> dict[str, bytes]:
    base = out / "dataset" / "tables"
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*.arrow"))}


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_demo(out)
    return tables(out)


def test_demo_on_a_local_cluster_matches_in_process(in_process, tmp_path):
    run_demo(tmp_path, "--executor", "dask", "--workers", "2")
    got = tables(tmp_path)
    assert got.keys() == in_process.keys() and len(got) > 10
    assert [name for name in got if got[name] != in_process[name]] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def scheduler(tmp_path):
    """`dask scheduler` and one `dask worker` (2 processes) on 127.0.0.1, stopped after the test."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = shutil.which("dask", path=os.path.dirname(sys.executable)) or "dask"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)]
    try:
        procs.append(subprocess.Popen([dask, "worker", address, "--nworkers", "2", "--nthreads", "1",
                                       "--no-dashboard", "--local-directory", str(tmp_path / "dask-worker")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        from dask.distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout="5s") as client:
                    if len(client.scheduler_info()["workers"]) >= 2:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the dask scheduler and worker did not come up within 60 s")
            time.sleep(0.5)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_demo_on_a_separate_scheduler_and_worker_matches_in_process(in_process, tmp_path, scheduler):
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", scheduler)
    run_demo(tmp_path / "out", "--scheduler", scheduler)
    got = tables(tmp_path / "out")
    assert [name for name in got if got[name] != in_process.get(name)] == []
    assert got.keys() == in_process.keys()
