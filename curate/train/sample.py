"""Render fixed prompts from the base and the tuned model, side by side, for a quick visual check."""
from __future__ import annotations

from pathlib import Path


def sample_grid(components, prompts: list[str], path: str | Path, *, lora_dir: str | Path | None = None,
                tuned_unet=None, steps: int = 25, guidance_scale: float = 5.0, size: int | None = None,
                seed: int = 0, device="cpu"):
    """Write a PNG grid: row 1 the base model, row 2 the tuned one, one column per prompt.

    The tuned model is a LoRA folder (`lora_dir`, as train() exports it) or a full `tuned_unet`.
    Each column uses the same seed in both rows, so differences come from the weights alone.
    """
    import torch
    from PIL import Image

    if (lora_dir is None) == (tuned_unet is None):
        raise ValueError("sample_grid needs exactly one of lora_dir (LoRA output) or tuned_unet (full fine-tune)")
    if getattr(components.unet, "peft_config", None):
        raise ValueError("sample_grid needs the base components; these carry LoRA adapters (train() adds them in "
                         "place): load the base model again with load_components(cfg.model)")
    pipe = components.pipeline().to(device)
    pipe.set_progress_bar_config(disable=True)

    def render(p):
        kw = dict(num_inference_steps=steps, guidance_scale=guidance_scale, height=size, width=size)
        return [p(prompt, generator=torch.Generator().manual_seed(seed + i), **kw).images[0]
                for i, prompt in enumerate(prompts)]

    base = render(pipe)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
        tuned = render(pipe)
        pipe.unload_lora_weights()
    else:
        tuned_pipe = components.pipeline(unet=tuned_unet).to(device)
        tuned_pipe.set_progress_bar_config(disable=True)
        tuned = render(tuned_pipe)
    w, h = base[0].size
    grid = Image.new("RGB", (w * len(prompts), h * 2))
    for i, (a, b) in enumerate(zip(base, tuned)):
        grid.paste(a, (i * w, 0))
        grid.paste(b, (i * w, h))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid
