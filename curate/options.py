"""Every choice prefcurate offers, defined once: the CLI, the stages and the trainer share these.

Stdlib only, so importing it costs nothing. Used by `annotators`, `flag`, the options every
command shares (curate/cli/common.py: executor, device, precision), and the trainer (`train`'s
options and curate.train.config.TrainConfig, which stores these members).
"""
from __future__ import annotations

import os
from enum import Enum

TRUE_WORDS = frozenset({"1", "on", "yes", "true"})
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class Format(str, Enum):
    """Layouts `ingest` reads; auto picks one from the first file's columns or keys."""

    auto = "auto"
    pickapic = "pickapic"
    hpdv2 = "hpdv2"
    hpdv3 = "hpdv3"
    rapidata = "rapidata"
    table = "table"


class Precision(str, Enum):
    """Precision a model runs in (embedding, encoding)."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class ExecutorName(str, Enum):
    """Where a stage's shards run: in this process, or on a Dask cluster."""

    local = "local"
    dask = "dask"


class Device(str, Enum):
    """Where a model runs; auto picks CUDA when it is available."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class WeightKind(str, Enum):
    """Adaptive-DPO's instance weight: W = 1 / (k x + c) (linear) or 1 / (k x^2 + c) (quadratic)."""

    linear = "linear"
    quadratic = "quadratic"


class WeightSource(str, Enum):
    """What x in the weight is: the paper's u, or the minority score."""

    u = "u"
    minority_score = "minority_score"


class TrainChoice(str, Enum):
    """A trainer choice: str() and f-strings give the value ('dpo'), as in JSON and in messages."""

    def __str__(self) -> str:
        return str(self.value)


class Method(TrainChoice):
    """dpo; adaptive-dpo (online EMA annotators); adaptive-offline (per-pair u from the data)."""

    dpo = "dpo"
    adaptive_dpo = "adaptive-dpo"
    adaptive_offline = "adaptive-offline"


class Loss(TrainChoice):
    """The preference loss on h (curate.train.losses.LOSS_TYPES; a test keeps the two equal)."""

    dpo = "dpo"
    hinge = "hinge"
    ipo = "ipo"
    cdpo = "cdpo"
    rdpo = "rdpo"


class Finetune(TrainChoice):
    """lora: the reference is the same UNet with adapters off; full: a frozen copy."""

    lora = "lora"
    full = "full"


class MixedPrecision(TrainChoice):
    """Autocast dtype of training (no: fp32)."""

    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


class Attention(TrainChoice):
    """sdpa: torch scaled_dot_product_attention; eager: plain matmuls."""

    sdpa = "sdpa"
    eager = "eager"


class Compile(TrainChoice):
    """torch.compile mode of the policy forward (no: eager)."""

    no = "no"
    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune"


class LrScheduler(TrainChoice):
    """diffusers.optimization.SchedulerType's values, spelled out so that the CLI lists them without
    importing diffusers (a test keeps the two equal)."""

    linear = "linear"
    cosine = "cosine"
    cosine_with_restarts = "cosine_with_restarts"
    polynomial = "polynomial"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"
    piecewise_constant = "piecewise_constant"


class Normalize(TrainChoice):
    """How Adaptive-DPO normalises h over the batch: l2 (the authors), rms (batch-size free), none."""

    l2 = "l2"
    rms = "rms"
    none = "none"


class MarginKind(TrainChoice):
    """Adaptive-DPO's margin G = mean(sg h) - u^2 / beta (quadratic) or - u / beta (linear)."""

    linear = "linear"
    quadratic = "quadratic"


class Filtered(TrainChoice):
    """Pairs the filters table removed: drop them, or train them."""

    drop = "drop"
    keep = "keep"


class Minority(TrainChoice):
    """Pairs flagged in pair_scores: keep, drop, or weight (pair_scores.weight scales their loss)."""

    keep = "keep"
    drop = "drop"
    weight = "weight"


class Missing(TrainChoice):
    """Pairs without latents or text embeddings: an error naming the encode command, or drop them."""

    error = "error"
    drop = "drop"


def choice(enum: type[Enum], value, what: str) -> Enum:
    """``enum(value)``, or a ValueError naming the option, the value and the choices."""
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{what} {value!r}: expected one of {', '.join(e.value for e in enum)}") from None


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set to 1/on/yes/true."""
    return any(os.environ.get(name, "").strip().lower() in TRUE_WORDS for name in OFFLINE_VARIABLES)


class TableFormat(str, Enum):
    """Formats `export --tables` writes a dataset's tables in, for tools that do not read Arrow IPC."""

    parquet = "parquet"
