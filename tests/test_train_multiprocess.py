"""`prefcurate train` on two CPU processes (gloo, under accelerate launch), against one process.

Two processes with batch B take the pairs one process takes with batch B and 2x accumulation, in
the same order with the same noise, so their optimizer steps agree; a checkpoint of either resumes
under the other; only the main process writes.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_data import cli, ingested_world

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--split", "all", "--batch-size", "2", "--checkpoint-every", "3", "--method", "adaptive-dpo", "--lr", "1e-3",
         "--lora-rank", "4"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


# As README says. Without a GPU, accelerate's --cpu launcher starts one process only; --multi_gpu
# starts two through torch.distributed.run, and the trainer's Accelerator picks gloo for them.
LAUNCH = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "curate.cli"]


def launch_two(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *LAUNCH, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def steps(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def resume_from(run: Path, checkpoint: str, into: Path) -> Path:
    into.mkdir()
    shutil.copytree(run / checkpoint, into / checkpoint)
    return into


def same_steps(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for key in ("loss", "h_mean", "u_mean", "w_mean", "grad_norm", "lr", "err_w_delta"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-7), (key, x, y)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    ds, model = ingested_world(root, pairs=48, seed=2)
    cli("encode", ds, "--model", model, "--resolution", "16")
    return root


def test_two_processes_match_one_with_double_accumulation_and_resume_each_other(world, tmp_path):
    ds, model = str(world / "ds"), str(world / "sd15")
    one = tmp_path / "one"
    cli("train", ds, "--model", model, "-o", str(one), "--grad-accum", "2", "--max-steps", "6", *TRAIN)
    # One process's checkpoint, resumed by two (batch B each, no accumulation) for steps 4 and 5...
    two = resume_from(one, "checkpoint-00000003", tmp_path / "two")
    launch_two("train", ds, "--model", model, "-o", str(two), "--grad-accum", "1", "--max-steps", "5",
               "--resume", *TRAIN)
    same_steps(steps(one)[3:5], steps(two))
    assert steps(two)[-1]["u_mean"] > 0  # past the warm-up: the EMA annotators judged on both processes
    # ...whose checkpoint one process resumes for step 6.
    back = resume_from(two, "checkpoint-00000005", tmp_path / "back")
    cli("train", ds, "--model", model, "-o", str(back), "--grad-accum", "2", "--max-steps", "6", "--resume", *TRAIN)
    same_steps(steps(one)[5:], steps(back))

    # Only the main process wrote: one log with each step once and one start, one checkpoint a save, one export.
    names = sorted(p.name for p in two.iterdir() if p.name != "tb")  # tensorboard is optional
    assert names == ["checkpoint-00000003", "checkpoint-00000005", "data.json", "final", "metrics.jsonl"]
    events = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [e["processes"] for e in events if e.get("event") == "start"] == [2]
    assert sum(e.get("event") == "exported" for e in events) == 1
    if (two / "tb").exists():
        assert len(list((two / "tb").iterdir())) == 1
