"""Images to VAE latents, one way: the encode stage (curate.train.encode) and encode_pairs
(curate.train.data) both resize, crop and encode through these functions."""
from __future__ import annotations

import torch


def crop_top_left(size, resolution: int) -> tuple[int, int]:
    """(top, left) of the centre crop, in resized pixels, exactly as torchvision's resize + center_crop."""
    w, h = size
    new_w, new_h = (resolution, int(resolution * h / w)) if w <= h else (int(resolution * w / h), resolution)
    return int(round((new_h - resolution) / 2)), int(round((new_w - resolution) / 2))


def to_pixels(image, resolution: int, flip: bool = False) -> torch.Tensor:
    """The short side resized to ``resolution``, centre-cropped square, in [-1, 1] (what the VAE expects)."""
    from torchvision.transforms import functional as TF

    image = TF.center_crop(TF.resize(image.convert("RGB"), resolution), resolution)
    if flip:
        image = TF.hflip(image)
    return TF.to_tensor(image) * 2.0 - 1.0


def vae_latents(vae, pixels: torch.Tensor, device: str) -> torch.Tensor:
    """(posterior mean - shift) * scaling factor, fp32 on the CPU. The mean, not a sample: one
    deterministic latent per image keeps reruns and resumes exact."""
    with torch.no_grad():
        z = vae.encode(pixels.to(device, vae.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z - shift
    return (z * vae.config.scaling_factor).float().cpu()
