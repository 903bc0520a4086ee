"""`prefcurate scores`: scorer values (AI annotators) from outside."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.common import fail, print_counts, run_stage_cli

app = typer.Typer(help="Scores of images under prompts, by named scorers (AI annotators for the minority metric).",
                  no_args_is_help=True)


@app.command("import")
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
    report = run_stage_cli(ScoresImportStage(file=str(file), scorer=scorer), dataset)
    stats = report.stats
    print_counts(f"scores import {scorer} -> {dataset}", [
        ("scores stored", stats.get("scores", 0)), ("rows matching no pair or image", stats.get("unmatched_rows", 0)),
        ("rows without a finite score, or repeated", stats.get("dropped_missing_or_duplicate", 0))])
