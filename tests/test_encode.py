"""Encode a curated dataset once, then train from it: real synthetic files, tiny real models, the CLI."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pytest
import torch
from train_data import cli, ingested_world, runner

from curate import schema as schemas
from curate.cli import app
from curate.dataset import Dataset, read_shard, write_shard
from curate.verify import commit_files
from curate.train.dataset_source import DataSelectionError, DatasetPairSource, Selection
from curate.train.encode import committed_files, encode_dataset, encoder_key, load_encoders
from curate.train.models import tiny_sd15, tiny_sdxl

RES = "16"  # 32 px synthetic images -> 16 px crops -> 4 x 8 x 8 latents through the tiny VAE


def count(output: str, label: str) -> int:
    return int(re.search(rf"{re.escape(label)}\s*│\s*([\d,]+)", output).group(1).replace(",", ""))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions are fastest on one thread, and the machine is shared
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Ingested synthetic dataset, a tiny SD1.5 folder, and the outputs of three encode runs."""
    root = tmp_path_factory.mktemp("encode")
    ds, model = ingested_world(root, pairs=60, seed=1)
    runs = [cli("encode", ds, "--model", model, "--resolution", RES, "--batch-size", "8"),
            cli("encode", ds, "--model", model, "--resolution", RES, "--flip"),
            cli("encode", ds, "--model", model, "--resolution", RES, "--flip")]
    return {"root": root, "ds": ds, "model": model, "runs": runs, "key": encoder_key(load_encoders(model))}


def tables(ds: str, table: str) -> pl.DataFrame:
    return pl.from_arrow(Dataset(ds).read_table(table))


def trained_ids(ds: str) -> tuple[set[str], set[str]]:
    """Images and prompts encode must encode: those of non-tie pairs, and the empty prompt (prompt dropout)."""
    from curate.ids import prompt_id

    pairs = tables(ds, "pairs").filter(pl.col("label") != "tie")
    return set(pairs["image_a_id"]) | set(pairs["image_b_id"]), set(pairs["prompt_id"]) | {prompt_id("")}


def test_encode_writes_keyed_tables_once_then_only_what_is_new(world):
    images, prompts = trained_ids(world["ds"])
    first, second, third = world["runs"]
    assert count(first, "latents encoded") == len(images) and count(first, "prompts encoded") == len(prompts)
    # The second run adds the flipped orientation only; the third finds nothing left to do.
    assert count(second, "latents already encoded") == len(images) and count(second, "latents encoded") == len(images)
    assert count(second, "of which flipped") == len(images) and count(second, "prompts encoded") == 0
    assert "nothing new to encode" in third and count(third, "latents already encoded") == 2 * len(images)
    assert sorted(p.name for p in (Dataset(world["ds"]).root / "runs").glob("encode-*")) == \
        [f"encode-{world['key'].replace(':', '-')}-g00{g}" for g in (1, 2)]

    latents = tables(world["ds"], "latents")
    assert set(latents["model"]) == {world["key"]} and set(latents["resolution"]) == {16}
    assert latents.height == 2 * len(images) and latents.select("image_id", "flipped").is_unique().all()
    assert set(latents.filter(~pl.col("flipped"))["image_id"]) == images == set(latents.filter("flipped")["image_id"])
    assert latents["latent_shape"].to_list()[0] == [4, 8, 8] and latents["original_width"].unique().to_list() == [32]
    text = tables(world["ds"], "text_embeddings")
    assert text.height == len(prompts) and set(text["prompt_id"]) == prompts and text["pooled"].null_count() == text.height
    assert text["text_shape"].to_list()[0] == [16, 32]


def test_encodings_match_the_vae_and_text_encoder_run_directly(world):
    from curate.ids import normalize_prompt
    from curate.images import decode_image
    from curate.train.vae import to_pixels, vae_latents
    from curate.train.models import encode_prompts

    components = load_encoders(world["model"])
    row = tables(world["ds"], "latents").filter(pl.col("flipped")).row(0, named=True)
    images = tables(world["ds"], "images").filter(pl.col("image_id") == row["image_id"])
    pixels = to_pixels(decode_image(images["bytes"][0]), 16)
    direct = vae_latents(components.vae, torch.stack([pixels, pixels.flip(-1)]), "cpu")
    stored = torch.tensor(row["latent"], dtype=torch.float32).view(4, 8, 8)
    assert torch.allclose(stored, direct[1], atol=2e-3, rtol=1e-3)  # float16 storage
    assert not torch.allclose(stored, direct[0], atol=2e-3)  # the flipped latent is not the plain one
    prompt = tables(world["ds"], "pairs").filter(pl.col("label") != "tie").row(0, named=True)
    text_row = tables(world["ds"], "text_embeddings").filter(pl.col("prompt_id") == prompt["prompt_id"])
    expected, _ = encode_prompts(components, [normalize_prompt(prompt["prompt"])])
    assert torch.allclose(torch.tensor(text_row["embedding"][0].to_list()).view(16, 32), expected[0], atol=2e-3, rtol=1e-3)


def test_train_cli_from_the_dataset_drops_by_reason_and_reads_u(world, tmp_path):
    ds, model = world["ds"], world["model"]
    cli("annotators", ds)
    cli("flag", ds)
    pairs = tables(ds, "pairs")
    removed = pairs.filter(pl.col("label") != "tie")["pair_id"].to_list()[:3]
    filters = write_shard(Dataset(ds).table_dir("filters") / "test-00000.arrow", schemas.load("filters"), [schemas.load("filters").table({
        "pair_id": pairs["pair_id"].to_arrow(), "keep": [p not in removed for p in pairs["pair_id"]],
        "reasons": [["near_identical_images"] if p in removed else [] for p in pairs["pair_id"]]})])
    commit_files(ds, "test", {"filters": [filters]})  # hand-written: data once a manifest lists it
    run = tmp_path / "run"
    args = ["train", ds, "--model", model, "--output-dir", str(run), "--method", "adaptive-offline", "--max-steps", "3",
            "--batch-size", "4", "--lr", "1e-3", "--lora-rank", "4", "--flip", "--checkpoint-every", "0"]
    out = cli(*args)
    ties = int((pairs["label"] == "tie").sum())
    assert count(out, "dropped: tie") == ties >= 1 and count(out, "dropped: filtered") == 3
    assert count(out, "near_identical_images") == 3 and count(out, "dropped: minority") == 0
    assert count(out, "trained pairs") == pairs.height - ties - 3
    scores = tables(ds, "pair_scores").join(pairs.select("pair_id", "label"), on="pair_id")
    with_u = scores.filter((pl.col("label") != "tie") & ~pl.col("pair_id").is_in(removed) & pl.col("u").is_not_null())
    assert count(out, "u from pair_scores") == with_u.height > 0
    assert f"trained 3 steps; dropped pairs: {{'tie': {ties}, 'filtered': 3}}" in out
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[0]["dropped_pairs"] == {"tie": ties, "filtered": 3}
    assert sum(s.get("u_mean", 0) for s in steps) > 0 and all(s["w_mean"] <= 1 for s in steps if "w_mean" in s)
    assert json.loads((run / "data.json").read_text())["counts"]["trained"] == pairs.height - ties - 3

    refused = runner.invoke(app, args)  # the same output dir again, without --resume
    assert refused.exit_code == 2 and "pass --resume" in refused.output
    cli("sample", "--model", model, "--lora", str(run / "final"), "--out", str(tmp_path / "grid.png"),
        "-p", "a red cat", "-p", "a dog", "--steps", "2", "--size", "16")
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (32, 32)  # 2 prompts x (base, tuned)


def test_missing_latents_are_an_error_naming_the_encode_command(world, tmp_path):
    other = tiny_sd15(seed=1).save_pretrained(tmp_path / "other")  # different weights: a different encoder key
    res = runner.invoke(app, ["train", world["ds"], "--model", str(other), "--output-dir", str(tmp_path / "run"),
                              "--max-steps", "1", "--batch-size", "4"])
    assert res.exit_code == 2
    assert re.search(rf"no latents for model sd:\w+; run `prefcurate encode \S+ --model {re.escape(str(other))}`",
                     " ".join(res.output.split()))

    # Remove one image's latents from a copy: the pairs showing it can no longer be trained.
    ds = shutil.copytree(world["ds"], tmp_path / "ds")
    first = ds / committed_files(Dataset(ds), world["key"])["latents"][0]
    table = read_shard(first)
    gone = table["image_id"][0].as_py()
    write_shard(first, schemas.load("latents"), [table.filter(pc.not_equal(table["image_id"], gone))], latent=256)
    pairs = tables(str(ds), "pairs").filter((pl.col("label") != "tie") & (pl.col("split") == "train"))
    hit = pairs.filter((pl.col("image_a_id") == gone) | (pl.col("image_b_id") == gone)).height
    with pytest.raises(DataSelectionError, match=rf"{hit} of {pairs.height} selected pairs have no latents of model "
                                                 rf".* run `prefcurate encode .* --model X --resolution 16`"):
        DatasetPairSource(ds, world["key"], 4, model_hint="X", selection=Selection(filtered="keep"))
    source = DatasetPairSource(ds, world["key"], 4, selection=Selection(filtered="keep", missing="drop"))
    assert source.dropped["missing_latents"] == hit and gone not in {i for p in source.pairs.iter_rows(named=True)
                                                                     for i in (p["winner_id"], p["loser_id"])}

    # A generation without its manifest was never committed: its (flipped) latents are not data.
    (ds / "runs" / f"encode-{world['key'].replace(':', '-')}-g002" / "manifest.json").unlink()
    with pytest.raises(DataSelectionError, match="encoded without --flip.* --flip`, or train with --no-flip"):
        DatasetPairSource(ds, world["key"], 4, flip=True, selection=Selection(missing="drop"))


def test_a_python_caller_of_train_from_dataset_gets_data_json(world, tmp_path):
    from curate.train.config import TrainConfig
    from curate.train.from_dataset import train_from_dataset

    cfg = TrainConfig(model=world["model"], output_dir=str(tmp_path / "run"), max_steps=1, batch_size=4, lora_rank=4,
                      checkpoint_every=0, tensorboard=False, progress=False)
    seen = []
    result, source = train_from_dataset(world["ds"], cfg, Selection(filtered="keep"), on_selected=seen.append)
    assert result.step == 1 and seen == [source]
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["selection"]["filtered"] == "keep" and data["counts"]["trained"] == source.counts["trained"] > 0
    with pytest.raises(ValueError, match="pass --resume"):
        train_from_dataset(world["ds"], cfg)


def test_source_resumes_at_the_exact_position_with_shared_flips(world):
    source = DatasetPairSource(world["ds"], world["key"], 4, flip=True, seed=3)
    per_epoch = source.batches_per_epoch
    it = iter(source)
    seen = [next(it) for _ in range(per_epoch + 2)]  # crosses into the second epoch
    state = source.state_dict()
    expected = next(it)
    again = DatasetPairSource(world["ds"], world["key"], 4, flip=True, seed=3)
    again.load_state_dict(state)
    resumed = next(iter(again))
    assert resumed.pair_ids == expected.pair_ids and torch.equal(resumed.latent_w, expected.latent_w)
    assert torch.equal(resumed.latent_l, expected.latent_l) and torch.equal(resumed.text_emb, expected.text_emb)
    assert [b.pair_ids for b in seen[:per_epoch]] != [b.pair_ids for b in seen[per_epoch:2 * per_epoch]]

    # Winner = the labelled image; both images of a pair share one orientation, and both occur.
    latents = tables(world["ds"], "latents")
    stored = {(r["image_id"], r["flipped"]): torch.tensor(r["latent"]).view(4, 8, 8).float()
              for r in latents.iter_rows(named=True)}
    labels = {r["pair_id"]: r for r in tables(world["ds"], "pairs").iter_rows(named=True)}
    orientations = []
    for batch in seen:
        for i, pid in enumerate(batch.pair_ids):
            p = labels[pid]
            w, l = (p["image_a_id"], p["image_b_id"]) if p["label"] == "a" else (p["image_b_id"], p["image_a_id"])
            flips = [f for f in (False, True) if torch.equal(batch.latent_w[i], stored[(w, f)])]
            assert flips and torch.equal(batch.latent_l[i], stored[(l, flips[0])]), pid
            orientations.append(flips[0])
    assert 0 < sum(orientations) < len(orientations)
    with pytest.raises(DataSelectionError, match="saved with seed=3"):
        DatasetPairSource(world["ds"], world["key"], 4, flip=True, seed=4).load_state_dict(state)


def test_sdxl_encodings_give_pooled_embeddings_and_time_ids(world):
    folder = tiny_sdxl().save_pretrained(world["root"] / "sdxl")
    summary = encode_dataset(world["ds"], str(folder), resolution=16, batch_size=8)
    assert summary.key.startswith("sdxl:") and summary.stats["prompts_encoded"] == len(trained_ids(world["ds"])[1])
    batch = next(iter(DatasetPairSource(world["ds"], summary.key, 4, selection=Selection(need_u=False))))
    assert batch.latent_w.shape == (4, 4, 8, 8) and batch.text_emb.shape == (4, 16, 32) and batch.pooled.shape == (4, 16)
    # (original h, w, crop top, left, target h, w): 32 px images resized to 16 need no crop.
    assert batch.time_ids.tolist() == [[32.0, 32.0, 0.0, 0.0, 16.0, 16.0]] * 4
    assert np.isfinite(batch.pooled.numpy()).all()
    source = DatasetPairSource(world["ds"], summary.key, 4, selection=Selection(need_u=False))
    assert source.empty_prompt[0].shape == (16, 32) and source.empty_prompt[1].shape == (16,)

    # Interrupt it after the fact: no manifest and one shard unfinished. --resume redoes that shard only.
    run = Dataset(world["ds"]).run_dir(f"encode-{summary.key.replace(':', '-')}-g001")
    keys = {"latents": ["image_id", "flipped"], "text_embeddings": ["prompt_id"]}
    mine = lambda t: tables(world["ds"], t).filter(pl.col("model") == summary.key).sort(keys[t])  # noqa: E731
    before = {t: mine(t) for t in keys}
    (run / "manifest.json").unlink()
    (run / "shards" / "00000.json").unlink()
    resumed = encode_dataset(world["ds"], str(folder), resolution=16, batch_size=8, resume=True)
    assert resumed.generation == 1 and resumed.kept_shards == 1 and resumed.stats["latents_encoded"] == len(trained_ids(world["ds"])[0])
    assert all(mine(t).equals(frame) for t, frame in before.items())  # the same rows, the same bytes

    # Flipped pairs: the crop left in the time ids is mirrored (diffusers' SDXL script: 16 - 0), the rest kept.
    encode_dataset(world["ds"], str(folder), resolution=16, batch_size=8, flip=True)
    it = iter(DatasetPairSource(world["ds"], summary.key, 4, flip=True, seed=3))
    lefts = [row[3] for _ in range(4) for row in next(it).time_ids.tolist()]
    assert set(lefts) == {0.0, 16.0}


def test_minority_weight_multiplies_each_pairs_loss(world, tmp_path):
    ds, model = world["ds"], world["model"]
    cli("annotators", ds)
    cli("flag", ds)
    run = tmp_path / "weighted"
    cli("train", ds, "--model", model, "--output-dir", str(run), "--method", "dpo", "--minority", "weight",
        "--max-steps", "2", "--batch-size", "4", "--lora-rank", "4", "--checkpoint-every", "0",
        "--prompt-dropout", "0.5")  # the empty prompt's embedding is in the dataset: encode stored it
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    weights = [s["w_mean"] for s in steps if "w_mean" in s]
    assert weights and all(0 < w <= 1 for w in weights)  # pair_scores.weight reached the loss
    # Health metrics: each pair's W, split by the flag pair_scores gives it.
    scores = tables(ds, "pair_scores")
    by_flag = {flag: {round(w, 4) for w in scores.filter(pl.col("is_minority") == flag)["weight"]} for flag in (True, False)}
    logged = [s for s in steps if "loss" in s]
    assert all(len(s["w_flagged"]) + len(s["w_kept"]) == 4 for s in logged)
    assert all(set(s["w_flagged"]) <= by_flag[True] and set(s["w_kept"]) <= by_flag[False] for s in logged)
