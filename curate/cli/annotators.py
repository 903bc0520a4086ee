"""`prefcurate annotators` and `prefcurate flag`."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from curate.cli.common import DashboardOpt, DatasetArg, ExecutorName, ExecutorOpt, ResumeOpt, SchedulerOpt, WorkersOpt, fail, print_counts, run_stage_cli
from curate.cli.output import json_summary, prefixed, stage_summary
from curate.options import WeightKind, WeightSource


@json_summary
def annotators(
    dataset: DatasetArg,
    bradley_terry: Annotated[bool, typer.Option("--bradley-terry/--no-bradley-terry", help="Fit the crowd model "
                             "(Bradley-Terry taste groups over people, by EM) as the consensus and a signal.")] = True,
    max_tastes: Annotated[int, typer.Option(min=1, max=8, help="Most taste components to grow (the majority "
                          "included); a split is kept only when its group keeps at least 3 people.")] = 3,
    level: Annotated[float, typer.Option(min=0.5, max=0.999, help="Credible level of the reliability interval.")] = 0.95,
    bootstrap: Annotated[int, typer.Option(min=0, help="Refit the majority taste this many times on annotators "
                         "resampled with replacement: consensus.bt_stability. Costs a fit each.")] = 0,
    executor: ExecutorOpt = ExecutorName.local,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = 2,
    dashboard: DashboardOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Per-annotator statistics, taste groups, and each judgement's consensus.

    Pass 1 fits the crowd model: a mixture of Bradley-Terry taste components over people (each
    person's membership, the majority being the taste most PEOPLE hold) and random clickers, by EM;
    it writes the annotators, taste_groups, image_strengths, vote_groups, signal_scales and
    bt_stability tables. Pass 2 writes each judgement's consensus (the majority taste leaving the
    judgement out, the scorers in the scores table, other people's votes) and its minority score.
    """
    from curate.annotators.stage import AnnotatorsStage

    stage = AnnotatorsStage(bradley_terry=bradley_terry, level=level, bootstrap=bootstrap, max_tastes=max_tastes)
    report = run_stage_cli(stage, dataset, executor, scheduler, workers, resume, dashboard=dashboard)  # then its consensus pass
    stats = report.stats
    alpha = stats.get("krippendorff_alpha_x1000", -1000)
    print_counts(f"annotators -> {dataset}", [
        ("annotators", stats.get("annotators", 0)),
        ("  reliable", stats.get("verdict:reliable", 0)), ("  unreliable", stats.get("verdict:unreliable", 0)),
        ("  undecided", stats.get("verdict:undecided", 0)),
        ("scorers used", stats.get("signals:scorers", 0)),
        ("Bradley-Terry", "yes" if stats.get("signals:bradley_terry") else "no"),
        ("taste groups", stats.get("taste_groups", 0)),
        ("Krippendorff's alpha", "n/a (no pair judged twice)" if alpha == -1000 else f"{alpha / 1000:.3f}"),
        *taste_rows(dataset),
    ])
    return {"dataset": str(dataset), "annotators": stats.get("annotators", 0), "verdicts": prefixed(stats, "verdict"),
            "krippendorff_alpha": None if alpha == -1000 else alpha / 1000, "taste_groups": _taste_groups(dataset),
            **stage_summary(report)}


def taste_rows(dataset) -> list[tuple[str, str]]:
    """One line per taste group: people (sum of memberships) and share of judgements."""
    return [(f"  {g['name']}", f"{g['people']:.1f} people, {g['judgement_share']:.1%} of judgements")
            for g in _taste_groups(dataset)]


def _taste_groups(dataset) -> list[dict]:
    from curate.report.tastes import taste_groups
    from curate.dataset import Dataset

    return taste_groups(Dataset(dataset)) or []


@json_summary
def flag(
    dataset: DatasetArg,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Flag when the minority score (1 - P(label "
                         "right)) is at least this.")] = 0.5,
    quantile: Annotated[Optional[float], typer.Option(help="Flag the top share instead (a share "
                        "strictly between 0 and 1, e.g. 0.2), overriding --threshold.")] = None,
    rho: Annotated[float, typer.Option(help="Scale of the RMS-normalised margins in u (3.75 = the authors' rho 15 "
                   "with an L2 norm over batches of 16).")] = 3.75,
    weight_from: Annotated[WeightSource, typer.Option(help="u (the paper's W = 1/(k u + c)) or minority_score.")] = WeightSource.u,
    weight_kind: Annotated[WeightKind, typer.Option(help="linear (k u + c) or quadratic (k u^2 + c).")] = WeightKind.linear,
    k: Annotated[float, typer.Option(help="k of the weight.")] = 10.0,
    c: Annotated[float, typer.Option(help="c of the weight.")] = 1.0,
    explain: Annotated[Optional[str], typer.Option("--explain", metavar="PAIR_ID", help="Print why one pair was "
                       "(not) flagged, from the tables already written, and exit.")] = None,
    executor: ExecutorOpt = ExecutorName.local,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = 2,
    dashboard: DashboardOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Flag minority samples with reasons and give every pair a training weight (the pair_scores table)."""
    if explain:
        from curate.annotators.explain import explain_pair

        try:
            explanation = explain_pair(dataset, explain)
        except LookupError as exc:
            fail(str(exc))
        typer.echo(explanation)
        return {"dataset": str(dataset), "pair_id": explain, "explanation": explanation}
    from curate.annotators.flag import FlagStage

    try:
        stage = FlagStage(threshold=threshold, quantile=quantile, rho=rho, weight_from=weight_from,
                          weight_kind=weight_kind, k=k, c=c)
    except ValueError as exc:
        fail(str(exc))
    report = run_stage_cli(stage, dataset, executor, scheduler, workers, resume, dashboard=dashboard)
    total = report.tables["pair_scores"]["rows"]
    flagged = report.stats.get("flagged", 0)
    rows = [("pairs", total), ("flagged as minority", flagged),
            ("share", f"{flagged / total:.1%}" if total else "n/a")]
    rows += [(f"  {k.split(':', 1)[1]}", v) for k, v in sorted(report.stats.items()) if k.startswith("reason:")]
    print_counts(f"flag -> {dataset}", rows)
    return {"dataset": str(dataset), "pairs": total, "flagged": flagged, "share": flagged / total if total else None,
            "reasons": prefixed(report.stats, "reason"), **stage_summary(report)}
