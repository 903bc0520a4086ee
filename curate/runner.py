"""Stages and the runner that executes them over shards, in-process or on Dask.

A stage has one contract: ``plan`` splits its input into shard specs (small picklable values) and
``process`` turns one spec into record batches of declared tables, yielded as ``(table, batch)``.
Global aggregates are partial-then-merge: ``process`` leaves a ``ctx.partial`` (declared data: a
dict of numpy arrays, stored as .npz and read back without pickle) and ``finalize`` merges them on
the driver into the stage's ``final_outputs`` tables, which it returns for the runner to write.
Work that needs the merged result shard by shard is a second stage that reads those tables:
``finalize`` never maps work over an executor. A stage whose partials are too large to merge on
the driver sets ``partials_to_driver = False``: they stay in its run folder, and a later pass reads
them shard by shard (``read_partial``), planned as tasks of its own.

A later pass may replace files of the pass it follows (``supersedes``, e.g. rows a global merge
moved elsewhere): each of its tasks names the earlier pass's shard and files it replaces
(``Stage.replaces``); the runner writes each to a temporary file, renames it over the old one and
updates the earlier pass's shard record; when the later pass commits, the runner rewrites the
earlier pass's manifest (checksums, rows, and stats corrected by ``Stage.superseded_stats``), so
``table_fingerprint``, ``--resume`` and ``prefcurate verify`` see the files as they are. While
the later pass runs, the earlier pass's manifest is withdrawn: the earlier pass is not complete.
The runner owns everything else:

- every output shard is written to a temporary file and renamed (curate.dataset.ShardWriter);
- a shard's completion record (runs/<stage>/shards/<n>.json) is written after its files;
- the stage's manifest (runs/<stage>/manifest.json) is written last of all: it is the commit;
- a fingerprint of stage version, config and input checksums guards ``resume``;
- later passes run as their first pass ran: skipped (``skip_complete``) only when it was skipped,
  resumed when it resumed, so they never keep results that describe files the first pass redid;
- stages a stage needs first (``Stage.needs``, e.g. a shuffle of its inputs by bucket) run before
  it, or are reused when complete under the same fingerprint.

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
import pyarrow.ipc as ipc

from curate import __version__
from curate import schema as schemas
from curate.allocator import keep_freed_memory
from curate.dataset import Dataset, DatasetError, ShardWriter, WrittenShard, file_sha256, write_json_atomic, write_shard
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
    #: False: the shards' partials stay in runs/<stage>/shards (read by a later pass with ``read_partial``);
    #: ``finalize`` gets none, so the driver's memory does not grow with them
    partials_to_driver: bool = True
    #: a later pass that replaces files of an earlier pass names it here; ``outputs`` are then the tables whose
    #: files it may replace (one whole file per table per task, see ``replaces``); its manifest lists no files
    supersedes: str | None = None

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

    def finalize(self, dataset: Dataset, results: list[ShardResult]) -> dict[str, int] | Finalized:
        """Merge partials once every shard is done; must be idempotent (it reruns on resume).

        Returns stats, or a ``Finalized`` with the ``final_outputs`` tables too. It is given no
        executor: work that needs mapping over shards is a later pass (``then``), planned as tasks.
        """
        return {}

    def replaces(self, spec: Any) -> tuple[int, dict[str, str]]:
        """A superseding pass: the earlier pass's shard index this task rewrites, and ``{table: file}`` of
        the files it may replace or add to that shard, in the order ``process`` yields them.

        ``process`` yields ``(table, whole table)`` once per file it replaces, and nothing for a file that
        needs no change: it must be idempotent (a rerun after a crash finds some files already replaced),
        and it yields the file others depend on last (e.g. the rows moved out of it go first)."""
        raise NotImplementedError(f"stage {self.name} supersedes {self.supersedes!r} and must define replaces()")

    def superseded_stats(self, stats: dict[str, int]) -> dict[str, int]:
        """A superseding pass: from its committed stats, the corrections to add to the superseded pass's
        stats, so those keep describing its tables as they are after this pass."""
        return {}

    def needs(self, dataset: Dataset) -> list["Stage"]:
        """Stages whose results this one reads (e.g. a shuffle that groups its inputs by bucket): the
        runner runs each first, with its later passes, unless it is complete under the same fingerprint."""
        return []

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
    from curate.verify import committed_files

    recorded = {name: listed.sha256 for name, listed in committed_files(dataset).get(table, {}).items()}
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
    needs: list["StageReport"] = field(default_factory=list)  # reports of the stages it needed first (Stage.needs)


def _run_shard(job: tuple[Stage, Any, int, str]) -> ShardResult:
    """Run one shard and commit it: files first (each renamed into place), completion record last."""
    stage, spec, index, root = job
    keep_freed_memory()  # once per process: a Dask worker's too
    dataset = Dataset(root)
    ctx = ShardContext(stage=stage.name, index=index, dataset=dataset)
    if stage.supersedes:
        return _run_replacing_shard(stage, spec, index, dataset, ctx)
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
    result = ShardResult(index=index, outputs=outputs, stats=dict(ctx.stats),
                         partial=ctx.partial if stage.partials_to_driver else None)
    if ctx.partial is not None:
        save_partial(partial_path(dataset, stage.name, index), ctx.partial, stage.name)
    _write_record(dataset, stage.name, index, {"index": index, "stats": result.stats,
                                               "outputs": [{"table": t, **vars(o)} for t, o in outputs.items()]})
    return result


def _run_replacing_shard(stage: Stage, spec: Any, index: int, dataset: Dataset, ctx: ShardContext) -> ShardResult:
    """A superseding pass's task: replace files of the earlier pass's shard, update its record, then ours.

    Every declared file that exists is recorded as it is on disk, also those this run did not write:
    after a crash between a rename and the record, the rerun's ``process`` yields nothing for that file
    (it is already replaced) and the record is put right here."""
    target, files = stage.replaces(spec)
    dims = stage.output_dims()
    written: dict[str, WrittenShard] = {}
    for table, whole in stage.process(spec, ctx):
        if table not in files:
            raise KeyError(f"stage {stage.name} yielded table {table!r} for shard {target} of {stage.supersedes}; "
                           f"its replaces() names {list(files)}")
        if table in written:
            raise ValueError(f"stage {stage.name} yielded table {table!r} twice for shard {target}: a superseding "
                             f"pass yields each replaced file once, whole")
        written[table] = write_shard(dataset.table_dir(table) / files[table], schemas.load(stage.outputs[table]),
                                     [whole], **dims.get(table, {}))
    current = {t: written.get(t) or _on_disk(dataset.table_dir(t) / f) for t, f in files.items()}
    _replace_in_record(dataset, stage.supersedes, target, {t: w for t, w in current.items() if w is not None})
    _write_record(dataset, stage.name, index, {"index": index, "stats": dict(ctx.stats), "outputs": [],
                                               "replaced": {"stage": stage.supersedes, "shard": target,
                                                            "tables": sorted(written)}})
    return ShardResult(index=index, outputs={}, stats=dict(ctx.stats))


def _on_disk(path: Path) -> WrittenShard | None:
    if not path.is_file():
        return None
    with ipc.open_file(pa.memory_map(str(path))) as reader:
        rows = sum(reader.get_record_batch(i).num_rows for i in range(reader.num_record_batches))
    return WrittenShard(path.name, rows, file_sha256(path))


def _replace_in_record(dataset: Dataset, stage: str, index: int, files: dict[str, WrittenShard]) -> None:
    path = dataset.run_dir(stage) / "shards" / f"{index:05d}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no record of shard {index} of stage '{stage}' to update; its run is "
                                f"incomplete: rerun the command without --resume")
    record = json.loads(path.read_text())
    kept = [o for o in record["outputs"] if (o["table"], o["file"]) not in {(t, w.file) for t, w in files.items()}]
    record["outputs"] = kept + [{"table": t, **vars(w)} for t, w in sorted(files.items())]
    write_json_atomic(path, record)


def partial_path(dataset: Dataset, stage: str, index: int) -> Path:
    return dataset.run_dir(stage) / "shards" / f"{index:05d}.partial.npz"


def read_partial(dataset: Dataset, stage: str, index: int, keys: list[str]) -> dict[str, np.ndarray]:
    """Some arrays of a shard's stored partial (only those are read), without pickle; for later passes."""
    path = partial_path(dataset, stage, index)
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in keys}
    except FileNotFoundError:
        raise DatasetError(f"{path}: the partial of shard {index} of stage '{stage}' is missing; rerun the "
                           f"command without --resume") from None
    except (KeyError, ValueError, OSError) as exc:
        raise UnsafePartial(f"refusing partial {path}: not the plain arrays {keys[:3]}... expected ({exc}); "
                            f"rerun the command without --resume") from None


def _write_record(dataset: Dataset, stage: str, index: int, record: dict) -> None:
    write_json_atomic(dataset.run_dir(stage) / "shards" / f"{index:05d}.json", record)


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
    partial = load_partial(partial_file) if partial_file.is_file() and stage.partials_to_driver else None
    return ShardResult(index=index, outputs=outputs, stats=data["stats"], partial=partial)


def _clear_outputs(stage: Stage, dataset: Dataset) -> None:
    # A superseding pass's outputs are the earlier pass's files: that pass clears them, never this one.
    for table in (*(() if stage.supersedes else stage.outputs), *stage.final_outputs):
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
    The stage's later passes (``Stage.then``) run after it, each committed as a stage of its own; the
    stages it needs (``Stage.needs``) run before it unless they are complete (``skip_complete``).
    """
    dataset = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    keep_freed_memory()  # the driver's finalize works on whole-dataset arrays (curate.allocator)
    with dataset.writer(stage.name):  # one writer at a time (curate.lock); the stage may read its own run
        return _run_locked(stage, dataset, executor, resume, skip_complete)


def _run_locked(stage: Stage, dataset: Dataset, executor: Executor | None, resume: bool, skip_complete: bool):
    executor = executor or LocalExecutor()
    needed = [_run_locked(need, dataset, executor, resume, True) for need in stage.needs(dataset)]
    report = _run_one(stage, dataset, executor, resume, skip_complete)
    report.needs = needed
    # A later pass is skipped only when its first pass was: a first pass that ran again (from scratch or
    # resumed) may have new files that the later passes' committed results do not describe.
    later_skip, passes = skip_complete and report.already_complete, stage.then()
    report.passes = [_run_one(later, dataset, executor, resume, later_skip) for later in passes]
    if any(later.supersedes == stage.name for later in passes):
        manifest = json.loads((dataset.run_dir(stage.name) / "manifest.json").read_text())
        report.stats, report.tables = manifest["stats"], manifest["tables"]  # as the later passes left them
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
    if stage.supersedes:
        _withdraw(dataset, stage.supersedes)
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
    finalized = stage.finalize(dataset, ordered)
    if isinstance(finalized, Finalized):
        _write_final_tables(stage, dataset, finalized.tables)
        finalized = finalized.stats
    stats.update(finalized or {})
    listed = {**({} if stage.supersedes else stage.outputs), **stage.final_outputs}  # the files this manifest lists
    tables = _describe_tables(run, listed)
    manifest = {
        "stage": stage.name, "version": stage.version, "fingerprint": fingerprint, "config": stage.config(),
        "package_version": __version__, "command": sys.argv, "shards": len(specs),
        "schemas": {t: {"name": s, "version": schemas.load(s).version} for t, s in listed.items()},
        "tables": tables, "stats": dict(sorted(stats.items())),
    }
    if stage.supersedes:
        _recommit(dataset, stage.supersedes, stage.name, stage.superseded_stats(manifest["stats"]))
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


def _withdraw(dataset: Dataset, stage: str) -> None:
    """Set an earlier pass's manifest aside while a later pass replaces its files: until ``_recommit``,
    that pass is not complete (a rerun redoes it; verify names its files as never committed)."""
    run = dataset.run_dir(stage)
    if (run / "manifest.json").is_file():
        (run / "manifest.json").replace(run / "manifest.withdrawn.json")
    elif not (run / "manifest.withdrawn.json").is_file():
        raise DatasetError(f"{run}: stage '{stage}' has no manifest, so nothing of it can be superseded; rerun "
                           f"the command without --resume")


def _recommit(dataset: Dataset, stage: str, by: str, corrections: dict[str, int]) -> None:
    """Commit the withdrawn manifest of ``stage`` again: files as its records now list them, stats corrected.

    The stats it committed itself are kept as ``uncorrected_stats``, so committing again (a rerun of the
    later pass) applies the corrections once."""
    run = dataset.run_dir(stage)
    manifest = json.loads((run / "manifest.withdrawn.json").read_text())
    base = manifest.pop("uncorrected_stats", manifest["stats"])
    fixes = {**manifest.pop("corrections", {}), by: dict(sorted(corrections.items()))}
    stats: Counter = Counter(base)
    for fix in fixes.values():
        stats.update(fix)
    manifest.update(tables=_describe_tables(run, manifest["schemas"]), stats=dict(sorted(stats.items())),
                    uncorrected_stats=base, corrections=fixes)
    write_json_atomic(run / "manifest.json", manifest)
    (run / "manifest.withdrawn.json").unlink()


def _describe_tables(run: Path, tables_listed) -> dict[str, dict]:
    """Rows and checksums of a run's output files, from its shard and final records (kept current by
    superseding passes); ``tables_listed`` names the tables its manifest lists."""
    tables: dict[str, list[dict]] = {t: [] for t in tables_listed}
    records = sorted((run / "shards").glob("*.json")) + ([run / "final.json"] if (run / "final.json").is_file() else [])
    for record in records:
        for o in json.loads(record.read_text())["outputs"]:
            tables[o["table"]].append({k: o[k] for k in ("file", "rows", "sha256")})
    return {t: {"rows": sum(s["rows"] for s in shards), "shards": sorted(shards, key=lambda s: s["file"])}
            for t, shards in tables.items()}
