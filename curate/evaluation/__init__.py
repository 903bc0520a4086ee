"""Evaluation: render the base and tuned models on a prompt suite from the same seeds, score, compare.

suites: prompt suites; run: the config, the batches and their commit; render: the rendering and
scoring loop (``evaluate``); summary: the per-image table and summary.json; stats: the paired
win rate and mean difference with cluster-bootstrap intervals.
"""
from enum import Enum


class Sampler(str, Enum):
    """The diffusers scheduler that samples (built from the model's own scheduler config); here, not in
    ``run``, so the command can offer the choices without importing pyarrow."""

    ddim = "ddim"
    ddpm = "ddpm"
    euler = "euler"
    dpm = "dpm"
    pndm = "pndm"
