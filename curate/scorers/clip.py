"""Scorers on open_clip models: CLIP score, HPSv2/v2.1 and the LAION aesthetic predictor.

All three load their CLIP through ``curate.clip.models`` (``resolve`` then ``load_clip``), the path
``prefcurate embed`` uses, so a model has one loading path and one key everywhere.

- ``clip``: cosine of the unit-norm prompt and image embeddings (``row_cosines``, the
  formula ``embed``'s ``scores`` table holds). Source: ``domain``, ``ARCH/TAG``, ``ARCH/FILE``,
  ``hf-hub:ORG/REPO`` or ``local-dir:PATH``; default ``ViT-L-14/openai``.
- ``hps``: HPSv2's scorer is ViT-H-14 fine-tuned on HPDv2, scored by the same cosine. Source:
  ``v2.1`` (default), ``v2`` (files of the hub repo xswu/HPSv2) or a checkpoint file.
- ``aesthetic``: the improved aesthetic predictor, an MLP on the unit-norm ViT-L-14 (OpenAI) image
  embedding. Source: its weight file (published on GitHub, not on the hub).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.clip.scores import row_cosines  # the CLIP-score formula, shared with `embed`'s scores
from curate.scorers.base import Scorer, ScorerError, ScorerSpec, WeightFile, hub_files, load_tensors

DEFAULT_CLIP = "ViT-L-14/openai"
HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_ARCH = "ViT-H-14"
AESTHETIC_BACKBONE = "ViT-L-14/openai"
AESTHETIC_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"


def clip_source(text: str):
    """A ``ClipSource`` from ``domain``, ``ARCH/TAG``, ``ARCH/FILE``, ``hf-hub:...`` or ``local-dir:...``."""
    from curate.clip.models import DOMAIN, resolve

    if text == DOMAIN or text.startswith(("hf-hub:", "local-dir:")):
        return resolve(text)
    arch, _, weights = text.partition("/")
    if not weights:
        raise ScorerError(f"clip:{text} names no weights; write clip:{text}/TAG (a pretrained tag), "
                          f"clip:{text}/FILE (a checkpoint), clip:domain, clip:hf-hub:ORG/REPO or clip:local-dir:PATH")
    return resolve(arch, weights)


def pixels(clip, images: list):
    import torch

    return torch.stack([clip.preprocess(image.convert("RGB")) for image in images])


class ClipScorer(Scorer):
    """Prompt-image cosine of one open_clip model (``clip`` and ``hps``)."""

    def __init__(self, name: str, clip):
        self.name, self.clip, self.key = name, clip, clip.key

    def score_batch(self, images: list, prompts: list[str]) -> np.ndarray:
        return row_cosines(self.clip.encode_texts(prompts), self.clip.encode_images(pixels(self.clip, images)))


class AestheticScorer(Scorer):
    """The LAION aesthetic MLP on unit-norm CLIP image embeddings (the prompt is not used)."""

    def __init__(self, name: str, clip, head, key: str):
        self.name, self.clip, self.head, self.key = name, clip, head, key

    def score_batch(self, images: list, prompts: list[str]) -> np.ndarray:
        import torch

        embeddings = torch.from_numpy(self.clip.encode_images(pixels(self.clip, images)))
        with torch.inference_mode():
            return self.head(embeddings).squeeze(-1).numpy()


def aesthetic_head(state: dict, what: str):
    """The predictor's MLP (Linear 1024, 128, 64, 16, 1 with dropouts between), sized from the weights."""
    from torch import nn

    try:
        width = state["layers.0.weight"].shape[1]
        head = nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                             nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
        head.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
    except (KeyError, RuntimeError) as err:
        raise ScorerError(f"{what}: not the aesthetic predictor's MLP (layers.0 ... layers.7): {err}") from err
    return head.eval()


def load_clip_scorer(spec: ScorerSpec, device: str, precision: str) -> ClipScorer:
    from curate.clip.models import load_clip

    return ClipScorer(spec.name, load_clip(clip_source(spec.source or DEFAULT_CLIP), device, precision))


def load_hps(spec: ScorerSpec, device: str, precision: str) -> ClipScorer:
    from curate.clip.models import load_clip, resolve

    source = spec.source or "v2.1"
    if source in HPS_FILES:
        [path] = hub_files(f"hps:{source}", [WeightFile(HPS_REPO, HPS_FILES[source])],
                           "name the checkpoint file as the scorer hps:PATH")
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ScorerError(f"hps:{source} is neither v2, v2.1 nor a checkpoint file; fetch "
                              f"{HPS_REPO}/{HPS_FILES['v2.1']} and pass hps:PATH")
    return ClipScorer(spec.name, load_clip(resolve(spec.backbone or HPS_ARCH, str(path)), device, precision))


def load_aesthetic(spec: ScorerSpec, device: str, precision: str) -> AestheticScorer:
    from curate.clip.models import file_digest, load_clip

    path = Path(spec.source).expanduser() if spec.source else None
    if path is None or not path.is_file():
        raise ScorerError(f"aesthetic needs its weight file: download {AESTHETIC_URL} and name the scorer "
                          f"aesthetic:PATH ({spec.source or 'no path given'})")
    head = aesthetic_head(load_tensors(path, spec.name), spec.name)
    clip = load_clip(clip_source(spec.backbone or AESTHETIC_BACKBONE), device, precision)
    if clip.embed_dim != head[0].in_features:
        raise ScorerError(f"{spec.name}: the MLP takes {head[0].in_features}-wide embeddings but {clip.key} "
                          f"gives {clip.embed_dim}; it needs {AESTHETIC_BACKBONE}")
    return AestheticScorer(spec.name, clip, head, f"{clip.key}+{file_digest(path)}")
