"""Loading open_clip models: resolve what the user named, fail early and clearly, then load.

A model is named by ``--model`` (an open_clip architecture, ``hf-hub:org/repo``, ``local-dir:PATH``
or ``domain``) and ``--pretrained`` (a pretrained tag, a checkpoint file, ``random`` or ``domain``).
``resolve`` turns that into a ``ClipSource`` without touching the network or building a model, so
a typo or missing offline weights is reported at once; ``load_clip`` builds the model.

Every embedding and score carries the source's ``key``, ``"<arch>/<tag or sha256[:12] of the
weights file>"``, so the same weights always get the same key and different weights never share one.
"""
from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

DOMAIN = "domain"
DOMAIN_DIR = Path(__file__).resolve().parents[1] / "assets" / "domain_clip"
RANDOM = "random"  # randomly initialised weights (seed 0): for throughput benchmarks and tests only
PRECISIONS = ("fp32", "fp16", "bf16")
_TRUE = {"1", "on", "yes", "true"}


class ModelError(RuntimeError):
    """The model or its weights cannot be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ClipSource:
    """What to load: ``name`` and ``pretrained`` exactly as open_clip takes them, and the model key."""

    name: str
    pretrained: str | None
    key: str


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def file_digest(path: Path) -> str:
    """First 12 hex digits of the file's SHA-256: names weights that have no tag."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()[:12]


def resolve(model: str, pretrained: str | None = None) -> ClipSource:
    """Check that ``model``/``pretrained`` name something loadable here and now; build the key."""
    if model == DOMAIN or pretrained == DOMAIN:
        return _local_dir_source(DOMAIN_DIR, arch="domain-clip")
    if model.startswith("local-dir:"):
        return _local_dir_source(Path(model[len("local-dir:"):]).expanduser(), arch=None)
    if model.startswith("hf-hub:"):
        repo = model[len("hf-hub:"):]
        _require_hub_file(repo, "open_clip_config.json", what=model)
        return ClipSource(model, None, f"{repo}/hf-hub")
    arch = _known_arch(model)
    if pretrained in (None, "", RANDOM):
        return ClipSource(arch, None, f"{arch}/{RANDOM}")
    path = Path(pretrained).expanduser()
    if path.is_file():
        return ClipSource(arch, str(path), f"{arch}/{file_digest(path)}")
    return ClipSource(arch, pretrained, f"{arch}/{_available_tag(arch, pretrained)}")


def architectures() -> list[str]:
    """open_clip's architecture names, read from its config folder so a typo fails before the slow import."""
    import importlib.util
    import sys

    if "open_clip" in sys.modules:  # also sees configs registered at run time (open_clip.add_model_config)
        return sys.modules["open_clip"].list_models()
    spec = importlib.util.find_spec("open_clip")
    folders = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
    return sorted(p.stem for folder in folders for p in folder.glob("*.json"))


def _known_arch(model: str) -> str:
    arch = model.replace("/", "-")
    known = architectures()
    if arch in known:
        return arch
    close = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "run `python -c 'import open_clip; print(open_clip.list_models())'` for the list"
    raise ModelError(f"unknown open_clip model {model!r}; {hint} (or pass hf-hub:ORG/REPO, local-dir:PATH, or {DOMAIN})")


def _available_tag(arch: str, tag: str) -> str:
    """The tag if its weights can be had now: cached, or downloadable because the hub is not offline."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise ModelError(f"--pretrained {tag!r} for {arch} is neither a file nor a known tag; "
                         f"tags for {arch}: {', '.join(tags) or 'none'}")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        _require_hub_file(repo, names, what=f"{arch}/{tag}")
    elif cfg.get("url") and hub_offline():
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if not cached.is_file():
            raise ModelError(f"weights of {arch}/{tag} are not in {cached.parent} and HF_HUB_OFFLINE is set; "
                             f"download them where the network is reachable, or pass a checkpoint file as --pretrained")
    return tag


def _require_hub_file(repo: str, names, what: str) -> None:
    """Offline, fail now unless one of ``names`` is in the local Hugging Face cache (no retry loop)."""
    if not hub_offline():
        return
    from huggingface_hub import try_to_load_from_cache

    names = [names] if isinstance(names, str) else names
    if any(isinstance(try_to_load_from_cache(repo, n), str) for n in names):
        return
    raise ModelError(f"weights of {what} ({repo}: {', '.join(names)}) are not in the Hugging Face cache and "
                     f"HF_HUB_OFFLINE is set; download them where the hub is reachable (unset HF_HUB_OFFLINE), "
                     f"or pass a local checkpoint with --pretrained PATH or --model local-dir:PATH")


def _local_dir_source(folder: Path, arch: str | None) -> ClipSource:
    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise ModelError(f"{folder}: no open_clip_config.json; a local-dir model needs it and a weights file "
                         f"(open_clip_model.safetensors)")
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt*"))
    if not weights:
        raise ModelError(f"{folder}: no weights file (*.safetensors, *.bin, *.pt) next to open_clip_config.json")
    return ClipSource(f"local-dir:{folder}", None, f"{arch or folder.name}/{file_digest(weights[0])}")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"unknown device {device!r}; expected auto, cpu or cuda")
    return device


@dataclass
class LoadedClip:
    """A ready model: ``preprocess`` maps a PIL image to a tensor; encoders return unit-norm float32 numpy."""

    source: ClipSource
    model: object
    preprocess: object
    tokenizer: object
    device: str
    precision: str
    embed_dim: int

    @property
    def key(self) -> str:
        return self.source.key

    def encode_images(self, pixels):
        import torch
        from open_clip.model import get_input_dtype

        with torch.inference_mode():
            x = pixels.to(self.device, dtype=get_input_dtype(self.precision), non_blocking=True)
            return self.model.encode_image(x, normalize=True).float().cpu().numpy()

    def encode_texts(self, texts: list[str]):
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return self.model.encode_text(tokens, normalize=True).float().cpu().numpy()


def load_clip(source: ClipSource, device: str = "cpu", precision: str = "fp32") -> LoadedClip:
    """Build the model for ``source`` (from ``resolve``) in eval mode on ``device``."""
    import pickle

    import open_clip
    import torch

    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    device = resolve_device(device)
    if source.pretrained is None and not source.name.startswith("local-dir:"):
        torch.manual_seed(0)  # `random` weights must be the same in every process
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            source.name, pretrained=source.pretrained, device=device, precision=precision)
    except pickle.UnpicklingError as e:  # open_clip unpickles with weights_only=True
        raise ModelError(f"{source.pretrained} holds more than tensors and is refused (weights_only=True); "
                         f"convert it to safetensors where you trust it") from e
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        raise ModelError(f"cannot load {source.key} ({source.name}, pretrained={source.pretrained}): {e}") from e
    model.eval()
    tokenizer = open_clip.get_tokenizer(source.name)
    loaded = LoadedClip(source, model, preprocess, tokenizer, device, precision, embed_dim=0)
    loaded.embed_dim = loaded.encode_texts(["a"]).shape[-1]  # configs spell the width differently; ask the model
    return loaded


def load_domain_clip(device: str = "cpu", precision: str = "fp32") -> LoadedClip:
    """The small CLIP trained on prefcurate's synthetic world (curate/assets/domain_clip): offline, ~MBs."""
    return load_clip(resolve(DOMAIN), device, precision)
