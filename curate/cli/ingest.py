"""`prefcurate ingest`: raw preference files into a dataset directory."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli.common import ExecutorOpt, ExecutorName, ResumeOpt, SchedulerOpt, WorkersOpt, fail, print_counts, run_stage_cli
from curate.cli.output import json_summary, prefixed, stage_summary


@json_summary
def ingest(
    sources: Annotated[list[str], typer.Argument(help="Files or folders to read (for pickapic also a Hugging Face "
                                                 "dataset id, where the Hub is reachable).")],
    format: Annotated[str, typer.Option("--format", "-f", help="pickapic | hpdv2 | table (CSV, JSONL or Parquet "
                                        "with --map).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write.", file_okay=False)],
    image_root: Annotated[Optional[Path], typer.Option("--image-root", help="Folder that image paths are relative "
                          "to; paths never escape it. hpdv2 default: the JSON file's folder.",
                          exists=True, file_okay=False)] = None,
    mapping: Annotated[Optional[list[str]], typer.Option("--map", help="table: LOGICAL=COLUMN, e.g. --map "
                       "prompt=caption --map image_a=left_path. Logical: prompt, image_a, image_b, label, "
                       "label_0, label_1, votes_a, votes_b, annotator, model_a, model_b, created_at.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split name for every row (default: from the file name, "
                     "else train).")] = None,
    shard_rows: Annotated[int, typer.Option(min=1, help="Rows per shard: memory follows this, not the input size.")] = 20_000,
    allow_network: Annotated[bool, typer.Option("--allow-network", help="Download images given as URLs.")] = False,
    full_decode: Annotated[bool, typer.Option("--full-decode", help="Decode every image fully (slower) instead of "
                           "checking headers and end markers.")] = False,
    executor: ExecutorOpt = ExecutorName.local,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = 2,
    resume: ResumeOpt = False,
) -> None:
    """Read pairwise preferences into versioned Arrow tables: pairs, images (each stored once) and rejects.

    Every input row ends as exactly one pair or one reject with its reason; the summary reconciles.
    """
    from curate.ingest.pickapic import SourceError
    from curate.ingest.stage import Format, IngestStage, expand_sources

    try:
        fmt = Format(format)
    except ValueError:
        fail(f"--format {format!r} is not known; expected one of {', '.join(f.value for f in Format)}")
    pairs = {}
    for item in mapping or []:
        if "=" not in item:
            fail(f"--map {item!r}: expected LOGICAL=COLUMN, e.g. --map prompt=caption")
        key, value = item.split("=", 1)
        pairs[key.strip()] = value.strip()
    if pairs and fmt is not Format.table:
        fail("--map only applies to --format table")
    try:
        files = expand_sources(sources, fmt)
    except SourceError as exc:
        fail(str(exc))
    stage = IngestStage(files=[str(f) for f in files], format=fmt.value, image_root=str(image_root) if image_root else None,
                        mapping=pairs, split=split, shard_rows=shard_rows, allow_network=allow_network,
                        full_decode=full_decode)
    out.mkdir(parents=True, exist_ok=True)
    report = run_stage_cli(stage, out, executor, scheduler, workers, resume)
    print_ingest_summary(report.stats, out)
    return {"dataset": str(out), "records": report.stats.get("records", 0), "pairs_read": report.stats.get("items", 0),
            "accepted": report.stats.get("accepted", 0), "rejected": prefixed(report.stats, "rejected"),
            **stage_summary(report)}


def print_ingest_summary(stats: dict[str, int], out: Path) -> None:
    rejected = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("rejected:") and v}
    rows = [("records read", stats.get("records", 0)), ("pairs read", stats.get("items", 0)),
            ("accepted", stats.get("accepted", 0)), ("rejected", sum(rejected.values()))]
    rows += [(f"  {reason}", n) for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1])]
    balanced = stats.get("items", 0) == stats.get("accepted", 0) + sum(rejected.values())
    rows.append(("reconciles", "yes" if balanced else "NO"))
    print_counts(f"ingest -> {out}", rows)
    if not balanced:
        fail("the counts do not reconcile: this is a bug in prefcurate, please report it", code=3)
