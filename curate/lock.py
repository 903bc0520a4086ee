"""One writer per dataset: an advisory lock on ``DATASET/.lock`` that names its holder.

The lock is ``flock`` on the file, so the kernel releases it when the holder exits, however it
exits: the lock of a process that died (``kill -9``, a crash, a lost machine) is free at once and
the next writer takes it over, with no stale-lock guessing and no window where two writers both
believe they hold it. The file's content only describes the holder (pid, host, command, since
when) for the message a refused writer gets. The file itself is never deleted: deleting a locked
file would let a second writer lock a new file of the same name.

Within one process the lock is re-entrant (a pipeline holds it across its stages).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from curate.dataset import DatasetError

LOCK_FILE = ".lock"
_HELD: dict[str, list] = {}  # real path of the dataset -> [file descriptor, depth]


class DatasetLocked(DatasetError):
    """Another process is writing the dataset."""


def holder_description(root: Path) -> dict:
    """What the lock file says about its (last) holder; empty when nobody wrote it yet."""
    try:
        return json.loads((Path(root) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _refusal(root: Path, stage: str) -> str:
    who = holder_description(root)
    if not who:
        return f"{root} is being written by another process; wait for it to finish before running {stage}"
    return (f"{root} is being written by pid {who.get('pid')} on {who.get('host')} (`{who.get('command')}`, stage "
            f"{who.get('stage')}) since {who.get('since')}; wait for it to finish, or stop that process, then run "
            f"{stage} again")


@contextmanager
def writer_lock(root: str | os.PathLike, stage: str):
    """Hold the dataset's writer lock; yields True when this call took it (False: already held here)."""
    root = Path(root)
    key = os.path.realpath(root)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield False
        finally:
            _HELD[key][1] -= 1
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DatasetError(f"{root}: cannot open its writer lock {LOCK_FILE} ({exc.strerror}); a dataset is "
                           f"written only where you may write, copy it somewhere writable first") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatasetLocked(_refusal(root, stage)) from None
    _describe(fd, stage)
    _HELD[key] = [fd, 1]
    try:
        yield True
    finally:
        del _HELD[key]
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _describe(fd: int, stage: str) -> None:
    """Replace the (possibly stale) description with this process's."""
    since = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                       "stage": stage, "since": since})
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)
    os.fsync(fd)
