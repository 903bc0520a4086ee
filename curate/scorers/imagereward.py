"""ImageReward, through its own package (``image-reward``) when it is installed."""
from __future__ import annotations

import numpy as np

from curate.scorers.base import Scorer, ScorerError, ScorerSpec

DEFAULT = "ImageReward-v1.0"


class ImageRewardScorer(Scorer):
    def __init__(self, name: str, model, key: str):
        self.name, self.model, self.key = name, model, key

    def score_batch(self, images: list, prompts: list[str]) -> np.ndarray:
        # the package scores one (prompt, image) at a time (a list of images makes it rank them instead)
        return np.array([float(self.model.score(p, im.convert("RGB"))) for im, p in zip(images, prompts)], np.float32)


def load_imagereward(spec: ScorerSpec, device: str, precision: str) -> ImageRewardScorer:
    try:
        import ImageReward
    except ImportError:
        raise ScorerError("imagereward needs its package: `pip install image-reward` (it is not installed here); "
                          "or leave the imagereward scorer out") from None
    source = spec.source or DEFAULT
    try:
        model = ImageReward.load(source, device=device)
    except Exception as err:  # the package downloads on its own; any failure has the same fix
        raise ScorerError(f"imagereward: cannot load {source} ({type(err).__name__}: {err}); offline, pass the "
                          f"checkpoint file as the scorer imagereward:PATH/ImageReward.pt") from err
    return ImageRewardScorer(spec.name, model.eval(), key=source)
