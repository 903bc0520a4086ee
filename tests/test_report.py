"""The curation report: chart math by hand, sections for any subset of stages, and a real headless Chromium render."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from curate.cli import app
from curate.dataset import Dataset
from curate.report.data import funnel, histogram
from curate.report.plots import bar_chart, histogram_chart, nice_ticks
from curated_data import build_curated, build_with_clip

runner = CliRunner()
CHROMIUM = Path("/usr/bin/chromium")


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def chromium(page: Path, tmp: Path, *action: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'chromium-profile'}", "--hide-scrollbars", "--window-size=1280,2000"]
    return subprocess.run([str(CHROMIUM), *flags, *action, page.resolve().as_uri()], capture_output=True, text=True,
                          timeout=120)


# -------------------------------------------------------------------------------- hand-worked math
def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 205, 5) == [0, 50, 100, 150, 200, 250]
    assert nice_ticks(0, 1, 5) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.23, 0.41, 5) == [-0.4, -0.2, 0, 0.2, 0.4, 0.6]  # step 0.2: the first of 1, 2, 2.5, 5 x 0.1 >= 0.128
    assert nice_ticks(3, 3) == [2.6, 2.8, 3.0, 3.2, 3.4]  # a single value is padded by 10% (2.7-3.3), step 0.2
    with pytest.raises(ValueError, match="finite"):
        nice_ticks(0, float("nan"))


def test_histogram_counts_in_polars_by_hand():
    frame = pl.LazyFrame({"x": [0.0, 0.1, 0.49, 0.5, 0.99, 1.0, 7.0, None, float("nan")],
                          "g": ["a", "b", "a", "a", "b", "b", "a", "a", "b"]})
    hist = histogram(frame, "x", 0.0, 1.0, 2, by="g", order=("a", "b"))
    # bins [0, .5) and [.5, 1]; 1.0 and 7.0 land in the last bin; null and NaN are left out
    assert hist.series["a"].tolist() == [2, 2] and hist.series["b"].tolist() == [1, 2]
    assert hist.total == 7 and np.allclose(hist.edges, [0, 0.5, 1])


def test_charts_are_labelled_svg():
    svg = histogram_chart(np.array([0, 0.5, 1.0]), {"flagged": np.array([3, 1]), "not flagged": np.array([5, 0])},
                          "Minority score", "minority score", "judgements", markers=((0.5, "flag threshold"),))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    for text in ("minority score", "judgements", "flag threshold", ">flagged<", ">not flagged<"):
        assert text in svg
    bars = bar_chart([("read", 10, "total"), ("rejected: x", 2, "rejected")], "Funnel", total=10)
    assert "rejected: x" in bars and "2 (20.0%)" in bars


# ---------------------------------------------------------------------------------------- sections
def test_report_with_ingest_only_names_the_missing_commands(tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(build_curated(), bare)
    for stage in ("annotators", "flag"):
        shutil.rmtree(bare / "runs" / stage)
    for table in ("annotators", "consensus", "pair_scores"):
        shutil.rmtree(bare / "tables" / table)
    out = cli("report", str(bare), "-o", str(tmp_path / "r.html"))
    assert "missing: annotators, flag, embed, filter" in out
    page = (tmp_path / "r.html").read_text()
    for command in ("prefcurate annotators", "prefcurate flag", "prefcurate embed", "prefcurate filter"):
        assert command in page
    assert "<img " not in page and "Not computed yet" in page
    steps = funnel(Dataset(bare))
    assert steps.read == steps.accepted + sum(steps.rejected.values()) and steps.flagged is None


def test_report_renders_in_chromium(tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (Debian: apt-get install -y chromium)")
    ds_dir = build_with_clip()
    page = tmp_path / "report.html"
    out = cli("report", str(ds_dir), "-o", str(page), "--gallery", "6")
    assert "missing" not in out
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # self-contained: nothing fetched
    assert html.count("<img ") == 12 and html.count("<svg") >= 8
    assert len(html) < 1_000_000

    shot = tmp_path / "report.png"
    # One run: the DOM after the load event (virtual time lets it fire) and a screenshot of the first 2000 px.
    result = chromium(page, tmp_path, "--virtual-time-budget=5000", "--dump-dom", f"--screenshot={shot}")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    body = re.search(r"<body[^>]*>", result.stdout).group(0)
    assert 'data-images="loaded"' in body and 'data-image-count="12"' in body, body
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.resize((320, 500)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # text, charts and thumbnails, not a blank page
    pixels = np.asarray(image)
    assert pixels.std() > 20
    # the palette's funnel colours are on screen: rejected red, filter amber, flag purple
    for rgb in ((0xD6, 0x45, 0x45), (0xE3, 0x9B, 0x2D), (0x7C, 0x4D, 0xCC)):
        assert (np.abs(pixels.astype(int) - rgb).sum(axis=2) < 12).sum() > 20, rgb
