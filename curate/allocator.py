"""Keep freed memory for reuse: glibc's allocator tuned for numpy's large temporaries.

By default glibc serves every allocation above its mmap threshold (128 KiB, adapting up to 32 MiB)
with fresh pages from the kernel and returns them when freed, so an expression over 10M judgements
(80 MB per temporary) page-faults its way through new memory each time: at 10M judgements the
crowd model's fit spent 18 s of 56 s in the kernel. With the threshold and the trim threshold at
1 GiB, freed blocks stay in the heap and the next temporary reuses them: the fit runs 1.2x faster
(BENCHMARKS.md, 2026-12-08), for a peak RSS up to a few hundred MB higher.

``keep_freed_memory()`` is called by the runner in each process that runs a stage (the driver and
every Dask worker); it does nothing off glibc, nor when the user tuned malloc themselves (a
``MALLOC_*_`` variable or ``GLIBC_TUNABLES`` in the environment), nor with
``PREFCURATE_MALLOC=system``.
"""
from __future__ import annotations

import os
import sys

GiB = 1 << 30
SETTINGS = {-3: GiB, -1: GiB, -2: 64 << 20}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD (mallopt(3))
USER_TUNED = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc once per process (see the module docstring); True if it is tuned."""
    global _done
    if _done is None:
        _done = _tune()
    return _done


def _tune() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("PREFCURATE_MALLOC", "") == "system":
        return False
    if any(name in os.environ for name in USER_TUNED):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries: leave their allocator alone
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in SETTINGS.items())
