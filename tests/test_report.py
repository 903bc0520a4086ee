"""The curation report: chart math by hand, sections for any subset of stages, and a real headless Chromium render."""
from __future__ import annotations

import json
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
from curate.report import health
from curate.funnel import funnel
from curate.report.data import histogram
from curate.report.plots import bar_chart, histogram_chart, nice_ticks
from curated_data import build_curated, build_with_clip
from evaluation_data import build_evaluation

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
    for run in [r for r in (bare / "runs").iterdir() if r.name.startswith(("annotators", "flag"))]:
        for table in json.loads((run / "manifest.json").read_text())["tables"]:  # every table the stage made
            shutil.rmtree(bare / "tables" / table, ignore_errors=True)
        shutil.rmtree(run)
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


# ------------------------------------------------------------------ evaluation and training health
def test_spikes_stalls_and_rises_by_hand():
    # history [1, 1, 1, 1]: median 1, MAD 0, so the spread is its floor 5% of 1; 5 - 1 = 4 > 6 * 0.05
    assert health.spike_indices([1, 1, 1, 1, 5, 1, 1]) == [4]
    assert health.spike_indices([1, 1.01, 0.99, 1, 1.02, 1]) == []  # 1.02 - 1 = 0.02 < 0.3
    assert health.spike_indices([1, 1, float("nan"), 1]) == [2]
    assert health.thirds([3, 3, 0, 0, 1, 1]) == (3.0, 1.0)
    assert health.stalled([0.693] * 9) and not health.stalled([0.7, 0.69, 0.68, 0.6, 0.5, 0.45])
    assert health.stalled([0.5, 0.5, 0.6, 0.6, 0.5, 0.504])  # last third 0.502 > 0.5 - 0.01 * 0.5
    assert health.rising([0, 1, 2, 3, 4, 5]) and not health.rising([5, 4, 3, 2, 1, 0])
    assert not health.rising([0, 1, 2])  # too short to say


def write_metrics(run: Path, steps: int, new_keys: bool) -> None:
    """A metrics.jsonl as the trainer writes it: today's keys, and optionally the health keys."""
    rng = np.random.default_rng(0)
    run.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        record = {"step": step, "loss": 0.6931 + 0.0001 * rng.standard_normal(), "implicit_acc": 0.5, "model_err": 0.1,
                  "ref_err": 0.1, "h_mean": 0.0, "h_std": 0.1, "h_min": -0.2, "h_max": 0.2, "u_mean": 0.3,
                  "u_max": 0.9, "u_p90": 0.8, "w_mean": 0.9, "w_min": 0.5}
        if new_keys:
            record.update(lr=1e-4, grad_norm=1.0 + (30.0 if step == 25 else 0.0), err_w_delta=0.001 * step,
                          err_l_delta=0.003 * step, u_flagged=[0.8, 0.9], u_kept=[0.1, 0.2, 0.3],
                          w_flagged=[0.4, 0.45], w_kept=[0.95, 1.0, 1.0])
            record["loss"] += 2.0 if step == 30 else 0.0
        lines.append(json.dumps(record))
    lines.insert(3, json.dumps({"event": "checkpoint", "step": 3}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_training_health_names_what_it_finds_and_what_is_missing(tmp_path):
    write_metrics(tmp_path / "old", 40, new_keys=False)
    cli("report", "--run", str(tmp_path / "old"), "-o", str(tmp_path / "old.html"))
    page = (tmp_path / "old.html").read_text()
    assert "The loss stalls" in page and "which is ln 2" in page
    assert "err_w_delta, err_l_delta, grad_norm, lr, u_flagged, u_kept, w_flagged, w_kept" in page
    write_metrics(tmp_path / "new", 40, new_keys=True)
    records = health.read_metrics(tmp_path / "new")
    assert len(records) == 40 and health.missing_keys(records) == []
    found = health.findings(records)
    assert found[0].startswith("The loss spikes at step 30 ") and found[1].startswith("The gradient norm spikes at step 25 ")
    assert any("rises on the winners and on the losers together" in f for f in found)
    cli("report", str(build_curated()), "--run", str(tmp_path / "new"), "-o", str(tmp_path / "both.html"))
    both = (tmp_path / "both.html").read_text()
    assert "Curation report" in both and "<a href='#training'>Training</a>" in both and "The loss spikes" in both


def test_evaluation_and_health_render_in_chromium(tmp_path, torch_one_thread):
    if not CHROMIUM.is_file():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (Debian: apt-get install -y chromium)")
    write_metrics(tmp_path / "run", 40, new_keys=True)
    page = tmp_path / "eval.html"
    out = cli("report", "--evaluation", str(build_evaluation()), "--run", str(tmp_path / "run"), "-o", str(page),
              "--gallery", "2")
    assert "8 images" in out
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    for text in ("Evaluation: what training bought", "Win rate over the base: world", "Win rate over the base: clip:domain",
                 "Where the models differ most (world)", "Training health", "The loss spikes at step 30"):
        assert text in html, text
    assert html.count("<img ") == 8  # 2 pairs per tuned model, 2 tuned models, base beside tuned
    result = chromium(page, tmp_path, "--virtual-time-budget=5000", "--dump-dom")
    body = re.search(r"<body[^>]*>", result.stdout).group(0)
    assert 'data-images="loaded"' in body and 'data-image-count="8"' in body, body
