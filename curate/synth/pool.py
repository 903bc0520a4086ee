"""The image pool: target scenes (prompts) and, per prompt, candidate images from simulated generators.

Every pair of every layout draws two candidates of one prompt from this pool, so a world of
millions of pairs renders only a few thousand images. Candidates are the target scene with some
attributes perturbed (each generator has its own error rate) and some quality defects (each
generator has its own look). Everything is numpy code arrays until ``render_pool``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate.synth import scene as sc


@dataclass(frozen=True)
class Generator:
    """A simulated text-to-image model: how often it gets an attribute wrong and how its images look."""

    name: str
    error_rate: float
    blur: tuple[float, float]
    noise: tuple[float, float]
    jpeg_prob: float


GENERATORS = (
    Generator("sdxl-sim", 0.08, (0.0, 0.6), (0.0, 0.03), 0.2),
    Generator("sd15-sim", 0.18, (0.0, 1.2), (0.0, 0.08), 0.4),
    Generator("dalle-mini-sim", 0.30, (0.3, 2.2), (0.02, 0.2), 0.6),
    Generator("lofi-gan-sim", 0.22, (1.0, 2.5), (0.05, 0.25), 0.8),
)
TWO_OBJECT_SHARE = 0.7
_VOCAB = {sc.SHAPE0: len(sc.SHAPES), sc.COLOUR0: len(sc.COLOURS), sc.SIZE0: len(sc.SIZES), sc.BG: len(sc.BACKGROUNDS)}


@dataclass
class Pool:
    """Prompt p owns images p*per_prompt .. p*per_prompt + per_prompt - 1."""

    per_prompt: int
    targets: np.ndarray  # (n_prompts, 9) scene codes
    prompts: np.ndarray  # (n_prompts,) object array of str
    codes: np.ndarray  # (n_images, 9)
    generator: np.ndarray  # (n_images,) index into GENERATORS
    blur: np.ndarray
    noise: np.ndarray
    jpeg_quality: np.ndarray
    fmt: np.ndarray  # (n_images,) object array: "png" / "jpeg"
    seed: np.ndarray  # (n_images,) render seed
    uid: np.ndarray  # (n_images,) object array of uuid-like str
    fidelity: np.ndarray
    quality: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.codes)

    def prompt_of(self, image: np.ndarray) -> np.ndarray:
        return image // self.per_prompt

    def scene(self, image: int) -> sc.Scene:
        return sc.Scene.from_codes(self.codes[image])

    def params(self, image: int) -> sc.QualityParams:
        return sc.QualityParams(float(self.blur[image]), float(self.noise[image]), int(self.jpeg_quality[image]))


def random_scenes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform random scene codes; 70% have two objects."""
    codes = np.full((n, len(sc.CODE_COLUMNS)), sc.MISSING, dtype=np.int16)
    two = rng.random(n) < TWO_OBJECT_SHARE
    codes[:, sc.N_OBJ] = np.where(two, 2, 1)
    for k in (0, 1):
        for col, vocab in ((sc.SHAPE0, len(sc.SHAPES)), (sc.COLOUR0, len(sc.COLOURS)), (sc.SIZE0, len(sc.SIZES))):
            values = rng.integers(0, vocab, n)
            codes[:, col + 3 * k] = values if k == 0 else np.where(two, values, sc.MISSING)
    relation = rng.integers(0, len(sc.RELATIONS), n)
    position = len(sc.RELATIONS) + rng.integers(0, len(sc.POSITIONS), n)
    codes[:, sc.LAYOUT] = np.where(two, relation, position)
    codes[:, sc.BG] = rng.integers(0, len(sc.BACKGROUNDS), n)
    return codes


def perturb(rng: np.random.Generator, targets: np.ndarray, error_rate: np.ndarray) -> np.ndarray:
    """Change each attribute with probability ``error_rate`` (per row) to a different value; a
    two-object scene loses its second object with probability error_rate / 2 (a classic failure)."""
    codes = targets.copy()
    n = len(codes)
    for k in (0, 1):
        for base, vocab in _VOCAB.items():
            if base == sc.BG and k == 1:
                continue
            col = base + 3 * k if base != sc.BG else base
            flip = (rng.random(n) < error_rate) & (codes[:, col] != sc.MISSING)
            codes[:, col] = np.where(flip, (codes[:, col] + rng.integers(1, vocab, n)) % vocab, codes[:, col])
    two = codes[:, sc.N_OBJ] == 2
    flip = rng.random(n) < error_rate
    relation = (codes[:, sc.LAYOUT] + rng.integers(1, len(sc.RELATIONS), n)) % len(sc.RELATIONS)
    position = len(sc.RELATIONS) + (codes[:, sc.LAYOUT] - len(sc.RELATIONS) + rng.integers(1, len(sc.POSITIONS), n)) % len(sc.POSITIONS)
    codes[:, sc.LAYOUT] = np.where(flip, np.where(two, relation, position), codes[:, sc.LAYOUT])
    drop = two & (rng.random(n) < error_rate / 2)
    codes[drop, sc.SHAPE1: sc.SIZE1 + 1] = sc.MISSING
    codes[drop, sc.N_OBJ] = 1
    codes[drop, sc.LAYOUT] = len(sc.RELATIONS) + rng.integers(0, len(sc.POSITIONS), int(drop.sum()))
    return codes


def _uids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
    hexes = [f"{a:016x}{b:016x}" for a, b in raw.tolist()]
    return np.array([f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}" for h in hexes], dtype=object)


def make_pool(rng: np.random.Generator, n_prompts: int, per_prompt: int) -> Pool:
    targets = random_scenes(rng, n_prompts)
    prompts = sc.prompts_for_codes(targets)
    n = n_prompts * per_prompt
    generator = rng.integers(0, len(GENERATORS), n)
    table = {f: np.array([getattr(g, f) for g in GENERATORS]) for f in ("error_rate", "jpeg_prob")}
    lo_hi = {f: np.array([getattr(g, f) for g in GENERATORS]) for f in ("blur", "noise")}
    own_targets = np.repeat(targets, per_prompt, axis=0)
    codes = perturb(rng, own_targets, table["error_rate"][generator])
    blur = rng.uniform(lo_hi["blur"][generator, 0], lo_hi["blur"][generator, 1])
    noise = rng.uniform(lo_hi["noise"][generator, 0], lo_hi["noise"][generator, 1])
    jpeg_quality = np.where(rng.random(n) < table["jpeg_prob"][generator], rng.integers(10, 90, n), 100)
    return Pool(
        per_prompt=per_prompt, targets=targets, prompts=prompts, codes=codes, generator=generator,
        blur=np.round(blur, 3), noise=np.round(noise, 4), jpeg_quality=jpeg_quality.astype(np.int16),
        fmt=np.where(rng.random(n) < 0.5, "png", "jpeg").astype(object),
        seed=rng.integers(0, 2**31 - 1, n), uid=_uids(rng, n),
        fidelity=sc.fidelity_codes(own_targets, codes),
        quality=sc.quality_values(np.round(blur, 3), np.round(noise, 4), jpeg_quality),
    )


def render_pool(pool: Pool, images: np.ndarray, size: int, progress=None) -> dict[int, bytes]:
    """Encoded bytes of the listed pool images (each rendered once); ``progress(done, total)`` is called as it goes."""
    out: dict[int, bytes] = {}
    images = np.unique(images)
    for done, i in enumerate(images.tolist(), 1):
        out[i] = sc.render_bytes(pool.scene(i), pool.params(i), size, pool.fmt[i], int(pool.seed[i]))
        if progress and (done % 64 == 0 or done == len(images)):
            progress(done, len(images))
    return out
