"""Summaries of the alignment benchmark's rows: paired bootstrap intervals, markdown tables, a plot.

Every run stores the judged reward of each held-out sample; all methods and the base model sample
the same prompts from the same noise, so differences are paired per (seed, sample). The bootstrap
resamples seeds and held-out samples (both with replacement) and recomputes each statistic on the
same resample for every quantity it compares.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

LEVEL = 0.95


def resamples(n_seeds: int, n_samples: int, draws: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, (draws, n_seeds)), rng.integers(0, n_samples, (draws, n_samples))


def boot_means(values: np.ndarray, idx: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Mean of ``values`` (seeds x samples) on each resample of seeds and samples."""
    seeds, samples = idx
    return np.array([values[s][:, n].mean() for s, n in zip(seeds, samples)])


def interval(point: float, boots: np.ndarray) -> tuple[float, float, float]:
    """(point estimate, percentile interval at LEVEL)."""
    lo, hi = np.nanpercentile(boots, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(point), float(lo), float(hi)


def paired_interval(values: np.ndarray, draws: int = 2000) -> tuple[float, float, float]:
    """Mean of a (seeds x samples) array of paired differences, with its bootstrap interval."""
    return interval(values.mean(), boot_means(values, resamples(*values.shape, draws)))


def kept_share(gain: np.ndarray, clean_gain: np.ndarray, draws: int = 2000) -> tuple[float, float, float]:
    """gain.mean() / clean_gain.mean(), both (seeds x samples) over the same seeds and samples."""
    idx = resamples(*gain.shape, draws)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample whose clean gain is 0 counts as NaN
        return interval(gain.mean() / clean_gain.mean(), boot_means(gain, idx) / boot_means(clean_gain, idx))


def cells(rows: list[dict], variant: str) -> dict:
    """{(rate, method): (seeds x samples) reward gains over the base}, seeds in a common order."""
    base = np.array(next(r for r in rows if r["kind"] == "base")["reward"])
    by: dict = defaultdict(dict)
    for r in rows:
        if r["kind"] == "run" and r["variant"] == variant:
            by[(r["rate"], r["method"])][r["seed"]] = np.array(r["reward"]) - base
    return by


def summarise(rows: list[dict], variant: str, draws: int = 2000) -> dict:
    """Per (rate, method): gain, difference against dpo at the same rate, share of dpo's clean (0%, one
    judgement per pair) gain kept, each with its paired interval over the seeds both sides have. The
    share is left out while the interval of dpo's clean gain reaches 0."""
    by = cells(rows, variant)
    clean = cells(rows, "minority").get((0.0, "dpo"), {})  # 0%: no minority tastes and nothing flipped
    # A share of a gain that is not there means nothing: kept only once dpo's clean gain is shown (> 0).
    if clean and paired_interval(np.stack([clean[s] for s in sorted(clean)]), draws)[1] <= 0:
        clean = {}
    out = {}
    for (rate, method), runs in sorted(by.items()):
        seeds = sorted(runs)
        gain = np.stack([runs[s] for s in seeds])
        cell = {"seeds": len(seeds), "gain": paired_interval(gain, draws)}
        dpo = by.get((rate, "dpo"), {})
        common = [s for s in seeds if s in dpo]
        if method != "dpo" and common:
            cell["vs_dpo"] = paired_interval(np.stack([runs[s] - dpo[s] for s in common]), draws)
        common = [s for s in seeds if s in clean]
        if common:
            cell["kept"] = kept_share(np.stack([runs[s] for s in common]), np.stack([clean[s] for s in common]), draws)
        out[(rate, method)] = cell
    return out


def _ci(v, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    mean, lo, hi = v
    return f"{mean:.0%} [{lo:.0%}, {hi:.0%}]" if pct else f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def table(summary: dict, rates, methods, key: str, title: str, pct: bool = False) -> list[str]:
    lines = [title, "", "| method | " + " | ".join(f"{r:.0%}" for r in rates) + " |", "|---" * (len(rates) + 1) + "|"]
    for m in methods:
        vals = [_ci(summary.get((r, m), {}).get(key), pct) for r in rates]
        if any(v != "n/a" for v in vals):
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return lines + [""]


def flag_table(rows: list[dict], variant: str) -> list[str]:
    data = [r for r in rows if r["kind"] == "data" and r["variant"] == variant]
    lines = ["| rate | seeds | realised minority | AUROC minority score | AUROC u | flagged | precision | recall |",
             "|---|---|---|---|---|---|---|---|"]
    for rate in sorted({r["rate"] for r in data}):
        group = [r for r in data if r["rate"] == rate]
        f = lambda k: np.nanmean([np.nan if r[k] is None else r[k] for r in group])  # noqa: E731
        lines.append(f"| {rate:.0%} | {len(group)} | {f('realised_minority'):.3f} | {f('auroc_minority_score'):.3f} | "
                     f"{f('auroc_u'):.3f} | {f('flagged_share'):.3f} | {f('flag_precision'):.3f} | {f('flag_recall'):.3f} |")
    return lines + [""]


COLOURS = {"dpo": (31, 119, 180), "rdpo": (255, 127, 14), "adaptive-dpo": (44, 160, 44),
           "adaptive-offline": (214, 39, 40), "dpo-kept": (148, 103, 189), "dpo-weighted": (140, 86, 75)}


def plot(summary: dict, rates, methods, path, title: str) -> None:
    """Reward gain over the base vs minority rate, one line per method, bars = 95% paired bootstrap."""
    from PIL import Image, ImageDraw

    W, H, left, right, top, bottom = 760, 460, 80, 190, 40, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    values = [v for c in summary.values() for v in c["gain"]] + [0.0]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or 0.01
    lo, hi = lo - pad, hi + pad
    x = lambda r: left + (r - min(rates)) / (max(rates) - min(rates) or 1) * (W - left - right)  # noqa: E731
    y = lambda v: top + (hi - v) / (hi - lo) * (H - top - bottom)  # noqa: E731
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    d.line([left, y(0), W - right, y(0)], fill=(160, 160, 160))
    for r in rates:
        d.text((x(r) - 10, H - bottom + 8), f"{r:.0%}", fill="black")
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        d.text((8, y(v) - 6), f"{v:+.3f}", fill="black")
    d.text((left, 12), title, fill="black")
    d.text((left + 120, H - 24), "minority label rate", fill="black")
    for j, m in enumerate(methods):
        colour = COLOURS.get(m, (0, 0, 0))
        points = [(x(r) + (j - len(methods) / 2) * 4, summary[(r, m)]["gain"]) for r in rates if (r, m) in summary]
        for px, (mean, mn, mx) in points:
            d.line([px, y(mn), px, y(mx)], fill=colour, width=1)
            d.ellipse([px - 3, y(mean) - 3, px + 3, y(mean) + 3], fill=colour)
        for (p0, c0), (p1, c1) in zip(points, points[1:]):
            d.line([p0, y(c0[0]), p1, y(c1[0])], fill=colour, width=2)
        d.line([W - right + 12, top + 20 + 18 * j, W - right + 32, top + 20 + 18 * j], fill=colour, width=3)
        d.text((W - right + 38, top + 14 + 18 * j), m, fill="black")
    d.text((W - right + 12, top + 20 + 18 * len(methods)), "y: reward gain", fill="black")
    d.text((W - right + 12, top + 34 + 18 * len(methods)), "bars: 95% paired bootstrap", fill="black")
    img.save(path)
