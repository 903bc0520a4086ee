"""The training-health section: a run's loss, accuracy, margin, errors, grad norm, lr, u and W, and what went wrong."""
from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np

from curate.report import health
from curate.report.html import _figure, _section
from curate.report.plots import histogram_chart, line_chart

SPIKY = ("loss", "grad_norm")  # the series whose spikes are ringed (health.findings names them)
CHARTS = (  # (title, y label, {series name: metrics key})
    ("Loss", "loss", {"loss": "loss"}),
    ("Implicit accuracy", "share of pairs with h > 0", {"implicit accuracy": "implicit_acc"}),
    ("Mean margin h", "h", {"h mean": "h_mean"}),
    ("Policy minus reference error", "MSE difference", {"winners": "err_w_delta", "losers": "err_l_delta"}),
    ("Gradient norm", "grad norm", {"grad norm": "grad_norm"}),
    ("Learning rate", "lr", {"lr": "lr"}),
)


def health_section(run_dir: str | Path) -> str:
    records = health.read_metrics(run_dir)
    lead = (f"From <code>{escape(str(Path(run_dir) / 'metrics.jsonl'))}</code>: {len(records)} logged steps. "
            "Spikes are ringed in red.")
    if not records:
        return _section("training", "Training health", lead, "<p class='note'>No step was logged yet.</p>")
    notes = health.findings(records) or ["No spike, stall or joint rise of the winner and loser errors was found."]
    body = "<ul class='findings'>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"
    missing = health.missing_keys(records)
    if missing:
        body += (f"<p class='note'>Not in this run's metrics (logged by newer trainers): "
                 f"{escape(', '.join(missing))}.</p>")
    figures = [_line_figure(records, *chart) for chart in CHARTS]
    figures += _distribution_figures(records)
    body += "<div class='grid2'>" + "".join(f for f in figures if f) + "</div>"
    return _section("training", "Training health", lead, body)


def _line_figure(records: list[dict], title: str, y_label: str, keys: dict[str, str]) -> str:
    columns = {name: health.column(records, key) for name, key in keys.items()}
    columns = {name: c for name, c in columns.items() if len(c[0])}
    if not columns:
        return ""
    steps = next(iter(columns.values()))[0]
    series = {name: np.interp(steps, s, v) if len(s) != len(steps) else v for name, (s, v) in columns.items()}
    first = next(iter(keys.values()))
    marks = tuple(steps[i] for i in health.spike_indices(series[next(iter(series))])) if first in SPIKY else ()
    return _figure(line_chart(steps, series, title, "step", y_label, marks=marks), escape(title))


def _distribution_figures(records: list[dict]) -> list[str]:
    out = []
    for name, flagged_key, kept_key in (("u", "u_flagged", "u_kept"), ("W", "w_flagged", "w_kept")):
        flagged, kept = health.pooled(records, flagged_key), health.pooled(records, kept_key)
        if not len(flagged) and not len(kept):
            continue
        both = np.concatenate([flagged, kept])
        lo, hi = float(both.min()), float(both.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 26)
        series = {"flagged": np.histogram(flagged, edges)[0], "not flagged": np.histogram(kept, edges)[0]}
        caption = (f"{name} of every pair in every step, by its flag at curation: flagged mean "
                   f"{flagged.mean() if len(flagged) else float('nan'):.3f}, not flagged mean "
                   f"{kept.mean() if len(kept) else float('nan'):.3f}")
        out.append(_figure(histogram_chart(edges, series, f"{name} by curation flag", name, "pair-steps",
                                           stacked=False), escape(caption)))
    return out
