"""The prepared GPU check: training, encode and CLIP embedding throughput on one GPU, no download.

    python benchmarks/gpu_check.py --out gpu_check/          # one H100/H200: <= 10 minutes
    python benchmarks/gpu_check.py --cpu --out /tmp/check    # the same code on tiny configs, < 1 minute

Models are built from the published SD1.5 and SDXL UNet / VAE / text-encoder configs (written out
below) with random weights: speed and memory do not depend on the weights.

1. train: SD1.5 at 512 px and SDXL at 1024 px, bf16, LoRA rank 8 and full fine-tune, methods dpo,
   adaptive-dpo, adaptive-offline: curate.train.loop.train on precomputed latents, `--steps` timed
   optimizer steps after `--warmup` (median step time -> pairs/s) and the peak GPU memory.
   Targets: adaptive-dpo / dpo step time <= 1.4x; prefcurate dpo >= 1.5x the pairs/s of a
   straightforward loop that runs the VAE and text encoders inside every step (LoRA, both models).
   features: each memory/speed option alone (gradient checkpointing, eager attention, fp16,
   torch.compile, 8-bit AdamW when bitsandbytes is installed) on SD1.5 full dpo: memory and pairs/s.
2. encode: the encode stage's functions (vae_latents, encode_prompts) on random pixels / prompts.
3. clip: ViT-B-32 and ViT-L-14 (random weights), bf16: embed_dataset end to end (decode workers,
   forward, Arrow writes) and the bare forward on pre-decoded batches (target >= 5,000 images/s
   end to end for ViT-B-32).
Writes gpu_check.json and gpu_check.md under --out. --cpu: tiny configs, 2 timed steps, the
shipped domain CLIP; its figures only show that the code runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

# ---------------------------------------------------------------- the published configs
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
              block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_BIGG_TEXT = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                      num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
METHODS = ("dpo", "adaptive-dpo", "adaptive-offline")


@dataclass
class Spec:
    """One model at one resolution, its conditioning shapes, and the batch each fine-tune trains with."""

    name: str
    sdxl: bool
    resolution: int
    latent_side: int
    text_shape: tuple[int, int]
    pooled: int | None
    batch: dict                 # finetune -> pairs per step
    checkpointing: dict         # finetune -> gradient checkpointing
    tiny: bool = False

    def components(self, device: str):
        """All parts (random weights) on `device`, the UNet built fresh each call (train() owns it)."""
        from curate.train.models import tiny_sd15, tiny_sdxl

        if not self.tiny:
            return published_components(self.sdxl, device)
        parts = (tiny_sdxl if self.sdxl else tiny_sd15)()
        for module in (parts.vae, parts.text_encoder, parts.text_encoder_2):
            if module is not None:
                module.to(device)
        return parts

    def training_components(self, device: str):
        """The UNet and the noise schedule only: the VAE and text encoders stay off the GPU (and out of
        the peak memory), since training reads precomputed latents and embeddings."""
        from types import SimpleNamespace

        from diffusers import UNet2DConditionModel

        from curate.train.models import tiny_sd15, tiny_sdxl

        if self.tiny:
            parts = (tiny_sdxl if self.sdxl else tiny_sd15)()
            return SimpleNamespace(unet=parts.unet, noise_scheduler=parts.noise_scheduler)
        with torch.device(device):
            unet = UNet2DConditionModel(**(SDXL_UNET if self.sdxl else SD15_UNET))
        return SimpleNamespace(unet=unet, noise_scheduler=ddpm())


def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False)


def published_components(sdxl: bool, device: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from curate.train.models import Components, tiny_tokenizer

    with torch.device(device):  # initialised where they run: seconds, not minutes, for SDXL
        unet = UNet2DConditionModel(**(SDXL_UNET if sdxl else SD15_UNET))
        vae = AutoencoderKL(**SD_VAE, scaling_factor=0.13025 if sdxl else 0.18215).eval()
        text = CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)).eval()
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG_TEXT)).eval() if sdxl else None
    # Any CLIP BPE tokenizer gives ids < 49408 at 77 tokens; this one is built offline.
    return Components(unet=unet, vae=vae, noise_scheduler=ddpm(), text_encoder=text, tokenizer=tiny_tokenizer(77),
                      text_encoder_2=text_2, tokenizer_2=tiny_tokenizer(77) if sdxl else None)


def specs(tiny: bool) -> list[Spec]:
    if tiny:
        return [Spec("sd15-tiny", False, 16, 8, (16, 32), None, {"lora": 2, "full": 2}, {"lora": False, "full": False},
                     tiny=True),
                Spec("sdxl-tiny", True, 16, 8, (16, 32), 16, {"lora": 2, "full": 2}, {"lora": False, "full": True},
                     tiny=True)]
    return [Spec("sd15", False, 512, 64, (77, 768), None, {"lora": 8, "full": 4}, {"lora": False, "full": False}),
            Spec("sdxl", True, 1024, 128, (77, 2048), 1280, {"lora": 2, "full": 2}, {"lora": True, "full": True})]


# ---------------------------------------------------------------- timing
def clock() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


class Stop(Exception):
    """Raised by TimedSource instead of the batch of the last step: the run ends before its final checkpoint."""


class TimedSource:
    """Stamps the clock at each batch fetch (consecutive stamps bracket one optimizer step)."""

    def __init__(self, inner, batches: int):
        self.inner, self.batches, self.stamps = inner, batches, []
        self.dropped, self.grad_accum, self.empty_prompt = inner.dropped, inner.grad_accum, inner.empty_prompt

    def __iter__(self):
        for batch in self.inner:
            self.stamps.append(clock())
            if len(self.stamps) > self.batches:
                raise Stop()
            yield batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def step_rate(stamps: list[float], warmup: int, batch: int) -> float:
    times = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    return batch / statistics.median(times)


# ---------------------------------------------------------------- 1. training
def latent_pairs(spec: Spec, n_pairs: int):
    from curate.train.synthetic import pattern_pairs

    return pattern_pairs(n_pairs, latent_shape=(4, spec.latent_side, spec.latent_side), text_shape=spec.text_shape,
                         pooled_dim=spec.pooled, with_u=True)


def run_prefcurate(spec: Spec, finetune: str, method: str, args, device: str, **overrides) -> dict:
    from curate.train.config import TrainConfig
    from curate.train.loop import train

    components = spec.training_components(device)
    batch, timed = spec.batch[finetune], args.warmup + args.steps
    source = TimedSource(latent_pairs(spec, batch * (timed + 2)).source(batch), timed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"mixed_precision": "bf16", "gradient_checkpointing": spec.checkpointing[finetune], **overrides}
        cfg = TrainConfig(model=spec.name, method=method, finetune=finetune, lora_rank=8, batch_size=batch,
                          max_steps=timed + 1, learning_rate=1e-5, adaptive_warmup_steps=0, output_dir=tmp,
                          progress=False, tensorboard=False, checkpoint_every=0, **settings)
        reset_peak()
        try:
            train(cfg, source, components, export=False)
        except Stop:
            pass
    return {"model": spec.name, "finetune": finetune, "method": method, "batch": batch,
            "pairs_per_s": step_rate(source.stamps, args.warmup, batch), "peak_gib": peak_gib()}


def run_straightforward(spec: Spec, args, device: str) -> dict:
    """LoRA dpo as the public scripts run it: VAE and text encoders inside every step."""
    import torch.nn.functional as F
    from peft import LoraConfig

    from curate.train.models import encode_prompts

    c = spec.components(device)
    unet = c.unet.to(device, torch.bfloat16).requires_grad_(False)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if spec.checkpointing["lora"]:
        unet.enable_gradient_checkpointing()
    unet.train()
    for module in (c.vae, c.text_encoder, c.text_encoder_2):
        if module is not None:
            module.to(torch.bfloat16)
    opt = torch.optim.AdamW(params, lr=1e-5)
    batch, stamps = spec.batch["lora"], []
    errors = lambda pred, target: F.mse_loss(pred.float(), target.float(), reduction="none").mean((1, 2, 3)).chunk(2)  # noqa: E731
    for _ in range(args.warmup + args.steps + 1):
        stamps.append(clock())
        pixels = torch.rand(2 * batch, 3, spec.resolution, spec.resolution, device=device) * 2 - 1
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            latents = c.vae.encode(pixels.to(torch.bfloat16)).latent_dist.sample() * c.vae.config.scaling_factor
            text, pooled = encode_prompts(c, ["a photo of a cat"] * batch, device=device)
        cond = {"encoder_hidden_states": text.repeat(2, 1, 1)}
        if pooled is not None:
            time_ids = torch.tensor([[spec.resolution, spec.resolution, 0, 0, spec.resolution, spec.resolution]],
                                    device=device).repeat(2 * batch, 1)
            cond["added_cond_kwargs"] = {"text_embeds": pooled.repeat(2, 1), "time_ids": time_ids}
        noise = torch.randn_like(latents.float()).chunk(2)[0].repeat(2, 1, 1, 1)
        t = torch.randint(0, 1000, (batch,), device=device).repeat(2)
        x = c.noise_scheduler.add_noise(latents.float(), noise, t)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            mw, ml = errors(unet(x, t, **cond).sample, noise)
            unet.disable_adapters()
            with torch.no_grad():
                rw, rl = errors(unet(x, t, **cond).sample, noise)
            unet.enable_adapters()
        loss = -F.logsigmoid(2500.0 * ((rw - rl) - (mw - ml))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"model": spec.name, "finetune": "lora", "method": "straightforward dpo", "batch": batch,
            "pairs_per_s": step_rate(stamps, args.warmup, batch), "peak_gib": peak_gib()}


def guarded(run, **row) -> dict:
    """run(), or `row` with the error when the GPU runs out of memory: one run that does not fit
    (SDXL full fine-tune on an 80 GB card, say) must not cost the session the other figures."""
    try:
        return run()
    except torch.OutOfMemoryError:
        return {**row, "error": "out of memory", "pairs_per_s": float("nan"), "peak_gib": peak_gib()}
    finally:
        reset_peak()


def training(args, device: str, log) -> list[dict]:
    rows = []
    for spec in specs(args.cpu):
        for finetune in ("lora", "full"):
            for method in METHODS:
                rows.append(guarded(lambda: run_prefcurate(spec, finetune, method, args, device), model=spec.name,
                                    finetune=finetune, method=method, batch=spec.batch[finetune]))
                log(rows[-1])
        rows.append(guarded(lambda: run_straightforward(spec, args, device), model=spec.name, finetune="lora",
                            method="straightforward dpo", batch=spec.batch["lora"]))
        log(rows[-1])
    return rows


def features(args, device: str, log) -> list[dict]:
    """The memory and speed options, one at a time, on SD1.5 full fine-tune dpo (the largest state
    that fits every GPU): peak memory and pairs/s against the bf16 + sdpa baseline of the same run."""
    import importlib.util

    variants = {"baseline (bf16, sdpa)": {}, "gradient checkpointing": {"gradient_checkpointing": True},
                "eager attention": {"attention": "eager"}, "fp16 + loss scaler": {"mixed_precision": "fp16"},
                "torch.compile": {"compile": "default", "compile_backend": "eager" if args.cpu else "inductor"}}
    if importlib.util.find_spec("bitsandbytes") is not None and not args.cpu:
        variants["8-bit AdamW"] = {"use_8bit_adam": True}
    spec, rows = specs(args.cpu)[0], []
    for name, overrides in variants.items():
        rows.append({"feature": name, **guarded(lambda: run_prefcurate(spec, "full", "dpo", args, device, **overrides),
                                                model=spec.name, finetune="full", method="dpo",
                                                batch=spec.batch["full"])})
        log(rows[-1])
    if "8-bit AdamW" not in variants:
        rows.append({"feature": "8-bit AdamW", "skipped": "bitsandbytes not installed" if not args.cpu else "CUDA only"})
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    rate = {(r["model"], r["finetune"], r["method"]): r["pairs_per_s"] for r in rows}
    out = []
    for (model, finetune, method), value in rate.items():
        if method == "adaptive-dpo":
            out.append({"figure": f"{model} {finetune}: adaptive-dpo / dpo step time", "target": "<= 1.4",
                        "value": rate[(model, finetune, "dpo")] / value})
        if method == "straightforward dpo":
            out.append({"figure": f"{model} lora: prefcurate dpo / straightforward dpo pairs/s", "target": ">= 1.5",
                        "value": rate[(model, "lora", "dpo")] / value})
    return out


# ---------------------------------------------------------------- 2. encode
def encoding(args, device: str, log) -> list[dict]:
    from curate.train.vae import vae_latents
    from curate.train.models import encode_prompts

    rows = []
    for spec in specs(args.cpu):
        c = spec.components(device)
        for module in (c.vae, c.text_encoder, c.text_encoder_2):
            if module is not None:
                module.to(torch.bfloat16)
        images, prompts = (4, 8) if args.cpu else (16 if not spec.sdxl else 4, 128)
        pixels = torch.rand(images, 3, spec.resolution, spec.resolution) * 2 - 1
        texts = [f"a photo of a red cat number {i}" for i in range(prompts)]
        for what, run, count in (("latents", lambda: vae_latents(c.vae, pixels, device), images),
                                 ("prompts", lambda: encode_prompts(c, texts, device=device), prompts)):
            run()  # warm-up
            started = clock()
            for _ in range(args.repeats):
                run()
            rows.append({"model": spec.name, "what": what, "batch": count, "bf16": True,
                         "per_s": count * args.repeats / (clock() - started)})
            log(rows[-1])
    return rows


# ---------------------------------------------------------------- 3. CLIP embedding
def clip_embedding(args, device: str, log) -> list[dict]:
    from clip_embed import build_dataset

    from curate.clip.decode import PixelPipeline
    from curate.clip.embed import EmbedOptions, cached_model
    from curate.clip.models import resolve
    from curate.clip.pipeline import embed_dataset

    names = [("domain", None)] if args.cpu else [("ViT-B-32", "random"), ("ViT-L-14", "random")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        blobs = build_dataset(Path(tmp), args.clip_images, 256)
        options = EmbedOptions(device=device, batch_size=args.clip_batch, decode_workers=args.decode_workers)
        for name, pretrained in names:
            source = resolve(name, pretrained)
            model = cached_model(source, device, "bf16")
            pipeline = PixelPipeline(model.preprocess)
            batches = [pipeline.finish(torch.stack([pipeline.to_pixels(b) for b in blobs[s:s + args.clip_batch]]))
                       for s in range(0, len(blobs), args.clip_batch)]
            model.encode_images(batches[0])
            started = clock()
            for batch in batches:
                model.encode_images(batch)
            bare = len(blobs) / (clock() - started)
            e2e = embed_dataset(tmp, source, precision="bf16", options=options).images_per_second
            rows.append({"model": source.key, "images": len(blobs), "bare_images_per_s": bare,
                         "end_to_end_images_per_s": e2e})
            log(rows[-1])
    return rows


# ---------------------------------------------------------------- report
def rate_and_peak(row: dict) -> str:
    peak = "n/a" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
    return f"{row.get('error') or format(row['pairs_per_s'], '.2f')} | {peak}"


def save(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    (out / "gpu_check.md").write_text(markdown(result))


def markdown(result: dict) -> str:
    lines = [f"# GPU check: {result['device']}", "", f"torch {result['torch']}, mode {result['mode']}, "
             f"{result['steps']} timed steps after {result['warmup']} warm-up", "",
             "| model | finetune | method | batch | pairs/s | peak GiB |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in result["train"]:
        lines.append(f"| {r['model']} | {r['finetune']} | {r['method']} | {r['batch']} | {rate_and_peak(r)} |")
    lines += ["", "| figure | value | target |", "| --- | ---: | --- |"]
    lines += [f"| {r['figure']} | {r['value']:.2f}x | {r['target']} |" for r in result["ratios"]]
    lines += ["", "| option (SD full dpo) | pairs/s | peak GiB |", "| --- | ---: | ---: |"]
    for r in result["features"]:
        if "skipped" in r:
            lines.append(f"| {r['feature']} | skipped: {r['skipped']} | |")
        else:
            lines.append(f"| {r['feature']} | {rate_and_peak(r)} |")
    lines += ["", "| encode | batch | per s (bf16) |", "| --- | ---: | ---: |"]
    lines += [f"| {r['model']} {r['what']} | {r['batch']} | {r['per_s']:.1f} |" for r in result["encode"]]
    lines += ["", "| CLIP (bf16) | images | bare images/s | end to end images/s |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['images']} | {r['bare_images_per_s']:.0f} | {r['end_to_end_images_per_s']:.0f} |"
              for r in result["clip"]]
    return "\n".join(lines) + "\n"


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--cpu", action="store_true", help="tiny configs on the CPU: shows the code runs (< 1 min)")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 20; --cpu 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --cpu 1)")
    parser.add_argument("--repeats", type=int, default=None, help="encode batches timed (default 10; --cpu 2)")
    parser.add_argument("--clip-images", type=int, default=None, help="images embedded (default 8192; --cpu 32)")
    parser.add_argument("--clip-batch", type=int, default=None, help="CLIP batch (default 512; --cpu 16)")
    parser.add_argument("--decode-workers", type=int, default=None, help="embed decode workers (default 12; --cpu 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "features", "encode", "clip"], help="sections to skip")
    args = parser.parse_args(argv)
    defaults = dict(steps=(2, 20), warmup=(1, 3), repeats=(2, 10), clip_images=(32, 8192), clip_batch=(16, 512),
                    decode_workers=(1, 12))
    for name, (cpu, gpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, cpu if args.cpu else gpu)
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the tiny-config check")
    device = "cpu" if args.cpu else "cuda"
    if args.cpu:
        torch.set_num_threads(1)  # tiny convolutions run fastest on one thread, and CPU machines are shared
    started = time.perf_counter()
    log = lambda row: print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),  # noqa: E731
                            flush=True)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "mode": "cpu (tiny configs)" if args.cpu else "gpu (published configs, random weights)",
              "steps": args.steps, "warmup": args.warmup, "train": [], "ratios": [], "features": [], "encode": [],
              "clip": []}
    sections = {"train": training, "features": features, "encode": encoding, "clip": clip_embedding}
    for name, section in sections.items():
        if name not in args.skip:
            result[name] = section(args, device, log)
            result["ratios"] = ratios(result["train"])
            result["seconds"] = time.perf_counter() - started
            save(args.out, result)  # after each section: a session cut short keeps what it measured
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
