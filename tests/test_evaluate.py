"""`prefcurate evaluate`: the paired statistics by hand, the prompt suites, and a real run on tiny pipelines."""
from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.evaluation.stats import cluster_bootstrap_interval, paired_comparison, paired_outcomes
from curate.evaluation.suites import SuiteError, load_suite
from evaluation_data import build_evaluation, evaluate_cli

runner = CliRunner()


# -------------------------------------------------------------------------------- hand-worked math
def test_paired_outcomes_count_ties_as_half():
    assert paired_outcomes([3, 1, 2], [1, 1, 5]).tolist() == [1.0, 0.5, 0.0]


def test_cluster_bootstrap_by_hand():
    # two prompts with means 0 and 1: a resample draws (0,0), (0,1), (1,0) or (1,1), so its mean is
    # 0 (p = 1/4), 0.5 (1/2) or 1 (1/4); both tails (2.5%) fall inside the extreme atoms
    assert cluster_bootstrap_interval([0.0, 0.0, 1.0, 1.0], [0, 0, 1, 1]) == (0.0, 1.0)
    assert cluster_bootstrap_interval([0.3, 0.3, 0.3], [5, 6, 7]) == pytest.approx((0.3, 0.3))


def test_paired_comparison_by_hand():
    # prompt 0: outcomes 1, 0.5 (mean 0.75), diffs 2, 0 (mean 1); prompt 1: outcomes 0, 1 (0.5), diffs -3, 2 (-0.5)
    got = paired_comparison([3, 1, 2, 2], [1, 1, 5, 0], [0, 0, 1, 1])
    assert got["win_rate"] == pytest.approx(0.625) and got["mean_diff"] == pytest.approx(0.25)
    assert got["win_rate_ci"] == pytest.approx((0.5, 0.75))      # resampled means: 0.75, 0.625 or 0.5
    assert got["mean_diff_ci"] == pytest.approx((-0.5, 1.0))
    assert (got["ties"], got["pairs"], got["prompts"]) == (1, 4, 2)


# ------------------------------------------------------------------------------------ prompt suites
def test_prompt_files_of_every_layout(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n a dog \na cat\n")
    txt = load_suite(str(tmp_path / "p.txt"))
    assert txt.prompts == ("a cat", "a dog") and txt.categories is None
    assert txt.notes == ("1 empty prompts left out", "1 repeated prompts kept once")
    (tmp_path / "parti.tsv").write_text('Prompt\tCategory\tChallenge\tNote\nA "quoted" sign\tWorld Knowledge\tBasic\t\n'
                                        'a red cube\tArtifacts\tColor\t\n')
    parti = load_suite(str(tmp_path / "parti.tsv"))
    assert parti.prompts == ('A "quoted" sign', "a red cube") and parti.categories == ("World Knowledge", "Artifacts")
    hps = tmp_path / "hps"
    hps.mkdir()
    (hps / "anime.json").write_text(json.dumps(["a girl", "a robot"]))
    (hps / "photo.json").write_text(json.dumps(["a street"]))
    assert load_suite(str(hps)).categories == ("anime", "anime", "photo")
    assert load_suite(str(hps / "photo.json")).prompts == ("a street",)
    pl.DataFrame({"caption": ["x", "y"], "category": ["c1", "c2"]}).write_parquet(tmp_path / "p.parquet")
    pl.DataFrame({"text": ["x", "y"]}).write_ndjson(tmp_path / "p.jsonl")
    assert load_suite(str(tmp_path / "p.parquet")).categories == ("c1", "c2")
    assert load_suite(str(tmp_path / "p.jsonl"), max_prompts=1).prompts == ("x",)
    pl.DataFrame({"words": ["x"]}).write_csv(tmp_path / "bad.csv")
    with pytest.raises(SuiteError, match="no prompt column; expected one of prompt, Prompt, caption, text"):
        load_suite(str(tmp_path / "bad.csv"))


def test_world_suite_is_fixed_and_categorised():
    a, b = load_suite("world:10"), load_suite("world:10")
    assert a == b and len(a.prompts) == 10 and set(a.categories) <= {"one object", "two objects"}
    assert load_suite("world").prompts[:10] == a.prompts


def test_held_out_split_of_an_ingested_dataset(tmp_path):
    from ingest_data import write_table

    csv, _, _ = write_table(tmp_path / "t")
    for split in ("train", "test_unique"):
        result = runner.invoke(app, ["ingest", str(csv), "-f", "table", "-o", str(tmp_path / split), "--image-root",
                                     str(tmp_path / "t"), "--split", split, "--map", "prompt=caption", "--map",
                                     "image_a=left", "--map", "image_b=right", "--map", "label=winner"])
        assert result.exit_code == 0, result.output
    suite = load_suite(str(tmp_path / "test_unique"))
    assert suite.name == "test_unique:test_unique" and suite.prompts == ("one", "two", "tie")
    with pytest.raises(SuiteError, match="no held-out split .it has train."):
        load_suite(str(tmp_path / "train"))


# ------------------------------------------------------------------------------ a real evaluation
def test_evaluate_end_to_end_resumes_and_refuses_another_config(tmp_path, torch_one_thread):
    out = tmp_path / "ev"
    shutil.copytree(build_evaluation(), out)
    table = pl.read_parquet(out / "images.parquet")
    assert table.columns == ["model", "prompt_index", "prompt", "category", "seed", "image", "world", "clip:domain"]
    assert table.height == 3 * 6 and table["model"].unique(maintain_order=True).to_list() == ["base", "lora", "full"]
    for model in ("base", "lora", "full"):  # the same seeds, prompt by prompt, in every model
        assert table.filter(pl.col("model") == model)["seed"].to_list() == list(range(7, 13))
    images = {m: [(out / p).read_bytes() for p in table.filter(pl.col("model") == m)["image"]] for m in ("base", "lora", "full")}
    assert images["base"] != images["lora"] and images["base"] != images["full"]
    summary = json.loads((out / "summary.json").read_text())
    world = summary["scorers"]["world"]
    assert set(world["comparisons"]) == {"lora", "full"} and world["key"] == "world/reward"
    lo, hi = world["comparisons"]["lora"]["win_rate_ci"]
    assert lo <= world["comparisons"]["lora"]["win_rate"] <= hi and world["comparisons"]["full"]["pairs"] == 6
    assert set(world["by_category"]) == set(load_suite("world:3").categories)

    # a crash after the first batch of `full`: its other batch and the summary are redone, nothing else
    (out / "shards" / "full" / "00001.arrow").unlink()
    (out / "summary.json").unlink()
    kept = (out / "shards" / "base" / "00000.arrow").stat().st_mtime_ns
    again = evaluate_cli(out)
    assert again.exit_code == 0, again.output
    assert (out / "shards" / "base" / "00000.arrow").stat().st_mtime_ns == kept
    assert pl.read_parquet(out / "images.parquet").equals(table)  # deterministic: the same images and scores
    assert [(out / p).read_bytes() for p in table.filter(pl.col("model") == "full")["image"]] == images["full"]

    other = evaluate_cli(out, "--guidance-scale", "2")
    assert other.exit_code == 2 and "another guidance_scale" in other.output


def test_evaluate_fails_before_any_work_on_bad_inputs(tmp_path):
    result = evaluate_cli(tmp_path / "ev", "--scorers", "world,hps")
    assert result.exit_code == 2 and "xswu/HPSv2/HPS_v2.1_compressed.pt" in result.output
    (tmp_path / "cats.txt").write_text("a photo of a cat\n")
    cats = evaluate_cli(tmp_path / "ev", "--prompts", str(tmp_path / "cats.txt"))
    assert cats.exit_code == 2 and "'a photo of a cat' is not a prompt of the synthetic world" in cats.output
    no_model = evaluate_cli(tmp_path / "ev", "--model", str(tmp_path / "nothing"))
    assert no_model.exit_code == 2 and "does not exist" in no_model.output
    not_lora = evaluate_cli(tmp_path / "ev", "--lora", str(tmp_path))
    assert not_lora.exit_code == 2 and "no LoRA weights" in not_lora.output
    assert not (tmp_path / "ev").exists()
