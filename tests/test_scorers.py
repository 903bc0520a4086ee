"""The scorer registry on tiny random models of every architecture (no downloads), and the world judge."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from curate.scorers import ScorerError, ScorerKind, ScorerSpec, load_scorer, parse_specs
from curate.synth import scene as sc
from curate.synth.pool import make_pool, random_scenes
from scorer_models import tiny_pickscore


def world_renders(n: int = 12, side: int = 32, seed: int = 3):
    codes = random_scenes(np.random.default_rng(seed), n)
    images = [sc.render(sc.Scene.from_codes(c), sc.QualityParams(blur=0.3 * (i % 3)), side, i) for i, c in enumerate(codes)]
    return images, [str(p) for p in sc.prompts_for_codes(codes)]


def assert_batching_invariant_and_deterministic(scorer, images, prompts):
    whole = scorer.score(images, prompts, batch_size=len(images))
    assert whole.shape == (len(images),) and whole.dtype == np.float32 and np.isfinite(whole).all()
    np.testing.assert_allclose(scorer.score(images, prompts, batch_size=3), whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scorer.score(images, prompts, batch_size=len(images)), whole)
    assert len(np.unique(whole)) > 1  # the scores depend on the input
    return whole


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    """An open_clip architecture small enough for a test: the domain CLIP's config, registered by name."""
    import open_clip

    from curate.clip.models import DOMAIN_DIR

    folder = tmp_path_factory.mktemp("arch")
    cfg = json.loads((DOMAIN_DIR / "open_clip_config.json").read_text())["model_cfg"]
    (folder / "tiny-test-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return "tiny-test-clip"


def test_specs_parse_and_unknown_kinds_fail_with_the_list():
    specs = parse_specs("world, clip:domain,hps:v2")
    assert [s.name for s in specs] == ["world", "clip:domain", "hps:v2"]
    assert specs[1] == ScorerSpec(ScorerKind.clip, "domain")
    with pytest.raises(ScorerError, match="unknown scorer 'pick'.*pickscore"):
        parse_specs("pick")
    with pytest.raises(ScorerError, match="named twice"):
        parse_specs("world,world")


def test_clip_scorer_is_embeds_cosine(torch_one_thread):
    from curate.clip.models import load_domain_clip
    from curate.clip.scores import row_cosines

    images, prompts = world_renders()
    scorer = load_scorer("clip:domain")
    got = assert_batching_invariant_and_deterministic(scorer, images, prompts)
    clip = load_domain_clip()
    pixels = np.stack([clip.preprocess(im).numpy() for im in images])
    import torch

    expected = row_cosines(clip.encode_texts(prompts), clip.encode_images(torch.from_numpy(pixels)))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert scorer.key == clip.key  # the key embed's scores table carries (scorer clip:<key>)


def test_hps_loads_a_checkpoint_file_safely(tmp_path, tiny_arch, torch_one_thread):
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_arch)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "hps.pt")
    images, prompts = world_renders()
    scorer = load_scorer(ScorerSpec(ScorerKind.hps, str(tmp_path / "hps.pt"), backbone=tiny_arch))
    got = assert_batching_invariant_and_deterministic(scorer, images, prompts)
    assert np.all(np.abs(got) <= 1.0 + 1e-6)  # HPS is a cosine
    torch.save({"state_dict": model.state_dict(), "why": np.dtype("float32")}, tmp_path / "unsafe.pt")
    with pytest.raises(ScorerError, match="refused .weights_only=True.*safetensors"):
        load_scorer(ScorerSpec(ScorerKind.hps, str(tmp_path / "unsafe.pt"), backbone=tiny_arch))


def test_aesthetic_is_the_mlp_on_unit_norm_image_embeddings(tmp_path, torch_one_thread):
    import torch

    from curate.clip.models import load_domain_clip
    from curate.scorers.clip import aesthetic_head

    torch.manual_seed(0)
    widths = [(64, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    state = {}
    for layer, (i, o) in zip((0, 2, 4, 6, 7), widths):
        state[f"layers.{layer}.weight"], state[f"layers.{layer}.bias"] = torch.randn(o, i) / i ** 0.5, torch.randn(o)
    torch.save(state, tmp_path / "aesthetic.pth")
    images, prompts = world_renders()
    scorer = load_scorer(ScorerSpec(ScorerKind.aesthetic, str(tmp_path / "aesthetic.pth"), backbone="domain"))
    got = assert_batching_invariant_and_deterministic(scorer, images, prompts)
    clip = load_domain_clip()
    emb = clip.encode_images(torch.stack([clip.preprocess(im) for im in images]))
    x = torch.from_numpy(emb)
    for layer in (0, 2, 4, 6, 7):  # dropout is off in eval: five affine maps, no activation
        x = x @ state[f"layers.{layer}.weight"].T + state[f"layers.{layer}.bias"]
    np.testing.assert_allclose(got, x.squeeze(-1).numpy(), rtol=1e-4, atol=1e-5)
    assert len(aesthetic_head(state, "t")) == 8
    with pytest.raises(ScorerError, match="download https://github.com/christophschuhmann"):
        load_scorer("aesthetic")


def test_pickscore_layout_is_logit_scale_times_cosine(tmp_path, torch_one_thread):
    import torch
    from transformers import CLIPModel

    processor = tiny_pickscore(tmp_path / "pick")
    images, prompts = world_renders()
    scorer = load_scorer(f"pickscore:{tmp_path / 'pick'}")
    got = assert_batching_invariant_and_deterministic(scorer, images, prompts)
    model = CLIPModel.from_pretrained(tmp_path / "pick").eval()
    inputs = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits_per_image  # logit_scale.exp() * image @ text.T, transformers' own
    np.testing.assert_allclose(got, torch.diagonal(logits).numpy(), rtol=1e-4, atol=1e-4)


def test_offline_missing_weights_name_the_files_before_any_work(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ScorerError) as pick:
        load_scorer("pickscore")
    message = str(pick.value)
    assert "yuvalkirstain/PickScore_v1/config.json" in message and "laion/CLIP-ViT-H-14-laion2B-s32B-b79K/" in message
    assert "hf download yuvalkirstain/PickScore_v1" in message and "\n" not in message
    with pytest.raises(ScorerError, match="xswu/HPSv2/HPS_v2.1_compressed.pt.*hps:PATH"):
        load_scorer("hps")
    with pytest.raises(ScorerError, match="names no weights"):
        load_scorer("clip:ViT-B-32")


def test_imagereward_without_its_package_says_how_to_get_it():
    import importlib.util

    if importlib.util.find_spec("ImageReward") is not None:
        pytest.skip("image-reward is installed here")
    with pytest.raises(ScorerError, match="pip install image-reward"):
        load_scorer("imagereward")


def test_world_prompts_read_back_into_their_scenes():
    from curate.scorers.world import scene_codes

    codes = random_scenes(np.random.default_rng(1), 500)
    back = np.stack([scene_codes(p) for p in sc.prompts_for_codes(codes)])
    np.testing.assert_array_equal(back, codes)
    with pytest.raises(ValueError, match="not a prompt of the synthetic world"):
        scene_codes("a photo of a cat")


@pytest.mark.parametrize("side", [32, 64])
def test_world_scorer_orders_the_worlds_renders_by_true_reward(side):
    pool = make_pool(np.random.default_rng([4, 99]), 30, 4)
    images = [sc.render(pool.scene(i), sc.QualityParams(float(pool.blur[i]), float(pool.noise[i]), 100), side,
                        int(pool.seed[i])) for i in range(pool.n_images)]
    prompts = [str(pool.prompts[p]) for p in pool.prompt_of(np.arange(pool.n_images))]
    truth = sc.true_reward(pool.fidelity, sc.quality_values(pool.blur, pool.noise, 100))
    scorer = load_scorer("world")
    got = scorer.score(images, prompts, batch_size=32)
    assert spearmanr(got, truth).statistic >= 0.9
    np.testing.assert_array_equal(scorer.score(images[:10], prompts[:10], batch_size=3), got[:10])
    fidelity = load_scorer("world:fidelity").score(images, prompts)
    assert spearmanr(fidelity, pool.fidelity).statistic >= 0.7  # about 0.8: at 32 px small shapes get misread
    with pytest.raises(ScorerError, match="unknown world measure"):
        load_scorer("world:beauty")
