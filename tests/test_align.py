"""The alignment benchmark's parts on tiny sizes: judge, model, sampling, labels, curation, one run."""
import numpy as np
import pytest
import torch

from curate.align import judge
from curate.align.model import AlignModel, ModelConfig, to_images, to_latents, world_vocabulary
from curate.synth import annotators as an
from curate.synth import scene as sc


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_model():
    return AlignModel.fresh(ModelConfig(vocab=world_vocabulary(), channels=(16, 32)), seed=0)


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


def test_space_to_depth_round_trip_and_save_load(tmp_path, tiny_model):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert to_latents(x, 2).shape == (2, 12, 16, 16)
    assert torch.equal(to_images(to_latents(x, 2), 2), x)
    ids = tiny_model.encoder.tokenize(["a large red zebra", ""])
    assert ids[0, 3].item() == 1 and ids[1].eq(0).all()  # unknown word -> <unk>, empty -> all padding
    tiny_model.save(tmp_path / "m")
    again = AlignModel.load(tmp_path / "m")
    text = again.encode(["a small red circle at the top of a grey background", ""])
    assert torch.isfinite(text).all()
    t = torch.tensor([10, 500])
    lat = torch.randn(2, 12, 16, 16)
    with torch.no_grad():
        a = tiny_model.unet(lat, t, encoder_hidden_states=tiny_model.encode(["a", "b"])).sample
        b = again.unet(lat, t, encoder_hidden_states=again.encode(["a", "b"])).sample
    assert torch.allclose(a, b, atol=2e-2)  # weights are stored in fp16


def test_sampling_is_a_function_of_the_seed(tiny_model):
    from curate.align.sample import sample_images

    text = tiny_model.encode(["a large red circle in the middle of a white background"] * 3)
    empty = tiny_model.encode([""])[0]
    one = sample_images(tiny_model.unet, tiny_model.scheduler, text, empty, [1, 2, 1], patch=2, steps=2)
    assert one.shape == (3, 32, 32, 3) and one.dtype == np.uint8
    assert np.array_equal(one[0], one[2]) and not np.array_equal(one[0], one[1])


def _rendered_samples(n_prompts: int, seed: int = 0):
    from curate.align.prefs import SampleSet
    from curate.synth.pool import make_pool

    pool = make_pool(np.random.default_rng(seed), n_prompts, 2)
    images = np.stack([np.asarray(sc.render(pool.scene(i), sc.QualityParams(float(pool.blur[i]), float(pool.noise[i]), 100),
                                            32, i)) for i in range(pool.n_images)])
    return SampleSet([str(p) for p in pool.prompts], pool.targets, images, np.arange(pool.n_images),
                     judge.judge_images(images, np.repeat(pool.targets, 2, axis=0)))


def test_minority_rate_comes_from_minority_annotators():
    from curate.align.prefs import label_pairs

    samples = _rendered_samples(100)
    clean, noisy = label_pairs(samples, 0.0, 0), label_pairs(samples, 0.3, 0)
    assert not set(clean.kind) & set(an.MINORITY_TYPES)
    assert set(noisy.kind) & set(an.MINORITY_TYPES)
    decided = lambda lab: lab.label != an.TIE  # noqa: E731
    assert noisy.is_minority[decided(noisy)].mean() > clean.is_minority[decided(clean)].mean() + 0.1
    flips = (noisy.label != noisy.majority) & (noisy.label != an.TIE) & (noisy.majority != an.TIE)
    assert np.array_equal(flips, noisy.is_minority)


def test_real_curation_stages_return_u_per_pair(tmp_path):
    from curate.align.curation import curate_pairs
    from curate.align.prefs import label_pairs

    samples = _rendered_samples(24, seed=1)
    labels = label_pairs(samples, 0.3, 0, n_annotators=6)
    out = curate_pairs(tmp_path, samples.images, samples.prompts, labels.label, labels.annotator, use_clip=False,
                       quantile=0.3)
    assert out["u"].shape == (24,) and ((out["u"] >= 0) & (out["u"] < 1)).all()
    decided = labels.label != an.TIE
    assert out["flagged"][decided].any() and not out["flagged"][~decided].any()


def test_one_run_of_each_training_family(tmp_path, tiny_model):
    from curate.align import bench

    cfg = bench.BenchConfig(train_prompts=16, eval_prompts=8, steps=2, batch_size=4, sample_steps=2,
                            adaptive_warmup=1, implicit_draws=1, use_clip=False)
    prep = bench.prepare(tiny_model, cfg, log=lambda *_: None)
    from curate.align.prefs import label_pairs

    labels = label_pairs(prep.train, 0.2, 0, n_annotators=4)
    curation = {"u": np.full(16, 0.3), "flagged": np.arange(16) % 4 == 0}
    for method in ("dpo-curated", "adaptive-dpo", "adaptive-offline"):
        row = bench.run_one(prep, cfg, 0.2, method, 0, labels, curation, tmp_path)
        assert 0 <= row["reward"] <= 1 and 0 <= row["win_rate"] <= 1 and 0 <= row["implicit_acc"] <= 1
        kept = int((labels.label[curation["flagged"] == 0] != an.TIE).sum()) if method == "dpo-curated" else \
            int((labels.label != an.TIE).sum())
        assert row["train_pairs"] == kept
