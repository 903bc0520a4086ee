"""benchmarks/gpu_check.py --cpu: the GPU check's code, run on tiny configs (the figures mean nothing here)."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_gpu_check_runs_every_section_on_tiny_configs(tmp_path, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look their module up
    spec.loader.exec_module(gpu_check)
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
