"""`prefcurate export DATASET OUT --tables parquet`: a dataset's tables as Parquet files, for tools
that do not read Arrow IPC (duckdb, Spark, most warehouses).

OUT/<table>/<shard>.parquet holds one file per committed shard, with the declared schema's
metadata kept (prefcurate.schema, prefcurate.schema_version), and OUT/tables.json lists each
table's files, rows, schema version and key columns. Every shard is read verified. The whole
export is written to a temporary folder next to OUT and renamed into place: OUT is complete or
absent, never half-written.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from curate import schema as schemas
from curate.dataset import Dataset, DatasetError, read_shard_batches, write_json_atomic
from curate.schema import META_NAME, META_VERSION


class TablesExportError(ValueError):
    """The export cannot start: an unknown table, or OUT exists without --overwrite."""


def export_tables(dataset_dir: str | os.PathLike, out: str | os.PathLike, tables: list[str] | None = None,
                  overwrite: bool = False, progress=None) -> dict[str, dict]:
    """Write ``tables`` (default: every table) of the dataset as Parquet under ``out``; returns the
    listing written to out/tables.json: per table its schema, key, rows and files."""
    ds, out = Dataset(dataset_dir), Path(out)
    names = chosen_tables(ds, tables)
    if out.exists() and not overwrite:
        raise TablesExportError(f"{out} exists; pass --overwrite to replace it, or choose another folder")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        listing = {}
        for number, name in enumerate(names, 1):
            listing[name] = write_table_parquet(ds, name, tmp / name)
            if progress is not None:
                progress("export tables", number, len(names), note=name)
        write_json_atomic(tmp / "tables.json", {"dataset": str(ds.root), "tables": listing})
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return listing


def chosen_tables(ds: Dataset, tables: list[str] | None) -> list[str]:
    """The tables to export, in name order; an unknown name is an error that lists the known ones."""
    present = ds.tables()
    if not present:
        raise DatasetError(f"{ds.root}: no tables to export; is it a dataset made by `prefcurate ingest`?")
    unknown = sorted(set(tables or ()) - set(present))
    if unknown:
        raise TablesExportError(f"--table {', '.join(unknown)}: not in {ds.root}; its tables are {', '.join(present)}")
    return sorted(set(tables)) if tables else present


def write_table_parquet(ds: Dataset, table: str, folder: Path) -> dict:
    """One Parquet file per shard of ``table``, batch by batch (memory follows a batch)."""
    folder.mkdir()
    files, rows, declared = [], 0, None
    for shard in ds.shards(table):
        arrow_schema = _shard_schema(shard)
        declared = declared or _declared(arrow_schema, table)
        path = folder / f"{shard.stem}.parquet"
        # Lists keep Arrow's item name, so a table read back has exactly the declared schema.
        with pq.ParquetWriter(path, arrow_schema, use_compliant_nested_type=False) as writer:
            for batch in read_shard_batches(shard):
                writer.write_batch(batch)
                rows += batch.num_rows
        files.append(path.name)
    return {**declared, "rows": rows, "files": files}


def _shard_schema(shard: Path) -> pa.Schema:
    with ipc.open_file(pa.memory_map(str(shard))) as reader:
        return reader.schema


def _declared(arrow_schema: pa.Schema, table: str) -> dict:
    """The declaration a shard was written under, from its metadata (the table's name if it has none)."""
    meta = arrow_schema.metadata or {}
    name = meta.get(META_NAME, table.encode()).decode()
    version = int(meta[META_VERSION]) if META_VERSION in meta else None
    return {"schema": name, "schema_version": version, "key": list(schemas.load(name, version).key)}


def _replace_folder(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
