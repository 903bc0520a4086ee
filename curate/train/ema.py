"""Adaptive-DPO's EMA annotators (docs section 3): EMA copies of the trainable weights only.

They are evaluated by substituting their tensors into the live UNet with functional_call, so the
UNet's own weights are never copied out and back (the authors' store/copy_to/restore dance).
"""
from __future__ import annotations

import torch

from curate.train.losses import dpo_margin
from curate.train.margins import pair_errors


class EMAAnnotators:
    """One shadow of the trainable parameters per decay cap (0.9999 and 0.5 by default).

    Each shadow lives on its parameter's device, in fp32. The authors keep fp16 EMAs (their
    weight_dtype); fp32 is the dtype of the trainable weights here (the optimizer's master copy),
    so the EMA loses nothing to rounding at decay 0.9999 and substitutes into the UNet as it is.
    With LoRA the shadows are small (two copies of the adapters). Build them after the model is
    placed on its device (setup.place_model does).
    """

    def __init__(self, named_params: dict[str, torch.Tensor], caps=(0.9999, 0.5)):
        self.caps = tuple(float(c) for c in caps)
        self.shadows = [{n: p.detach().float().clone() for n, p in named_params.items()} for _ in self.caps]
        self.updates = 0  # optimizer steps folded in so far; drives the EMA warm-up

    @torch.no_grad()
    def update(self, named_params: dict[str, torch.Tensor]) -> list[float]:
        """Fold in the weights after an optimizer step; returns the decay each shadow used."""
        from curate.minority import ema_decay

        # As diffusers' EMAModel: the first update copies the weights (decay 0), the n-th uses step n - 1.
        decays = [0.0 if self.updates == 0 else float(ema_decay(self.updates, cap)) for cap in self.caps]
        for decay, shadow in zip(decays, self.shadows):
            for name, p in named_params.items():
                shadow[name].lerp_(p.detach().float(), 1.0 - decay)  # s <- decay * s + (1 - decay) * p
        self.updates += 1
        return decays

    @torch.no_grad()
    def margins(self, unet, x_t, t2, cond, target, ref_err_w, ref_err_l) -> list[torch.Tensor]:
        """h^m of each annotator on the same x_t, t and prompt as the policy (no gradient)."""
        out = []
        for shadow in self.shadows:
            # Trainable weights are kept in fp32 like the shadows, so the tensors go in as they are.
            err_w, err_l = pair_errors(unet, x_t, t2, cond, target, params=shadow)
            out.append(dpo_margin(err_w, err_l, ref_err_w, ref_err_l))
        return out

    def state_dict(self) -> dict:
        tensors = {f"ema{i}.{n}": t for i, shadow in enumerate(self.shadows) for n, t in shadow.items()}
        return {"tensors": tensors, "updates": self.updates, "caps": list(self.caps)}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["caps"]) != self.caps:
            raise ValueError(f"checkpoint EMA caps {state['caps']} differ from the config's {list(self.caps)}")
        for i, shadow in enumerate(self.shadows):
            for n in shadow:
                shadow[n].copy_(state["tensors"][f"ema{i}.{n}"])
        self.updates = int(state["updates"])

