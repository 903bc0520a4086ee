"""A synthetic preference world with known ground truth (scenes of coloured shapes, annotators of
known types), written in the layouts prefcurate ingests. See world.build_world."""
from curate.synth.scene import (
    Obj, QualityParams, Scene, encode, fidelity, prompt_for, quality, render, render_bytes, true_reward,
)

__all__ = ["Obj", "QualityParams", "Scene", "encode", "fidelity", "prompt_for", "quality", "render", "render_bytes", "true_reward"]
