"""A synthetic Pick-a-Pic world ingested next to a tiny SD1.5 folder: what the encode and train tests start from."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from curate.cli import app

runner = CliRunner()


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def ingested_world(root: Path, pairs: int, seed: int) -> tuple[str, str]:
    """(dataset dir, model folder) under ``root``: 32 px images, a tiny SD1.5 pipeline saved with save_pretrained."""
    from curate.synth.world import WorldConfig, build_world
    from curate.train.models import tiny_sd15

    build_world(root, WorldConfig(pairs=pairs, seed=seed, image_size=32, formats=("pickapic",)))
    cli("ingest", str(root / "pickapic"), "-f", "pickapic", "-o", str(root / "ds"))
    tiny_sd15().save_pretrained(root / "sd15")
    return str(root / "ds"), str(root / "sd15")
