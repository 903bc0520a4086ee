"""curate.allocator: glibc keeps freed memory for the next large temporary (in a fresh process each)."""
import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, json
import numpy as np
from curate.allocator import keep_freed_memory
tuned = keep_freed_memory()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
x = np.ones(10_000_000)  # 80 MB: above glibc's default mmap threshold
print(json.dumps({"tuned": tuned, "mapped_mb": libc.mallinfo2().hblkhd / 2**20}))
"""


def probe(**env) -> dict:
    import json

    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "PREFCURATE_MALLOC")}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc only")


@glibc
def test_large_arrays_come_from_the_heap_once_tuned():
    tuned = probe()
    assert tuned["tuned"] is True
    assert tuned["mapped_mb"] < 10  # the 80 MB array sits in the heap, for the next temporary to reuse


@glibc
def test_left_alone_when_asked_or_when_the_user_tuned_malloc():
    for env in ({"PREFCURATE_MALLOC": "system"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}):
        untouched = probe(**env)
        assert untouched["tuned"] is False, env
    assert probe(PREFCURATE_MALLOC="system")["mapped_mb"] > 70  # glibc's default: a fresh mapping
