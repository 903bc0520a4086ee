"""Where a stage's shards run: in this process, or on a Dask cluster.

An executor maps a picklable function over shard specs and returns the results in order; it never
looks inside a stage (curate.runner), so output bytes do not depend on it or on the worker count.

What a task may use is the executor's decision, the same everywhere: one core. In-process, shards
run one after another on one core (numerical libraries are held to one thread while they run), so
it is the reference a cluster is measured against; a Dask worker runs one task at a time on one
thread (the nanny sets OMP_NUM_THREADS=1 and friends). More cores come from more workers:
``--executor dask --workers N`` on one machine (a LocalCluster, no server to set up), or
``--scheduler`` for many. A stage that feeds an accelerator may still start helper processes of its
own (embed's image decoders on a GPU).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager

from curate.progress import progress_bars


class Executor:
    """Maps a picklable function over items and returns the results in item order."""

    name = "executor"

    def map(self, fn: Callable, items: Sequence, desc: str) -> list:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextmanager
def one_thread():
    """Numerical libraries on one thread while the block runs, as in a Dask worker; restored after.

    The variables hold libraries first imported inside the block; torch and Arrow's compute pool
    (which a Dask worker's OMP_NUM_THREADS=1 sizes to one thread) are set directly, and restored, so
    work outside the executor (training, the driver's merges) keeps its cores.
    """
    import pyarrow as pa

    saved = {v: os.environ.get(v) for v in THREAD_VARIABLES}
    torch = sys.modules.get("torch")
    threads, arrow_threads = (torch.get_num_threads() if torch else None), pa.cpu_count()
    os.environ.update({v: "1" for v in THREAD_VARIABLES})
    pa.set_cpu_count(1)
    if torch:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        pa.set_cpu_count(arrow_threads)
        for v, value in saved.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value
        if (torch := sys.modules.get("torch")) is not None:
            torch.set_num_threads(threads or os.cpu_count() or 1)


class LocalExecutor(Executor):
    """In-process, one shard after another on one core: no server, the default (see the module docstring)."""

    name = "local"

    def map(self, fn, items, desc):
        results = []
        with progress_bars() as update, one_thread():
            update(desc, 0, len(items))
            for item in items:
                results.append(fn(item))
                update(desc, len(results), len(items))
        return results


class DaskExecutor(Executor):
    """Runs shards on a Dask cluster: a LocalCluster of worker processes, or an existing scheduler.

    Workers must see the dataset directory at the same path (one machine, or a shared filesystem).
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, workers: int = 2, threads_per_worker: int = 1,
                 dashboard: bool = False):
        from dask.distributed import Client, LocalCluster

        self._cluster = None
        if scheduler:
            self.client = Client(scheduler, timeout="30s")
        else:
            import dask

            # Dask sets MALLOC_TRIM_THRESHOLD_ in its workers, which turns off glibc's adaptive mmap
            # threshold: every large array is then mapped and unmapped afresh, and CPU embedding ran
            # 1.5x slower than in-process (benchmarks/pipeline.py). Our workers keep glibc's default.
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                self._cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                                             dashboard_address=dashboard_address() if dashboard else None)
            self.client = Client(self._cluster)
        self.dashboard = _dashboard_link(self.client) if dashboard else None
        # Workers import what the data stages' tasks need once, as part of starting (counted there),
        # instead of inside the first task of each stage.
        self.client.gather([self.client.submit(warm_imports, workers=[w], pure=False, key=f"warm-imports-{i}")
                            for i, w in enumerate(self.client.scheduler_info()["workers"])])

    def map(self, fn, items, desc):
        from dask.distributed import as_completed

        if not items:
            return []
        futures = self.client.map(fn, list(items), pure=False)
        order = {f.key: i for i, f in enumerate(futures)}
        results: list = [None] * len(futures)
        with progress_bars() as update:
            update(desc, 0, len(futures))
            for done, future in enumerate(as_completed(futures), 1):
                results[order[future.key]] = future.result()
                update(desc, done, len(futures))
        return results

    def close(self):
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


# What the data stages' tasks import (seconds per process), imported by each worker as it starts;
# torch and open_clip are left to the stages that need them.
WARM_MODULES = ("numpy", "pyarrow.compute", "pyarrow.parquet", "polars", "curate.runner", "curate.ingest.stage",
                "curate.annotators.stage", "curate.annotators.consensus", "curate.annotators.flag",
                "curate.clip.scores", "curate.clip.filters", "pandas")


def warm_imports(modules: Sequence[str] = WARM_MODULES) -> None:
    import importlib

    for name in modules:
        importlib.import_module(name)


def _dashboard_link(client) -> str | None:
    """The dashboard's address, or None for a scheduler started without one (``--no-dashboard``)."""
    try:
        return client.dashboard_link
    except KeyError:
        return None


def dashboard_address() -> str:
    """Where a LocalCluster serves its dashboard: port 8787 on this machine, another free port if taken.
    The dashboard needs bokeh (a dependency of prefcurate)."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        raise RuntimeError("--dashboard needs bokeh, which Dask's dashboard is drawn with: pip install 'bokeh>=3.1'") from None
    return "127.0.0.1:8787"


def make_executor(name: str = "local", scheduler: str | None = None, workers: int = 2,
                  dashboard: bool = False) -> Executor:
    """``local`` (default), or ``dask`` (a LocalCluster of ``workers`` processes, or ``scheduler`` if given).

    ``dashboard``: serve (a LocalCluster) or find (a scheduler's own) Dask's dashboard; its address is
    the executor's ``dashboard`` (None when the scheduler serves none). In-process there is none.
    """
    if scheduler and name == "local":
        name = "dask"
    if name == "local":
        if dashboard:
            raise ValueError("--dashboard shows a Dask cluster's dashboard; add --executor dask (or --scheduler)")
        return LocalExecutor()
    if name == "dask":
        return DaskExecutor(scheduler=scheduler, workers=workers, dashboard=dashboard)
    raise ValueError(f"unknown executor {name!r}; expected 'local' or 'dask'")
