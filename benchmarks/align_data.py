"""The alignment benchmark's preference data, made the way Pick-a-Pic's was, and curated by prefcurate.

Images: for every prompt, candidates from several generators of different quality (the world's
render pool: simulated generators that get attributes wrong, blur and add noise; and samples of the
world model itself); each pair is two of them. Each image's ground truth (fidelity to its prompt,
quality, purple share) is read off its pixels by the world judge, for renders and samples alike.

Labels: judgements by the world's annotator population (curate.synth.annotators): the majority by
the world's true reward, the minority groups by their own coherent tastes, a few at random. A
nominal minority rate r is reached the way the world reaches it (``minority_share``: the share of
labels drawn from the minority groups is solved so that the expected share of labels reversing
the majority's preference is r). ``votes`` > 1 gives every pair that many judgements (one row each,
as Pick-a-Pic repeats pairs across users). The ``flip`` variant is the paper's synthetic noise:
the majority population's labels with a random share r of them reversed.

Curation is prefcurate's own stages on a table dataset (CSV + PNG): ingest -> embed (the shipped
domain CLIP as an AI annotator) -> annotators -> flag -> encode (the world model). With one
judgement per pair the flag stage's default threshold flags almost nothing (a lone vote has no
consensus to disagree with), so the benchmark flags the top share by minority score at the nominal
rate (`prefcurate flag --quantile <rate>`), as rdpo is told the rate.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.synth import annotators as an
from curate.synth import scene as sc

SIZE = 32
RENDERS_PER_PROMPT = 4
SAMPLES_PER_PROMPT = 2


@dataclass
class Candidates:
    """Prompt p's pair is images 2p (shown first) and 2p + 1."""

    prompts: list[str]
    targets: np.ndarray         # (P, 9) scene codes
    images: np.ndarray          # (2P, SIZE, SIZE, 3) uint8
    generator: np.ndarray       # (2P,) the generator that made each image
    judged: dict                # curate.scorers.judge.judge_images against the prompt

    def tastes(self) -> dict[str, np.ndarray]:
        """Each taste's reward per image, as curate.synth.annotators.taste_rewards defines them."""
        fid, qual = self.judged["fidelity"], self.judged["quality"]
        return {"majority": sc.true_reward(fid, qual), "colour": 0.25 * fid + 0.75 * self.judged["purple"],
                "artsy": 0.25 * fid + 0.75 * (1 - qual)}


def make_candidates(components, n_prompts: int, seed: int, *, sample_steps: int, guidance: float) -> Candidates:
    """Pool renders and world-model samples for each prompt; two of them, drawn at random, are its pair."""
    from curate.scorers.judge import judge_images
    from curate.synth.pool import GENERATORS, make_pool
    from world_eval import render_images, sample_images

    pool = make_pool(np.random.default_rng([seed, 21]), n_prompts, RENDERS_PER_PROMPT)
    prompts = [str(p) for p in pool.prompts]
    renders = render_images(pool).reshape(n_prompts, RENDERS_PER_PROMPT, SIZE, SIZE, 3)
    seeds = np.arange(n_prompts * SAMPLES_PER_PROMPT) + 5_000_000 * (seed + 1)
    samples = sample_images(components, list(np.repeat(prompts, SAMPLES_PER_PROMPT)), seeds, steps=sample_steps,
                            guidance=guidance).reshape(n_prompts, SAMPLES_PER_PROMPT, SIZE, SIZE, 3)
    everything = np.concatenate([renders, samples], axis=1)
    names = np.array([g.name for g in GENERATORS] + ["world-model"], dtype=object)
    made_by = np.concatenate([pool.generator.reshape(n_prompts, -1), np.full((n_prompts, SAMPLES_PER_PROMPT), len(GENERATORS))], 1)
    rng = np.random.default_rng([seed, 22])
    pick = np.stack([rng.choice(everything.shape[1], 2, replace=False) for _ in range(n_prompts)])
    rows = np.arange(n_prompts)[:, None]
    images = everything[rows, pick].reshape(-1, SIZE, SIZE, 3)
    generator = names[made_by[rows, pick].ravel()]
    judged = judge_images(images, np.repeat(pool.targets, 2, axis=0))
    return Candidates(prompts, pool.targets, images, generator, judged)


@dataclass
class Labels:
    """One row per judgement: the pair it judges and what the truth says about it."""

    pair: np.ndarray            # (J,) prompt/pair index
    label: np.ndarray           # (J,) codes into an.LABELS
    annotator: np.ndarray       # (J,) user id
    kind: np.ndarray            # (J,) annotator type
    majority: np.ndarray        # (J,) what the majority's taste prefers
    is_minority: np.ndarray     # (J,) the label reverses the majority's preference
    minority_label_share: float


def label_pairs(c: Candidates, rate: float, seed: int, *, variant: str = "minority", votes: int = 1) -> Labels:
    """Judgements at nominal minority rate ``rate``: ``minority`` tastes or the synthetic ``flip``."""
    if variant not in ("minority", "flip"):
        raise ValueError(f"label variant {variant!r}: expected minority or flip")
    rng = np.random.default_rng([seed, int(round(rate * 1000)), votes, 3 if variant == "minority" else 4])
    tastes = c.tastes()
    n = len(c.prompts)
    pair = np.repeat(np.arange(n), votes)
    a, b = 2 * pair, 2 * pair + 1
    share = an.minority_share(rate, tastes, a, b)[0] if rate > 0 and variant == "minority" else 0.0
    population = an.make_population(rng, max(30, n * votes // 15), an.label_shares(share))
    who = distinct_per_pair(rng, population, an.sample_annotators(rng, population, len(pair)), votes)
    label = an.judge(rng, population, who, tastes, a, b)
    if variant == "flip":
        flip = (label != an.TIE) & (rng.random(len(label)) < rate)
        label = np.where(flip, 1 - label, label).astype(np.int8)
    majority = an.majority_label(tastes["majority"][a] - tastes["majority"][b])
    return Labels(pair=pair, label=label, annotator=population.user_id[who], kind=np.array(an.TYPES)[population.kind[who]],
                  majority=majority, is_minority=an.is_minority(label, majority), minority_label_share=share)


def distinct_per_pair(rng, population, who: np.ndarray, votes: int) -> np.ndarray:
    """Redraw an annotator who already judged the same pair (one person judges a pair once)."""
    who = who.reshape(-1, votes)
    for _ in range(100):
        repeated = np.zeros(who.shape, bool)
        for k in range(1, votes):
            repeated[:, k] = (who[:, :k] == who[:, k:k + 1]).any(1)
        if not repeated.any():
            break
        who[repeated] = an.sample_annotators(rng, population, int(repeated.sum()))
    return who.ravel()


def write_images(root: Path, c: Candidates) -> None:
    from PIL import Image

    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(c.images):
        path = folder / f"{i:06d}.png"
        if not path.exists():
            Image.fromarray(image).save(path)


def write_table(path: Path, c: Candidates, labels: Labels) -> Path:
    """pairs.csv (prompt, image_a, image_b, label, annotator): one row per judgement."""
    import polars as pl

    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"prompt": [c.prompts[p] for p in labels.pair],
                  "image_a": [f"images/{2 * p:06d}.png" for p in labels.pair],
                  "image_b": [f"images/{2 * p + 1:06d}.png" for p in labels.pair],
                  "label": np.array(an.LABELS)[labels.label].tolist(),
                  "annotator": [str(u) for u in labels.annotator]}).write_csv(path)
    return path


def curate_dataset(root: Path, name: str, c: Candidates, labels: Labels, *, quantile: float | None,
                   use_clip: bool = True) -> Path:
    """ingest -> embed (domain CLIP) -> annotators -> flag (``--quantile``; None: the default threshold)
    -> encode (world model, 32 px): the dataset folder."""
    from curate.annotators.flag import FlagStage
    from curate.annotators.stage import AnnotatorsStage
    from curate.ingest.stage import IngestStage
    from curate.executors import make_executor
    from curate.runner import run_stage
    from curate.train.encode import encode_dataset

    ds = root / name / "dataset"
    shutil.rmtree(ds, ignore_errors=True)
    write_images(root, c)
    csv = write_table(root / name / "pairs.csv", c, labels)
    run_stage(IngestStage(files=[str(csv)], format="table", image_root=str(root)), ds)
    if use_clip:
        from curate.clip.embed import EmbedOptions
        from curate.clip.models import resolve
        from curate.clip.pipeline import embed_dataset

        with make_executor("local") as executor:
            embed_dataset(ds, resolve("domain"), precision="fp32", executor=executor, resume=False,
                          options=EmbedOptions(device="cpu", batch_size=128, decode_workers=0))
    run_stage(AnnotatorsStage(), ds)
    run_stage(FlagStage(quantile=quantile), ds)
    encode_dataset(ds, "world", resolution=SIZE, batch_size=64)
    return ds


def flag_quality(ds: Path, labels: Labels) -> dict:
    """The flags against the truth on the decided training judgements: AUROC of the minority score, of u,
    and the flag's precision and recall."""
    import polars as pl

    from curate.dataset import Dataset
    from flagging import auroc

    data = Dataset(ds)
    pairs = data.scan("pairs").select("pair_id", "source_row").collect()
    scores = data.scan("pair_scores").collect().join(pairs, on="pair_id").sort("source_row")
    if scores["source_row"].to_list() != list(range(len(labels.label))):
        raise RuntimeError(f"{ds}: pair_scores do not cover the {len(labels.label)} judgements written, in order")
    decided = labels.label != an.TIE
    truth = labels.is_minority[decided]
    flagged = scores["is_minority"].to_numpy()[decided]
    col = lambda name: scores[name].cast(pl.Float64).fill_null(np.nan).to_numpy()[decided]  # noqa: E731
    return {"realised_minority": float(truth.mean()), "judgements": int(len(labels.label)), "ties": int((~decided).sum()),
            "minority_label_share": labels.minority_label_share,
            "auroc_minority_score": auroc(col("minority_score"), truth), "auroc_u": auroc(col("u"), truth),
            "flagged_share": float(flagged.mean()),
            "flag_precision": float(truth[flagged].mean()) if flagged.any() else None,
            "flag_recall": float(flagged[truth].mean()) if truth.any() else None}
