"""What every scorer shares: the interface, the spec that names one, and finding its weight files.

A scorer maps (images, prompts) to one float per image (higher = better). ``Scorer.score`` splits
the work into batches; a kind implements ``score_batch`` only, so every kind batches the same way
and batching can never change a score.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

_TRUE = {"1", "on", "yes", "true"}


class ScorerError(RuntimeError):
    """A scorer cannot be named, found or loaded; the message says what to do."""


class ScorerKind(str, Enum):
    clip = "clip"
    pickscore = "pickscore"
    hps = "hps"
    aesthetic = "aesthetic"
    world = "world"
    imagereward = "imagereward"


@dataclass(frozen=True)
class ScorerSpec:
    """``kind`` and ``source`` (a hub id, a local path or a kind's own name; None: the kind's default).

    ``backbone`` replaces the CLIP architecture a kind builds on (hps: ViT-H-14; aesthetic:
    ViT-L-14/openai); tests use it to run every kind on tiny models.
    """

    kind: ScorerKind
    source: str | None = None
    backbone: str | None = None

    @property
    def name(self) -> str:
        """The column the scores go in: the spec as written (``pickscore``, ``clip:domain``)."""
        return self.kind.value if self.source is None else f"{self.kind.value}:{self.source}"


def parse_spec(text: str) -> ScorerSpec:
    """``KIND`` or ``KIND:SOURCE`` (``clip:domain``, ``hps:v2``, ``pickscore:/models/pickscore``)."""
    kind, _, source = text.strip().partition(":")
    try:
        return ScorerSpec(ScorerKind(kind), source or None)
    except ValueError:
        raise ScorerError(f"unknown scorer {kind!r} in {text!r}; expected one of "
                          f"{', '.join(k.value for k in ScorerKind)} (optionally KIND:SOURCE)") from None


def parse_specs(text: str) -> list[ScorerSpec]:
    """A comma-separated list of specs, each once."""
    specs = [parse_spec(part) for part in text.split(",") if part.strip()]
    if not specs:
        raise ScorerError("no scorer given; pass e.g. --scorers world,clip:domain")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ScorerError(f"a scorer is named twice in {text!r}")
    return specs


class Scorer(ABC):
    """One float per image; ``key`` names the weights (same key, same scores)."""

    name: str
    key: str

    @abstractmethod
    def score_batch(self, images: list, prompts: list[str]) -> np.ndarray:
        """Scores (float32) of PIL ``images`` against their ``prompts``, one batch."""

    def check_prompts(self, prompts: list[str]) -> None:
        """Raise ScorerError for prompts this scorer cannot judge, before any image is made (most judge any)."""

    def score(self, images: list, prompts: list[str], batch_size: int = 16) -> np.ndarray:
        if len(images) != len(prompts):
            raise ValueError(f"{self.name}: {len(images)} images but {len(prompts)} prompts; give one prompt per image")
        parts = [np.asarray(self.score_batch(list(images[i:i + batch_size]), list(prompts[i:i + batch_size])), np.float32)
                 for i in range(0, len(images), batch_size)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


@dataclass(frozen=True)
class WeightFile:
    """A file a scorer needs: where it is published (a hub repo) and its name there."""

    repo: str
    filename: str


def missing_weights(what: str, files: list[WeightFile], local_hint: str) -> ScorerError:
    """The one-line error for weights that are not here, with the command that fetches them."""
    by_repo: dict[str, list[str]] = {}
    for f in files:
        by_repo.setdefault(f.repo, []).append(f.filename)
    fetch = "; ".join(f"hf download {repo} {' '.join(names)}" for repo, names in by_repo.items())
    return ScorerError(f"{what}: {', '.join(f'{f.repo}/{f.filename}' for f in files)} not in the Hugging Face cache "
                       f"and HF_HUB_OFFLINE is set; fetch them where the hub is reachable (`{fetch}`, which puts "
                       f"them in the cache), or {local_hint}")


def hub_files(what: str, files: list[WeightFile], local_hint: str) -> list[Path]:
    """Local paths of ``files``: from the cache, downloaded when online; offline and absent: fail now."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    found = [try_to_load_from_cache(f.repo, f.filename) for f in files]
    absent = [f for f, path in zip(files, found) if not isinstance(path, str)]
    if absent and hub_offline():
        raise missing_weights(what, absent, local_hint)
    try:
        return [Path(p) if isinstance(p, str) else Path(hf_hub_download(f.repo, f.filename)) for f, p in zip(files, found)]
    except Exception as err:  # the hub's errors are many; the fix is the same
        raise ScorerError(f"{what}: cannot download {', '.join(f.filename for f in absent)} ({type(err).__name__}); "
                          f"check the network, or {local_hint}") from err


def first_cached(repo: str, names: list[str]) -> str | None:
    """The first of ``names`` that is in the local cache of ``repo``."""
    from huggingface_hub import try_to_load_from_cache

    return next((n for n in names if isinstance(try_to_load_from_cache(repo, n), str)), None)


def load_tensors(path: Path, what: str) -> dict:
    """A state dict from safetensors, or from a torch file unpickled with weights_only=True (never arbitrary objects)."""
    import pickle

    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ScorerError(f"{what}: {path} holds more than tensors and is refused (weights_only=True); "
                          f"convert it to safetensors where you trust it") from err
    return state.get("state_dict", state) if isinstance(state, dict) else state


def torch_dtype(precision: str):
    import torch

    choices = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in choices:
        raise ScorerError(f"unknown precision {precision!r}; expected one of {', '.join(choices)}")
    return choices[precision]
