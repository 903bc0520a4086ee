"""Write the trained model where diffusers can load it."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def export_model(cfg, unet, components, path: str | Path) -> Path:
    """LoRA: a folder for `pipe.load_lora_weights(path)`. Full: a complete pipeline folder
    (`from_pretrained(path)`). Written under a temporary name, then renamed."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    if cfg.finetune == "lora":
        save_lora(unet, components, tmp)
    else:
        components.pipeline(unet=unet).save_pretrained(str(tmp))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def save_lora(unet, components, path: str | Path) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    pipeline_cls = StableDiffusionXLPipeline if components.is_sdxl else StableDiffusionPipeline
    # The adapter's config (rank and lora_alpha) goes in the file's metadata: load_lora_weights reads
    # it back, so an adapter trained with alpha != rank reloads at the scale it was trained at.
    pipeline_cls.save_lora_weights(str(path), unet_lora_layers=layers, weight_name=LORA_WEIGHT_NAME,
                                   unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
