"""`prefcurate demo-data`: write a synthetic preference world with known ground truth."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.output import json_summary

ALL_FORMATS = "pickapic,hpdv2,multivote,table"  # the default; votes, hpdv2_pref and hpdv3 on request


@json_summary
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the world into (created if needed).", file_okay=False)],
    pairs: Annotated[int, typer.Option(min=1, help="Good Pick-a-Pic pairs; HPDv2, multi-vote and table layouts get about a tenth each.")] = 500,
    seed: Annotated[int, typer.Option(help="Same seed, same options -> byte-identical files.")] = 0,
    minority_rate: Annotated[float, typer.Option(min=0.0, max=0.95, help="Target share of labels that reverse the majority's preference.")] = 0.2,
    image_size: Annotated[int, typer.Option(min=16, max=1024, help="Side of the rendered images in pixels.")] = 64,
    formats: Annotated[str, typer.Option(help=f"Comma-separated layouts out of {ALL_FORMATS} (the default) and "
                                          "votes (a row per vote, with trust), hpdv2_pref (HPDv2-test-style "
                                          "+1/-1) and hpdv3.")] = ALL_FORMATS,
    no_images: Annotated[bool, typer.Option("--no-images", help="Metadata-only Pick-a-Pic (no jpg_0/jpg_1, like pickapic_v2_no_images); implies --formats pickapic.")] = False,
    malformed: Annotated[int, typer.Option(min=0, help="Malformed rows to plant in each layout (recorded in truth/planted.parquet).")] = 0,
    rows_per_file: Annotated[int | None, typer.Option(min=1, help="Pick-a-Pic rows per parquet file [default: 20,000 with images, 1,000,000 without].")] = None,
) -> None:
    """Write a synthetic world of shape scenes, annotators of known types and their judgements,
    in the Pick-a-Pic, HPDv2, multi-vote and table layouts, plus the ground truth under OUT_DIR/truth."""
    from curate.progress import progress_bars
    from curate.synth.world import WorldConfig, build_world

    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    if no_images and formats == ALL_FORMATS:
        chosen = ("pickapic",)
    try:
        config = WorldConfig(pairs=pairs, seed=seed, minority_rate=minority_rate, image_size=image_size, formats=chosen,
                             images=not no_images, malformed=malformed, rows_per_file=rows_per_file)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    with progress_bars() as progress:
        summary = build_world(out_dir, config, progress)
    _print_summary(out_dir, summary)
    return {"out": str(out_dir), **summary}


def _print_summary(out_dir: Path, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    files = Table("file", "records", title=f"world written to {out_dir}")
    for name, count in summary["files"].items():
        files.add_row(name, f"{count:,}")
    minority = summary["minority"]
    types = Table("annotator type", "annotators", "judgements")
    for kind, count in summary["annotators"].items():
        types.add_row(kind, f"{count:,}", f"{summary['judgements_by_type'][kind]:,}")
    console = Console()
    console.print(files)
    console.print(types)
    low, high = minority["reachable_minority_rate"]
    realised = "n/a" if minority["realised"] is None else f"{minority['realised']:.3f}"
    console.print(f"minority share: requested {minority['requested']:.3f}, realised {realised} "
                  f"(reachable {low:.3f}..{high:.3f}); planted malformed rows: {summary['planted']}")
