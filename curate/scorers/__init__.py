"""Scorers: reward models that map (images, prompts) to one float per image, for curation and evaluation.

One interface (``Scorer.score(images, prompts, batch_size)``), one loader (``load_scorer``), one
implementation per kind: ``clip`` (open_clip CLIP score, the scorer ``prefcurate embed`` registers),
``pickscore`` (transformers CLIPModel, PickScore v1's layout), ``hps`` (HPSv2 / v2.1), ``aesthetic``
(the LAION aesthetic predictor), ``world`` (the synthetic world's analytic judge) and
``imagereward`` (where its package is installed). Each kind is loaded from a hub id or a local path;
offline with weights missing, loading fails before any work with the files to fetch.
"""
from __future__ import annotations

from curate.scorers.base import Scorer, ScorerError, ScorerKind, ScorerSpec, parse_spec, parse_specs

__all__ = ["Scorer", "ScorerError", "ScorerKind", "ScorerSpec", "load_scorer", "parse_spec", "parse_specs"]


def _loaders() -> dict:
    from curate.scorers.clip import load_aesthetic, load_clip_scorer, load_hps
    from curate.scorers.imagereward import load_imagereward
    from curate.scorers.pickscore import load_pickscore
    from curate.scorers.world import load_world

    return {ScorerKind.clip: load_clip_scorer, ScorerKind.pickscore: load_pickscore, ScorerKind.hps: load_hps,
            ScorerKind.aesthetic: load_aesthetic, ScorerKind.world: load_world, ScorerKind.imagereward: load_imagereward}


def load_scorer(spec: ScorerSpec | str, device: str = "cpu", precision: str = "fp32") -> Scorer:
    """The scorer ``spec`` names (``KIND[:SOURCE]`` or a ``ScorerSpec``), in eval mode on ``device``.

    Raises ScorerError (a one-line message with the fix) for an unknown kind, missing weights or a
    file that is not what its kind expects; open_clip's own ModelError passes through as one.
    """
    from curate.clip.models import ModelError, resolve_device

    spec = parse_spec(spec) if isinstance(spec, str) else spec
    try:
        return _loaders()[spec.kind](spec, resolve_device(device), precision)
    except ModelError as err:
        raise ScorerError(f"{spec.name}: {err}") from err
