"""Train the world model: a tiny Stable Diffusion 1.x pipeline for the synthetic world (CPU).

    python benchmarks/world_model.py train            # -> curate/assets/world_model (~25 min on 2 cores)
    python benchmarks/world_model.py describe         # judge its samples and the world's renders again

The pipeline is the standard diffusers layout (AutoencoderKL, CLIPTextModel + CLIPTokenizer,
UNet2DConditionModel, a DDPM-family scheduler; model_index.json), so `--model world` loads it with
exactly the code that loads SD1.5. Its training images are the world's candidate pool
(curate.synth.pool): each prompt's renders come from simulated generators that get attributes wrong
and blur or noise the picture, so the model follows prompts imperfectly and its quality varies,
which preference tuning then has something to fix. JPEG is off: at 32 px a JPEG round trip is
mostly block artefacts that the judge could not read back.

Training, in order: the VAE on pixels (MSE + a tiny KL), every image's latent once (posterior mean
times the scaling factor that gives them unit variance), then the text encoder and the UNet
jointly (v-prediction, 10% empty prompts for classifier-free guidance, EMA weights are saved).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "curate" / "assets" / "world_model"
RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 32


@dataclass(frozen=True)
class WorldModelConfig:
    prompts: int = 6000
    per_prompt: int = 4
    vae_steps: int = 700
    vae_batch: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    steps: int = 2600
    batch: int = 48
    lr: float = 1e-3
    warmup: int = 100
    prompt_dropout: float = 0.1
    ema_decay: float = 0.998
    text_dim: int = 64
    unet_channels: tuple[int, ...] = (32, 64, 64)
    minutes: float = 19.0           # safety stop for the UNet phase (the model is saved at that step)
    seed: int = 0


# --------------------------------------------------------------------------- vocabulary and tokenizer
def world_words() -> list[str]:
    """Every word the world's prompts use (read off prompts covering each layout and value)."""
    from curate.synth import scene as sc
    from curate.synth.pool import random_scenes

    prompts = sc.prompts_for_codes(random_scenes(np.random.default_rng(0), 4000))
    words = {w for p in prompts for w in p.split()}
    words |= set(sc.SHAPES) | set(sc.COLOUR_NAMES) | set(sc.SIZES) | set(sc.BACKGROUND_NAMES)
    return sorted(words)


def word_merges(words: list[str]) -> list[str]:
    """BPE merges under which every word is one token: a merge is added while a word is still split."""
    merges: list[tuple[str, str]] = []
    for word in words:
        while len(parts := _bpe(word, merges)) > 1:
            merges.append((parts[0], parts[1]))
    return [f"{a} {b}" for a, b in merges]


def _bpe(word: str, merges: list[tuple[str, str]]) -> list[str]:
    """CLIP's BPE of one word (lowest-ranked adjacent pair first, last symbol carries </w>)."""
    ranks = {m: i for i, m in enumerate(merges)}
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == math.inf:
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
    return parts


def world_tokenizer(max_length: int = 20):
    """A CLIPTokenizer whose vocabulary holds every world word as one token (bytes for anything else)."""
    from curate.train.models import bpe_tokenizer

    return bpe_tokenizer(word_merges(world_words()), max_length)


# --------------------------------------------------------------------------- the components
def make_components(cfg: WorldModelConfig):
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from curate.train.models import Components

    torch.manual_seed(cfg.seed)
    tokenizer = world_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_dim, intermediate_size=2 * cfg.text_dim, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=cfg.text_dim))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=16, sample_size=SIZE)
    levels = len(cfg.unet_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)  # attention below full resolution only
    unet = UNet2DConditionModel(sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=cfg.unet_channels,
                                layers_per_block=1, down_block_types=down,
                                up_block_types=tuple(t.replace("Down", "Up") for t in reversed(down)),
                                cross_attention_dim=cfg.text_dim, attention_head_dim=8, norm_num_groups=16)
    # v rather than epsilon: a briefly trained epsilon model's small errors are amplified by 1/sqrt(abar)
    # at high noise; a cosine schedule suits a 16 x 16 latent (SD's scaled-linear leaves too much signal).
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type="v_prediction", clip_sample=False)
    return Components(unet=unet, vae=vae, noise_scheduler=scheduler, text_encoder=text, tokenizer=tokenizer)


def render_training_set(prompts: int, per_prompt: int, seed: int):
    """(images uint8 (N, SIZE, SIZE, 3), prompt of each image, true fidelity, true quality)."""
    from curate.synth import scene as sc
    from curate.synth.pool import make_pool

    pool = make_pool(np.random.default_rng([seed, 11]), prompts, per_prompt)
    images = np.stack([np.asarray(sc.render(pool.scene(i), sc.QualityParams(float(pool.blur[i]), float(pool.noise[i]), 100),
                                            SIZE, int(pool.seed[i]))) for i in range(pool.n_images)])
    texts = [str(t) for t in pool.prompts[pool.prompt_of(np.arange(pool.n_images))]]
    return images, texts, pool.fidelity, sc.quality_values(pool.blur, pool.noise, 100)


def to_pixels(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _warm_cosine(step: int, warmup: int, total: int) -> float:
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(step, total) / total)))


def train_vae(vae, images: np.ndarray, cfg: WorldModelConfig, log) -> dict:
    import torch

    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _warm_cosine(s, 50, cfg.vae_steps))
    rng = np.random.default_rng([cfg.seed, 1])
    vae.train()
    curve, running, started = [], [], time.perf_counter()
    for step in range(cfg.vae_steps):
        x = to_pixels(images[rng.integers(0, len(images), cfg.vae_batch)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = torch.nn.functional.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if (step + 1) % 100 == 0:
            curve.append([step + 1, round(float(np.mean(running)), 5)])
            running = []
            log(f"vae step {step + 1}/{cfg.vae_steps} loss {curve[-1][1]:.5f} ({time.perf_counter() - started:.0f} s)")
    vae.eval()
    return {"vae_loss_curve": curve, "vae_seconds": round(time.perf_counter() - started, 1)}


def latents_of(vae, images: np.ndarray, batch: int = 256):
    """Posterior means of every image (unscaled), as the encode stage computes them."""
    import torch

    with torch.no_grad():
        return torch.cat([vae.encode(to_pixels(images[i:i + batch])).latent_dist.mean for i in range(0, len(images), batch)])


def train_denoiser(c, latents, texts: list[str], cfg: WorldModelConfig, log) -> dict:
    """Text encoder + UNet on scaled latents; the EMA copies replace the live ones at the end."""
    import torch

    params = list(c.text_encoder.parameters()) + list(c.unet.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _warm_cosine(s, cfg.warmup, cfg.steps))
    ema = [copy.deepcopy(c.text_encoder).eval(), copy.deepcopy(c.unet).eval()]
    rng = np.random.default_rng([cfg.seed, 2])
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = c.tokenizer([*texts, ""], padding="max_length", max_length=c.tokenizer.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
    c.text_encoder.train()
    c.unet.train()
    curve, running, started, step = [], [], time.perf_counter(), 0
    for step in range(cfg.steps):
        idx = rng.integers(0, len(texts), cfg.batch)
        prompt_ids = ids[np.where(rng.random(cfg.batch) < cfg.prompt_dropout, len(texts), idx)]
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (cfg.batch,), generator=gen)
        states = c.text_encoder(prompt_ids)[0]
        pred = c.unet(c.noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=states).sample
        loss = torch.nn.functional.mse_loss(pred, c.noise_scheduler.get_velocity(x0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for shadow, live in zip(ema, (c.text_encoder, c.unet)):
                for s, p in zip(shadow.parameters(), live.parameters()):
                    s.lerp_(p.detach(), 1.0 - decay)
        running.append(loss.item())
        if (step + 1) % 100 == 0:
            curve.append([step + 1, round(float(np.mean(running)), 4)])
            running = []
            log(f"unet step {step + 1}/{cfg.steps} loss {curve[-1][1]:.4f} ({time.perf_counter() - started:.0f} s)")
        if time.perf_counter() - started > cfg.minutes * 60:
            log(f"time limit of {cfg.minutes} min reached at step {step + 1}")
            break
    c.text_encoder, c.unet = ema
    return {"unet_steps_done": step + 1, "unet_loss_curve": curve, "unet_seconds": round(time.perf_counter() - started, 1)}


def train_world_model(cfg: WorldModelConfig, init: Path | None = None, log=print):
    """(components, record): the whole training, timed per phase (wall and CPU seconds).

    ``init``: continue from a saved world model (its VAE is kept; text encoder and UNet train on,
    with a fresh optimizer), e.g. when the time limit stopped the UNet phase early.
    """
    import torch

    started, cpu = time.perf_counter(), time.process_time()
    images, texts, fid, qual = render_training_set(cfg.prompts, cfg.per_prompt, cfg.seed)
    record = {"config": asdict(cfg), "threads": torch.get_num_threads(), "render_seconds": round(time.perf_counter() - started, 1),
              "data": {"images": len(images), "fidelity": round(float(fid.mean()), 4), "quality": round(float(qual.mean()), 4)}}
    log(f"rendered {len(images)} images in {record['render_seconds']} s")
    if init is None:
        c = make_components(cfg)
        record |= train_vae(c.vae, images, cfg, log)
        raw = latents_of(c.vae, images)
        c.vae.register_to_config(scaling_factor=float(1.0 / raw.std()))
    else:
        from curate.train.models import load_components

        c = load_components(str(init))
        c.text_encoder.float()
        record["continued_from"] = json.loads((init / "training.json").read_text())
        raw = latents_of(c.vae, images)
    record["vae_scaling_factor"] = c.vae.config.scaling_factor
    record |= train_denoiser(c, raw * c.vae.config.scaling_factor, texts, cfg, log)
    record["total_seconds"] = round(time.perf_counter() - started, 1)
    record["cpu_seconds"] = round(time.process_time() - cpu, 1)
    return c, record


def save(c, path: Path, record: dict) -> Path:
    """The diffusers folder. UNet and VAE weights are stored as fp16 (half the size; diffusers loads them
    as fp32); the text encoder stays fp32, as transformers would otherwise load it in fp16."""
    import shutil

    import torch

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for module in (c.unet, c.vae):
        module.to(torch.float16)
    c.save_pretrained(tmp)
    for module in (c.unet, c.vae):
        module.to(torch.float32)
    (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def cmd_train(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    cfg = WorldModelConfig(**{k: v for k, v in (("steps", args.steps), ("vae_steps", args.vae_steps),
                                                ("prompts", args.prompts), ("minutes", args.minutes), ("lr", args.lr))
                                         if v is not None})
    c, record = train_world_model(cfg, args.init)
    from world_eval import describe_model

    record["samples"] = describe_model(c, args.eval_prompts)
    save(c, args.out, record)
    print(json.dumps(record["samples"], indent=1))
    print(f"saved {args.out} ({sum(f.stat().st_size for f in args.out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")


def cmd_describe(args) -> None:
    from curate.train.models import load_components
    from world_eval import describe_model

    out = describe_model(load_components(str(args.out)), args.eval_prompts)
    print(json.dumps(out, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "world_model.json").write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "describe"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, default=ASSET, help="the diffusers folder to write / read")
        p.add_argument("--eval-prompts", type=int, default=128, help="held-out prompts whose samples are judged")
        p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
        if name == "train":
            p.add_argument("--steps", type=int, help="UNet + text-encoder steps")
            p.add_argument("--vae-steps", type=int)
            p.add_argument("--prompts", type=int, help="training prompts (4 renders each)")
            p.add_argument("--minutes", type=float, help="time limit of the UNet phase")
            p.add_argument("--lr", type=float, help="peak learning rate of the UNet phase")
            p.add_argument("--init", type=Path, help="continue from this saved world model (VAE kept)")
    args = parser.parse_args()
    {"train": cmd_train, "describe": cmd_describe}[args.command](args)


if __name__ == "__main__":
    main()
