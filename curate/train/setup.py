"""Turn loaded components into a placed policy, reference, optimizer and precision, as the config says."""
from __future__ import annotations

import copy
import importlib.util
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from curate.train.ema import EMAAnnotators

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_accelerator():
    """The run's Accelerator. Mixed precision and accumulation are the loop's own (Precision,
    no_sync), so accelerate's stay off. Several processes on a machine without a GPU (torchrun, or
    accelerate launch --multi_gpu) need accelerate's cpu flag to pick gloo: it is set then."""
    import os

    from accelerate import Accelerator

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    return Accelerator(mixed_precision="no", cpu=processes > 1 and not torch.cuda.is_available())


def check_runtime(cfg) -> None:
    """Fail before any work when the config asks for something this machine cannot do."""
    if cfg.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--use-8bit-adam needs bitsandbytes, which is not installed: `pip install bitsandbytes` "
                         "(CUDA only), or train without --use-8bit-adam")


def prepare_policy(cfg, unet):
    """(policy, reference). LoRA: adapters on `unet` itself, reference = the same UNet with adapters
    disabled (None here). Full: the whole UNet trains and a frozen copy is the reference.

    Frozen weights are cast to the mixed-precision dtype; trainable ones stay fp32 for the optimizer.
    """
    frozen_dtype = WEIGHT_DTYPES[cfg.mixed_precision]
    unet.requires_grad_(False)
    set_attention(unet, cfg.attention)
    if cfg.finetune == "lora":
        from peft import LoraConfig

        if unet.dtype != frozen_dtype:
            unet.to(dtype=frozen_dtype)
        # gaussian init sets B = 0, so the policy starts exactly at the reference (h = 0, loss = ln 2).
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                    init_lora_weights="gaussian", target_modules=list(cfg.lora_targets)))
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        reference = None
    else:
        reference = copy.deepcopy(unet).eval()
        if reference.dtype != frozen_dtype:
            reference.to(dtype=frozen_dtype)
        unet.float().requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return unet, reference


def set_attention(unet, kind: str) -> None:
    """sdpa: torch's fused scaled_dot_product_attention (flash / memory-efficient kernels on GPU);
    eager: diffusers' plain-matmul processor, the reference for checking the fused one."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def set_tf32(enabled: bool) -> None:
    """TF32 matmuls and cuDNN convolutions (Ampere and later; the flags do nothing elsewhere)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def trainable_parameters(module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def make_optimizer(cfg, params):
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_eps)
    if cfg.use_8bit_adam:
        check_runtime(cfg)
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


class Precision:
    """Autocast and (fp16) loss scaling on the run's device, owned here rather than by accelerate so
    the same code runs on a CPU (torch's CPU autocast and GradScaler) as on a GPU."""

    def __init__(self, mode: str, device):
        self.device_type = torch.device(device).type
        self.dtype = None if mode == "no" else WEIGHT_DTYPES[mode]
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == "fp16" else None

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def scale(self, loss):
        return loss if self.scaler is None else self.scaler.scale(loss)


@dataclass
class PlacedModel:
    """What a training step touches, on the accelerator's device."""

    unet: Any                           # the prepared policy (DDP-wrapped under several processes)
    bare: Any                           # the same module unwrapped: LoRA reference (adapters off), EMA forwards
    policy: Any                         # the forward that trains: unet, or torch.compile(unet)
    reference: Any                      # frozen copy (full fine-tune) or None (LoRA)
    trainable: dict
    annotators: EMAAnnotators | None
    optimizer: Any
    precision: Precision


def place_model(cfg, unet, accelerator) -> PlacedModel:
    """Policy, reference, optimizer and EMA annotators, each where the parameters live.

    The annotators are made after accelerator.prepare() has moved the UNet: their shadows are
    copies of the parameters on that device (see EMAAnnotators for their dtype).
    """
    set_tf32(cfg.allow_tf32)
    unet, reference = prepare_policy(cfg, unet)
    optimizer = make_optimizer(cfg, list(trainable_parameters(unet).values()))
    unet, optimizer = accelerator.prepare(unet, optimizer)
    bare = accelerator.unwrap_model(unet)
    if reference is not None:
        reference.to(accelerator.device)
    trainable = trainable_parameters(bare)
    annotators = EMAAnnotators(trainable, cfg.ema_caps) if cfg.method == "adaptive-dpo" else None
    policy = unet if cfg.compile == "no" else compiled(unet, cfg.compile, cfg.compile_backend)
    return PlacedModel(unet=unet, bare=bare, policy=policy, reference=reference, trainable=trainable,
                       annotators=annotators, optimizer=optimizer,
                       precision=Precision(cfg.mixed_precision, accelerator.device))


def compiled(module, mode: str, backend: str):
    """torch.compile of the policy forward only: the reference and EMA forwards toggle adapters or
    substitute weights, which would make a compiled graph recompile."""
    return torch.compile(module, backend=backend, **({"mode": mode} if backend == "inductor" else {}))


def apply_gradients(cfg, accelerator, model: PlacedModel):
    """Clip, step and zero the gradients of one optimizer step: (total norm before clipping, skipped).

    fp16: the scaler skips a step whose gradients overflowed, and the caller must then leave the lr
    schedule, the EMAs and the step counter where they were.
    """
    scaler = model.precision.scaler
    if scaler is not None:
        scaler.unscale_(model.optimizer)
    # An infinite bound measures without clipping, so grad_norm is always the pre-clipping norm.
    bound = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    norm = accelerator.clip_grad_norm_(list(model.trainable.values()), bound)
    skipped = False
    if scaler is None:
        model.optimizer.step()
    else:
        before = scaler.get_scale()  # a CPU-GPU sync, fp16 only
        scaler.step(model.optimizer)
        scaler.update()
        skipped = scaler.get_scale() < before
    model.optimizer.zero_grad(set_to_none=True)
    return norm, skipped
