"""Stages and the runner that executes them over shards, in-process or on Dask.

A stage has one contract: ``plan`` splits its input into shard specs (small picklable values) and
``process`` turns one spec into record batches of declared tables, yielded as ``(table, batch)``.
Global aggregates are partial-then-merge: ``process`` leaves a ``ctx.partial`` (declared data: a
dict of numpy arrays, stored as .npz and read back without pickle) and ``finalize`` merges them on
the driver into the stage's ``final_outputs`` tables, which it returns for the runner to write.
Work that needs the merged result shard by shard is a second stage that reads those tables:
``finalize`` never maps work over an executor. The runner owns everything else:

- every output shard is written to a temporary file and renamed (curate.dataset.ShardWriter);
- a shard's completion record (runs/<stage>/shards/<n>.json) is written after its files;
- the stage's manifest (runs/<stage>/manifest.json) is written last of all: it is the commit;
- a fingerprint of stage version, config and input checksums guards ``resume``.

Executors (curate.executors) only map a picklable function over shard specs; they never look inside a stage.
Output bytes depend only on the inputs and the config: not on the executor or the worker count.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate import __version__
from curate import schema as schemas
from curate.dataset import Dataset, ShardWriter, WrittenShard, file_sha256, write_json_atomic, write_shard
from curate.executors import Executor, LocalExecutor
from curate.partials import UnsafePartial, load_partial, save_partial


class FingerprintMismatch(RuntimeError):
    """``--resume`` was asked for, but the config or the inputs changed since the interrupted run."""


@dataclass
class Finalized:
    """What ``Stage.finalize`` returns: stats, and whole tables (``final_outputs``) for the runner to write."""

    stats: dict[str, int] = field(default_factory=dict)
    tables: dict[str, list[pa.Table]] = field(default_factory=dict)


@dataclass
class ShardContext:
    """What ``Stage.process`` knows about the shard it runs on, and where it reports."""

    stage: str
    index: int
    dataset: Dataset
    stats: Counter = field(default_factory=Counter)
    partial: dict[str, np.ndarray] | None = None  # declared data: merged by Stage.finalize on the driver


@dataclass
class ShardResult:
    index: int
    outputs: dict[str, WrittenShard]
    stats: dict[str, int]
    partial: Any = None


class Stage:
    """Base class of a stage. Subclasses set ``name``, ``version``, ``outputs`` and implement ``plan``/``process``."""

    name: str = "stage"
    version: int = 1
    #: output table -> declared schema name (usually the same)
    outputs: dict[str, str] = {}
    #: tables written once from ``finalize`` (output table -> declared schema name), one file each
    final_outputs: dict[str, str] = {}
    #: tables read from the dataset: their checksums enter the fingerprint
    inputs: tuple[str, ...] = ()

    def config(self) -> dict:
        """The options that change the output: they enter the fingerprint and the manifest."""
        return {}

    def source_fingerprint(self) -> dict:
        """Fingerprint of inputs from outside the dataset (raw files); tables in ``inputs`` are automatic."""
        return {}

    def output_dims(self) -> dict[str, dict[str, int]]:
        """Free fixed-list sizes per output table (``{"image_embeddings": {"embedding": 512}}``)."""
        return {}

    def plan(self, dataset: Dataset) -> list[Any]:
        raise NotImplementedError(f"stage {self.name} must define plan()")

    def process(self, spec: Any, ctx: ShardContext) -> Iterator[tuple[str, pa.RecordBatch]]:
        raise NotImplementedError(f"stage {self.name} must define process()")

    def finalize(self, dataset: Dataset, results: list[ShardResult], executor: "Executor | None" = None) -> dict[str, int] | Finalized:
        """Merge partials once every shard is done; must be idempotent (it reruns on resume).

        Returns stats, or a ``Finalized`` with the ``final_outputs`` tables too. ``executor`` is
        still passed for stages that have not moved their second pass into a stage of its own;
        new stages must not map work over it.
        """
        return {}

    def then(self) -> list["Stage"]:
        """Later passes of the same command: stages that read this one's tables, run after it commits
        (a later pass has no later passes of its own)."""
        return []

    def shard_file(self, table: str, index: int) -> str:
        return f"{self.name}-{index:05d}.arrow"

    def final_file(self, table: str) -> str:
        return f"{self.name}-final.arrow"


# ------------------------------------------------------------------------------------ fingerprints
def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def table_fingerprint(dataset: Dataset, table: str) -> str:
    """Hash of a table's shard names and checksums, taken from the manifests that recorded them."""
    recorded: dict[str, str] = {}
    runs = dataset.root / "runs"
    for manifest in sorted(runs.glob("*/manifest.json")) if runs.is_dir() else []:
        entry = json.loads(manifest.read_text()).get("tables", {}).get(table)
        for shard in (entry or {}).get("shards", []):
            recorded[shard["file"]] = shard["sha256"]
    parts = []
    for path in dataset.shards(table):
        parts.append((path.name, recorded.get(path.name) or file_sha256(path)))
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()


def stage_fingerprint(stage: Stage, dataset: Dataset) -> str:
    body = {
        "stage": stage.name,
        "version": stage.version,
        "config": stage.config(),
        "inputs": {t: table_fingerprint(dataset, t) for t in stage.inputs},
        "sources": stage.source_fingerprint(),
    }
    return hashlib.sha256(_canonical(body).encode()).hexdigest()[:32]


# ------------------------------------------------------------------------------------------ runner
@dataclass
class StageReport:
    stage: str
    fingerprint: str
    stats: dict[str, int]
    tables: dict[str, dict]
    skipped_shards: int
    wall_seconds: float
    already_complete: bool = False
    passes: list["StageReport"] = field(default_factory=list)  # reports of the stage's later passes (Stage.then)


def _run_shard(job: tuple[Stage, Any, int, str]) -> ShardResult:
    """Run one shard and commit it: files first (each renamed into place), completion record last."""
    stage, spec, index, root = job
    dataset = Dataset(root)
    ctx = ShardContext(stage=stage.name, index=index, dataset=dataset)
    dims = stage.output_dims()
    writers = {t: ShardWriter(dataset.table_dir(t) / stage.shard_file(t, index), schemas.load(s), **dims.get(t, {}))
               for t, s in stage.outputs.items()}
    try:
        for table, batch in stage.process(spec, ctx):
            if table not in writers:
                raise KeyError(f"stage {stage.name} yielded table {table!r}, not among its outputs {list(writers)}")
            writers[table].write(batch)
        outputs = {t: w.close() for t, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    result = ShardResult(index=index, outputs=outputs, stats=dict(ctx.stats), partial=ctx.partial)
    if ctx.partial is not None:
        save_partial(dataset.run_dir(stage.name) / "shards" / f"{index:05d}.partial.npz", ctx.partial, stage.name)
    _write_record(dataset, stage, index, {"index": index, "stats": result.stats,
                                          "outputs": [{"table": t, **vars(o)} for t, o in outputs.items()]})
    return result


def _record_path(dataset: Dataset, stage: Stage, index: int) -> Path:
    return dataset.run_dir(stage.name) / "shards" / f"{index:05d}.json"


def _write_record(dataset: Dataset, stage: Stage, index: int, record: dict) -> None:
    write_json_atomic(_record_path(dataset, stage, index), record)


def commit_shard_file(dataset: Dataset, stage: Stage, index: int, table: str, file: str,
                      batches, **dims: int) -> WrittenShard:
    """For ``finalize``: (re)write one output file of shard ``index`` atomically and update its record.

    Use it to rewrite a shard after a global merge, or to add a file to a shard (rows it moved to
    another table); the manifest then lists the file with its new checksum.
    """
    written = write_shard(dataset.table_dir(table) / file, schemas.load(stage.outputs[table]), batches, **dims)
    record = json.loads(_record_path(dataset, stage, index).read_text())
    entries = [o for o in record["outputs"] if not (o["table"] == table and o["file"] == file)]
    record["outputs"] = entries + [{"table": table, **vars(written)}]
    _write_record(dataset, stage, index, record)
    return written


def _load_finished(stage: Stage, dataset: Dataset, index: int) -> ShardResult | None:
    """A shard's recorded result if its record and every output file it names are present."""
    run = dataset.run_dir(stage.name) / "shards"
    record = run / f"{index:05d}.json"
    if not record.is_file():
        return None
    data = json.loads(record.read_text())
    outputs = {o["table"]: WrittenShard(o["file"], o["rows"], o["sha256"]) for o in data["outputs"]
               if o["file"] == stage.shard_file(o["table"], index)}
    if any(not (dataset.table_dir(o["table"]) / o["file"]).is_file() for o in data["outputs"]):
        return None
    if (pickled := run / f"{index:05d}.partial.pkl").exists():
        raise UnsafePartial(f"refusing {pickled}: a pickled partial can run code when loaded; delete "
                            f"{run} and run again without --resume")
    partial_file = run / f"{index:05d}.partial.npz"
    partial = load_partial(partial_file) if partial_file.is_file() else None
    return ShardResult(index=index, outputs=outputs, stats=data["stats"], partial=partial)


def _clear_outputs(stage: Stage, dataset: Dataset) -> None:
    for table in (*stage.outputs, *stage.final_outputs):
        for path in dataset.table_dir(table).glob(f"{stage.name}-*.arrow"):
            path.unlink()
    shutil.rmtree(dataset.run_dir(stage.name), ignore_errors=True)


def is_complete(stage: Stage, dataset: Dataset) -> bool:
    """True when the stage's manifest exists and was made under the current fingerprint."""
    manifest = dataset.run_dir(stage.name) / "manifest.json"
    if not manifest.is_file():
        return False
    return json.loads(manifest.read_text()).get("fingerprint") == stage_fingerprint(stage, dataset)


def run_stage(stage: Stage, dataset: Dataset | str | Path, executor: Executor | None = None, *,
              resume: bool = False, skip_complete: bool = False) -> StageReport:
    """Run ``stage`` over ``dataset``.

    ``resume``: keep the shards an interrupted run finished (refused if the fingerprint changed).
    ``skip_complete``: do nothing if a finished run with the same fingerprint exists (pipelines).
    Without either, earlier outputs of this stage are removed and everything is recomputed.
    The stage's later passes (``Stage.then``) run after it, each committed as a stage of its own.
    """
    dataset = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    with dataset.writer(stage.name):  # one writer at a time (curate.lock); the stage may read its own run
        return _run_locked(stage, dataset, executor, resume, skip_complete)


def _run_locked(stage: Stage, dataset: Dataset, executor: Executor | None, resume: bool, skip_complete: bool):
    executor = executor or LocalExecutor()
    report = _run_one(stage, dataset, executor, resume, skip_complete)
    report.passes = [_run_one(later, dataset, executor, resume, skip_complete) for later in stage.then()]
    return report


def _run_one(stage: Stage, dataset: Dataset, executor: Executor, resume: bool, skip_complete: bool) -> StageReport:
    started = time.perf_counter()
    fingerprint = stage_fingerprint(stage, dataset)
    run = dataset.run_dir(stage.name)
    manifest_path = run / "manifest.json"

    if skip_complete and is_complete(stage, dataset):
        manifest = json.loads(manifest_path.read_text())
        return StageReport(stage.name, fingerprint, manifest["stats"], manifest["tables"], 0,
                           time.perf_counter() - started, already_complete=True)

    previous = json.loads((run / "fingerprint.json").read_text()) if (run / "fingerprint.json").is_file() else None
    if resume and previous and previous["fingerprint"] != fingerprint:
        raise FingerprintMismatch(
            f"cannot resume stage '{stage.name}' in {run}: it was started with fingerprint "
            f"{previous['fingerprint']} (config {_canonical(previous['config'])}) and this run has {fingerprint} "
            f"(config {_canonical(stage.config())}); the config or the inputs changed. Run again without "
            f"--resume to recompute from scratch.")
    if not (resume and previous):
        _clear_outputs(stage, dataset)
    else:
        manifest_path.unlink(missing_ok=True)  # the run is open again until it commits
    write_json_atomic(run / "fingerprint.json", {"fingerprint": fingerprint, "stage": stage.name,
                                                 "version": stage.version, "config": stage.config()})

    specs = stage.plan(dataset)
    results: dict[int, ShardResult] = {}
    if resume:
        for i in range(len(specs)):
            if (done := _load_finished(stage, dataset, i)) is not None:
                results[i] = done
    skipped = len(results)
    todo = [(stage, spec, i, str(dataset.root)) for i, spec in enumerate(specs) if i not in results]
    for result in executor.map(_run_shard, todo, desc=f"{stage.name} ({len(todo)} shards)"):
        results[result.index] = result
    ordered = [results[i] for i in range(len(specs))]

    stats: Counter = Counter()
    for r in ordered:
        stats.update(r.stats)
    finalized = stage.finalize(dataset, ordered, executor)
    if isinstance(finalized, Finalized):
        _write_final_tables(stage, dataset, finalized.tables)
        finalized = finalized.stats
    stats.update(finalized or {})
    tables = _describe_tables(stage, dataset)
    manifest = {
        "stage": stage.name, "version": stage.version, "fingerprint": fingerprint, "config": stage.config(),
        "package_version": __version__, "command": sys.argv, "shards": len(specs),
        "schemas": {t: {"name": s, "version": schemas.load(s).version}
                    for t, s in {**stage.outputs, **stage.final_outputs}.items()},
        "tables": tables, "stats": dict(sorted(stats.items())),
    }
    write_json_atomic(manifest_path, manifest)  # last: this is the commit
    return StageReport(stage.name, fingerprint, manifest["stats"], tables, skipped, time.perf_counter() - started)


def _write_final_tables(stage: Stage, dataset: Dataset, tables: dict[str, list[pa.Table]]) -> None:
    """Write each of ``final_outputs`` as one file (atomic rename), then its record (runs/<stage>/final.json)."""
    if set(tables) != set(stage.final_outputs):
        raise KeyError(f"stage {stage.name} finalized tables {sorted(tables)}; it declares {sorted(stage.final_outputs)}")
    outputs = []
    for table, parts in sorted(tables.items()):
        written = write_shard(dataset.table_dir(table) / stage.final_file(table), schemas.load(stage.final_outputs[table]), parts)
        outputs.append({"table": table, **vars(written)})
    write_json_atomic(dataset.run_dir(stage.name) / "final.json", {"outputs": outputs})


def _describe_tables(stage: Stage, dataset: Dataset) -> dict[str, dict]:
    """Rows and checksums of the stage's output files, from the shard and final records (kept current by finalize)."""
    tables: dict[str, list[dict]] = {t: [] for t in (*stage.outputs, *stage.final_outputs)}
    run = dataset.run_dir(stage.name)
    records = sorted((run / "shards").glob("*.json")) + ([run / "final.json"] if (run / "final.json").is_file() else [])
    for record in records:
        for o in json.loads(record.read_text())["outputs"]:
            tables[o["table"]].append({k: o[k] for k in ("file", "rows", "sha256")})
    return {t: {"rows": sum(s["rows"] for s in shards), "shards": sorted(shards, key=lambda s: s["file"])}
            for t, shards in tables.items()}
