"""One progress system for every long task: rich bars on a terminal, plain log lines elsewhere.

On a terminal (stderr is a tty) each task gets a rich bar. Anywhere else (a log file, CI, a pipe)
nothing is redrawn, since carriage returns make logs unreadable: a task prints a plain line to
stderr every PLAIN_EVERY_SECONDS while it runs, and one when it finishes.

    with progress_bars() as update:
        for i, shard in enumerate(shards, 1):
            ...
            update("ingest", i, len(shards), note="12 rejects")

A second ``progress_bars()`` opened while one is live (a stage inside `prefcurate run`, the
trainer inside a command) adds its tasks to the live display: rich draws one display at a time.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, TextIO

# (task, done, total or None when unknown, note) -> None
Update = Callable[..., None]

PLAIN_EVERY_SECONDS = 30.0

_live: list[Update] = []  # the display open now, if any (rich allows one live display at a time)


@contextmanager
def progress_bars(stream: Optional[TextIO] = None, every: float = PLAIN_EVERY_SECONDS) -> Iterator[Update]:
    """Yield ``update(task, done, total=None, note="")``: rich bars on a tty ``stream`` (default
    stderr), else a plain line per task every ``every`` seconds and at its end."""
    if _live:
        yield _live[-1]
        return
    stream = sys.stderr if stream is None else stream
    if _is_tty(stream):
        with _rich_bars(stream) as update:
            yield from _while_live(update)
    else:
        yield from _while_live(PlainLines(stream, every))


def _while_live(update: Update) -> Iterator[Update]:
    _live.append(update)
    try:
        yield update
    finally:
        _live.remove(update)


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def _rich_bars(stream: TextIO) -> Iterator[Update]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[note]}"))
    with Progress(*columns, console=Console(file=stream)) as bars:
        tasks: dict[str, int] = {}

        def update(task: str, done: int, total: Optional[int] = None, note: str = "") -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total, note=note)
            bars.update(tasks[task], completed=done, total=total, note=note)

        yield update


class PlainLines:
    """Progress as plain lines, for logs: ``task: done/total (pct%) note [elapsed]``, no redraws.

    A task prints a line every ``every`` seconds while it runs and one when it finishes, so a task
    shorter than ``every`` prints one line."""

    def __init__(self, stream: TextIO, every: float = PLAIN_EVERY_SECONDS):
        self.stream, self.every = stream, every
        self.started: dict[str, float] = {}
        self.printed: dict[str, tuple[float, int]] = {}  # task -> (when, done) of its last line

    def __call__(self, task: str, done: int, total: Optional[int] = None, note: str = "") -> None:
        now = time.monotonic()
        started = self.started.setdefault(task, now)
        last_time, last_done = self.printed.get(task, (started, None))
        finished = total is not None and done >= total
        if (finished and done != last_done) or now - last_time >= self.every:
            self.printed[task] = (now, done)
            self.stream.write(plain_line(task, done, total, note, now - started) + "\n")
            self.stream.flush()


def plain_line(task: str, done: int, total: Optional[int], note: str, elapsed: float) -> str:
    """``train: 30/2,000 (2%) loss 0.69 [12s]``; ``verify: 3`` when the total is unknown."""
    count = f"{done:,}" if total is None else f"{done:,}/{total:,} ({done / total:.0%})" if total else "0/0"
    return " ".join(part for part in (f"{task}:", count, note, f"[{elapsed:.0f}s]") if part)
