"""benchmarks/gpu_check.py --cpu: the GPU check's code, run on tiny configs (the figures mean nothing here)."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def gpu_check(monkeypatch):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_published_configs_build_the_published_models(gpu_check):
    """On the meta device (no memory): SD1.5's UNet has 859.5M parameters, SDXL's 2567.5M, and both
    take the conditioning the check feeds them."""
    import torch
    from diffusers import UNet2DConditionModel

    for sdxl, millions, side, width in ((False, 859.5, 64, 768), (True, 2567.5, 128, 2048)):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**(gpu_check.SDXL_UNET if sdxl else gpu_check.SD15_UNET))
        assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == millions
        kw = {"added_cond_kwargs": {"text_embeds": torch.empty(1, 1280, device="meta"),
                                    "time_ids": torch.empty(1, 6, device="meta")}} if sdxl else {}
        out = unet(torch.empty(1, 4, side, side, device="meta"), torch.tensor([1], device="meta"),
                     encoder_hidden_states=torch.empty(1, 77, width, device="meta"), **kw).sample
        assert out.shape == (1, 4, side, side)


def test_gpu_check_runs_every_section_on_tiny_configs(tmp_path, gpu_check):
    gpu_check.main(["--cpu", "--out", str(tmp_path)])

    result = json.loads((tmp_path / "gpu_check.json").read_text())
    runs = {(r["model"], r["finetune"], r["method"]) for r in result["train"]}
    methods = ("dpo", "adaptive-dpo", "adaptive-offline")
    expected = {(m, f, k) for m in ("sd15-tiny", "sdxl-tiny") for f in ("lora", "full") for k in methods}
    assert runs == expected | {(m, "lora", "straightforward dpo") for m in ("sd15-tiny", "sdxl-tiny")}
    assert len(result["ratios"]) == 6 and {r["what"] for r in result["encode"]} == {"latents", "prompts"}
    assert [r["feature"] for r in result["features"]] == ["baseline (bf16, sdpa)", "gradient checkpointing",
                                                          "eager attention", "fp16 + loss scaler", "torch.compile",
                                                          "8-bit AdamW"]
    assert [r["model"].split("/")[0] for r in result["clip"]] == ["domain-clip"]
    figures = [r["pairs_per_s"] for r in result["train"] + result["features"][:-1]] + \
        [r["value"] for r in result["ratios"]] + \
        [r["per_s"] for r in result["encode"]] + [r["end_to_end_images_per_s"] for r in result["clip"]]
    assert all(math.isfinite(x) for x in figures)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| sdxl-tiny | full | adaptive-offline | 2 |" in table and "prefcurate dpo / straightforward dpo" in table
