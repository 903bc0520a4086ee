"""Annotators: a long-tailed population of known types, and how each type judges a pair.

Types (``TYPES``):
- ``majority``: Bradley-Terry on the true reward: P(A) = sigmoid((r_A - r_B) / TEMPERATURE).
- ``minority_colour``: a coherent divergent taste, loves purple whatever the prompt:
  r = 0.25 * fidelity + 0.75 * (share of the image's objects that are purple).
- ``minority_artsy``: likes the blurry, noisy "artsy" look: r = 0.25 * fidelity + 0.75 * (1 - quality).
- ``random``: clicks at random (P(A) = 1/2).
- ``position``: picks the image shown first (A) with probability POSITION_BIAS, else judges like the majority.
Every type but ``random`` says "tie" with probability TIE_NEAR * exp(-(dr / TIE_WIDTH)^2) on its
own reward difference dr (close calls); ``random`` ties with probability RANDOM_TIE.

Ground truth per judgement (labels are codes into ``LABELS``: 0 = a, 1 = b, 2 = tie):
- ``majority_label``: what the majority's taste prefers, deterministically: a if r_A - r_B >
  MAJORITY_TIE_EPS, b if < -MAJORITY_TIE_EPS, else tie (r = the true reward).
- ``is_minority``: the given label strictly reverses the majority-taste preference: label and
  majority label are both a or b and they differ. A tie on either side is never a minority sample
  (a tie contradicts no preference, and there is none to contradict when the majority ties).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate.synth import scene as sc
from curate.synth.pool import Pool

TYPES = ("majority", "minority_colour", "minority_artsy", "random", "position")
MINORITY_TYPES = ("minority_colour", "minority_artsy")
LABELS = ("a", "b", "tie")
A, B, TIE = 0, 1, 2
TEMPERATURE = 0.02
POSITION_BIAS = 0.75
TIE_NEAR, TIE_WIDTH, RANDOM_TIE = 0.5, 0.02, 0.02
MAJORITY_TIE_EPS = 0.01
FAVOURITE_COLOUR = "purple"
ZIPF_EXPONENT = 1.1
# How labels not drawn from the minority groups split between the other types, and how minority
# labels split between the groups. The minority share itself is solved for (see minority_share).
OTHER_MIX = {"majority": 0.96, "random": 0.015, "position": 0.025}
MINORITY_MIX = {"minority_colour": 0.35, "minority_artsy": 0.65}
# Which reward each type judges by (random judges by none).
TASTE_OF = {"majority": "majority", "position": "majority", "minority_colour": "colour", "minority_artsy": "artsy", "random": None}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def taste_rewards(pool: Pool) -> dict[str, np.ndarray]:
    """Reward of every pool image under each taste (arrays over pool images)."""
    favourite = sc.COLOUR_NAMES.index(FAVOURITE_COLOUR)
    purple = ((pool.codes[:, sc.COLOUR0] == favourite).astype(float) + (pool.codes[:, sc.COLOUR1] == favourite)) / pool.codes[:, sc.N_OBJ]
    return {
        "majority": sc.true_reward(pool.fidelity, pool.quality),
        "colour": 0.25 * pool.fidelity + 0.75 * purple,
        "artsy": 0.25 * pool.fidelity + 0.75 * (1 - pool.quality),
    }


def majority_label(delta: np.ndarray) -> np.ndarray:
    """Majority-taste preference from the true-reward difference r_A - r_B (codes into LABELS)."""
    return np.where(delta > MAJORITY_TIE_EPS, A, np.where(delta < -MAJORITY_TIE_EPS, B, TIE)).astype(np.int8)


def is_minority(label: np.ndarray, majority: np.ndarray) -> np.ndarray:
    return (label != TIE) & (majority != TIE) & (label != majority)


def choice_probabilities(kind: str, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P(label = a), P(label = tie)) for annotators of type ``kind`` given their own-taste difference."""
    if kind == "random":
        return np.full(delta.shape, (1 - RANDOM_TIE) / 2), np.full(delta.shape, RANDOM_TIE)
    p_tie = TIE_NEAR * np.exp(-((delta / TIE_WIDTH) ** 2))
    p_first = sigmoid(delta / TEMPERATURE)
    if kind == "position":
        p_first = POSITION_BIAS + (1 - POSITION_BIAS) * p_first
    return (1 - p_tie) * p_first, p_tie


def own_delta(kind: str, tastes: dict[str, np.ndarray], image_a: np.ndarray, image_b: np.ndarray) -> np.ndarray:
    taste = TASTE_OF[kind]
    if taste is None:
        return np.zeros(len(image_a))
    return tastes[taste][image_a] - tastes[taste][image_b]


def expected_reversal(kind: str, tastes, image_a, image_b) -> float:
    """Mean probability that a ``kind`` annotator's label reverses the majority preference on these pairs."""
    p_a, p_tie = choice_probabilities(kind, own_delta(kind, tastes, image_a, image_b))
    majority = majority_label(tastes["majority"][image_a] - tastes["majority"][image_b])
    return float(np.mean(np.where(majority == A, 1 - p_a - p_tie, np.where(majority == B, p_a, 0.0))))


def minority_share(rate: float, tastes, image_a, image_b) -> tuple[float, dict]:
    """Share of labels to draw from the minority groups so that the expected share of minority
    samples (reversals by any type, noise included) is ``rate``; clipped to what is reachable."""
    reversal = {kind: expected_reversal(kind, tastes, image_a, image_b) for kind in TYPES}
    base = sum(share * reversal[k] for k, share in OTHER_MIX.items())
    high = sum(share * reversal[k] for k, share in MINORITY_MIX.items())
    share = float(np.clip((rate - base) / (high - base), 0.0, 1.0)) if high > base else 0.0
    return share, {"reachable_minority_rate": [round(base, 4), round(high, 4)], "expected_reversal": {k: round(v, 4) for k, v in reversal.items()}}


@dataclass
class Population:
    user_id: np.ndarray  # int64, unique
    kind: np.ndarray  # int8 codes into TYPES
    weight: np.ndarray  # activity within its type (sums to 1 per type)
    label_share: np.ndarray  # share of all labels drawn from each type (len(TYPES),)
    user_hash: np.ndarray = None  # HPDv2-style ids (object array of str), derived from user_id
    heavy: int = -1  # index of a heavy user who makes ``heavy_share`` of all judgements (-1: none)
    heavy_share: float = 0.0

    def __post_init__(self):
        if self.user_hash is None:
            # Derived from the user id so both name the same person across layouts.
            mixed = (self.user_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
            self.user_hash = np.array([f"{u:016x}" for u in mixed.tolist()], dtype=object)


def label_shares(minority: float) -> np.ndarray:
    share = {k: (1 - minority) * v for k, v in OTHER_MIX.items()} | {k: minority * v for k, v in MINORITY_MIX.items()}
    return np.array([share[k] for k in TYPES])


def make_population(rng: np.random.Generator, n_annotators: int, label_share: np.ndarray) -> Population:
    """Annotators per type in proportion to the type's label share (at least one where it is used),
    with Zipf-like activity (weight ~ 1 / rank^ZIPF_EXPONENT) inside each type."""
    counts = np.maximum(np.round(label_share * n_annotators).astype(int), (label_share > 0).astype(int))
    kind = np.repeat(np.arange(len(TYPES), dtype=np.int8), counts)
    weight = np.empty(len(kind))
    for t in range(len(TYPES)):
        rows = np.flatnonzero(kind == t)
        w = 1.0 / np.arange(1, len(rows) + 1) ** ZIPF_EXPONENT
        weight[rows] = rng.permutation(w / w.sum()) if len(rows) else w
    order = rng.permutation(len(kind))  # ids must not reveal the type
    user_id = np.sort(rng.choice(9_000_000, size=len(kind), replace=False) + 1_000_000)
    return Population(user_id=user_id, kind=kind[order], weight=weight[order], label_share=label_share)


def add_heavy_user(pop: Population, kind: str, share: float) -> Population:
    """The population plus one person of type ``kind`` who makes ``share`` of all judgements (on top
    of the label shares, which then describe the other judgements). Drawn only through that share:
    their activity weight within the type is 0."""
    if kind not in TYPES or not 0 < share < 1:
        raise ValueError(f"heavy user of type {kind!r} with share {share}: need a type among {TYPES} and a share in (0, 1)")
    return Population(user_id=np.append(pop.user_id, pop.user_id.max() + 1), kind=np.append(pop.kind, np.int8(TYPES.index(kind))),
                      weight=np.append(pop.weight, 0.0), label_share=pop.label_share, heavy=len(pop.kind), heavy_share=share)


def sample_annotators(rng: np.random.Generator, pop: Population, n: int) -> np.ndarray:
    """Indices into the population for ``n`` judgements: a type by label share, then a member by
    activity; with a heavy user, each judgement is theirs with probability ``heavy_share`` instead."""
    kind = rng.choice(len(TYPES), size=n, p=pop.label_share)
    out = np.empty(n, dtype=np.int64)
    for t in range(len(TYPES)):
        rows = np.flatnonzero(kind == t)
        if len(rows):
            members = np.flatnonzero(pop.kind == t)
            cumulative = np.cumsum(pop.weight[members])
            out[rows] = members[np.minimum(np.searchsorted(cumulative, rng.random(len(rows)) * cumulative[-1]), len(members) - 1)]
    if pop.heavy >= 0:
        out[rng.random(n) < pop.heavy_share] = pop.heavy
    return out


def judge(rng: np.random.Generator, pop: Population, annotator: np.ndarray, tastes, image_a, image_b, allow_tie: bool = True) -> np.ndarray:
    """Label codes of the given annotators on pairs (image_a shown first). Without ties (votes), a
    would-be tie becomes a or b in proportion to P(a) and P(b)."""
    p_a = np.empty(len(annotator))
    p_tie = np.empty(len(annotator))
    kinds = pop.kind[annotator]
    for t, kind in enumerate(TYPES):
        rows = np.flatnonzero(kinds == t)
        p_a[rows], p_tie[rows] = choice_probabilities(kind, own_delta(kind, tastes, image_a[rows], image_b[rows]))
    if not allow_tie:
        p_a, p_tie = p_a / (1 - p_tie), np.zeros_like(p_tie)
    u = rng.random(len(annotator))
    return np.where(u < p_a, A, np.where(u < p_a + p_tie, TIE, B)).astype(np.int8)


def rank(rng: np.random.Generator, kind: str, tastes, images: np.ndarray) -> np.ndarray:
    """One annotator's full ranking (1 = best) of ``images`` shown in order. Gumbel-perturbed
    utilities make every pairwise marginal exactly the Bradley-Terry choice of ``judge`` (no ties)."""
    n = len(images)
    if kind == "random":
        utility = rng.random(n)
    else:
        utility = tastes[TASTE_OF[kind]][images] / TEMPERATURE + rng.gumbel(size=n)
        if kind == "position" and rng.random() < POSITION_BIAS:
            utility = -np.arange(n, dtype=float)  # ranks them in display order
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(-utility, kind="stable")] = np.arange(1, n + 1)
    return ranks
