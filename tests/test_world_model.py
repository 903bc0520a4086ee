"""`--model world`: the shipped world pipeline through the very commands users run with SD1.5."""
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.synth.world import WorldConfig, build_world

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_every_world_word_is_one_token_of_the_shipped_tokenizer():
    from curate.train.models import load_components
    from world_model import world_words

    tokenizer = load_components("world").tokenizer
    for word in world_words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_encode_train_and_sample_with_model_world(tmp_path):
    from PIL import Image

    build_world(tmp_path / "w", WorldConfig(pairs=40, seed=2, image_size=32, formats=("pickapic",)))
    ds = str(tmp_path / "ds")
    cli("ingest", str(tmp_path / "w" / "pickapic"), "-f", "pickapic", "-o", ds)
    cli("encode", ds, "--model", "world", "--resolution", "32")
    run = tmp_path / "run"
    out = cli("train", ds, "--model", "world", "--output-dir", str(run), "--max-steps", "1", "--batch-size", "4",
              "--lr", "1e-3", "--checkpoint-every", "0")
    assert "trained 1 steps" in out and (run / "final").is_dir()
    cli("sample", "--model", "world", "--lora", str(run / "final"), "--out", str(tmp_path / "grid.png"),
        "-p", "a large red circle in the middle of a white background", "--steps", "2")
    assert Image.open(tmp_path / "grid.png").size == (32, 64)  # 1 prompt x (base, tuned) at the model's 32 px


def test_the_world_judge_reads_the_shipped_models_samples():
    """Against the same architecture untrained, on the same held-out prompts and noise."""
    from curate.scorers.judge import judge_images
    from curate.train.models import load_components
    from world_eval import held_out_prompts, sample_images
    from world_model import WorldModelConfig, make_components

    prompts, codes = held_out_prompts(24, seed=11)
    read = lambda c: judge_images(sample_images(c, prompts, np.arange(24), steps=20), codes)["fidelity"].mean()  # noqa: E731
    trained, untrained = read(load_components("world")), read(make_components(WorldModelConfig()))
    assert trained > untrained + 0.1, (trained, untrained)


TRAINING_PIPELINE = """
[pipeline]
dataset = "{out}/dataset"

[params]
out = "OUT"

[[stage]]
command = "demo-data"
out_dir = "{out}/world"
pairs = 60
image_size = 32
formats = "pickapic"

[[stage]]
command = "ingest"
sources = ["{out}/world/pickapic"]
format = "pickapic"

[[stage]]
command = "annotators"

[[stage]]
command = "flag"

[[stage]]
command = "encode"
model = "world"
resolution = 32

[[stage]]
command = "train"
model = "world"
output_dir = "{out}/train/dpo"
max_steps = 1
batch_size = 4
checkpoint_every = 0

[[stage]]
command = "train"
model = "world"
output_dir = "{out}/train/offline"
method = "adaptive-offline"
max_steps = 1
batch_size = 4
checkpoint_every = 0
"""


def test_a_pipeline_trains_after_curating_and_a_rerun_skips_the_training(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(TRAINING_PIPELINE.replace("OUT", str(tmp_path / "out")))
    first = runner.invoke(app, ["run", str(path)])
    assert first.exit_code == 0, first.output
    assert first.output.count("trained 1 steps") == 2
    assert (tmp_path / "out" / "train" / "offline" / "final").is_dir()
    second = runner.invoke(app, ["run", str(path)])
    assert second.exit_code == 0, second.output
    assert "trained 1 steps" not in second.output and second.output.count("already written") == 3  # demo-data + 2 trains
