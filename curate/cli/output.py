"""What a command prints when it is done: a table for people, and with --json its summary as one
JSON object on stdout.

A stage command is wrapped by ``json_summary`` and returns its summary as a dict (counts, reasons,
outputs). Under --json everything it prints for people (tables, notes, the pipeline's step lines)
goes to stderr, so stdout holds exactly one JSON object: `prefcurate flag ds --json | jq .flagged`.
"""
from __future__ import annotations

import functools
import inspect
import json
import sys
import time
from contextlib import redirect_stdout
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary (counts, reasons, timings, outputs) "
                                       "as one JSON object on stdout; the table goes to stderr.")]


class FailedWithSummary(typer.Exit):
    """A command that failed but has a summary to give (verify's problems): --json prints it, then exits."""

    def __init__(self, summary: dict, code: int):
        super().__init__(code)
        self.summary = summary


def fail_with_summary(message: str, summary: dict, code: int = 1) -> None:
    """Like common.fail (one line on stderr, no traceback, exit ``code``), keeping the summary for --json."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise FailedWithSummary(summary, code)


def json_summary(command):
    """Give a command --json. ``command`` returns its summary as a dict (or None: nothing beyond the
    command's name and its wall seconds, which every summary has). A failure prints no JSON, unless
    it is a FailedWithSummary."""

    @functools.wraps(command)
    def run(*args, json_out: bool = False, typer_context: typer.Context, **kwargs):
        if not json_out:
            return command(*args, **kwargs)
        stdout, started = sys.stdout, time.perf_counter()
        try:
            with redirect_stdout(sys.stderr):
                summary = command(*args, **kwargs) or {}
        except FailedWithSummary as failed:
            _write_json(stdout, typer_context, failed.summary, started)
            raise
        _write_json(stdout, typer_context, summary, started)

    signature = inspect.signature(command, eval_str=True)  # typer reads the annotations from it
    extra = {"json_out": JsonOpt, "typer_context": typer.Context}  # typer passes the context to a Context parameter
    options = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False if name == "json_out" else
                                 inspect.Parameter.empty, annotation=kind) for name, kind in extra.items()]
    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *options])
    run.__annotations__ = {**command.__annotations__, **extra}
    return run


def _write_json(stdout, context, summary: dict, started: float) -> None:
    summary = {"command": _command_name(context), **summary, "seconds": round(time.perf_counter() - started, 3)}
    stdout.write(json.dumps(summary, default=_plain) + "\n")
    stdout.flush()


def _plain(value):
    """numpy scalars and arrays as the numbers they hold; paths and anything else as text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _command_name(context) -> str:
    """``scores import``: the names below the program's, however it was started (`python -m ...`)."""
    names = []
    while context.parent is not None:
        names.append(context.info_name)
        context = context.parent
    return " ".join(reversed(names))


def stage_summary(report) -> dict:
    """A stage's report (and its later passes' and the stages' it needed first) as data: counters, rows per table written, seconds."""
    reports = [r for need in report.needs for r in (need, *need.passes)] + [report, *report.passes]
    return {"dataset_stage": report.stage, "already_complete": report.already_complete,
            "tables": {t: entry["rows"] for r in reports for t, entry in r.tables.items()},
            "stats": {k: v for r in reports for k, v in r.stats.items()},
            "stage_seconds": round(sum(r.wall_seconds for r in reports), 3)}


def prefixed(stats: dict, prefix: str) -> dict:
    """The counters named ``PREFIX:KEY`` as {KEY: n} (reject reasons, flag reasons, verdicts)."""
    return {k.split(":", 1)[1]: v for k, v in sorted(stats.items()) if k.startswith(f"{prefix}:")}


def print_counts(title: str, rows: list[tuple[str, object]]) -> None:
    """A two-column table for people (on stdout, which --json sends to stderr)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    Console().print(table)
