"""Which files make up a table, and whether they are what the stages committed.

A stage commits by writing ``runs/<stage>/manifest.json`` last; it lists each file the stage wrote,
per table, with its rows and SHA-256. A table's data is the union of the files its manifests list.
A file in ``tables/`` that no manifest lists belongs to a run that never committed (killed, or
still running) or to no run at all (a stray copy): the table is then refused, except to the stage
writing that run (``Dataset.writing``). A listed file is hashed on its first read; after that its
size and mtime, kept in ``DATASET/.verified.json``, stand in for the hash. ``verify_dataset`` (the
``prefcurate verify`` command) hashes everything again, counts rows and checks schemas.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from curate.dataset import TMP_DIR, Dataset, DatasetError, file_sha256

CACHE = ".verified.json"
_REBUILD = (
    ("ingest", "prefcurate ingest SOURCES --format FORMAT --out {root}"),
    ("ingest_duplicates", "prefcurate ingest SOURCES --format FORMAT --out {root}"),
    ("ingest_rewrite", "prefcurate ingest SOURCES --format FORMAT --out {root}"), ("annotators", "prefcurate annotators {root}"),
    ("flag", "prefcurate flag {root}"), ("filter", "prefcurate filter {root}"),
    ("embed-", "prefcurate embed {root} --model MODEL"), ("clip-scores-", "prefcurate embed {root} --model MODEL"),
    ("encode-", "prefcurate encode {root} --model MODEL"), ("scores-", "prefcurate scores import FILE -d {root}"),
)


@dataclass(frozen=True)
class Listed:
    """A file as its stage's manifest recorded it."""

    table: str
    file: str
    rows: int
    sha256: str
    stage: str
    schema: tuple[str, int] | None


def _ingest_command(ds: Dataset) -> str | None:
    """The ingest command from the config the run recorded at its start (fingerprint.json), if readable."""
    import shlex

    try:
        config = json.loads((ds.run_dir("ingest") / "fingerprint.json").read_text())["config"]
        sources = " ".join(shlex.quote(f) for f in config["files"])
        return f"`prefcurate ingest {sources} --format {config['format']} --out {shlex.quote(str(ds.root))}` (and its options)"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rebuild_command(ds: Dataset, stage: str) -> str:
    """The command that writes ``stage`` again, for error messages."""
    if stage.startswith("ingest") and (command := _ingest_command(ds)):  # ingest and its later passes
        return command
    for prefix, command in _REBUILD:
        if stage == prefix or (prefix.endswith("-") and stage.startswith(prefix)):
            return f"`{command.format(root=ds.root)}`"
    return f"the command that wrote stage {stage!r}"


_PARSED: dict[str, tuple[tuple, list]] = {}  # manifest path -> (its stat stamp, its entries): parsed once per version


def _manifest_entries(ds: Dataset, manifest: Path) -> list[Listed]:
    """A committed manifest's file records, checked; parsed once per process and manifest version
    (keyed by inode, size and mtime: a commit replaces the file). Every shard task of a stage asks
    for them several times (each table it reads); at 1M pairs that was a quarter of a consensus task."""
    try:
        stat = manifest.stat()
    except OSError:
        return _parse_manifest(ds, manifest)  # its error names the file and the fix
    stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    cached = _PARSED.get(str(manifest))
    if cached is None or cached[0] != stamp:
        cached = _PARSED[str(manifest)] = (stamp, _parse_manifest(ds, manifest))
    return cached[1]


def _parse_manifest(ds: Dataset, manifest: Path) -> list[Listed]:
    stage = manifest.parent.name
    try:
        data = json.loads(manifest.read_text())
        schemas = {t: (s["name"], int(s["version"])) for t, s in data.get("schemas", {}).items()}
        entries = [Listed(table, str(s["file"]), int(s["rows"]), str(s["sha256"]), stage, schemas.get(table))
                   for table, entry in data["tables"].items() for s in entry["shards"]]
        totals = {table: (int(entry["rows"]), sum(int(s["rows"]) for s in entry["shards"]))
                  for table, entry in data["tables"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{manifest}: not a readable manifest ({type(exc).__name__}: {exc}); rerun "
                           f"{rebuild_command(ds, stage)}") from None
    for table, (total, summed) in totals.items():
        if total != summed:
            raise DatasetError(f"{manifest}: table '{table}' has {total} rows but its files add up to {summed} "
                               f"(edited?); rerun {rebuild_command(ds, stage)}")
    for entry in entries:
        if "/" in entry.file or "\\" in entry.file or entry.file.startswith(".") or not entry.file.endswith(".arrow"):
            raise DatasetError(f"{manifest}: lists {entry.file!r}, not a table file name (edited?); rerun "
                               f"{rebuild_command(ds, stage)}")
    return entries


def committed_files(ds: Dataset) -> dict[str, dict[str, Listed]]:
    """table -> file name -> its record, from every committed stage's manifest."""
    out: dict[str, dict[str, Listed]] = {}
    runs = ds.root / "runs"
    for manifest in sorted(runs.glob("*/manifest.json")) if runs.is_dir() else []:
        for entry in _manifest_entries(ds, manifest):
            mine = out.setdefault(entry.table, {})
            if entry.file in mine:
                raise DatasetError(f"{ds.table_dir(entry.table) / entry.file}: listed by two manifests (runs/"
                                   f"{mine[entry.file].stage} and runs/{entry.stage}); rerun "
                                   f"{rebuild_command(ds, entry.stage)}")
            mine[entry.file] = entry
    return out


def present_files(ds: Dataset, table: str) -> list[str]:
    folder = ds.table_dir(table)
    return sorted(p.name for p in folder.glob("*.arrow") if not p.name.startswith(".")) if folder.is_dir() else []


def stage_of(ds: Dataset, file: str) -> str | None:
    """The run a table file belongs to by its name (``<stage>-<shard>...arrow``): the longest matching run."""
    runs = ds.root / "runs"
    names = [p.name for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []
    return max((n for n in names if file.startswith(f"{n}-")), key=len, default=None)


def _unlisted(ds: Dataset, table: str, file: str) -> str:
    path, stage = ds.table_dir(table) / file, stage_of(ds, file)
    if stage is not None and not (ds.run_dir(stage) / "manifest.json").is_file():
        return (f"table '{table}': {path} was written by a run of stage '{stage}' that never committed (it was "
                f"interrupted, or is still running); rerun {rebuild_command(ds, stage)}")
    hint = f"rerun {rebuild_command(ds, stage)}" if stage else "remove it, or rebuild the table with its command"
    return f"table '{table}': {path} is listed in no manifest (a stray copy?); {hint}"


@dataclass
class _Cache:
    """Size, mtime and checksum of files already hashed (DATASET/.verified.json); losing it costs a re-hash only."""

    root: Path
    entries: dict = field(default_factory=dict)
    changed: bool = False

    @classmethod
    def load(cls, root: Path) -> "_Cache":
        try:
            entries = json.loads((root / CACHE).read_text())
        except (OSError, ValueError):
            entries = {}
        return cls(root, entries if isinstance(entries, dict) else {})

    def get(self, key: str) -> tuple | None:
        value = self.entries.get(key)
        return tuple(value) if isinstance(value, list) else None

    def put(self, key: str, stamp: tuple) -> None:
        self.entries[key], self.changed = list(stamp), True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            (self.root / TMP_DIR).mkdir(exist_ok=True)
            tmp = self.root / TMP_DIR / f"verified-{uuid.uuid4().hex}.json"
            tmp.write_text(json.dumps(self.entries, sort_keys=True))
            os.replace(tmp, self.root / CACHE)
        except OSError:
            pass  # a read-only dataset: the next read hashes again


def _file_problems(ds: Dataset, entry: Listed, trusted: dict, cache: _Cache, full: bool) -> list[str]:
    path = ds.table_dir(entry.table) / entry.file
    where, fix = f"runs/{entry.stage}/manifest.json", f"rerun {rebuild_command(ds, entry.stage)}"
    try:
        stat = path.stat()
    except FileNotFoundError:
        return [f"table '{entry.table}': {path} is listed in {where} but missing; {fix}"]
    stamp = (stat.st_size, stat.st_mtime_ns, entry.sha256)
    key = f"{entry.table}/{entry.file}"
    if not full and stamp in (trusted.get(path), cache.get(key)):
        trusted[path] = stamp
        return []
    if file_sha256(path) != entry.sha256:
        return [f"table '{entry.table}': {path} differs from the checksum in {where} (damaged, or changed after "
                f"the stage committed); {fix}"]
    trusted[path] = stamp
    cache.put(key, stamp)
    return _content_problems(path, entry, where, fix) if full else []


def _content_problems(path: Path, entry: Listed, where: str, fix: str) -> list[str]:
    """Rows and schema of a file whose bytes match its checksum (a manifest edited to match bad data)."""
    from curate import schema as schemas

    try:
        with ipc.open_file(pa.memory_map(str(path))) as reader:
            rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
            if entry.schema is not None:
                schemas.load(*entry.schema).validate(reader.schema.empty_table(), where=str(path))
    except (pa.ArrowException, OSError, schemas.SchemaError) as exc:
        return [f"table '{entry.table}': {path} is not a readable table of its declared schema ({exc}); {fix}"]
    if rows != entry.rows:
        return [f"table '{entry.table}': {path} holds {rows} rows, {where} says {entry.rows}; {fix}"]
    return []


def table_problems(ds: Dataset, table: str, trusted: dict, full: bool = False) -> tuple[list[str], list[str]]:
    """(problems, the file names making up the table) for ``table``; a full check re-hashes every file."""
    present, listed = present_files(ds, table), committed_files(ds).get(table, {})
    own = [n for n in present if n not in listed and ds.writing is not None and stage_of(ds, n) == ds.writing]
    problems = [_unlisted(ds, table, n) for n in present if n not in listed and n not in own]
    cache = _Cache.load(ds.root)
    for name in sorted(listed):
        problems += _file_problems(ds, listed[name], trusted, cache, full)
    cache.save()
    return problems, sorted({*listed, *own})


def trust_committed(ds: Dataset, stage: str) -> None:
    """Right after ``stage`` committed: its files' checksums were taken as they were written, so record
    their size and mtime now and the first read needs no re-hash (hundreds of GB of images)."""
    cache = _Cache.load(ds.root)
    for entry in _manifest_entries(ds, ds.run_dir(stage) / "manifest.json"):
        stat = (ds.table_dir(entry.table) / entry.file).stat()
        cache.put(f"{entry.table}/{entry.file}", (stat.st_size, stat.st_mtime_ns, entry.sha256))
    listed = {f"{table}/{name}" for table, files in committed_files(ds).items() for name in files}
    cache.entries = {k: v for k, v in cache.entries.items() if k in listed}  # forget files no longer committed
    cache.save()


def verified_shards(ds: Dataset, table: str, trusted: dict) -> list[Path]:
    """The table's files if they are what was committed; else DatasetError with the first problem and the fix."""
    problems, files = table_problems(ds, table, trusted)
    if problems:
        more = f" ({len(problems) - 1} more problems: run `prefcurate verify {ds.root}`)" if len(problems) > 1 else ""
        raise DatasetError(problems[0] + more)
    return [ds.table_dir(table) / f for f in files]


@dataclass
class TableCheck:
    table: str
    files: int
    rows: int
    problems: list[str]


def verify_dataset(root: str | os.PathLike, on_table=None) -> tuple[list[TableCheck], list[str]]:
    """Full check of every table (checksums, rows, schemas, stray files): (per table, dataset-level problems).

    ``on_table(table, count)`` is called before each table is checked (a progress bar)."""
    ds = Dataset(root)
    if not (ds.root / "tables").is_dir():
        return [], [f"{ds.root}: no tables/ folder: not a prefcurate dataset (made by `prefcurate ingest`)"]
    try:
        listed = committed_files(ds)
    except DatasetError as exc:
        return [], [str(exc)]
    names = sorted(set(listed) | {p.name for p in (ds.root / "tables").iterdir() if p.is_dir()})
    checks = []
    for table in names:
        if on_table is not None:
            on_table(table, len(names))
        problems, files = table_problems(ds, table, {}, full=True)
        rows = sum(listed.get(table, {})[f].rows for f in files if f in listed.get(table, {}))
        checks.append(TableCheck(table, len(files), rows, problems))
    return checks, []


def commit_files(root: str | os.PathLike, stage: str, written: dict) -> None:
    """Commit table files written outside any stage (``write_shard``): ``written`` maps a table to its
    WrittenShard list; a manifest of ``stage`` lists them, as the runner's would."""
    from curate import schema as schemas
    from curate.dataset import write_json_atomic

    tables = {t: {"rows": sum(w.rows for w in files), "shards": [{"file": w.file, "rows": w.rows, "sha256": w.sha256}
                                                               for w in files]} for t, files in written.items()}
    manifest = {"stage": stage, "tables": tables,
                "schemas": {t: {"name": t, "version": schemas.load(t).version} for t in written}}
    write_json_atomic(Dataset(root).run_dir(stage) / "manifest.json", manifest)
