"""`prefcurate scores`: scorer values (AI annotators), computed by a registry scorer or imported from outside."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.common import (DashboardOpt, DatasetArg, Device, ExecutorName, ExecutorOpt, Precision, ResumeOpt, SchedulerOpt,
                               WorkersOpt, fail, print_counts, run_stage_cli, stage_executor)
from curate.cli.output import json_summary, stage_summary

app = typer.Typer(help="Scores of images under prompts, by named scorers (AI annotators for the minority metric).",
                  no_args_is_help=True, rich_markup_mode=None)


@app.command("import")
@json_summary
def import_scores(
    file: Annotated[Path, typer.Argument(help="CSV, JSONL or Parquet: image_id, prompt_id (or prompt), score; or "
                                         "pair_id, score_a, score_b.", exists=True, dir_okay=False)],
    scorer: Annotated[str, typer.Option("--scorer", help="Name of the scorer, e.g. pickscore or hps-v2.")],
    dataset: Annotated[Path, typer.Option("--dataset", "-d", help="The dataset directory.", exists=True,
                                          file_okay=False)],
) -> None:
    """Import a scorer's values computed elsewhere (PickScore, HPS, ImageReward, an aesthetic model)."""
    from curate.annotators.scores_import import ScoresImportStage

    if not scorer.strip():
        fail("--scorer must name the scorer, e.g. --scorer pickscore")
    from curate.dataset import Dataset, DatasetError
    from curate.ingest.pickapic import SourceError

    stage = ScoresImportStage(file=str(file), scorer=scorer)
    try:
        stage.check(Dataset(dataset))  # before the run replaces an earlier import of this scorer
    except (SourceError, DatasetError) as exc:
        fail(str(exc))
    report = run_stage_cli(stage, dataset)
    stats = report.stats
    print_counts(f"scores import {scorer} -> {dataset}", [
        ("scores stored", stats.get("scores", 0)), ("rows matching no pair or image", stats.get("unmatched_rows", 0)),
        ("rows without a finite score, or repeated", stats.get("dropped_missing_or_duplicate", 0))])
    return {"dataset": str(dataset), "scorer": scorer, "scores": stats.get("scores", 0),
            "unmatched_rows": stats.get("unmatched_rows", 0),
            "dropped_missing_or_duplicate": stats.get("dropped_missing_or_duplicate", 0), **stage_summary(report)}


@app.command("compute")
@json_summary
def compute(
    dataset_dir: DatasetArg,
    scorer: Annotated[str, typer.Option("--scorer", help="A registry scorer, KIND[:SOURCE]: world, clip:domain, "
                                        "pickscore[:FOLDER], hps:v2.1, aesthetic[:FILE], imagereward. Its name "
                                        "in the scores table is the spec as written.")],
    device: Annotated[Device, typer.Option(help="auto: cuda when available, else cpu.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(help="Scorer precision.")] = Precision.fp32,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 16,
    images_per_shard: Annotated[int, typer.Option("--images-per-shard", min=1, help="Images per output shard.")] = 4096,
    executor: ExecutorOpt = ExecutorName.local,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = 2,
    dashboard: DashboardOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Score each distinct (image, prompt) of the pairs once with a registry scorer (incremental): an AI annotator.

    Writes scores (scorer = the spec) and score_failures (images without bytes or undecodable,
    with reasons); `annotators` and `flag` then use the scorer as one more signal.
    """
    from curate.dataset import DatasetError
    from curate.runner import FingerprintMismatch
    from curate.scorers import ScorerError
    from curate.scorers.stage import ScoreOptions, compute_scores

    try:
        options = ScoreOptions(device=device.value, batch_size=batch_size)
        with stage_executor(executor, scheduler, workers, dashboard) as ex:
            summary = compute_scores(dataset_dir, scorer, precision=precision.value, options=options, executor=ex,
                                     resume=resume, images_per_shard=images_per_shard)
    except (ScorerError, DatasetError, FingerprintMismatch) as exc:
        fail(str(exc))
    if summary.report is None:
        typer.echo(f"scores compute {summary.scorer}: every (image, prompt) of {dataset_dir} is already scored")
        return {"dataset": str(dataset_dir), "scorer": summary.scorer, "scores_rows": 0, "already_scored": True}
    stats = summary.report.stats
    print_counts(f"scores compute {summary.scorer} -> {dataset_dir}", [
        ("(image, prompt) scores stored", stats.get("scores_rows", 0)),
        ("images scored", stats.get("images_scored", 0)),
        ("images failed: no row in images", stats.get("images_missing", 0)),
        ("images failed: no bytes", stats.get("images_empty", 0)),
        ("images failed: undecodable", stats.get("images_undecodable", 0))])
    return {"dataset": str(dataset_dir), "scorer": summary.scorer, "already_scored": False,
            **{k: stats.get(k, 0) for k in ("scores_rows", "images_scored", "images_missing", "images_empty",
                                            "images_undecodable")}, **stage_summary(summary.report)}
