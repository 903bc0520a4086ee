"""`prefcurate report`: one self-contained HTML page about a dataset's curation, an evaluation, a training run."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli.common import fail
from curate.cli.output import json_summary


@json_summary
def report(
    dataset: Annotated[Optional[Path], typer.Argument(help="The dataset directory (made by `prefcurate ingest`); "
                       "optional with --evaluation or --run.", exists=True, file_okay=False, dir_okay=True)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.", dir_okay=False)] = Path("report.html"),
    evaluation: Annotated[Optional[Path], typer.Option("--evaluation", help="A `prefcurate evaluate --out` folder: "
                          "adds win rates with intervals, a chart per scorer and base-vs-tuned images.",
                          exists=True, file_okay=False)] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="A `prefcurate train --output-dir` folder: adds "
                   "training health (loss, accuracy, h, errors, grad norm, lr, u and W; spikes and stalls named).",
                   exists=True, file_okay=False)] = None,
    gallery: Annotated[int, typer.Option("--gallery", min=0, max=200, help="How many of the most strongly flagged "
                       "pairs to show with their images (and, up to 6, evaluation pairs per tuned model).")] = 12,
    thumbnail: Annotated[int, typer.Option("--thumbnail", min=32, max=512, help="Longest side of the gallery "
                         "thumbnails, in pixels.")] = 192,
) -> None:
    """The funnel, annotator reliability, minority scores, CLIP scores, per-source tables and a gallery
    of the most strongly flagged pairs, in ONE HTML file (inline CSS and SVG, images as data: URIs);
    with --evaluation and --run, an evaluation section and a training-health section.

    Works with whatever stages have run: each missing section names the command that makes it.
    """
    from curate.dataset import DatasetError
    from curate.report.html import write_report
    from curate.report.page import write_sections_page

    if dataset is None and evaluation is None and run is None:
        fail("give a dataset directory, --evaluation DIR or --run DIR (or several)")
    try:
        extra = _extra_sections(evaluation, run, gallery, thumbnail)
        if dataset is not None:
            summary = write_report(dataset, out, gallery=gallery, thumbnail=thumbnail, extra=extra)
        else:
            summary = {**write_sections_page(out, list(extra), str(evaluation or run)), "missing": []}
    except (DatasetError, FileNotFoundError) as exc:
        fail(str(exc))
    missing = f"; missing: {', '.join(summary['missing'])}" if summary["missing"] else ""
    typer.echo(f"report -> {out} ({summary['bytes'] / 1e3:.0f} kB, {summary['images']} images{missing})")
    return {"out": str(out), **summary}


def _extra_sections(evaluation: Path | None, run: Path | None, gallery: int, thumbnail: int):
    sections = []
    if evaluation is not None:
        from curate.report.evaluation import evaluation_section

        sections.append(("evaluation", "Evaluation", evaluation_section(evaluation, min(gallery, 6), thumbnail)))
    if run is not None:
        from curate.report.training import health_section

        sections.append(("training", "Training", health_section(run)))
    return tuple(sections)
