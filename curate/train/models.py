"""Diffusion model components: load SD 1.x/2.x and SDXL, build tiny offline ones, save them.

Training never runs the VAE or the text encoders (see curate.train.data.encode_pairs); this module
only gathers the components and says how to condition the UNet.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# `--model world`: the small SD 1.x pipeline trained on the synthetic world (benchmarks/world_model.py).
WORLD_MODEL = Path(__file__).resolve().parents[1] / "assets" / "world_model"


def resolve_model(model: str) -> str:
    """The folder of a model shipped with prefcurate (``world``), else ``model`` unchanged."""
    return str(WORLD_MODEL) if model == "world" else model


@dataclass
class Components:
    """The parts of a Stable Diffusion (1.x/2.x) or SDXL pipeline that prefcurate uses."""

    unet: Any
    vae: Any
    noise_scheduler: Any               # a DDPMScheduler: add_noise, get_velocity, prediction_type
    text_encoder: Any
    tokenizer: Any
    text_encoder_2: Any = None         # SDXL only (CLIPTextModelWithProjection: pooled embeddings)
    tokenizer_2: Any = None

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def pipeline(self, unet=None):
        """A diffusers pipeline over these components (the tuned `unet` when given)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        parts = dict(vae=self.vae, unet=unet or self.unet, scheduler=self.noise_scheduler,
                     text_encoder=self.text_encoder, tokenizer=self.tokenizer)
        if self.is_sdxl:
            return StableDiffusionXLPipeline(**parts, text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2)
        return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a local diffusers folder that `load_components(path)` reads back."""
        self.pipeline().save_pretrained(str(path))
        return Path(path)


def load_components(model: str, revision: str | None = None, *, unet_dtype=None) -> Components:
    """Load from a hub id or a local diffusers folder; SDXL is recognised by its second text encoder.

    `unet_dtype` loads the UNet's weights in that dtype (a frozen LoRA base in the mixed-precision
    dtype: no fp32 copy is ever made). Honours HF_HUB_OFFLINE: offline, a hub id must already be in
    the local cache.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    model = resolve_model(model)
    index = _model_index(model, revision)
    kw = dict(revision=revision)
    load = lambda cls, sub: cls.from_pretrained(model, subfolder=sub, **kw)  # noqa: E731
    sdxl = "text_encoder_2" in index
    # The pipeline's sampler may be PNDM/Euler; training needs DDPM's forward process with the same betas.
    return Components(
        unet=UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=unet_dtype, **kw),
        vae=load(AutoencoderKL, "vae"),
        noise_scheduler=load(DDPMScheduler, "scheduler"),
        text_encoder=load(CLIPTextModel, "text_encoder"),
        tokenizer=load(CLIPTokenizer, "tokenizer"),
        text_encoder_2=load(CLIPTextModelWithProjection, "text_encoder_2") if sdxl else None,
        tokenizer_2=load(CLIPTokenizer, "tokenizer_2") if sdxl else None,
    )


def _model_index(model: str, revision: str | None) -> dict:
    local = Path(model)
    if local.is_dir():
        index = local / "model_index.json"
        if not index.exists():
            raise FileNotFoundError(f"model folder {model} has no model_index.json; expected a diffusers pipeline "
                                    "folder (pipe.save_pretrained output)")
        return json.loads(index.read_text())
    if _looks_like_path(model):
        raise FileNotFoundError(f"model folder {model} does not exist; pass an existing diffusers pipeline folder "
                                "(pipe.save_pretrained output) or a hub id such as runwayml/stable-diffusion-v1-5")
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(model, "model_index.json", revision=revision)).read_text())
    except Exception as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        hint = ("HF_HUB_OFFLINE is set and it is not in the local cache: download it first "
                f"(`hf download {model}`) or pass a local diffusers folder") if offline else \
               "check the hub id and your network, or pass a local diffusers folder"
        raise FileNotFoundError(f"cannot load model {model!r} (not a local folder): {hint}") from err


def _looks_like_path(model: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else (absolute, relative, deeper, a file) is a path."""
    return (model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or "\\" in model
            or Path(model).exists())


def unet_dtype(cfg):
    """The dtype to load the UNet in: the mixed-precision dtype when its base stays frozen (LoRA),
    fp32 when it trains (full fine-tune: the frozen reference is cast from it)."""
    from curate.train.setup import WEIGHT_DTYPES

    return WEIGHT_DTYPES[cfg.mixed_precision] if cfg.finetune == "lora" else torch.float32


def unet_conditioning(text_emb, pooled=None, time_ids=None) -> dict:
    """Keyword arguments that condition the UNet on precomputed prompt embeddings."""
    kwargs = {"encoder_hidden_states": text_emb}
    if pooled is not None:
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    return kwargs


@torch.no_grad()
def encode_prompts(components: Components, prompts: list[str], device="cpu"):
    """(text_emb, pooled) for a list of prompts, as the pipelines condition the UNet (pooled None for SD)."""
    def run(encoder, tokenizer):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        return encoder(ids, output_hidden_states=True)

    out = run(components.text_encoder, components.tokenizer)
    if not components.is_sdxl:
        return out[0], None
    out2 = run(components.text_encoder_2, components.tokenizer_2)
    # SDXL conditions on the penultimate layer of both encoders and the projected pooled output of the second.
    text = torch.cat([out.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    return text, out2[0]


def sdxl_time_ids(original_hw, crop_top_left, target_hw) -> torch.Tensor:
    return torch.tensor([*original_hw, *crop_top_left, *target_hw], dtype=torch.float32)


def flipped_crop_left(crop_left, resolution: int):
    """The crop's left coordinate an SDXL UNet is conditioned on for a horizontally flipped image.

    As diffusers' train_text_to_image_sdxl.py does after its crop, `x1 = image.width - x1` with the
    cropped width = resolution: resolution - left. (The geometric mirror of a centre crop is the
    same left, up to rounding; this follows the diffusers script so fine-tunes see its conditioning.)
    """
    return resolution - crop_left


# ---------------------------------------------------------------- tiny offline models (tests, benchmarks)

def tiny_tokenizer(max_length: int = 16):
    """A CLIP byte-level BPE tokenizer with a hand-written vocabulary (256 bytes, a few merges)."""
    return bpe_tokenizer(["c a", "ca t</w>", "d o", "do g</w>", "r e", "re d</w>"], max_length)


def bpe_tokenizer(merges: list[str], max_length: int):
    """A CLIP byte-level BPE tokenizer: every byte (plain and word-final), then ``merges`` in rank order."""
    import tempfile

    from transformers import CLIPTokenizer

    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    for m in merges:
        vocab.setdefault("".join(m.split()), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(vocab=str(Path(tmp) / "vocab.json"), merges=str(Path(tmp) / "merges.txt"),
                             model_max_length=max_length)


def _byte_alphabet() -> list[str]:
    # GPT-2/CLIP's reversible byte -> printable-unicode map, so every byte is one base token.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def _tiny_text_encoder(tokenizer, hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, projection_dim=projection or hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         sample_size=32, layers_per_block=1).eval()


def _tiny_unet(cross_attention_dim: int, sdxl: bool):
    from diffusers import UNet2DConditionModel

    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8, use_linear_projection=True,
                 projection_class_embeddings_input_dim=6 * 8 + 16) if sdxl else {}
    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                cross_attention_dim=cross_attention_dim, **extra)


def _tiny_scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type, clip_sample=False, steps_offset=1)


def tiny_sd15(seed: int = 0, prediction_type: str = "epsilon") -> Components:
    """An SD 1.x-shaped pipeline small enough for CPU tests (UNet (32, 64), cross-attention 32)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    return Components(unet=_tiny_unet(32, sdxl=False), vae=_tiny_vae(), noise_scheduler=_tiny_scheduler(prediction_type),
                      text_encoder=_tiny_text_encoder(tokenizer, 32), tokenizer=tokenizer)


def tiny_sdxl(seed: int = 0, prediction_type: str = "epsilon") -> Components:
    """An SDXL-shaped pipeline: two text encoders (16 + 16 = 32 wide), pooled embeddings (16) and time ids."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    return Components(unet=_tiny_unet(32, sdxl=True), vae=_tiny_vae(), noise_scheduler=_tiny_scheduler(prediction_type),
                      text_encoder=_tiny_text_encoder(tokenizer, 16), tokenizer=tokenizer,
                      text_encoder_2=_tiny_text_encoder(tokenizer_2, 16, projection=16), tokenizer_2=tokenizer_2)
