"""One progress system: rich bars on a terminal, plain lines (no carriage returns) in logs."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys

from curate.progress import PlainLines, plain_line, progress_bars

PLAIN = re.compile(r"^[\w ()]+: [\d,]+/[\d,]+ \(\d+%\).* \[\d+s\]$")


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a console's stderr does."""

    def isatty(self) -> bool:
        return True


def test_plain_line_reads_as_worked_out():
    assert plain_line("train", 30, 2000, "loss 0.6931", 12.4) == "train: 30/2,000 (2%) loss 0.6931 [12s]"
    assert plain_line("verify", 3, None, "", 0.2) == "verify: 3 [0s]"
    assert plain_line("ingest", 0, 0, "", 1.0) == "ingest: 0/0 [1s]"


def test_a_log_gets_one_line_per_finished_task_and_no_redraws():
    log = io.StringIO()
    with progress_bars(stream=log, every=3600) as update:
        for done in range(5):
            update("shards", done, 4)  # the last call repeats done == total: printed once
        update("tables", 2, 2, note="pairs")
    assert log.getvalue().splitlines() == [line for line in log.getvalue().splitlines() if PLAIN.match(line)]
    assert [line.split(" [")[0] for line in log.getvalue().splitlines()] == ["shards: 4/4 (100%)",
                                                                             "tables: 2/2 (100%) pairs"]


def test_a_long_task_logs_a_line_every_interval():
    log = io.StringIO()
    update = PlainLines(log, every=0)  # every update is past the interval
    for done in range(1, 4):
        update("train", done, 10)
    assert [line.split(" [")[0] for line in log.getvalue().splitlines()] == [
        "train: 1/10 (10%)", "train: 2/10 (20%)", "train: 3/10 (30%)"]


def test_a_terminal_gets_rich_bars_and_nested_tasks_share_them():
    screen = Terminal()
    with progress_bars(stream=screen) as outer:
        with progress_bars(stream=io.StringIO()) as inner:  # rich draws one live display at a time
            assert inner is outer
        outer("encode", 3, 3)
    assert "encode" in screen.getvalue() and "3/3" in screen.getvalue()


def test_training_progress_in_a_log_is_plain_lines(tmp_path, capsys):
    from curate.train.metrics import MetricsLog

    log = MetricsLog(tmp_path, enabled=True, tensorboard=False, progress=True, total=2, start=0)
    for step in (1, 2):
        log.log(step, {"loss": 0.5, "implicit_acc": 0.75})
    log.close()
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines()[-1].startswith("train: 2/2 (100%) loss 0.5000 acc 0.75 [")


def test_a_command_logged_to_a_file_has_plain_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run([sys.executable, "-m", "curate.cli", "demo-data", str(tmp_path / "w"), "--pairs", "20",
                           "--image-size", "16", "--formats", "pickapic"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "world written to" in done.stdout, done.stderr
    assert "\r" not in done.stderr and "\x1b[" not in done.stderr
    assert any(PLAIN.match(line) for line in done.stderr.splitlines()), done.stderr
