"""What would break off the CPU, caught on the CPU: placement on another device (the meta device
stands in for a GPU), mixed precision and the fp16 loss scaler, and the memory/speed options."""
import json
import math

import pytest
import torch

from curate.train.config import TrainConfig
from curate.train.data import PairBatch
from curate.train.ema import EMAAnnotators
from curate.train.loop import train
from curate.train.models import tiny_sd15
from curate.train.setup import apply_gradients, place_model, prepare_policy, set_tf32, trainable_parameters
from curate.train.step import drop_prompts, noise_generator, pair_step
from curate.train.synthetic import pattern_pairs

LATENT = (4, 8, 8)
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def config(tmp_path, **overrides) -> TrainConfig:
    base = dict(model="tiny", output_dir=str(tmp_path / "run"), batch_size=4, max_steps=4, lora_rank=4,
                learning_rate=1e-3, progress=False, tensorboard=False, checkpoint_every=0, adaptive_warmup_steps=1)
    return TrainConfig(**{**base, **overrides})


def accelerator_on(device: str):
    """An accelerate Accelerator whose device is `device`: prepare() places the model there, as it
    would on a GPU. The meta device runs every op (shapes only) and refuses to mix with the CPU."""
    from accelerate import Accelerator

    class PlacedAccelerator(Accelerator):
        @property
        def device(self):
            return torch.device(device)

    return PlacedAccelerator()


@pytest.mark.parametrize("finetune", ["lora", "full"])
@pytest.mark.parametrize("method", ["dpo", "adaptive-dpo", "adaptive-offline"])
def test_every_tensor_of_a_step_lives_where_the_model_was_placed(tmp_path, finetune, method):
    cfg = config(tmp_path, method=method, finetune=finetune)
    components = tiny_sd15()
    accelerator = accelerator_on("meta")
    model = place_model(cfg, components.unet, accelerator)
    assert {p.device.type for p in model.bare.parameters()} == {"meta"}
    if model.reference is not None:
        assert {p.device.type for p in model.reference.parameters()} == {"meta"}
    if model.annotators is not None:
        for shadow in model.annotators.shadows:
            assert all(t.device.type == "meta" and t.dtype == torch.float32 for t in shadow.values())
    batch = next(iter(pattern_pairs(8, latent_shape=LATENT, with_u=True).source(4))).to(accelerator.device)
    # Noise, timesteps, margins, minority scores, loss, backward, clipping, AdamW and the EMA update:
    # a single tensor left on the CPU raises "Tensor on device cpu is not on the expected device meta".
    out = pair_step(cfg, model.policy, model.bare, model.reference, model.annotators, components.noise_scheduler,
                    batch, noise_generator(0, 0, 0), adaptive_on=True)
    accelerator.backward(out.loss)
    norm, skipped = apply_gradients(cfg, accelerator, model)
    if model.annotators is not None:
        model.annotators.update(model.trainable)
    assert out.loss.device.type == norm.device.type == "meta" and not skipped
    assert all(s["exp_avg"].device.type == "meta" for s in model.optimizer.state.values())


def test_annotators_made_before_placement_are_caught(tmp_path):
    """The bug this placement fixes: shadows cloned before prepare() stay on the CPU."""
    from accelerate import Accelerator

    cfg = config(tmp_path, method="adaptive-dpo")
    on_cpu = place_model(cfg, tiny_sd15().unet, Accelerator()).annotators
    model = place_model(cfg, tiny_sd15().unet, accelerator_on("meta"))
    with pytest.raises(RuntimeError, match="device"):  # the first EMA update after an optimizer step
        on_cpu.update(model.trainable)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_bf16_frozen_weights_in_bf16_trainable_and_emas_in_fp32(tmp_path, finetune):
    cfg = config(tmp_path, mixed_precision="bf16", finetune=finetune, method="adaptive-dpo", max_steps=2)
    result = train(cfg, pattern_pairs(8, latent_shape=LATENT).source(4), tiny_sd15(), export=False)
    trainable = trainable_parameters(result.unet)
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    frozen = (result.reference.parameters() if finetune == "full"
              else (p for n, p in result.unet.named_parameters() if n not in trainable))
    assert {p.dtype for p in frozen} == {torch.bfloat16}
    assert all(math.isfinite(r["loss"]) for r in result.history) and result.history[1]["u_mean"] >= 0


def test_fp16_skipped_steps_advance_nothing_and_a_resumed_run_continues_the_curve(tmp_path):
    from test_train import Interrupt, StopAfter

    data = pattern_pairs(24, latent_shape=LATENT)
    # beta 2500 x the initial loss scale 2^16 overflows fp16 gradients: the first steps are skipped.
    kw = dict(mixed_precision="fp16", method="adaptive-dpo", max_steps=6, checkpoint_every=3, lr_scheduler="linear")
    straight = train(config(tmp_path / "a", **kw), data.source(4), tiny_sd15(), export=False)
    assert straight.skipped_steps > 0 and [r["step"] for r in straight.history] == list(range(1, 7))
    skips = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "skipped_step" for r in skips) == straight.skipped_steps
    # The lr schedule moved once per applied step (linear decay from 1e-3 over 6 steps), the EMAs too.
    assert [r["lr"] for r in straight.history] == pytest.approx([1e-3 * (6 - s) / 6 for s in range(6)])
    from curate.train.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "a" / "run" / "checkpoint-00000006")["ema"]["updates"] == 6

    killed_at = 3 + straight.history[2]["skipped_steps"] + 2  # batches: 3 steps, their skips, 2 of step 4
    with pytest.raises(Interrupt):
        train(config(tmp_path / "b", **kw), StopAfter(data.source(4), killed_at), tiny_sd15(), export=False)
    resumed = train(config(tmp_path / "b", **kw), data.source(4), tiny_sd15(), export=False)
    for a, b in zip(straight.history[3:], resumed.history):
        for key in ("loss", "h_mean", "u_mean", "lr", "skipped_steps", "grad_norm"):
            assert a[key] == pytest.approx(b[key], abs=1e-6, rel=1e-6), (key, a, b)
    # The resumed log reads like the uninterrupted one: every step once, in order.
    log = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 7))
    assert [r["resumed_from"] is not None for r in log if r.get("event") == "start"] == [False, True]


def test_health_metrics_split_u_and_w_by_the_datas_flags(tmp_path):
    data = pattern_pairs(8, latent_shape=LATENT, with_u=True)
    for i, pair in enumerate(data.pairs):
        pair["flagged"] = i % 3 == 0
    cfg = config(tmp_path, method="adaptive-offline", max_steps=2, max_grad_norm=1e-6)
    first = train(cfg, data.source(4, shuffle=False), tiny_sd15(), export=False).history[0]
    assert first["err_w_delta"] == first["err_l_delta"] == 0.0  # the policy starts as the reference
    batch = data.pairs[:4]
    u = {True: [round(p["u"], 4) for p in batch if p["flagged"]], False: [round(p["u"], 4) for p in batch
                                                                          if not p["flagged"]]}
    assert first["u_flagged"] == pytest.approx(u[True], abs=1e-4) and len(u[True]) == 2
    assert first["u_kept"] == pytest.approx(u[False], abs=1e-4)
    assert first["w_flagged"] == pytest.approx([1 / (10 * x + 1) for x in u[True]], abs=1e-4)
    assert first["lr"] == 1e-3 and first["grad_norm"] > 1e-3  # the norm before clipping to 1e-6
    unclipped = train(config(tmp_path / "x", method="adaptive-offline", max_steps=1, max_grad_norm=0.0),
                      data.source(4, shuffle=False), tiny_sd15(), export=False).history[0]
    assert unclipped["grad_norm"] == pytest.approx(first["grad_norm"], rel=1e-5)

    plain = train(config(tmp_path / "dpo", max_steps=1), pattern_pairs(8, latent_shape=LATENT).source(4),
                  tiny_sd15(), export=False).history[0]
    assert not {"u_kept", "w_kept", "u_flagged"} & set(plain) and {"grad_norm", "err_w_delta"} <= set(plain)


def test_prompt_dropout_swaps_whole_pairs_to_the_empty_prompt(tmp_path):
    data = pattern_pairs(64, latent_shape=LATENT, pooled_dim=16)
    batch = next(iter(data.source(64, shuffle=False)))
    dropped = drop_prompts(batch, data.empty_prompt, 0.25, torch.Generator().manual_seed(0))
    empty = (dropped.text_emb == data.empty_prompt[0]).flatten(1).all(1)
    kept = (dropped.text_emb == batch.text_emb).flatten(1).all(1)
    assert 5 <= int(empty.sum()) <= 27 and bool((empty ^ kept).all())  # each pair: all of one or the other
    assert torch.equal((dropped.pooled == data.empty_prompt[1]).all(1), empty)

    sd = pattern_pairs(8, latent_shape=LATENT)
    on = train(config(tmp_path / "on", prompt_dropout=0.5, max_steps=3), sd.source(4), tiny_sd15(), export=False)
    off = train(config(tmp_path / "off", max_steps=3), sd.source(4), tiny_sd15(), export=False)
    assert on.history[-1]["loss"] != off.history[-1]["loss"]
    sd.empty_prompt = None
    with pytest.raises(ValueError, match="needs the empty prompt's embedding.* run `prefcurate encode` again"):
        train(config(tmp_path / "none", prompt_dropout=0.2), sd.source(4), tiny_sd15(), export=False)


def test_adaptive_offline_refuses_data_weights_on_top_of_its_own(tmp_path):
    batch = next(iter(pattern_pairs(4, latent_shape=LATENT, with_u=True).source(4)))
    batch = PairBatch(**{**batch.__dict__, "weight": torch.full((4,), 0.5)})
    cfg = config(tmp_path, method="adaptive-offline")
    unet, _ = prepare_policy(cfg, tiny_sd15().unet)
    with pytest.raises(ValueError, match="the same W again"):
        pair_step(cfg, unet, unet, None, None, tiny_sd15().noise_scheduler, batch, noise_generator(0, 0, 0), True)


def test_lora_alpha_is_saved_with_the_adapter_and_reloads_at_the_same_scale(tmp_path):
    base = tiny_sd15()
    cfg = config(tmp_path, lora_alpha=16.0, max_steps=3, learning_rate=1e-2)  # rank 4: scale 4
    result = train(cfg, pattern_pairs(8, latent_shape=LATENT).source(4), tiny_sd15())
    pipe = base.pipeline()
    pipe.load_lora_weights(str(result.exported))
    x, t, text = torch.randn(2, *LATENT), torch.tensor([10, 500]), torch.randn(2, 16, 32)
    with torch.no_grad():
        trained = result.unet.eval()(x, t, encoder_hidden_states=text).sample
        reloaded = pipe.unet(x, t, encoder_hidden_states=text).sample
        pipe.unet.disable_adapters()
        bare = pipe.unet(x, t, encoder_hidden_states=text).sample
    assert not torch.allclose(trained, bare, atol=1e-4)
    assert torch.allclose(trained, reloaded, atol=1e-5)


def test_checkpointing_and_eager_attention_give_the_step_sdpa_gives(tmp_path):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    batch = next(iter(pattern_pairs(4, latent_shape=LATENT).source(4)))
    outs = {}
    for name, kw in {"sdpa": {}, "eager": {"attention": "eager"}, "ckpt": {"gradient_checkpointing": True}}.items():
        cfg = config(tmp_path, finetune="full", **kw)
        unet, reference = prepare_policy(cfg, tiny_sd15().unet)
        kinds = {type(p) for p in unet.attn_processors.values()}
        assert kinds == {AttnProcessor if name == "eager" else AttnProcessor2_0}
        assert unet.is_gradient_checkpointing == (name == "ckpt")
        with torch.no_grad():  # move off the reference so h and its gradient are not trivial
            for p in unet.parameters():
                p.add_(1e-3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        o = pair_step(cfg, unet, unet, reference, None, tiny_sd15().noise_scheduler, batch, noise_generator(0, 0, 0),
                      False)
        o.loss.backward()
        outs[name] = (o.h, torch.cat([p.grad.flatten() for p in unet.parameters()]))
    relative = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    for name in ("eager", "ckpt"):
        assert outs["sdpa"][0].abs().min() > 0 and relative(outs[name][0], outs["sdpa"][0]) < 1e-4, name
        assert relative(outs[name][1], outs["sdpa"][1]) < 1e-4, name


def test_tf32_flags_and_torch_compile_of_the_policy(tmp_path):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    data = pattern_pairs(8, latent_shape=LATENT)
    # The eager backend runs the graphs dynamo captures without generating code: inductor on a CPU
    # takes minutes to compile even this UNet.
    compiled = train(config(tmp_path / "c", compile="default", compile_backend="eager", max_steps=2),
                     data.source(4), tiny_sd15(), export=False)
    eager = train(config(tmp_path / "e", max_steps=2), data.source(4), tiny_sd15(), export=False)
    assert [r["loss"] for r in compiled.history] == pytest.approx([r["loss"] for r in eager.history], abs=1e-6)


def test_8bit_adam_without_bitsandbytes_fails_first_with_the_fix(tmp_path):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(ValueError, match="needs bitsandbytes, which is not installed: `pip install bitsandbytes`"):
        train(config(tmp_path, use_8bit_adam=True), pattern_pairs(8, latent_shape=LATENT).source(4), tiny_sd15())
    assert not (tmp_path / "run").exists()


def test_a_lora_base_is_loaded_in_the_mixed_precision_dtype(tmp_path):
    from curate.train.models import load_components, unet_dtype

    folder = tiny_sd15().save_pretrained(tmp_path / "sd15")
    assert unet_dtype(config(tmp_path, mixed_precision="bf16")) == torch.bfloat16
    assert unet_dtype(config(tmp_path, mixed_precision="bf16", finetune="full")) == torch.float32  # it trains
    unet = load_components(str(folder), unet_dtype=torch.bfloat16).unet
    assert {p.dtype for p in unet.parameters()} == {torch.bfloat16}
