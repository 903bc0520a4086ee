"""`prefcurate export` (a Hugging Face dataset folder) and `prefcurate publish` (upload it to the Hub)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli.common import DatasetArg, fail, print_counts
from curate.cli.output import json_summary
from curate.options import TableFormat


@json_summary
def export(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Argument(help="Folder to write (data/*.parquet + README.md).", file_okay=False)],
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Largest parquet file, e.g. 500MB "
                              "(decimal, as Hugging Face) or 512MiB.")] = "500MB",
    pickapic_columns: Annotated[bool, typer.Option("--pickapic-columns", help="Pick-a-Pic column names for existing "
                                "training scripts: caption, jpg_0/jpg_1 (raw bytes), label_0/label_1 (floats).")] = False,
    drop_ties: Annotated[bool, typer.Option("--drop-ties", help="Leave out ties (Diffusion-DPO trains without them).")] = False,
    drop_filtered: Annotated[bool, typer.Option("--drop-filtered", help="Leave out pairs the CLIP filter removed "
                             "(needs `prefcurate filter`).")] = False,
    drop_flagged: Annotated[bool, typer.Option("--drop-flagged", help="Leave out minority-flagged pairs "
                            "(needs `prefcurate flag`).")] = False,
    clip_model: Annotated[Optional[str], typer.Option("--clip-model", help="Which model's CLIP scores to export "
                          "(default: the only one in clip_scores).")] = None,
    license: Annotated[str, typer.Option("--license", help="License id for the card (e.g. mit, cc-by-4.0).")] = "other",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace data/ and README.md of an existing OUT "
                         "(with --tables: replace OUT).")] = False,
    tables: Annotated[Optional[TableFormat], typer.Option("--tables", help="Instead of a Hugging Face folder, "
                      "write the dataset's tables as they are: OUT/<table>/*.parquet and OUT/tables.json "
                      "(for duckdb and other tools that do not read Arrow IPC).")] = None,
    table: Annotated[Optional[list[str]], typer.Option("--table", metavar="NAME", help="With --tables: only "
                     "this table (repeatable; default: every table).")] = None,
) -> None:
    """Write a Hugging Face dataset folder: byte-bounded parquet shards per split, images as the Image
    feature, the curation columns, and a README.md card with the funnel and how the flags were made.

    Load it with `datasets.load_dataset(OUT)`; upload it with `prefcurate publish OUT --repo-id ID`.
    With --tables parquet, every table (or --table NAME) as Parquet files instead, schemas kept.
    """
    if tables is not None:
        return _export_tables(dataset, out, table, overwrite)
    if table:
        fail("--table only applies with --tables parquet")
    from curate.dataset import DatasetError
    from curate.publish.export import ExportError, ExportOptions, export_dataset, parse_size
    from curate.publish.hub import format_bytes

    try:
        options = ExportOptions(max_shard_bytes=parse_size(max_shard_size), pickapic_columns=pickapic_columns,
                                drop_ties=drop_ties, drop_filtered=drop_filtered, drop_flagged=drop_flagged,
                                clip_model=clip_model, license=license, overwrite=overwrite)
        if options.max_shard_bytes < 10**5:
            fail(f"--max-shard-size {max_shard_size} is below 100kB; shards that small only add overhead")
        result = export_dataset(dataset, out, options)
    except (ExportError, DatasetError) as exc:
        fail(str(exc))
    rows = [(f"{name}", f"{s['rows']:,} rows in {len(s['files'])} file(s)") for name, s in result.splits.items()]
    rows += [(f"dropped: {reason}", n) for reason, n in result.dropped().items()]
    size = sum(f["size"] for s in result.splits.values() for f in s["files"])
    rows += [("columns", len(result.columns)), ("total size", format_bytes(size))]
    print_counts(f"export -> {out}", rows)
    return {"dataset": str(dataset), "out": str(out), "rows": result.rows, "splits": result.splits,
            "dropped": result.dropped(), "columns": [c.name for c in result.columns], "bytes": size}


def _export_tables(dataset: Path, out: Path, table: list[str] | None, overwrite: bool) -> dict:
    from curate.dataset import DatasetError
    from curate.progress import progress_bars
    from curate.publish.tables import TablesExportError, export_tables

    try:
        with progress_bars() as progress:
            listing = export_tables(dataset, out, table, overwrite=overwrite, progress=progress)
    except (TablesExportError, DatasetError) as exc:
        fail(str(exc))
    print_counts(f"export --tables parquet -> {out}", [(name, f"{t['rows']:,} rows in {len(t['files'])} file(s)")
                                                       for name, t in listing.items()])
    return {"dataset": str(dataset), "out": str(out), "format": "parquet", "tables": listing}


@json_summary
def publish(
    folder: Annotated[Path, typer.Argument(help="A folder written by `prefcurate export`.", exists=True,
                                           file_okay=False, dir_okay=True)],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Dataset repository, OWNER/NAME.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be uploaded (paths, sizes, total) "
                       "and upload nothing.")] = False,
) -> None:
    """Upload an export to the Hugging Face Hub (token from `hf auth login` or HF_TOKEN); data first, card last."""
    from curate.publish.hub import PublishError, format_bytes, publish as push, upload_plan

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        fail(f"--repo-id {repo_id!r}: expected OWNER/NAME, e.g. my-org/pickapic-curated")
    try:
        plan = upload_plan(folder)
        if dry_run:
            width = max(len(f.path) for f in plan)
            typer.echo(f"would upload to https://huggingface.co/datasets/{repo_id}"
                       f"{' (private)' if private else ''}:")
            for f in plan:
                typer.echo(f"  {f.path:<{width}}  {f.size:>14,} B  {format_bytes(f.size):>10}")
            total = sum(f.size for f in plan)
            typer.echo(f"total: {len(plan)} files, {total:,} B ({format_bytes(total)})")
            return {"repo_id": repo_id, "dry_run": True, "files": [{"path": f.path, "size": f.size} for f in plan],
                    "bytes": total}
        url = push(folder, repo_id, private=private)
    except PublishError as exc:
        fail(str(exc))
    typer.echo(f"published {len(plan)} files to {url}")
    return {"repo_id": repo_id, "dry_run": False, "url": url, "files": [{"path": f.path, "size": f.size} for f in plan],
            "bytes": sum(f.size for f in plan)}
