"""Training-step throughput: prefcurate's loop vs a straightforward loop in the public script's style.

    python benchmarks/train_step.py [--steps 12] [--batch 8] [--latent 16] [--rounds 2]

Same tiny SD1.5-shaped model (LoRA rank 4), same batch, same device, measured in one run:
  prefcurate dpo / adaptive-dpo / adaptive-offline: curate.train.loop.train on precomputed latents
  straightforward dpo / adaptive-dpo: VAE + text encoder inside every step, reference by disabling
    adapters, and (adaptive) diffusers EMAModel store / copy_to / restore around each annotator.
Prints median pairs/s (CPU: from thread CPU time, so other processes do not skew it), peak memory (CUDA only; CPU RSS is process-wide) and the ratios:
  adaptive-dpo step time / dpo step time (target <= 1.4)
  prefcurate dpo pairs/s / straightforward dpo pairs/s (target >= 1.5)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from curate.train.config import TrainConfig  # noqa: E402
from curate.train.loop import train  # noqa: E402
from curate.train.models import tiny_sd15  # noqa: E402
from curate.train.synthetic import pattern_pairs  # noqa: E402


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def reset_peak():
    if device() == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_mb():
    return torch.cuda.max_memory_allocated() / 2**20 if device() == "cuda" else float("nan")


def clock() -> float:
    """CPU: this thread's CPU time, so neighbours on a shared machine do not skew the figures
    (run with --threads 1). CUDA: wall time after a synchronize."""
    if device() == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.thread_time()


class TimedSource:
    """Stamps the clock at every batch fetch: consecutive stamps bracket one optimizer step."""

    def __init__(self, inner):
        self.inner, self.dropped, self.stamps = inner, inner.dropped, []

    def __iter__(self):
        for batch in self.inner:
            self.stamps.append(clock())
            yield batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def run_prefcurate(method: str, args) -> tuple[float, float]:
    data = pattern_pairs(args.batch * (args.steps + 1), latent_shape=(4, args.latent, args.latent), with_u=True)
    source = TimedSource(data.source(args.batch))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model="tiny", method=method, output_dir=tmp, batch_size=args.batch, max_steps=args.steps,
                          lora_rank=4, learning_rate=1e-4, adaptive_warmup_steps=0, progress=False,
                          tensorboard=False, checkpoint_every=0, seed=0)
        reset_peak()
        train(cfg, source, tiny_sd15(), export=False)
    step_times = [b - a for a, b in zip(source.stamps[2:], source.stamps[3:])]  # skip lazy initialisation
    return args.batch / statistics.median(step_times), peak_mb()


def run_straightforward(adaptive: bool, args) -> tuple[float, float]:
    """One step as the public scripts do it: encode pixels and prompts, then DPO (and EMA copies)."""
    import torch.nn.functional as F
    from diffusers.training_utils import EMAModel
    from peft import LoraConfig

    from curate.minority import adaptive_margin, adaptive_weights, minority_score

    dev = device()
    c = tiny_sd15()
    vae, text_encoder, unet, sched = c.vae.to(dev), c.text_encoder.to(dev), c.unet, c.noise_scheduler
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    unet.to(dev).train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    emas = [EMAModel(params, decay=cap) for cap in (0.9999, 0.5)] if adaptive else []
    for ema in emas:
        ema.to(dev)
    px = args.latent * 2
    ids = c.tokenizer(["a red cat"] * args.batch, padding="max_length", max_length=c.tokenizer.model_max_length,
                      return_tensors="pt").input_ids.to(dev)
    beta, rates = 2500.0, []

    def errors(pred, target):
        return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)).chunk(2)

    reset_peak()
    for step in range(args.steps):
        pixels = torch.rand(2 * args.batch, 3, px, px, device=dev) * 2 - 1
        start = clock()
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            emb = text_encoder(ids)[0].repeat(2, 1, 1)
        noise = torch.randn_like(latents).chunk(2)[0].repeat(2, 1, 1, 1)
        t = torch.randint(0, 1000, (args.batch,), device=dev).repeat(2)
        x = sched.add_noise(latents, noise, t)
        mw, ml = errors(unet(x, t, emb).sample, noise)
        unet.disable_adapters()
        with torch.no_grad():
            rw, rl = errors(unet(x, t, emb).sample, noise)
        unet.enable_adapters()
        h = (rw - rl) - (mw - ml)
        if adaptive:
            judged = [h.detach()]
            for ema in emas:
                ema.store(params)
                ema.copy_to(params)
                with torch.no_grad():
                    ew, el = errors(unet(x, t, emb).sample, noise)
                judged.append((rw - rl) - (ew - el))
                ema.restore(params)
            u = minority_score(torch.stack(judged), 15.0).u
            w, g = adaptive_weights(u), adaptive_margin(u, h.detach().mean(), beta)
            loss = -(w * F.logsigmoid(beta * h - g)).mean()
        else:
            loss = -F.logsigmoid(beta * h).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        for ema in emas:
            ema.step(params)
        if step >= 2:
            rates.append(args.batch / (clock() - start))
    return statistics.median(rates), peak_mb()


def sd15_flop_projection() -> None:
    """FLOPs per pair of each loop at SD1.5 / 512 px (real layouts on the meta device: nothing is run).

    The tiny model's VAE is cheap next to its UNet; at 512 px the VAE encoder costs more than a UNet
    forward, which is what precomputing latents saves. LoRA backward ~ 1 forward (activation grads).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    def tflops(fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e12

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)  # diffusers' defaults are SD1.5's layout
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12))
        fwd = tflops(lambda: unet(torch.randn(1, 4, 64, 64), torch.tensor([1]),
                                  encoder_hidden_states=torch.randn(1, 77, 768)))
        enc = tflops(lambda: vae.encode(torch.randn(1, 3, 512, 512)))
        txt = tflops(lambda: text(torch.zeros(1, 77, dtype=torch.long)))
    dpo = 2 * (fwd + fwd + fwd)            # per pair: 2 samples x (policy fwd + LoRA bwd + reference fwd)
    straight = dpo + 2 * enc + txt         # + VAE on both images + text encoder
    adaptive = dpo + 2 * 2 * fwd           # + two EMA annotator forwards on both samples
    print(f"SD1.5 @512 TFLOPs/sample: unet fwd {fwd:.3f}, vae encode {enc:.3f}, text encoder {txt:.4f}")
    print(f"  per pair: prefcurate dpo {dpo:.2f}, straightforward dpo {straight:.2f} -> {straight / dpo:.2f}x; "
          f"adaptive-dpo {adaptive:.2f} -> {adaptive / dpo:.2f}x of dpo")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--latent", type=int, default=16, help="latent side (pixels = 2x through the tiny VAE)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the median is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--no-flops", action="store_true", help="skip the SD1.5 FLOP projection")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {
        "prefcurate dpo": lambda: run_prefcurate("dpo", args),
        "prefcurate adaptive-dpo": lambda: run_prefcurate("adaptive-dpo", args),
        "prefcurate adaptive-offline": lambda: run_prefcurate("adaptive-offline", args),
        "straightforward dpo": lambda: run_straightforward(False, args),
        "straightforward adaptive-dpo": lambda: run_straightforward(True, args),
    }
    results = {name: [] for name in runs}
    for _ in range(args.rounds):  # interleaved, so a noisy neighbour hurts every variant alike
        for name, run in runs.items():
            results[name].append(run())
    print(f"device={device()} threads={torch.get_num_threads()} batch={args.batch} pairs "
          f"latent=4x{args.latent}x{args.latent} steps={args.steps} rounds={args.rounds}")
    rate = {}
    for name, rs in results.items():
        rate[name] = statistics.median(r[0] for r in rs)
        print(f"{name:32s} {rate[name]:9.2f} pairs/s  step {1000 * args.batch / rate[name]:8.1f} ms  "
              f"peak {max(r[1] for r in rs):8.1f} MiB")
    print(f"adaptive-dpo / dpo step time (prefcurate):        {rate['prefcurate dpo'] / rate['prefcurate adaptive-dpo']:.2f}x  (target <= 1.4)")
    print(f"adaptive-offline / dpo step time (prefcurate):    {rate['prefcurate dpo'] / rate['prefcurate adaptive-offline']:.2f}x")
    print(f"prefcurate / straightforward pairs/s, dpo:        {rate['prefcurate dpo'] / rate['straightforward dpo']:.2f}x  (target >= 1.5)")
    print(f"prefcurate / straightforward pairs/s, adaptive:   "
          f"{rate['prefcurate adaptive-dpo'] / rate['straightforward adaptive-dpo']:.2f}x")
    print(f"straightforward adaptive / dpo step time:         {rate['straightforward dpo'] / rate['straightforward adaptive-dpo']:.2f}x")
    if not args.no_flops:
        sd15_flop_projection()


if __name__ == "__main__":
    main()
