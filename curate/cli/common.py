"""Options and error handling shared by the stage commands (typer and stdlib only at import)."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli.output import print_counts  # noqa: F401  (re-exported for the commands)
from curate.options import Device, ExecutorName, Precision  # noqa: F401  (re-exported for the commands)

ExecutorOpt = Annotated[ExecutorName, typer.Option("--executor", help="local: in-process on one core, no server (default). "
                                                   "dask: a LocalCluster of --workers processes (one core each), or --scheduler.")]
SchedulerOpt = Annotated[Optional[str], typer.Option("--scheduler", help="Address of a running Dask scheduler "
                                                     "(tcp://HOST:PORT); implies --executor dask.")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Worker processes of the Dask LocalCluster "
                                          "(one core each).")]
DashboardOpt = Annotated[bool, typer.Option("--dashboard", help="Serve the Dask LocalCluster's dashboard (or "
                                            "find the scheduler's) and print its address.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Keep the shards an interrupted run finished; refused "
                                         "if the config or the inputs changed.")]
DatasetArg = Annotated[Path, typer.Argument(help="The dataset directory (made by `prefcurate ingest`).",
                                            exists=True, file_okay=False, dir_okay=True)]


@dataclass
class PipelineRun:
    """What `prefcurate run` hands down to the commands it runs: stages complete under the same
    fingerprint are skipped (their names collect in ``skipped``), and a stage runs on the run's one
    executor (one Dask cluster for the whole pipeline) unless its own executor options differ from
    ``settings``, the (executor, scheduler, workers) that executor was made with."""

    executor: object
    settings: tuple[str, str | None, int, bool]
    skipped: list[str] = field(default_factory=list)


# The run in progress, if any: set only by `pipeline_run`, for the commands it calls.
_RUN: ContextVar[PipelineRun | None] = ContextVar("prefcurate_pipeline_run", default=None)


@contextmanager
def pipeline_run(run: PipelineRun):
    """Run the commands called inside this block as stages of ``run``."""
    token = _RUN.set(run)
    try:
        yield run
    finally:
        _RUN.reset(token)


def fail(message: str, code: int = 2) -> None:
    """Print an error for a person (no traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextmanager
def stage_executor(executor: ExecutorName = ExecutorName.local, scheduler: str | None = None, workers: int = 2,
                   dashboard: bool = False):
    """The executor a command runs its stages on: the pipeline run's shared one when the stage asks for
    the same executor options, else its own."""
    run = _RUN.get()
    if run is not None and run.settings == (executor.value, scheduler, workers, dashboard):
        yield run.executor
        return
    with open_executor(executor, scheduler, workers, dashboard) as ex:
        yield ex


@contextmanager
def open_executor(executor: ExecutorName, scheduler: str | None, workers: int, dashboard: bool):
    """Make the executor the options ask for (an unusable combination is one clear error), saying
    where its dashboard is when one was asked for."""
    from curate.executors import make_executor

    try:
        made = make_executor(executor.value, scheduler=scheduler, workers=workers, dashboard=dashboard)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    with made as ex:
        if dashboard:
            typer.echo(f"Dask dashboard: {ex.dashboard}" if ex.dashboard else
                       f"Dask dashboard: none (the scheduler at {scheduler} was started without one)", err=True)
        yield ex


def run_stage_cli(stage, dataset_dir: Path, executor: ExecutorName = ExecutorName.local,
                  scheduler: str | None = None, workers: int = 2, resume: bool = False, skip_complete: bool = False,
                  dashboard: bool = False):
    """Run a stage for a command: expected failures become one clear message, not a traceback."""
    from curate.dataset import DatasetError
    from curate.runner import FingerprintMismatch, is_complete, run_stage
    from curate.schema import SchemaError

    expected = (FingerprintMismatch, DatasetError, SchemaError, *_source_errors())
    run = _RUN.get()
    skip_complete = skip_complete or run is not None
    try:
        if skip_complete and is_complete(stage, _dataset(dataset_dir)):
            if run is not None:
                run.skipped.append(stage.name)
            return run_stage(stage, dataset_dir, skip_complete=True)  # reads the finished run's report
        with stage_executor(executor, scheduler, workers, dashboard) as ex:
            return run_stage(stage, dataset_dir, ex, resume=resume, skip_complete=skip_complete)
    except expected as exc:
        fail(str(exc))


def _dataset(path):
    from curate.dataset import Dataset

    return Dataset(path)


def _source_errors() -> tuple[type[Exception], ...]:
    from curate.ingest.pickapic import SourceError

    return (SourceError,)
