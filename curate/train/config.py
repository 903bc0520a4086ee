"""The one training configuration: every default in one place, frozen, saved with each checkpoint."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from curate.options import (Attention, Compile, Finetune, Loss, LrScheduler, MarginKind, Method, MixedPrecision,
                            Normalize, WeightKind)

# IPO's tau: the Adaptive-DPO authors' `--beta` "beta in ipo", default 100 (config/config.py of
# fanfanffff1/Adaptive-DPO). diffusers' DPO script reads an undefined args.beta; Salesforce has no IPO.
IPO_TAU = 100.0


@dataclass(frozen=True)
class TrainConfig:
    """Diffusion-DPO / Adaptive-DPO training settings.

    beta convention: beta multiplies h directly (loss = -log sigmoid(beta * h)). diffusers'
    beta_dpo = 2500 is beta = 2500 here; Salesforce's -0.5 * beta_dpo with beta_dpo = 5000 is also
    2500; the Adaptive-DPO README's 1000 (diffusers convention) is 1000.
    """

    # model: a hub id or a local diffusers folder (SD 1.x/2.x or SDXL, detected from the folder)
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    revision: str | None = None
    finetune: Finetune = Finetune.lora          # lora: reference = same UNet, adapters off; full: frozen copy
    lora_rank: int = 8
    lora_alpha: float | None = None             # None = rank (scale 1)
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    gradient_checkpointing: bool = False
    mixed_precision: MixedPrecision = MixedPrecision.no  # no | fp16 | bf16 (autocast; trainable weights stay fp32,
                                                # frozen ones are cast to it; fp16 adds a GradScaler)
    attention: Attention = Attention.sdpa       # sdpa: torch scaled_dot_product_attention | eager: plain matmuls
    allow_tf32: bool = True                     # TF32 matmuls and convolutions on GPUs that have them
    compile: Compile = Compile.no               # torch.compile mode of the policy forward, or no
    compile_backend: str = "inductor"           # torch.compile backend (aot_eager: no code generation)

    # objective
    method: Method = Method.dpo                 # dpo | adaptive-dpo (online EMA annotators) | adaptive-offline (u from data)
    loss: Loss = Loss.dpo                       # dpo | hinge | ipo | cdpo | rdpo
    beta: float = 2500.0
    label_smoothing: float = 0.0                # eps for cdpo / rdpo
    ipo_tau: float = IPO_TAU                    # loss ipo: (h - 1/(2 tau))^2; the Adaptive-DPO authors' 100
    prompt_dropout: float = 0.0                 # P(a pair trains on the empty prompt); Salesforce's script: 0.2

    # Adaptive-DPO (docs sections 3-4)
    rho: float = 15.0                           # z = rho * h / ||h||_2 (authors' README value)
    minority_normalize: Normalize = Normalize.l2  # l2 (authors) | rms (batch-size free: use rho / sqrt(B))
    weight_kind: WeightKind = WeightKind.linear  # W = 1 / (k u + c) or 1 / (k u^2 + c)
    weight_k: float = 10.0
    weight_c: float = 1.0
    margin_kind: MarginKind = MarginKind.quadratic  # G = mean(sg h) - u^2 / beta (or u / beta)
    ema_caps: tuple[float, ...] = (0.9999, 0.5)
    adaptive_warmup_steps: int = 2              # optimizer steps with u = 0 while the EMAs warm up (authors: 2)

    # optimisation
    learning_rate: float = 1e-5
    lr_scheduler: LrScheduler = LrScheduler.constant_with_warmup  # a diffusers get_scheduler name
    lr_warmup_steps: int = 0
    max_steps: int = 2000                       # optimizer steps
    batch_size: int = 16                        # pairs per device per forward
    grad_accum: int = 1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_eps: float = 1e-8
    use_8bit_adam: bool = False                 # bitsandbytes AdamW8bit (error if not installed)
    max_grad_norm: float = 1.0
    seed: int = 0

    # bookkeeping
    output_dir: str = "out/train"
    checkpoint_every: int = 500                 # optimizer steps; 0 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 1
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self):
        for name, enum in CHOICES.items():
            object.__setattr__(self, name, _choice(name, getattr(self, name), enum))
        for name in ("learning_rate", "beta", "ipo_tau", "rho", "adam_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("lr_warmup_steps", "adaptive_warmup_steps", "checkpoint_every", "max_grad_norm", "weight_c"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout is a probability in [0, 1), got {self.prompt_dropout}")
        if self.lora_rank < 1 or (self.lora_alpha is not None and self.lora_alpha <= 0):
            raise ValueError(f"lora_rank must be >= 1 and lora_alpha > 0, got {self.lora_rank}, {self.lora_alpha}")
        if self.method != "dpo" and self.loss not in ("dpo", "ipo"):
            raise ValueError(f"method {self.method.value!r} defines a sigmoid (loss='dpo') and an IPO form (loss='ipo'), "
                             f"not loss={self.loss.value!r}; pick one of those or method='dpo'")
        if self.grad_accum < 1 or self.batch_size < 1 or self.max_steps < 1:
            raise ValueError(f"batch_size, grad_accum and max_steps must be >= 1, got "
                             f"{self.batch_size}, {self.grad_accum}, {self.max_steps}")
        if self.method == "adaptive-dpo" and self.batch_size < 2 and self.minority_normalize != "none":
            raise ValueError("adaptive-dpo normalises h over the batch; batch_size must be >= 2")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        raw = json.loads(text)
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown} in saved config; this prefcurate is older than the run")
        for key in ("lora_targets", "ema_caps"):  # JSON has no tuples
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_json(Path(path).read_text())


# The fields that hold a choice: given as the member or its value, stored as the member.
CHOICES: dict[str, type[Enum]] = {
    "method": Method, "loss": Loss, "finetune": Finetune, "mixed_precision": MixedPrecision, "minority_normalize": Normalize,
    "weight_kind": WeightKind, "margin_kind": MarginKind, "attention": Attention, "compile": Compile,
    "lr_scheduler": LrScheduler,
}


def _choice(name: str, value, enum: type[Enum]) -> Enum:
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(e.value for e in enum)}") from None
