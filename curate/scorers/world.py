"""The synthetic world's analytic judge as a scorer: every image gets its ground truth.

The prompt is read back into the scene it describes (the world writes its prompts with
``curate.synth.scene.prompts_for_codes``; ``scene_codes`` inverts it), the image is read by
``curate.scorers.judge`` at 32 px (Spearman with the true reward over 400 of the world's renders:
0.93 at 32 px, 0.93 at 64 px box-downsampled (0.89 read at 64 px), 0.95 at 128 px), and the score
is one of the judge's numbers: ``reward`` (the world's true reward, the default), ``fidelity`` (to
the prompt) or ``quality`` (of the rendering).
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from curate.scorers.base import Scorer, ScorerError, ScorerSpec
from curate.synth import scene as sc

MEASURES = ("reward", "fidelity", "quality")
JUDGE_SIDE = 32  # the side the judge's templates and calibrations fit best: larger images are box-downsampled to it
_PHRASES = {phrase: name for name, phrase in sc._POSITION_PHRASE.items()}  # "in the middle of" -> "center"


@lru_cache(maxsize=1)
def _patterns() -> tuple[re.Pattern, re.Pattern]:
    alt = lambda words: "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))  # noqa: E731
    obj = rf"a ({alt(sc.SIZES)}) ({alt(sc.COLOUR_NAMES)}) ({alt(sc.SHAPES)})"
    background = rf"({alt(sc.BACKGROUND_NAMES)}) background"
    one = re.compile(rf"{obj} ({alt(_PHRASES)}) a {background}")
    two = re.compile(rf"{obj} ({alt(sc.RELATIONS)}) {obj} on a {background}")
    return one, two


def scene_codes(prompt: str) -> np.ndarray:
    """The scene code row (``sc.CODE_COLUMNS``) a world prompt describes; ValueError for any other text."""
    one, two = _patterns()
    text = prompt.strip()
    if m := two.fullmatch(text):
        size0, colour0, shape0, relation, size1, colour1, shape1, bg = m.groups()
        objects = (sc.Obj(shape0, colour0, size0), sc.Obj(shape1, colour1, size1))
        return sc.Scene(objects, relation, bg).codes()
    if m := one.fullmatch(text):
        size0, colour0, shape0, phrase, bg = m.groups()
        return sc.Scene((sc.Obj(shape0, colour0, size0),), _PHRASES[phrase], bg).codes()
    raise ValueError(f"{prompt!r} is not a prompt of the synthetic world (e.g. {sc.prompt_for(_EXAMPLE)!r}); "
                     f"the world scorer only judges the world's prompts (evaluate --prompts world, or a demo-data dataset)")


_EXAMPLE = sc.Scene((sc.Obj("circle", "red", "large"),), "center")


class WorldScorer(Scorer):
    def __init__(self, name: str, measure: str):
        self.name, self.measure, self.key = name, measure, f"world/{measure}"

    def check_prompts(self, prompts: list[str]) -> None:
        for prompt in prompts:
            try:
                scene_codes(prompt)
            except ValueError as err:
                raise ScorerError(f"{self.name}: {err}") from None

    def score_batch(self, images: list, prompts: list[str]) -> np.ndarray:
        from curate.scorers.judge import judge_images

        targets = np.stack([scene_codes(p) for p in prompts])
        pixels = np.stack([np.asarray(_judged_size(im.convert("RGB"))) for im in images])
        return np.asarray(judge_images(pixels, targets)[self.measure], np.float32)


def _judged_size(image):
    from PIL import Image

    side = (JUDGE_SIDE, JUDGE_SIDE)
    return image if image.size == side else image.resize(side, Image.Resampling.BOX)


def load_world(spec: ScorerSpec, device: str, precision: str) -> WorldScorer:
    measure = spec.source or "reward"
    if measure not in MEASURES:
        raise ScorerError(f"unknown world measure {measure!r} in {spec.name}; expected world, "
                          f"{', '.join('world:' + m for m in MEASURES)}")
    return WorldScorer(spec.name, measure)
