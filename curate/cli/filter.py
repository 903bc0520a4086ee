"""`prefcurate filter`: declarative rules over CLIP scores and embeddings; writes the filters table."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli.common import DashboardOpt, DatasetArg, ExecutorName, ExecutorOpt, SchedulerOpt, WorkersOpt, fail, run_stage_cli
from curate.cli.output import json_summary, stage_summary


@json_summary
def filter_pairs(
    dataset_dir: DatasetArg,
    rules: Annotated[Optional[Path], typer.Option("--rules", help="TOML file of rules (keys of [filter]: model, "
                     "min_score, min_score_quantile, score_of, max_image_cosine, duplicate_epsilon, "
                     "drop_unscored; false switches a rule off). Options below override it.",
                     exists=True, dir_okay=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="CLIP model key in clip_scores (default: the "
                     "only one there).")] = None,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Remove pairs whose prompt-image "
                         "cosine (see --score-of) is below this.")] = None,
    min_score_quantile: Annotated[Optional[float], typer.Option("--min-score-quantile", min=0, max=0.999,
                                  help="Remove pairs below this quantile of the dataset's scores (DataComp-style).")] = None,
    score_of: Annotated[Optional[str], typer.Option("--score-of", help="Which image's score a pair is judged by: "
                        "max (default: its best image), min or mean.")] = None,
    max_image_cosine: Annotated[Optional[float], typer.Option("--max-image-cosine", help="Remove pairs whose two "
                                "images are closer than this (no preference signal). Default 0.98.")] = None,
    duplicate_epsilon: Annotated[Optional[float], typer.Option("--duplicate-epsilon", help="Remove pairs with the "
                                 "same prompt and images within cosine 1 - epsilon of a kept pair. Default 0.01.")] = None,
    no_near_identical: Annotated[bool, typer.Option("--no-near-identical", help="Switch the near-identical rule off.")] = False,
    no_dedup: Annotated[bool, typer.Option("--no-dedup", help="Switch the semantic-duplicate rule off.")] = False,
    keep_unscored: Annotated[bool, typer.Option("--keep-unscored", help="Keep pairs with a missing embedding.")] = False,
    executor: ExecutorOpt = ExecutorName.local,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = 2,
    dashboard: DashboardOpt = False,
) -> None:
    """Judge every pair by the rules and write filters (pair_id, keep, reasons); nothing is deleted.

    Run `prefcurate embed` first. The summary is the funnel: pairs in, removed per rule (each pair
    under the first rule that removed it), kept; the counts must reconcile with the pairs table.
    """
    from dataclasses import replace

    from curate.clip.filters import FilterRules, RuleError, build_filter_stage, funnel_lines
    from curate.dataset import Dataset, DatasetError

    ds = Dataset(dataset_dir)
    try:
        base = FilterRules.from_toml(rules) if rules else FilterRules()
        resolved = base.with_overrides(model=model, min_score=min_score, min_score_quantile=min_score_quantile,
                                       score_of=score_of, max_image_cosine=max_image_cosine,
                                       duplicate_epsilon=duplicate_epsilon)
        switched = {"max_image_cosine": None} if no_near_identical else {}
        switched |= {"duplicate_epsilon": None} if no_dedup else {}
        switched |= {"drop_unscored": False} if keep_unscored else {}
        stage = build_filter_stage(ds, replace(resolved, **switched))
    except (RuleError, DatasetError) as exc:
        fail(str(exc))
    report = run_stage_cli(stage, dataset_dir, executor, scheduler, workers, dashboard=dashboard)
    threshold = stage.threshold
    typer.echo(f"filter -> {dataset_dir / 'tables' / 'filters'}  (model {stage.rules.model}; min score "
               f"{'off' if threshold is None else f'{threshold:.4f}'})")
    try:
        typer.echo("\n".join(funnel_lines(report.stats, ds.num_rows("pairs"))))
    except DatasetError as exc:
        fail(f"{exc}: this is a bug in prefcurate, please report it", code=3)
    return {"dataset": str(dataset_dir), "model": stage.rules.model, "min_score": threshold,
            "pairs": ds.num_rows("pairs"), **stage_summary(report)}
