"""`prefcurate run PIPELINE.toml`: every stage of a declarative pipeline, skipping what is done."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli.common import DashboardOpt, ExecutorName, ExecutorOpt, ResumeOpt, SchedulerOpt, WorkersOpt, fail
from curate.cli.output import json_summary

EXECUTOR_OPTIONS = ("executor", "scheduler", "workers", "dashboard", "resume")


@json_summary
def run(
    pipeline_file: Annotated[Path, typer.Argument(metavar="PIPELINE.toml", help="A pipeline (see pipelines/).",
                                                  exists=True, dir_okay=False)],
    param: Annotated[Optional[list[str]], typer.Option("--param", help="Override a [params] value: KEY=VALUE "
                     "(repeatable).")] = None,
    executor: ExecutorOpt = ExecutorName.local,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = 2,
    dashboard: DashboardOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Run every stage of a pipeline in order; stages complete under the same fingerprint are skipped.

    The executor options apply to every stage that runs over shards and sets none of its own (a
    stage's own executor, scheduler or workers in the file are honoured: it gets its own executor).
    Ends with the funnel.
    """
    from curate.cli import app
    from curate.cli.common import PipelineRun, open_executor, pipeline_run
    from curate.pipeline import PipelineError, load

    overrides = {}
    for item in param or []:
        if "=" not in item:
            fail(f"--param {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    command = typer.main.get_command(app)
    try:
        pipeline = load(pipeline_file, overrides, positionals=positionals(command))
    except PipelineError as exc:
        fail(str(exc))
    given = {"executor": executor.value, "scheduler": scheduler, "workers": workers, "dashboard": dashboard,
             "resume": resume}
    with open_executor(executor, scheduler, workers, dashboard) as shared:
        with pipeline_run(PipelineRun(shared, (executor.value, scheduler, workers, dashboard))) as run:
            _run_steps(pipeline, command, given, run)
    shown = print_funnel(pipeline.dataset)
    return {"pipeline": str(pipeline_file), "dataset": str(pipeline.dataset), "steps": len(pipeline.steps),
            "stages_skipped": list(run.skipped), "funnel": asdict(shown) if shown else None}


def positionals(command) -> dict[str, list[str]]:
    """Each command's positional arguments, in order, as the click command declares them."""
    return {name: [p.name for p in sub.params if p.param_type_name == "argument"]
            for name, sub in command.commands.items()}


def _run_steps(pipeline, command, given: dict, run) -> None:
    for number, step in enumerate(pipeline.steps, 1):
        sub = command.commands[step.command]
        accepts = {p.name for p in sub.params}
        argv = list(step.argv)
        for name in EXECUTOR_OPTIONS:
            if name in accepts and given[name] not in (None, False) and f"--{name}" not in argv:
                argv += [f"--{name}"] if given[name] is True else [f"--{name}", str(given[name])]
        typer.secho(f"\n[{number}/{len(pipeline.steps)}] prefcurate {' '.join(argv)}", bold=True)
        if _already_written(pipeline.dataset, step.command, argv):
            typer.echo("  skipped: already written with the same options")
            continue
        before = len(run.skipped)
        _invoke(command, step, argv)
        if len(run.skipped) > before:
            typer.echo("  (complete under the same fingerprint: skipped)")
        _record_written(pipeline.dataset, step.command, argv)


def _invoke(command, step, argv: list[str]) -> None:
    """Run one stage's command as typed (a usage error is printed as it would be); a failure names the
    stage in the pipeline file and stops the run with the command's exit code."""
    try:
        command.main(args=argv, prog_name="prefcurate", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if code:
            fail(f"{step.where}: `{step.command}` failed (exit {code}); fix it and rerun: finished stages will be "
                 f"skipped", code=code)


def _marker(dataset: Path, command: str, argv: list[str]) -> tuple[Path, str]:
    digest = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:16]
    return dataset / "runs" / "_pipeline" / f"{command}.json", digest


def _train_marker(dataset: Path, argv: list[str]) -> tuple[Path | None, str]:
    """train writes no dataset table: its output folder records the options and the dataset stages'
    fingerprints it was trained under (None: no output folder given; train itself will say so)."""
    flag = next((f for f in ("--output-dir", "--out", "-o") if f in argv[:-1]), None)
    if flag is None:
        return None, ""
    out = Path(argv[argv.index(flag) + 1])
    stages = sorted((dataset / "runs").glob("*/fingerprint.json"))
    digest = hashlib.sha256(json.dumps([argv, [(p.parent.name, p.read_text()) for p in stages]]).encode())
    return out / "pipeline.json", digest.hexdigest()[:16]


def _already_written(dataset: Path, command: str, argv: list[str]) -> bool:
    """demo-data writes raw files that are inputs to ingest: rewriting them would redo everything;
    train is done when its final model exists under the same options and dataset stages."""
    if command == "train":
        marker, digest = _train_marker(dataset, argv)
        return marker is not None and marker.is_file() and json.loads(marker.read_text()).get("inputs") == digest and \
            (marker.parent / "final").is_dir()
    if command != "demo-data":
        return False
    marker, digest = _marker(dataset, command, argv)
    return marker.is_file() and json.loads(marker.read_text()).get("argv") == digest and \
        (Path(argv[1]) / "world.json").is_file()


def _record_written(dataset: Path, command: str, argv: list[str]) -> None:
    from curate.dataset import write_json_atomic

    if command == "demo-data":
        marker, digest = _marker(dataset, command, argv)
        write_json_atomic(marker, {"argv": digest})
    elif command == "train":
        marker, digest = _train_marker(dataset, argv)
        if marker is not None:
            write_json_atomic(marker, {"inputs": digest})


def print_funnel(dataset_dir: Path):
    """The funnel as the report and the dataset card show it (curate.funnel); returns it (None
    before ingest)."""
    from curate.cli.common import print_counts
    from curate.dataset import Dataset
    from curate.funnel import funnel

    ds = Dataset(dataset_dir)
    if ds.has("pairs"):
        steps = funnel(ds)
        print_counts(f"funnel of {dataset_dir}", [(label, n) for label, n, _ in steps.steps()])
        typer.echo(f"{steps.ties:,} accepted pairs are ties.")
        return steps
    return None
