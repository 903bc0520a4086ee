"""`prefcurate ingest`: raw preference files into a dataset directory."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli.common import DashboardOpt, ExecutorOpt, ExecutorName, ResumeOpt, SchedulerOpt, WorkersOpt, fail, print_counts, run_stage_cli
from curate.cli.output import json_summary, prefixed, stage_summary
from curate.options import Format


@json_summary
def ingest(
    sources: Annotated[list[str], typer.Argument(help="Files or folders to read, or Hugging Face dataset ids "
                                                 "(owner/name, or owner/name:GLOB for some of its parquet "
                                                 "files), read shard by shard.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write.", file_okay=False)],
    format: Annotated[Format, typer.Option("--format", "-f", help="Layout of the input: auto (sniffed from the "
                                           "first file's columns or keys; the choice is printed), pickapic, "
                                           "hpdv2, hpdv3, rapidata (a pair per vote), table (CSV, JSONL or "
                                           "Parquet; columns found by name or --map).")] = Format.auto,
    image_root: Annotated[Optional[Path], typer.Option("--image-root", help="Folder that image paths are relative "
                          "to; paths never escape it. hpdv2/hpdv3 default: the JSON file's folder.",
                          exists=True, file_okay=False)] = None,
    mapping: Annotated[Optional[list[str]], typer.Option("--map", help="table: LOGICAL=COLUMN, e.g. --map "
                       "prompt=caption --map image_a=left_path. Logical: prompt, image_a, image_b, uid_a, uid_b, "
                       "label, pref (1 left / -1 right), label_0, label_1, votes_a, votes_b, annotator, trust, "
                       "model_a, model_b, created_at.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split name for every row (default: from the file name, "
                     "else train).")] = None,
    shard_rows: Annotated[int, typer.Option(min=1, help="Pairs per shard, about: memory follows this, not the "
                          "input size. Records are grouped until the pairs they expand into reach it (a Rapidata "
                          "row gives a pair per vote, an HPDv2 record one per image pair and annotator); a Hub "
                          "parquet file is one shard.")] = 20_000,
    allow_network: Annotated[bool, typer.Option("--allow-network", help="Download images given as URLs (also "
                             "pickapic_v2_no_images' image_0_url/image_1_url).")] = False,
    hub_mirror: Annotated[Optional[Path], typer.Option("--hub-mirror", help="Folder holding Hub dataset repos as "
                          "OWNER/NAME/... (an offline copy): dataset ids are read from there, shard by shard.",
                          exists=True, file_okay=False)] = None,
    full_decode: Annotated[bool, typer.Option("--full-decode", help="Decode every image fully (slower) instead of "
                           "checking headers and end markers.")] = False,
    executor: ExecutorOpt = ExecutorName.local,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = 2,
    dashboard: DashboardOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Read pairwise preferences into versioned Arrow tables: pairs, images (each stored once) and rejects.

    Every input row ends as exactly one pair or one reject with its reason; the summary reconciles.
    """
    from curate.ingest.pickapic import SourceError
    from curate.ingest.sources import expand_sources, resolve_format
    from curate.ingest.stage import IngestStage

    pairs = _parse_mapping(mapping or [])
    if pairs and format is Format.auto:
        format = Format.table  # a column mapping is the generic table's
    mirror = str(hub_mirror) if hub_mirror else None
    try:
        files = expand_sources(sources, format, mirror)
        fmt, files, why = resolve_format(format, files, mirror)
    except SourceError as exc:
        fail(str(exc))
    if why:
        typer.echo(f"--format auto: reading as {fmt.value} ({why})", err=True)
    if pairs and fmt is not Format.table:
        fail(f"--map only applies to --format table (the input is read as {fmt.value})")
    stage = IngestStage(files=files, format=fmt.value, image_root=str(image_root) if image_root else None,
                        mapping=pairs, split=split, shard_rows=shard_rows, allow_network=allow_network,
                        full_decode=full_decode, hub_mirror=mirror)
    out.mkdir(parents=True, exist_ok=True)
    report = run_stage_cli(stage, out, executor, scheduler, workers, resume, dashboard=dashboard)
    print_ingest_summary(report.stats, out)
    return {"dataset": str(out), "format": fmt.value, "records": report.stats.get("records", 0),
            "pairs_read": report.stats.get("items", 0), "accepted": report.stats.get("accepted", 0),
            "rejected": prefixed(report.stats, "rejected"), **stage_summary(report)}


def _parse_mapping(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        if "=" not in item:
            fail(f"--map {item!r}: expected LOGICAL=COLUMN, e.g. --map prompt=caption")
        key, value = item.split("=", 1)
        pairs[key.strip()] = value.strip()
    return pairs


def print_ingest_summary(stats: dict[str, int], out: Path) -> None:
    rejected = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("rejected:") and v}
    rows = [("records read", stats.get("records", 0)), ("pairs read", stats.get("items", 0)),
            ("accepted", stats.get("accepted", 0)), ("rejected", sum(rejected.values()))]
    rows += [(f"  {reason}", n) for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1])]
    balanced = stats.get("items", 0) == stats.get("accepted", 0) + sum(rejected.values())
    if stats.get("anonymous_votes"):  # Rapidata's records name no voter: each such vote got SOURCE#ROW:K
        rows.append(("votes read with no voter id (named SOURCE#ROW:K)", stats["anonymous_votes"]))
    rows.append(("reconciles", "yes" if balanced else "NO"))
    print_counts(f"ingest -> {out}", rows)
    if not balanced:
        fail("the counts do not reconcile: this is a bug in prefcurate, please report it", code=3)
