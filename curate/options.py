"""Every choice prefcurate offers, defined once: the CLI, the stages and the trainer share these.

Stdlib only, so importing it costs nothing. Used by `annotators`, `flag` and the options every
command shares (curate/cli/common.py: executor, device, precision) and ingest's formats; the trainer's choices
(curate/cli/train.py) are still to move here.
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
