"""Summaries of the benchmark rows: per (rate, method) means and seed spread, the share of DPO's
clean-data gain each method keeps, a markdown table and a Pillow plot (matplotlib is not needed)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

METRICS = ("gain", "win_rate", "implicit_acc", "fidelity", "quality")


def summarise(rows: list[dict]) -> dict:
    """{(rate, method): {metric: (mean, min, max, n)}} plus 'kept' = gain / DPO's 0% gain of the same seed."""
    base = next(r for r in rows if r["kind"] == "base")
    runs = [r for r in rows if r["kind"] == "run"]
    clean = {r["seed"]: r["reward"] - base["reward"] for r in runs if r["rate"] == 0 and r["method"] == "dpo"}
    groups: dict = defaultdict(lambda: defaultdict(list))
    for r in runs:
        g = groups[(r["rate"], r["method"])]
        gain = r["reward"] - base["reward"]
        g["gain"].append(gain)
        for m in METRICS[1:]:
            g[m].append(r[m])
        if r["seed"] in clean and clean[r["seed"]] > 0:
            g["kept"].append(gain / clean[r["seed"]])
    out = {}
    for key, g in groups.items():
        out[key] = {m: (float(np.mean(v)), float(np.min(v)), float(np.max(v)), len(v)) for m, v in g.items() if v}
    return {"base": base, "cells": out}


def _fmt(cell, pct: bool = False, digits: int = 4) -> str:
    if cell is None:
        return "n/a"
    mean, lo, hi, n = cell
    if pct:
        return f"{mean:.0%} [{lo:.0%}, {hi:.0%}]"
    return f"{mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]" if n > 1 else f"{mean:+.{digits}f}"


def markdown_tables(summary: dict, rates, methods) -> str:
    cells, base = summary["cells"], summary["base"]
    lines = [f"Base model on the held-out prompts: reward {base['reward']:.4f}, fidelity {base['fidelity']:.4f}, "
             f"quality {base['quality']:.4f}.", "",
             "Reward gain over the base model (mean over seeds [min, max]):", "",
             "| method | " + " | ".join(f"{r:.0%}" for r in rates) + " |", "|---" * (len(rates) + 1) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_fmt(cells.get((r, m), {}).get("gain")) for r in rates) + " |")
    lines += ["", "Share of DPO's 0% gain kept (per seed: gain / DPO's 0% gain of that seed):", "",
              "| method | " + " | ".join(f"{r:.0%}" for r in rates) + " |", "|---" * (len(rates) + 1) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_fmt(cells.get((r, m), {}).get("kept"), pct=True) for r in rates) + " |")
    for metric, title in (("win_rate", "Win rate against the base model's sample from the same noise"),
                          ("implicit_acc", "Implicit accuracy on clean held-out pairs")):
        lines += ["", f"{title}:", "", "| method | " + " | ".join(f"{r:.0%}" for r in rates) + " |",
                  "|---" * (len(rates) + 1) + "|"]
        for m in methods:
            vals = [cells.get((r, m), {}).get(metric) for r in rates]
            lines.append(f"| {m} | " + " | ".join("n/a" if v is None else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
                                                   for v in vals) + " |")
    return "\n".join(lines) + "\n"


COLOURS = {"dpo": (31, 119, 180), "rdpo": (255, 127, 14), "adaptive-dpo": (44, 160, 44),
           "adaptive-offline": (214, 39, 40), "dpo-curated": (148, 103, 189)}


def plot(summary: dict, rates, methods, path, title: str) -> None:
    """Reward gain over the base vs minority rate, one line per method, bars = seed min..max."""
    from PIL import Image, ImageDraw

    W, H, left, right, top, bottom = 760, 460, 80, 190, 40, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    cells = summary["cells"]
    values = [v for (r, m), c in cells.items() for v in c["gain"][:3]] + [0.0]
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
        points = [(x(r) + (j - 2) * 3, cells[(r, m)]["gain"]) for r in rates if (r, m) in cells]
        for (px, (mean, mn, mx, _)) in points:
            d.line([px, y(mn), px, y(mx)], fill=colour, width=1)
            d.ellipse([px - 3, y(mean) - 3, px + 3, y(mean) + 3], fill=colour)
        for (p0, c0), (p1, c1) in zip(points, points[1:]):
            d.line([p0, y(c0[0]), p1, y(c1[0])], fill=colour, width=2)
        d.line([W - right + 12, top + 20 + 18 * j, W - right + 32, top + 20 + 18 * j], fill=colour, width=3)
        d.text((W - right + 38, top + 14 + 18 * j), m, fill="black")
    d.text((W - right + 12, top + 20 + 18 * len(methods)), "y: reward gain", fill="black")
    d.text((W - right + 12, top + 34 + 18 * len(methods)), "bars: seed min-max", fill="black")
    img.save(path)
