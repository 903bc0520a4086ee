"""Training health from a run's metrics.jsonl: the series, and spikes, stalls and rising errors named in words.

The detectors are small pure functions on a series of per-step values:
- a spike is a value above the median of the ``window`` values before it by more than ``threshold``
  robust standard deviations (1.4826 MAD, floored at 5% of the median so a flat history does not
  make every wobble a spike), or a value that is not finite;
- a stall is a last third whose mean is not below the first third's by ``tolerance`` (relative);
- a series rises when its least-squares slope is positive and its last third's mean exceeds its first's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

SERIES = ("loss", "implicit_acc", "h_mean", "err_w_delta", "err_l_delta", "grad_norm", "lr")
ADAPTIVE = ("u_flagged", "u_kept", "w_flagged", "w_kept")
LN2 = math.log(2.0)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-step records of ``run_dir/metrics.jsonl`` (events without a loss are skipped), by step."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl; pass the --output-dir of a `prefcurate train` run")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted((r for r in records if "loss" in r and "step" in r), key=lambda r: r["step"])


def column(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that have ``key``."""
    rows = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return np.array([s for s, _ in rows], float), np.array([v for _, v in rows], float)


def pooled(records: list[dict], key: str) -> np.ndarray:
    """Every per-pair value of a list-valued key (u_flagged, ...) over all steps."""
    return np.array([v for r in records for v in (r.get(key) or [])], float)


def spike_indices(values, window: int = 20, threshold: float = 6.0) -> list[int]:
    values = np.asarray(values, float)
    found = []
    for i in range(len(values)):
        if not np.isfinite(values[i]):
            found.append(i)
            continue
        history = values[max(0, i - window):i]
        history = history[np.isfinite(history)]
        if len(history) < 3:
            continue
        centre = float(np.median(history))
        spread = max(1.4826 * float(np.median(np.abs(history - centre))), 0.05 * abs(centre), 1e-12)
        if values[i] - centre > threshold * spread:
            found.append(i)
    return found


def thirds(values) -> tuple[float, float] | None:
    """Means of the first and the last third of the finite values (None below 6 of them)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) < 6:
        return None
    k = len(values) // 3
    return float(values[:k].mean()), float(values[-k:].mean())


def stalled(values, tolerance: float = 0.01) -> bool:
    ends = thirds(values)
    return ends is not None and ends[1] > ends[0] - tolerance * max(abs(ends[0]), 1e-12)


def rising(values) -> bool:
    ends = thirds(values)
    if ends is None:
        return False
    values = np.asarray(values, float)
    ok = np.isfinite(values)
    slope = np.polyfit(np.arange(len(values))[ok], values[ok], 1)[0]
    return bool(slope > 0 and ends[1] > ends[0])


def findings(records: list[dict]) -> list[str]:
    """Sentences about the run: loss and grad-norm spikes, a stall (at ln 2 named as such), winner and loser
    errors rising together."""
    out = []
    for key, name, hint in (("loss", "The loss", "look at the learning rate and grad norm there"),
                            ("grad_norm", "The gradient norm", "gradient clipping or a lower learning rate tames it")):
        steps, values = column(records, key)
        spikes = spike_indices(values)
        if spikes:
            shown = ", ".join(str(int(steps[i])) for i in spikes[:8]) + (" ..." if len(spikes) > 8 else "")
            out.append(f"{name} spikes at step{'s' if len(spikes) > 1 else ''} {shown} (more than 6 robust standard "
                       f"deviations above the 20 steps before): {hint}.")
    _, loss = column(records, "loss")
    if stalled(loss):
        first, last = thirds(loss)
        at_ln2 = abs(last - LN2) < 0.01
        out.append(f"The loss stalls: its last third averages {last:.4f} against {first:.4f} in the first"
                   + (", which is ln 2, the loss at h = 0: the policy has not moved away from the reference "
                      "(a larger beta or learning rate moves it)." if at_ln2 else "."))
    _, err_w = column(records, "err_w_delta")
    _, err_l = column(records, "err_l_delta")
    if rising(err_w) and rising(err_l):
        out.append(f"The policy's error rises on the winners and on the losers together (winners "
                   f"{thirds(err_w)[0]:+.4g} to {thirds(err_w)[1]:+.4g}, losers {thirds(err_l)[0]:+.4g} to "
                   f"{thirds(err_l)[1]:+.4g} against the reference): the margin grows because the loser gets worse "
                   f"faster, not because the winner gets better, the failure Diffusion-SDPO describes.")
    return out


def missing_keys(records: list[dict]) -> list[str]:
    """The health keys no record has (adaptive ones only when the run logged u at all)."""
    wanted = list(SERIES) + (list(ADAPTIVE) if any("u_mean" in r for r in records) else [])
    return [k for k in wanted if not any(r.get(k) is not None for r in records)]
