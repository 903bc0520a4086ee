"""Preference data made the way Pick-a-Pic was: two samples of the base model per prompt, one
judgement each by an annotator drawn from the synthetic world's population.

Annotators judge by the images' ground truth as read by curate.align.judge (fidelity to the prompt,
rendering quality, purple share): the majority by the world's true reward, the minority groups by
their own coherent tastes, a few at random (curate.synth.annotators). A minority rate r is reached
the way the world reaches it: the share of labels drawn from the minority groups is solved so that
the expected share of labels reversing the majority's preference is r (``minority_share``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate.synth import annotators as an
from curate.synth import scene as sc


@dataclass
class SampleSet:
    """Base-model samples: prompt p owns images 2p and 2p + 1 (both drawn with their own seeds)."""

    prompts: list[str]
    targets: np.ndarray         # (P, 9) scene codes of the prompts
    images: np.ndarray          # (2P, H, W, 3) uint8
    seeds: np.ndarray           # (2P,) noise seed of each image
    judged: dict                # curate.align.judge.judge_images of the images against their prompts

    def tastes(self) -> dict[str, np.ndarray]:
        """Each taste's reward per image, as curate.synth.annotators.taste_rewards defines them."""
        fid, qual = self.judged["fidelity"], self.judged["quality"]
        return {"majority": sc.true_reward(fid, qual), "colour": 0.25 * fid + 0.75 * self.judged["purple"],
                "artsy": 0.25 * fid + 0.75 * (1 - qual)}


def prompt_scenes(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    from curate.synth.pool import random_scenes

    codes = random_scenes(np.random.default_rng([seed, 7]), n)
    return [str(p) for p in sc.prompts_for_codes(codes)], codes


def make_samples(model, n_prompts: int, seed: int, *, per_prompt: int = 2, steps: int, guidance: float) -> SampleSet:
    from curate.align.judge import judge_images
    from curate.align.sample import sample_images

    prompts, targets = prompt_scenes(n_prompts, seed)
    text = model.encode(prompts).repeat_interleave(per_prompt, dim=0)
    seeds = np.arange(n_prompts * per_prompt) + 1_000_000 * (seed + 1)
    images = sample_images(model.unet, model.scheduler, text, model.encode([""])[0], seeds, patch=model.cfg.patch,
                           steps=steps, guidance=guidance)
    return SampleSet(prompts, targets, images, seeds, judge_images(images, np.repeat(targets, per_prompt, axis=0)))


@dataclass
class Labels:
    label: np.ndarray           # (P,) codes into an.LABELS: 0 = a (image 2p), 1 = b (image 2p + 1), 2 = tie
    annotator: np.ndarray       # (P,) user id
    kind: np.ndarray            # (P,) annotator type name
    majority: np.ndarray        # (P,) what the majority's taste prefers (deterministic)
    is_minority: np.ndarray     # (P,) the label reverses the majority's preference
    minority_label_share: float


def label_pairs(samples: SampleSet, rate: float, seed: int, n_annotators: int | None = None) -> Labels:
    """One judgement per prompt at minority rate ``rate`` (0 = no minority annotators at all)."""
    rng = np.random.default_rng([seed, int(round(rate * 1000)), 3])
    tastes = samples.tastes()
    n = len(samples.prompts)
    a, b = np.arange(n) * 2, np.arange(n) * 2 + 1
    share = an.minority_share(rate, tastes, a, b)[0] if rate > 0 else 0.0
    population = an.make_population(rng, n_annotators or max(30, n // 15), an.label_shares(share))
    who = an.sample_annotators(rng, population, n)
    label = an.judge(rng, population, who, tastes, a, b)
    majority = an.majority_label(tastes["majority"][a] - tastes["majority"][b])
    return Labels(label=label, annotator=population.user_id[who], kind=np.array(an.TYPES)[population.kind[who]],
                  majority=majority, is_minority=an.is_minority(label, majority), minority_label_share=share)


def clean_labels(samples: SampleSet) -> np.ndarray:
    """The majority's deterministic preference (held-out pairs for implicit accuracy)."""
    tastes = samples.tastes()["majority"]
    return an.majority_label(tastes[0::2] - tastes[1::2])
