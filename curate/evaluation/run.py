"""``evaluate``: render the base and each tuned model from the same seeds, score every image, summarise.

Image k of prompt p has seed ``seed + p * images_per_prompt + k`` in every model (its own CPU
generator), so base and tuned images pair up and differ by the weights alone. Work goes in batches
of ``batch_size`` images; a batch is committed last: its PNGs, then its row shard
(``shards/<model>/<batch>.arrow``, written to a temporary name and renamed), so after a crash only
the unfinished batches are redone. The run's config is ``config.json``; a folder holding another
config is refused. With several processes (``accelerate launch``) each takes every n-th batch and
the main one writes the table and the summary.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from curate.evaluation import Sampler
from curate.evaluation.suites import Suite

Progress = Callable[[str, int, int], None]  # (task, done, total)
CONFIG = "config.json"


class EvaluationError(ValueError):
    """The evaluation cannot start or continue; the message says why and what to do."""


@dataclass(frozen=True)
class TunedModel:
    label: str      # the `model` value of its rows
    kind: str       # "lora" (a LoRA folder on the base) or "full" (a diffusers folder; its UNet is used)
    path: str


@dataclass(frozen=True)
class EvalConfig:
    model: str
    tuned: tuple[TunedModel, ...]
    scorers: tuple[str, ...]
    suite: str
    prompts: tuple[str, ...]
    categories: tuple[str, ...] | None
    images_per_prompt: int = 2
    seed: int = 0
    steps: int = 25
    guidance_scale: float = 5.0
    resolution: int | None = None
    sampler: str = Sampler.ddim.value
    batch_size: int = 8
    revision: str | None = None

    @property
    def models(self) -> list[str]:
        return ["base", *(t.label for t in self.tuned)]

    @property
    def n_images(self) -> int:
        return len(self.prompts) * self.images_per_prompt

    def batches(self) -> list[range]:
        return [range(i, min(i + self.batch_size, self.n_images)) for i in range(0, self.n_images, self.batch_size)]

    def to_json(self) -> dict:
        return asdict(self)


def model_label(path: str | Path) -> str:
    """A tuned model's name: its folder's, or its training run's for train's ``final``/``checkpoint-N``."""
    path = Path(path)
    if path.name == "final" and path.parent.name:
        return path.parent.name
    if path.name.startswith("checkpoint-") and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name


def tuned_models(loras: list[str], fulls: list[str]) -> tuple[TunedModel, ...]:
    """Each tuned model labelled by ``model_label`` (made unique: dpo, dpo-2, ...)."""
    out, used = [], {"base"}
    for kind, paths in (("lora", loras), ("full", fulls)):
        for path in paths:
            base = model_label(path) or kind
            label, n = base, 2
            while label in used:
                label, n = f"{base}-{n}", n + 1
            used.add(label)
            out.append(TunedModel(label, kind, str(path)))
    return tuple(out)


def check_tuned(tuned: tuple[TunedModel, ...]) -> None:
    """Fail before any work on a tuned folder that cannot be what its option says."""
    for t in tuned:
        folder = Path(t.path)
        if t.kind == "lora" and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise EvaluationError(f"--lora {folder}: no LoRA weights (*.safetensors) in it; pass train's final/ "
                                  f"of a --finetune lora run")
        if t.kind == "full" and not (folder / "model_index.json").is_file():
            raise EvaluationError(f"--tuned {folder}: no model_index.json; pass train's final/ of a --finetune full "
                                  f"run (a diffusers pipeline folder), or use --lora for a LoRA folder")


def make_config(model: str, suite: Suite, scorers: list[str], *, loras=(), fulls=(), **options) -> EvalConfig:
    return EvalConfig(model=model, tuned=tuned_models(list(loras), list(fulls)), scorers=tuple(scorers),
                      suite=suite.name, prompts=suite.prompts, categories=suite.categories, **options)


def check_folder(out: Path, config: EvalConfig) -> None:
    """Start a new folder, or continue one made by the same config (else refuse, naming what differs)."""
    path = out / CONFIG
    if not path.exists():
        return
    before = json.loads(path.read_text())
    now = json.loads(json.dumps(config.to_json()))
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise EvaluationError(f"{out} holds an evaluation with another {', '.join(changed)}; pass another --out "
                              f"(or delete {out} to start over)")


def shard_path(out: Path, model: str, batch: int) -> Path:
    return out / "shards" / model / f"{batch:05d}.arrow"


def image_path(out: Path, model: str, index: int, config: EvalConfig) -> Path:
    p, k = divmod(index, config.images_per_prompt)
    return out / "images" / model / f"{p:05d}-{k:02d}.png"


def row_schema(config: EvalConfig) -> pa.Schema:
    fixed = [("model", pa.string()), ("prompt_index", pa.int32()), ("prompt", pa.string()), ("category", pa.string()),
             ("seed", pa.int64()), ("image", pa.string())]
    return pa.schema(fixed + [(name, pa.float32()) for name in config.scorers])


def pending_batches(out: Path, config: EvalConfig, model: str) -> list[int]:
    return [b for b in range(len(config.batches())) if not shard_path(out, model, b).exists()]


def write_batch(out: Path, config: EvalConfig, model: str, batch: int, images: list, scores: dict) -> None:
    """The batch's PNGs, then its shard (temporary name, renamed): the shard's existence is the commit."""
    import pyarrow.ipc as ipc

    indices = list(config.batches()[batch])
    paths = [image_path(out, model, i, config) for i in indices]
    for image, path in zip(images, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        image.save(tmp, format="PNG")
        tmp.replace(path)
    n = config.images_per_prompt
    columns = {"model": [model] * len(indices), "prompt_index": [i // n for i in indices],
               "prompt": [config.prompts[i // n] for i in indices],
               "category": [config.categories[i // n] for i in indices] if config.categories else [None] * len(indices),
               "seed": [config.seed + i for i in indices], "image": [str(p.relative_to(out)) for p in paths],
               **{name: scores[name] for name in config.scorers}}
    table = pa.table(columns, schema=row_schema(config))
    target = shard_path(out, model, batch)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}")
    with ipc.new_file(tmp, table.schema) as writer:
        writer.write_table(table)
    tmp.replace(target)


@dataclass
class EvalResult:
    out: Path
    rendered: dict[str, int] = field(default_factory=dict)   # images rendered now, per model
    summary: dict | None = None                              # None on a process that is not the main one
