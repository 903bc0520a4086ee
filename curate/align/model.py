"""The benchmark's small text-to-image diffusion model, in pixel space.

32 x 32 RGB images travel as their space-to-depth rearrangement (12 x 16 x 16): a lossless,
parameter-free "VAE", so the UNet works at 16 x 16 (4x cheaper on CPU) and the trainer's "latents"
are the images themselves. The prompt encoder is a word-level embedding with one transformer layer
over the synthetic world's closed vocabulary; its outputs are the UNet's cross-attention states.

Weights are a safetensors file beside a JSON config (curate/assets/align_base/).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "align_base"
PAD, UNK = "<pad>", "<unk>"


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 32
    patch: int = 2                      # space-to-depth factor: 3 x 32 x 32 -> 12 x 16 x 16
    text_dim: int = 64
    max_words: int = 16
    channels: tuple[int, ...] = (32, 64, 64)
    schedule: str = "squaredcos_cap_v2"
    # v rather than epsilon: at high noise an epsilon model's small errors are amplified by
    # 1/sqrt(abar) when the image is recovered, and a briefly trained one samples pure noise.
    prediction: str = "v_prediction"
    train_timesteps: int = 1000
    vocab: tuple[str, ...] = field(default_factory=tuple)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.patch
        return (3 * self.patch ** 2, side, side)


def world_vocabulary() -> tuple[str, ...]:
    """Every word the synthetic world's prompts use (read off prompts covering each layout and value)."""
    from curate.synth import scene as sc
    from curate.synth.pool import random_scenes

    prompts = sc.prompts_for_codes(random_scenes(np.random.default_rng(0), 4000))
    words = {w for p in prompts for w in p.split()}
    words |= set(sc.SHAPES) | set(sc.COLOUR_NAMES) | set(sc.SIZES) | set(sc.BACKGROUND_NAMES)
    return (PAD, UNK, *sorted(words))


class PromptEncoder(nn.Module):
    """Words -> (L, text_dim) states: embeddings + positions, one pre-norm transformer layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.index = {w: i for i, w in enumerate(cfg.vocab)}
        self.words = nn.Embedding(len(cfg.vocab), cfg.text_dim)
        self.positions = nn.Embedding(cfg.max_words, cfg.text_dim)
        self.layer = nn.TransformerEncoderLayer(cfg.text_dim, nhead=4, dim_feedforward=2 * cfg.text_dim,
                                                dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(cfg.text_dim)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(prompts), self.cfg.max_words, dtype=torch.long)  # 0 = <pad>
        for row, prompt in enumerate(prompts):
            words = prompt.split()[: self.cfg.max_words]
            ids[row, : len(words)] = torch.tensor([self.index.get(w, 1) for w in words], dtype=torch.long)
        return ids

    def forward(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenize(prompts).to(self.words.weight.device)
        x = self.words(ids) + self.positions.weight[None]
        # An empty prompt (classifier-free guidance) is all padding: let it attend to itself, not to nothing.
        pad = ids == 0
        pad[:, 0] = False
        return self.norm(self.layer(x, src_key_padding_mask=pad))


def make_unet(cfg: ModelConfig):
    from diffusers import UNet2DConditionModel

    levels = len(cfg.channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)  # attention only below full resolution
    up = tuple(t.replace("Down", "Up") for t in reversed(down))
    c = cfg.latent_shape[0]
    return UNet2DConditionModel(sample_size=cfg.latent_shape[1], in_channels=c, out_channels=c,
                                block_out_channels=cfg.channels, layers_per_block=1, down_block_types=down,
                                up_block_types=up, cross_attention_dim=cfg.text_dim, attention_head_dim=8,
                                norm_num_groups=16)


def make_scheduler(cfg: ModelConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.schedule,
                         prediction_type=cfg.prediction, clip_sample=False)


def to_latents(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 3, H, W) pixels in [-1, 1] -> (N, 3 p^2, H/p, W/p)."""
    return torch.nn.functional.pixel_unshuffle(images, patch)


def to_images(latents: torch.Tensor, patch: int) -> torch.Tensor:
    return torch.nn.functional.pixel_shuffle(latents, patch)


def uint8_to_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def pixels_to_uint8(pixels: torch.Tensor) -> np.ndarray:
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class AlignModel:
    """The base model: config, prompt encoder, UNet and the DDPM noise schedule of its training."""

    cfg: ModelConfig
    encoder: PromptEncoder
    unet: object
    scheduler: object

    @classmethod
    def fresh(cls, cfg: ModelConfig | None = None, seed: int = 0) -> "AlignModel":
        cfg = cfg or ModelConfig(vocab=world_vocabulary())
        torch.manual_seed(seed)
        return cls(cfg, PromptEncoder(cfg), make_unet(cfg), make_scheduler(cfg))

    @torch.no_grad()
    def encode(self, prompts: list[str], batch: int = 256) -> torch.Tensor:
        self.encoder.eval()
        return torch.cat([self.encoder(prompts[i:i + batch]) for i in range(0, len(prompts), batch)])

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """config.json + model.safetensors (fp16: half the size, and sampling runs in fp32 anyway)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        tensors |= {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        save_file({k: v.detach().half().contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
        config = {"model": {**asdict(self.cfg), "channels": list(self.cfg.channels), "vocab": list(self.cfg.vocab)},
                  **(extra or {})}
        (path / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path = ASSET_DIR) -> "AlignModel":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"{path} holds no model.safetensors; pretrain the base model first: "
                                    "`python benchmarks/alignment.py pretrain`")
        raw = json.loads((path / "config.json").read_text())["model"]
        cfg = ModelConfig(**{**raw, "channels": tuple(raw["channels"]), "vocab": tuple(raw["vocab"])})
        model = cls.fresh(cfg)
        tensors = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
        model.encoder.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")})
        model.unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
        model.encoder.eval()
        model.unet.eval()
        return model
