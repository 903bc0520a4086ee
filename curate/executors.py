"""Where a stage's shards run: in this process, or on a Dask cluster.

An executor maps a picklable function over shard specs and returns the results in order; it never
looks inside a stage (curate.runner), so output bytes do not depend on it or on the worker count.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

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


class LocalExecutor(Executor):
    """In-process, one shard after another: no server, the default."""

    name = "local"

    def map(self, fn, items, desc):
        results = []
        with progress_bars() as update:
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

    def __init__(self, scheduler: str | None = None, workers: int = 2, threads_per_worker: int = 1):
        from dask.distributed import Client, LocalCluster

        self._cluster = None
        if scheduler:
            self.client = Client(scheduler, timeout="30s")
        else:
            self._cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                                         processes=True, dashboard_address=None)
            self.client = Client(self._cluster)

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


def make_executor(name: str = "local", scheduler: str | None = None, workers: int = 2) -> Executor:
    """``local`` (default), or ``dask`` (a LocalCluster of ``workers`` processes, or ``scheduler`` if given)."""
    if scheduler and name == "local":
        name = "dask"
    if name == "local":
        return LocalExecutor()
    if name == "dask":
        return DaskExecutor(scheduler=scheduler, workers=workers)
    raise ValueError(f"unknown executor {name!r}; expected 'local' or 'dask'")
