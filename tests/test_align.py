"""The alignment benchmark's parts on tiny sizes: judge, labels, bootstrap, curation stages, one run per family."""
import sys
from pathlib import Path

import numpy as np
import pytest

from curate.scorers import judge
from curate.synth import annotators as an
from curate.synth import scene as sc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_judge_reads_clean_renders_of_the_world():
    from curate.synth.pool import random_scenes

    codes = random_scenes(np.random.default_rng(3), 30)
    images = np.stack([np.asarray(sc.render(sc.Scene.from_codes(c), size=32, seed=i)) for i, c in enumerate(codes)])
    got = judge.judge_images(images, codes)
    assert got["fidelity"].mean() > 0.85
    assert (got["scenes"][:, sc.BG] == codes[:, sc.BG]).all()
    assert got["quality"].mean() > 0.8


def test_judge_quality_falls_with_noise_and_blur():
    scene = sc.Scene((sc.Obj("square", "red", "large"), sc.Obj("circle", "blue", "small")), "left of", "white")
    read = lambda q: judge.read_quality(np.asarray(sc.render(scene, q, size=32, seed=1)))  # noqa: E731
    assert read(sc.QualityParams()) > read(sc.QualityParams(noise=0.1)) > read(sc.QualityParams(noise=0.2))
    assert read(sc.QualityParams()) > read(sc.QualityParams(blur=2.2))


def _rendered(n_prompts: int, seed: int = 0):
    """Candidates whose pairs are two pool renders per prompt (no model needed)."""
    from align_data import Candidates
    from curate.synth.pool import GENERATORS, make_pool
    from world_eval import render_images

    pool = make_pool(np.random.default_rng(seed), n_prompts, 2)
    images = render_images(pool)
    return Candidates([str(p) for p in pool.prompts], pool.targets, images,
                      np.array([GENERATORS[g].name for g in pool.generator], dtype=object),
                      judge.judge_images(images, np.repeat(pool.targets, 2, axis=0)))


def test_minority_rate_comes_from_minority_annotators():
    from align_data import label_pairs

    c = _rendered(100)
    clean, noisy = label_pairs(c, 0.0, 0), label_pairs(c, 0.3, 0)
    assert not set(clean.kind) & set(an.MINORITY_TYPES)
    assert set(noisy.kind) & set(an.MINORITY_TYPES)
    decided = lambda lab: lab.label != an.TIE  # noqa: E731
    assert noisy.is_minority[decided(noisy)].mean() > clean.is_minority[decided(clean)].mean() + 0.1
    flips = (noisy.label != noisy.majority) & (noisy.label != an.TIE) & (noisy.majority != an.TIE)
    assert np.array_equal(flips, noisy.is_minority)


def test_several_votes_come_from_distinct_people_and_flip_reverses_the_share_asked():
    from align_data import label_pairs

    c = _rendered(60, seed=2)
    votes = label_pairs(c, 0.2, 1, votes=3)
    assert np.array_equal(votes.pair, np.repeat(np.arange(60), 3))
    per_pair = votes.annotator.reshape(60, 3)
    assert all(len(set(row)) == 3 for row in per_pair)
    clean = label_pairs(c, 0.0, 1, variant="flip")
    flipped = label_pairs(c, 0.4, 1, variant="flip")
    assert not set(flipped.kind) & set(an.MINORITY_TYPES)   # the flip variant has no minority tastes
    assert flipped.is_minority[flipped.label != an.TIE].mean() > clean.is_minority[clean.label != an.TIE].mean() + 0.2


def test_paired_bootstrap_by_hand():
    from align_report import kept_share, paired_interval

    assert paired_interval(np.full((3, 4), 0.25), draws=50) == (0.25, 0.25, 0.25)
    values = np.array([[0.0, 1.0], [2.0, 3.0]])    # resample means lie within [0, 3]
    mean, lo, hi = paired_interval(values, draws=400)
    assert mean == 1.5 and 0.0 <= lo < 1.5 < hi <= 3.0
    assert kept_share(values * 0.4, values, draws=50) == pytest.approx((0.4, 0.4, 0.4))


def test_curation_stages_then_one_run_of_each_training_family(tmp_path):
    from align_data import curate_dataset, flag_quality, label_pairs
    from align_runs import RunSettings, held_out, run_one
    from curate.train.models import load_components

    c = _rendered(24, seed=1)
    labels = label_pairs(c, 0.3, 0)
    ds = curate_dataset(tmp_path, "d", c, labels, quantile=0.3, use_clip=False)
    q = flag_quality(ds, labels)
    decided = int((labels.label != an.TIE).sum())
    assert q["judgements"] == 24 and 0 < q["flagged_share"] < 1 and 0 <= q["auroc_minority_score"] <= 1
    s = RunSettings(steps=2, batch_size=4, sample_steps=2, adaptive_warmup=1)
    evals = held_out(load_components("world"), 3, 1, s)
    assert evals.base_reward.shape == (3,)
    for method in ("dpo-kept", "adaptive-dpo", "adaptive-offline"):
        row = run_one(ds, method, 0.3, 0, evals, s, tmp_path)
        assert len(row["reward"]) == 3 and 0 <= row["win_rate"] <= 1
        kept = decided - round(q["flagged_share"] * decided) if method == "dpo-kept" else decided
        assert row["train_pairs"] == kept
        assert [h["step"] for h in row["history"]] == [1, 2] and all(h["loss"] >= 0 for h in row["history"])


def test_a_calibration_probe_names_trainer_settings_typed_as_the_benchmark_has_them():
    from align_calibrate import parse_probe
    from align_runs import RunSettings

    s = parse_probe("finetune=full,steps=80,lr=3e-4,beta=10", RunSettings())
    assert (s.finetune, s.steps, s.lr, s.beta, s.batch_size) == ("full", 80, 3e-4, 10.0, RunSettings().batch_size)
    with pytest.raises(SystemExit, match="unknown setting"):
        parse_probe("steps=80,judge=easy", RunSettings())


def test_a_share_of_the_clean_gain_needs_a_clean_gain():
    from align_report import summarise

    def rows(clean_gain):
        base = {"kind": "base", "reward": [0.5] * 8}
        run = lambda rate, method, seed, gain: {"kind": "run", "variant": "minority", "rate": rate, "method": method,  # noqa: E731
                                                "seed": seed, "reward": [0.5 + gain + 0.01 * (i % 2) for i in range(8)]}
        return [base] + [run(0.0, "dpo", s, clean_gain) for s in range(3)] + \
            [run(0.3, m, s, g) for s in range(3) for m, g in (("dpo", 0.02), ("dpo-kept", 0.04))]

    shown = summarise(rows(0.05), "minority", draws=200)
    assert shown[(0.3, "dpo-kept")]["kept"][0] == pytest.approx(0.045 / 0.055)
    assert shown[(0.3, "dpo-kept")]["vs_dpo"][0] == pytest.approx(0.02)
    assert "kept" not in summarise(rows(-0.01), "minority", draws=200)[(0.3, "dpo-kept")]
