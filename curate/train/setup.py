"""Turn loaded components into a policy, a reference and an optimizer, as the config says."""
from __future__ import annotations

import copy

import torch

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def prepare_policy(cfg, unet):
    """(policy, reference). LoRA: adapters on `unet` itself, reference = the same UNet with adapters
    disabled (None here). Full: the whole UNet trains and a frozen copy is the reference.

    Frozen weights are cast to the mixed-precision dtype; trainable ones stay fp32 for the optimizer.
    """
    frozen_dtype = WEIGHT_DTYPES[cfg.mixed_precision]
    unet.requires_grad_(False)
    if cfg.finetune == "lora":
        from peft import LoraConfig

        if frozen_dtype != torch.float32:
            unet.to(dtype=frozen_dtype)
        # gaussian init sets B = 0, so the policy starts exactly at the reference (h = 0, loss = ln 2).
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                    init_lora_weights="gaussian", target_modules=list(cfg.lora_targets)))
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        reference = None
    else:
        reference = copy.deepcopy(unet).to(dtype=frozen_dtype).eval()
        unet.float().requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return unet, reference


def trainable_parameters(module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def make_optimizer(cfg, params):
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_eps)
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ImportError("use_8bit_adam=True needs bitsandbytes: `pip install bitsandbytes`, "
                              "or set use_8bit_adam=False") from err
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)
