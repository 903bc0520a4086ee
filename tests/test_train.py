"""The trainer on tiny SD1.5/SDXL-shaped models, on CPU: real models, real files, no mocks."""
import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from curate.train.config import TrainConfig  # noqa: E402
from curate.train.data import encode_pairs  # noqa: E402
from curate.train.ema import EMAAnnotators  # noqa: E402
from curate.train.evaluate import evaluate_pairs  # noqa: E402
from curate.train.loop import NonFiniteLoss, train  # noqa: E402
from curate.train.margins import noised_pair  # noqa: E402
from curate.train.models import load_components, tiny_sd15, tiny_sdxl  # noqa: E402
from curate.train.setup import prepare_policy, trainable_parameters  # noqa: E402
from curate.train.step import minority_scores, pair_step  # noqa: E402
from curate.train.synthetic import pattern_pairs  # noqa: E402

LATENT = (4, 8, 8)  # 16 x 16 px through the tiny VAE (factor 2)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def config(tmp_path, **overrides) -> TrainConfig:
    base = dict(model="tiny", output_dir=str(tmp_path / "run"), batch_size=4, max_steps=4, lora_rank=4,
                learning_rate=1e-3, beta=2500.0, progress=False, tensorboard=False, checkpoint_every=0,
                adaptive_warmup_steps=1)
    return TrainConfig(**{**base, **overrides})


def first_batch(data, batch_size=4):
    return next(iter(data.source(batch_size, shuffle=False)))


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_step0_loss_is_ln2_when_policy_is_reference(tmp_path, finetune):
    cfg = config(tmp_path, finetune=finetune)
    unet, reference = prepare_policy(cfg, tiny_sd15().unet)
    out = pair_step(cfg, unet, unet, reference, None, tiny_sd15().noise_scheduler,
                    first_batch(pattern_pairs(4, latent_shape=LATENT)), torch.Generator().manual_seed(0), False)
    assert torch.equal(out.h, torch.zeros(4))
    assert out.loss.item() == pytest.approx(0.693147, abs=1e-6)
    assert out.loss.requires_grad


def test_one_gradient_step_moves_h_up(tmp_path):
    cfg = config(tmp_path)
    components = tiny_sd15()
    unet, _ = prepare_policy(cfg, components.unet)
    batch = first_batch(pattern_pairs(4, latent_shape=LATENT))
    opt = torch.optim.SGD(list(trainable_parameters(unet).values()), lr=0.05)
    # B is zero at init, so the first step only moves B; take two so h can move away from exactly 0.
    for _ in range(2):
        out = pair_step(cfg, unet, unet, None, None, components.noise_scheduler, batch,
                        torch.Generator().manual_seed(7), False)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = pair_step(cfg, unet, unet, None, None, components.noise_scheduler, batch,
                      torch.Generator().manual_seed(7), False)
    assert after.h.mean().item() > out.h.mean().item() >= 0.0
    assert after.loss.item() < math.log(2)


def test_adaptive_with_identical_annotators_is_u0_w1(tmp_path):
    cfg = config(tmp_path, method="adaptive-dpo")
    components = tiny_sd15()
    unet, _ = prepare_policy(cfg, components.unet)
    batch = first_batch(pattern_pairs(4, latent_shape=LATENT))
    # Move the policy off the reference so h != 0, then take EMA copies equal to it.
    with torch.no_grad():
        for p in trainable_parameters(unet).values():
            p.add_(0.05 * torch.randn_like(p))
    annotators = EMAAnnotators(trainable_parameters(unet), cfg.ema_caps)
    ada = pair_step(cfg, unet, unet, None, annotators, components.noise_scheduler, batch,
                    torch.Generator().manual_seed(3), True)
    assert ada.h.abs().min() > 0
    assert ada.u.abs().max() < 1e-6  # all three annotators agree exactly: std = 0 -> u = 0
    assert torch.allclose(ada.weights, torch.ones(4), atol=1e-5)
    dpo_cfg = config(tmp_path, method="dpo")
    dpo = pair_step(dpo_cfg, unet, unet, None, None, components.noise_scheduler, batch,
                    torch.Generator().manual_seed(3), True)
    assert torch.equal(ada.h, dpo.h)
    # With u = 0 the authors' loss is DPO on beta*h - mean(h): exactly DPO once the batch mean is 0.
    shifted = -torch.nn.functional.logsigmoid(cfg.beta * dpo.h - dpo.h.mean()).mean()
    assert ada.loss.item() == pytest.approx(shifted.item(), abs=1e-6)


def test_adaptive_annotators_disagree_after_updates(tmp_path):
    cfg = config(tmp_path, method="adaptive-dpo")
    components = tiny_sd15()
    unet, _ = prepare_policy(cfg, components.unet)
    params = trainable_parameters(unet)
    annotators = EMAAnnotators(params, cfg.ema_caps)
    for _ in range(3):  # the 0.5-cap EMA follows the policy, the 0.9999-cap one lags behind
        with torch.no_grad():
            for p in params.values():
                p.add_(0.05 * torch.randn_like(p))
        annotators.update(params)
    assert annotators.updates == 3
    batch = first_batch(pattern_pairs(4, latent_shape=LATENT))
    out = pair_step(cfg, unet, unet, None, annotators, components.noise_scheduler, batch,
                    torch.Generator().manual_seed(3), True)
    assert (out.u > 0).all() and (out.u < 1).all()
    assert (out.weights < 1).all()
    # Before the warm-up u is exactly 0 and no annotator forward runs.
    early = minority_scores(cfg, unet, None, batch, out.h, None, adaptive_on=False)
    assert torch.equal(early, torch.zeros(4))


def test_ties_are_dropped_and_counted_and_position_restores():
    data = pattern_pairs(12, n_ties=3, latent_shape=LATENT)
    source = data.source(4, seed=5)
    assert source.dropped == {"tie": 3}
    it = iter(source)
    seen = [next(it).pair_ids for _ in range(4)]  # crosses an epoch (3 batches per epoch)
    ties = {p["pair_id"] for p in data.pairs if p["label"] == "tie"}
    assert len(ties) == 3 and not ties & {pid for ids in seen for pid in ids}
    state = source.state_dict()
    expected = next(it)
    other = data.source(4, seed=5)
    other.load_state_dict(state)
    again = next(iter(other))
    assert again.pair_ids == expected.pair_ids and torch.equal(again.latent_w, expected.latent_w)
    with pytest.raises(ValueError, match="saved with seed=5"):
        data.source(4, seed=6).load_state_dict(state)


def test_winner_is_the_labelled_image():
    data = pattern_pairs(4, latent_shape=LATENT)
    batch = first_batch(data)
    for i, pid in enumerate(batch.pair_ids):
        n = int(pid.removeprefix("ppair"))
        assert torch.equal(batch.latent_w[i], data.latents[f"pimg{n}g"])
        assert torch.equal(batch.latent_l[i], data.latents[f"pimg{n}b"])


def test_v_prediction_target_by_hand():
    scheduler = tiny_sd15(prediction_type="v_prediction").noise_scheduler
    z_w, z_l, e = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 2.0)
    t = torch.tensor([500])
    x_t, t2, target = noised_pair(scheduler, z_w, z_l, e, t)
    abar = scheduler.alphas_cumprod[500]
    # v = sqrt(abar) e - sqrt(1 - abar) z: winner 2 sqrt(abar) - sqrt(1 - abar), loser 2 sqrt(abar)
    assert torch.allclose(target[0], (2 * abar.sqrt() - (1 - abar).sqrt()).expand(4, 2, 2))
    assert torch.allclose(target[1], (2 * abar.sqrt()).expand(4, 2, 2))
    assert torch.allclose(x_t[1], (1 - abar).sqrt() * 2 * torch.ones(4, 2, 2))  # same noise for both images
    assert t2.tolist() == [500, 500]


def test_training_raises_heldout_accuracy_and_lora_reloads_into_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    components = tiny_sd15()
    cfg = config(tmp_path, max_steps=30, batch_size=8, learning_rate=2e-3)
    heldout = pattern_pairs(32, latent_shape=LATENT, seed=99, prefix="h").source(8, shuffle=False)
    result = train(cfg, pattern_pairs(64, latent_shape=LATENT).source(8), components)
    # h averaged over 4 noise draws per pair; before training h = 0 exactly, so accuracy is 0.5.
    after = evaluate_pairs(result.unet, None, components.noise_scheduler, heldout, batches=4, draws=4)
    first = result.history[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and first["implicit_acc"] == 0.5
    assert after["implicit_acc"] >= 0.8, after  # 0.906 at the time of writing
    assert after["h_mean"] > 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    assert {"lr", "pairs_per_s", "peak_mem_mb", "h_std", "model_err", "ref_err"} <= set(steps[-1])
    assert lines[-1]["event"] == "exported"

    # The exported LoRA loads into a pipeline built from the (untouched) base components.
    base = tiny_sd15()
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   unet=base.unet, scheduler=base.noise_scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe("a red cat", num_inference_steps=2, height=16, width=16, output_type="np",  # noqa: E731
                       generator=torch.Generator().manual_seed(0)).images
    before_img = run()
    pipe.load_lora_weights(str(result.exported))
    tuned_img = run()
    assert tuned_img.shape == (1, 16, 16, 3) and not (tuned_img == before_img).all()
    trained = {k: v for k, v in result.unet.state_dict().items() if "lora_B" in k}
    loaded = {k: v for k, v in pipe.unet.state_dict().items() if "lora_B" in k}
    assert len(trained) == len(loaded) > 0
    assert all(torch.equal(a, b) for a, b in zip(sorted(trained.values(), key=torch.sum),
                                                 sorted(loaded.values(), key=torch.sum)))


class Interrupt(Exception):
    pass


class StopAfter:
    """Wraps a source and raises after n batches: a run killed between checkpoints."""

    def __init__(self, inner, n):
        self.inner, self.n, self.dropped, self.grad_accum = inner, n, inner.dropped, inner.grad_accum

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if i == self.n:
                raise Interrupt()
            yield batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


@pytest.mark.parametrize("finetune,method,steps,accum", [("lora", "adaptive-dpo", 6, 2), ("full", "dpo", 4, 1)])
def test_resume_continues_the_same_loss_curve(tmp_path, finetune, method, steps, accum):
    data = pattern_pairs(24, latent_shape=LATENT)
    half = steps // 2
    kw = dict(method=method, finetune=finetune, max_steps=steps, grad_accum=accum, checkpoint_every=half,
              lr_scheduler="cosine", lr_warmup_steps=2, adaptive_warmup_steps=2)
    straight = train(config(tmp_path / "a", **kw), data.source(4, grad_accum=accum), tiny_sd15(), export=False)
    with pytest.raises(Interrupt):  # dies while fetching the first batch after the checkpoint
        train(config(tmp_path / "b", **kw), StopAfter(data.source(4, grad_accum=accum), half * accum), tiny_sd15(),
              export=False)
    resumed = train(config(tmp_path / "b", **kw), data.source(4, grad_accum=accum), tiny_sd15(), export=False)
    assert [r["step"] for r in resumed.history] == list(range(half + 1, steps + 1))
    assert len(straight.history) == steps
    for a, b in zip(straight.history[half:], resumed.history):
        for key in ("loss", "h_mean", "lr") + (("u_mean", "w_mean") if method != "dpo" else ()):
            assert a[key] == pytest.approx(b[key], abs=1e-6, rel=1e-6), (key, a, b)
    assert sorted(p.name for p in (tmp_path / "b" / "run").iterdir() if p.name.startswith("checkpoint")) == \
        [f"checkpoint-{half:08d}", f"checkpoint-{steps:08d}"]


def test_resume_refuses_a_changed_config(tmp_path):
    data = pattern_pairs(8, latent_shape=LATENT)
    train(config(tmp_path, max_steps=1), data.source(4), tiny_sd15(), export=False)
    with pytest.raises(ValueError, match=r"config fields \['beta'\] differ"):
        train(config(tmp_path, max_steps=2, beta=100.0), data.source(4), tiny_sd15(), export=False)


def test_nan_loss_stops_naming_step_and_pairs_and_saves_nothing_for_it(tmp_path):
    data = pattern_pairs(8, latent_shape=LATENT)
    data.latents["pimg5b"] = torch.full(LATENT, float("nan"))  # pair 5 is in the second batch
    cfg = config(tmp_path, max_steps=3, checkpoint_every=1)
    with pytest.raises(NonFiniteLoss, match=r"at step 2 .*ppair5"):
        train(cfg, data.source(4, shuffle=False), tiny_sd15(), export=False)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "checkpoint-00000001" in names and "checkpoint-00000002" not in names
    assert not any(n.startswith(".tmp") for n in names)


def test_adaptive_offline_uses_data_u_and_requires_it(tmp_path):
    cfg = config(tmp_path, method="adaptive-offline", max_steps=2, gradient_checkpointing=True)
    result = train(cfg, pattern_pairs(8, latent_shape=LATENT, with_u=True).source(4), tiny_sd15(), export=False)
    assert result.history[0]["u_mean"] > 0 and result.history[0]["w_mean"] < 1
    with pytest.raises(ValueError, match="needs per-pair u from the data"):
        train(config(tmp_path / "x", method="adaptive-offline"), pattern_pairs(8, latent_shape=LATENT).source(4),
              tiny_sd15(), export=False)


def test_sdxl_from_local_folder_trains_full_and_exports_a_pipeline(tmp_path):
    folder = tiny_sdxl(prediction_type="v_prediction").save_pretrained(tmp_path / "tiny-sdxl")
    components = load_components(str(folder))
    assert components.is_sdxl and components.prediction_type == "v_prediction"
    data = pattern_pairs(8, latent_shape=LATENT, text_shape=(16, 32), pooled_dim=16)
    cfg = config(tmp_path, model=str(folder), finetune="full", max_steps=2, method="adaptive-dpo",
                 adaptive_warmup_steps=1, learning_rate=1e-4)
    result = train(cfg, data.source(4))
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result.history[1]["u_mean"] >= 0
    reloaded = load_components(str(result.exported))
    assert reloaded.is_sdxl
    tuned = dict(result.unet.named_parameters())
    assert all(torch.equal(p, tuned[n].to(p.dtype)) for n, p in list(reloaded.unet.named_parameters())[:5])


def test_encode_pairs_runs_vae_and_text_encoders_once_with_a_shared_flip():
    from PIL import Image

    pairs = [{"pair_id": f"q{i}", "prompt_id": "x" if i % 2 else "y", "image_a_id": f"a{i}",
              "image_b_id": f"b{i}", "label": "tie" if i == 3 else "a"} for i in range(4)]
    images = {f"{s}{i}": Image.new("RGB", (24, 20), (40 * i, 200 if s == "a" else 10, 90))
              for i in range(4) for s in "ab"}
    for components, text_width in ((tiny_sd15(), 32), (tiny_sdxl(), 32)):
        enc = encode_pairs(components, pairs, images, {"x": "a red cat", "y": "a dog"}, resolution=16,
                           random_flip=True, seed=1)
        flips = {p["pair_id"]: p["flip"] for p in enc.pairs}
        assert len(set(flips.values())) == 2  # seed 1 flips some pairs and not others
        for p in enc.pairs[:3]:
            key = lambda image: f"{image}:flip" if p["flip"] else image  # noqa: E731
            assert enc.latents[key(p["image_a_id"])].shape == (4, 8, 8)
            assert enc.latents[key(p["image_b_id"])].shape == (4, 8, 8)
        assert not any(k.startswith(("a3", "b3")) for k in enc.latents)  # the tie was never encoded
        source = enc.source(2)
        assert source.dropped == {"tie": 1}
        batch = next(iter(source))
        assert batch.text_emb.shape == (2, 16, text_width)
        if components.is_sdxl:
            assert batch.pooled.shape == (2, 16) and enc.empty_prompt[1].shape == (16,)
            for pid, time_ids in zip(batch.pair_ids, batch.time_ids.tolist()):
                # A flipped pair's crop left is mirrored as diffusers' SDXL script does: 16 - 2.
                left = 14.0 if flips[pid] else 2.0
                assert time_ids == [20.0, 24.0, 0.0, left, 16.0, 16.0]
        assert enc.empty_prompt[0].shape == (16, text_width)


def test_config_errors_name_the_value_and_choices():
    with pytest.raises(ValueError, match="unknown method 'adaptive'; expected one of dpo, adaptive-dpo, adaptive-offline"):
        TrainConfig(method="adaptive")
    with pytest.raises(ValueError, match="unknown loss 'cpo'"):
        TrainConfig(loss="cpo")
    with pytest.raises(ValueError, match="not loss='hinge'"):
        TrainConfig(method="adaptive-dpo", loss="hinge")
    cfg = TrainConfig(lora_targets=("to_q",), ema_caps=(0.9, 0.5))
    assert TrainConfig.from_json(cfg.to_json()) == cfg


def test_offline_hub_id_error_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set .*pass a local diffusers folder"):
        load_components("prefcurate-test/not-a-model")


@pytest.mark.parametrize("args,message", [
    (["--method", "adaptive-dpo", "--loss", "hinge"], "not loss='hinge'"),
    (["--lr", "-1"], "learning_rate must be > 0, got -1.0"),
    (["--lr-scheduler", "cosin"], "'cosin' is not one of 'linear', 'cosine', 'cosine_with_restarts'"),
    (["--method", "adaptive-offline", "--minority", "weight"], "the same W again"),
    (["--use-8bit-adam"], "needs bitsandbytes"),
])
def test_cli_train_refuses_a_bad_config_before_reading_any_data(tmp_path, args, message):
    # Training from a dataset, and `prefcurate sample` on its LoRA, run end to end in tests/test_encode.py.
    import importlib.util

    from typer.testing import CliRunner

    from curate.cli import app

    if "--use-8bit-adam" in args and importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    res = CliRunner().invoke(app, ["train", str(tmp_path), "--model", "unused", "--output-dir", str(tmp_path / "run"),
                                   *args])
    assert res.exit_code == 2 and message in " ".join(res.output.replace("│", " ").split()), res.output
    assert not (tmp_path / "run").exists()


def test_the_cli_lists_diffusers_lr_schedules():
    from diffusers.optimization import SchedulerType

    from curate.options import LrScheduler

    assert tuple(s.value for s in LrScheduler) == tuple(s.value for s in SchedulerType)


def test_the_trainer_choices_are_the_losses_and_configs_store_members():
    from curate.options import Loss, Method
    from curate.train.losses import LOSS_TYPES

    assert tuple(loss.value for loss in Loss) == LOSS_TYPES
    cfg = TrainConfig(method="adaptive-offline", loss="ipo")
    assert cfg.method is Method.adaptive_offline and cfg.loss is Loss.ipo
    assert f"{cfg.method}" == "adaptive-offline" and TrainConfig.from_json(cfg.to_json()) == cfg
