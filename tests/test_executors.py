"""Executors: what a task may use (one core, in-process as on a Dask worker) and the Dask dashboard."""
from __future__ import annotations

import os
import urllib.request

import torch
from typer.testing import CliRunner

from curate.cli import app
from curate.executors import THREAD_VARIABLES, LocalExecutor, make_executor
from ingest_data import write_pickapic

runner = CliRunner()


def _task_threads(_item) -> tuple[int, dict]:
    import pyarrow as pa

    return max(torch.get_num_threads(), pa.cpu_count()), {v: os.environ.get(v) for v in THREAD_VARIABLES}


def test_in_process_tasks_run_on_one_thread_and_the_process_gets_its_threads_back():
    import pyarrow as pa

    torch.set_num_threads(2)
    pa.set_cpu_count(2)
    before = {v: os.environ.get(v) for v in THREAD_VARIABLES}
    [(threads, env)] = LocalExecutor().map(_task_threads, [0], desc="probe")
    assert threads == 1 and set(env.values()) == {"1"}
    assert torch.get_num_threads() == 2 and pa.cpu_count() == 2
    assert {v: os.environ.get(v) for v in THREAD_VARIABLES} == before


def test_dask_workers_run_on_one_thread_too():
    with make_executor("dask", workers=1) as ex:
        [(threads, env)] = ex.map(_task_threads, [0], desc="probe")
    assert threads == 1 and env["OMP_NUM_THREADS"] == "1"


def test_the_dashboard_is_served_while_the_cluster_runs():
    with make_executor("dask", workers=1, dashboard=True) as ex:
        assert ex.dashboard and ex.dashboard.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(ex.dashboard, timeout=30) as page:
            assert page.status == 200 and b"Dask" in page.read()
    assert make_executor("dask", workers=1).dashboard is None  # not asked for: not served


def test_ingest_prints_the_dashboard_address_and_refuses_it_in_process(tmp_path):
    source, _ = write_pickapic(tmp_path / "pp")
    result = runner.invoke(app, ["ingest", str(source), "-f", "pickapic", "-o", str(tmp_path / "ds"),
                                 "--executor", "dask", "--workers", "1", "--dashboard"])
    assert result.exit_code == 0, result.output
    assert "Dask dashboard: http://127.0.0.1:" in result.output
    refused = runner.invoke(app, ["ingest", str(source), "-f", "pickapic", "-o", str(tmp_path / "ds2"), "--dashboard"])
    assert refused.exit_code == 2 and "add --executor dask" in refused.output
