"""`prefcurate report`: one self-contained HTML page about a dataset's curation."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.common import DatasetArg, fail


def report(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.", dir_okay=False)] = Path("report.html"),
    gallery: Annotated[int, typer.Option("--gallery", min=0, max=200, help="How many of the most strongly flagged "
                       "pairs to show with their images.")] = 12,
    thumbnail: Annotated[int, typer.Option("--thumbnail", min=32, max=512, help="Longest side of the gallery "
                         "thumbnails, in pixels.")] = 192,
) -> None:
    """The funnel, annotator reliability, minority scores, CLIP scores, per-source tables and a gallery
    of the most strongly flagged pairs, in ONE HTML file (inline CSS and SVG, images as data: URIs).

    Works with whatever stages have run: each missing section names the command that makes it.
    """
    from curate.dataset import DatasetError
    from curate.report.html import write_report

    try:
        summary = write_report(dataset, out, gallery=gallery, thumbnail=thumbnail)
    except DatasetError as exc:
        fail(str(exc))
    missing = f"; missing: {', '.join(summary['missing'])}" if summary["missing"] else ""
    typer.echo(f"report -> {out} ({summary['bytes'] / 1e3:.0f} kB, {summary['images']} images{missing})")
