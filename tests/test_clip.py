"""CLIP embeddings, scores and filters on real images of the synthetic world, with tiny open_clip models."""
from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pytest

from curate import ids, schema
from curate.clip.embed import EmbedOptions, bucket_of
from curate.clip.filters import (FilterRules, RuleError, build_filter_stage, duplicate_clusters, funnel_counts,
                                 funnel_lines, reduce_pair_scores)
from curate.clip.models import ModelError, resolve
from curate.clip.pipeline import embed_dataset
from curate.clip.scores import row_cosines, winner_margin
from curate.dataset import Dataset, write_shard
from curate.verify import commit_files
from curate.runner import run_stage
from curate.synth import scene as sc
from curate.synth.pool import make_pool

TINY_CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
OPTIONS = EmbedOptions(batch_size=4, decode_workers=1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random tiny CLIP in open_clip's local-dir layout (config + safetensors), built offline."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CFG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def write_world(root, seed: int = 0, n_prompts: int = 4, per_prompt: int = 3, corrupt: int | None = 0, shard: str = "00000"):
    """pairs + images tables of rendered synthetic scenes: every candidate pair of each prompt."""
    pool = make_pool(np.random.default_rng(seed), n_prompts, per_prompt)
    blobs = [sc.render_bytes(pool.scene(i), pool.params(i), 48, pool.fmt[i], int(pool.seed[i])) for i in range(pool.n_images)]
    if corrupt is not None:
        blobs[corrupt] = blobs[corrupt][:50]  # a truncated file: its header parses, its pixels do not
    image_ids = [ids.image_id(b) for b in blobs]
    triples = [(p, p * per_prompt + a, p * per_prompt + b) for p in range(n_prompts)
               for a in range(per_prompt) for b in range(a + 1, per_prompt)]
    source = ids.source_name("pickapic", f"world-{seed}.parquet")
    n = len(triples)
    pairs = {"pair_id": [ids.pair_id(source, k) for k in range(n)], "prompt": [pool.prompts[p] for p, _, _ in triples],
             "prompt_id": [ids.prompt_id(pool.prompts[p]) for p, _, _ in triples],
             "image_a_id": [image_ids[a] for _, a, _ in triples], "image_b_id": [image_ids[b] for _, _, b in triples],
             "label": [("a", "b", "tie")[k % 3] for k in range(n)], "annotator_id": [None] * n, "annotator_trust": [None] * n, "votes_a": [None] * n,
             "votes_b": [None] * n, "model_a": [None] * n, "model_b": [None] * n, "created_at": [None] * n,
             "source": [source] * n, "source_row": list(range(n)), "source_item": [0] * n, "split": ["train"] * n}
    written = {"pairs": [write_shard(root / "tables" / "pairs" / f"ingest-{shard}.arrow", schema.load("pairs"), [schema.load("pairs").table(pairs)])]}
    images = {"image_id": image_ids, "bytes": blobs, "format": list(pool.fmt), "width": [48] * len(blobs), "height": [48] * len(blobs)}
    written["images"] = [write_shard(root / "tables" / "images" / f"ingest-{shard}.arrow", schema.load("images"), [schema.load("images").table(images)])]
    commit_files(root, f"world-{shard}", written)  # hand-written tables are data once a manifest lists them
    return pool, image_ids, pairs


# ------------------------------------------------------------------------------- hand-worked math
def test_winner_margin_and_cosines_by_hand():
    assert winner_margin(np.array([0.3, 0.3, 0.3]), np.array([0.1, 0.1, 0.1]), np.array(["a", "b", "tie"])) \
        == pytest.approx([0.2, -0.2, 0.0])
    assert row_cosines(np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 2.0]])) == pytest.approx([1.0, 0.0])
    assert reduce_pair_scores(np.array([0.1, 0.5]), np.array([0.3, 0.2]), "max") == pytest.approx([0.3, 0.5])
    assert reduce_pair_scores(np.array([0.1, 0.5]), np.array([0.3, 0.2]), "mean") == pytest.approx([0.2, 0.35])


def test_funnel_counts_each_pair_under_its_first_rule():
    flags = {"unscored": np.array([1, 0, 0, 0, 0], bool), "low_prompt_score": np.array([1, 1, 0, 0, 0], bool),
             "near_identical_images": np.array([0, 1, 1, 0, 0], bool), "semantic_duplicate": np.array([0, 0, 0, 1, 0], bool)}
    assert funnel_counts(flags) == {"unscored": 1, "low_prompt_score": 1, "near_identical_images": 1, "semantic_duplicate": 1}


def test_duplicate_clusters_match_swapped_and_near_images_only_within_a_prompt():
    rng = np.random.default_rng(0)
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    x, y, z = unit(rng.standard_normal((3, 32)))
    jitter = unit((x + 0.02 * unit(rng.standard_normal((1, 32)))[0])[None])[0]  # cosine with x about 0.9998
    a = np.stack([x, y, jitter, x, z, x])
    b = np.stack([y, x, y, z, y, y])
    groups = np.array([0, 0, 0, 0, 0, 1])  # pair 5 has x, y too, but another prompt
    # pair 1 is pair 0 swapped; pair 2 is pair 0 with a near image; 3 and 4 share one image with pair 0
    assert duplicate_clusters(groups, a, b, epsilon=0.01).tolist() == [0, 0, 0, 3, 4, 5]
    assert duplicate_clusters(groups, a, b, epsilon=0.0).tolist() == [0, 0, 2, 3, 4, 5]


# -------------------------------------------------------------------------------- model errors
def test_unknown_model_lists_close_matches():
    with pytest.raises(ModelError, match=r"unknown open_clip model 'ViT-B-33'.*ViT-B-32"):
        resolve("ViT-B-33", "laion2b_s34b_b79k")


def test_offline_missing_weights_fail_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1")  # unroutable: a hub call would hang, not fail
    import open_clip  # noqa: F401  (the import is slow; what must be instant is the check)

    started = time.perf_counter()
    with pytest.raises(ModelError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        resolve("ViT-B-32", "laion2b_s34b_b79k")
    assert time.perf_counter() - started < 10  # huggingface_hub's retry loop takes ~45 s
    with pytest.raises(ModelError, match="tags for ViT-B-32: .*laion2b_s34b_b79k"):
        resolve("ViT-B-32", "no-such-tag")
    with pytest.raises(ModelError, match="no open_clip_config.json"):
        resolve(f"local-dir:{tmp_path}")


# ---------------------------------------------------------------------------------- embed stage
def test_embed_is_incremental_records_failures_and_scores_pairs(tmp_path, tiny_model):
    pool, image_ids, pairs = write_world(tmp_path)
    source = resolve(tiny_model)
    first = embed_dataset(tmp_path, source, options=OPTIONS, images_per_shard=5)
    ds = Dataset(tmp_path)
    assert first.embed.stats["images_embedded"] == pool.n_images - 1
    assert first.embed.stats["prompts_embedded"] == 4
    failures = ds.read_table("embed_failures").to_pylist()
    assert [(f["image_id"], f["reason"]) for f in failures] == [(image_ids[0], "undecodable_image")]
    assert "0x" not in failures[0]["message"]  # no object addresses: output bytes must not vary per run

    emb = ds.read_table("image_embeddings")
    assert emb.schema.field("embedding").type == pa.list_(pa.float16(), 16)
    assert sorted(emb["image_id"].to_pylist()) == sorted(image_ids[1:])  # each distinct image once
    vectors = np.array(emb["embedding"].to_pylist(), dtype=np.float32)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(len(vectors)), abs=2e-3)

    second = embed_dataset(tmp_path, source, options=OPTIONS, images_per_shard=5)
    assert second.embed is None and (second.pending_images, second.pending_prompts) == (0, 0)
    assert second.scores.already_complete

    write_world(tmp_path, seed=1, n_prompts=2, corrupt=None, shard="00001")  # new data arrives
    third = embed_dataset(tmp_path, source, options=OPTIONS, images_per_shard=5)
    assert third.embed.stats["images_embedded"] == 6 and third.embed.stats["prompts_embedded"] == 2
    assert ds.num_rows("image_embeddings") == pool.n_images - 1 + 6
    assert ds.num_rows("clip_scores") == ds.num_rows("pairs") == 12 + 6


def test_an_interrupted_generation_is_resumed_not_restarted(tmp_path, tiny_model):
    write_world(tmp_path, n_prompts=3, corrupt=None)
    source = resolve(tiny_model)
    first = embed_dataset(tmp_path, source, options=OPTIONS, images_per_shard=3)
    run = Dataset(tmp_path).run_dir(first.embed.stage)
    (run / "manifest.json").unlink()  # as if killed after its shards, before the commit
    (run / "shards" / "00001.json").unlink()  # ... and before one shard's record
    resumed = embed_dataset(tmp_path, source, options=OPTIONS, images_per_shard=3, resume=True)
    assert resumed.embed.stage == first.embed.stage  # the same generation, finished
    assert resumed.embed.skipped_shards == first.embed.tables["image_embeddings"]["shards"].__len__() - 1
    assert Dataset(tmp_path).num_rows("image_embeddings") == 9


def test_clip_scores_agree_with_the_stored_embeddings(tmp_path, tiny_model):
    _, image_ids, pairs = write_world(tmp_path)
    key = embed_dataset(tmp_path, resolve(tiny_model), options=OPTIONS).model
    ds = Dataset(tmp_path)
    image = {r["image_id"]: np.array(r["embedding"], np.float32) for r in ds.read_table("image_embeddings").to_pylist()}
    prompt = {r["prompt_id"]: np.array(r["embedding"], np.float32) for r in ds.read_table("prompt_embeddings").to_pylist()}
    rows = {r["pair_id"]: r for r in ds.read_table("clip_scores").to_pylist()}
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    for k, pair_id in enumerate(pairs["pair_id"]):
        a, b, p = pairs["image_a_id"][k], pairs["image_b_id"][k], pairs["prompt_id"][k]
        row = rows[pair_id]
        if image_ids[0] in (a, b):  # the corrupt image: unscored, not dropped
            assert row["score_a"] is None and row["margin"] is None
            continue
        assert row["score_a"] == pytest.approx(float(unit(prompt[p]) @ unit(image[a])), abs=1e-5)
        assert row["image_cosine"] == pytest.approx(float(unit(image[a]) @ unit(image[b])), abs=1e-5)
        expected = {"a": row["score_a"] - row["score_b"], "b": row["score_b"] - row["score_a"], "tie": 0.0}
        assert row["margin"] == pytest.approx(expected[pairs["label"][k]], abs=1e-6)
    scores = ds.read_table("scores")
    keys = list(zip(scores["image_id"].to_pylist(), scores["prompt_id"].to_pylist()))
    assert len(keys) == len(set(keys)) == len(image_ids) - 1  # each image belongs to one prompt here
    assert set(scores["scorer"].to_pylist()) == {f"clip:{key}"}


# ------------------------------------------------------------------------------------- filters
def test_filter_cli_funnel_reconciles(tmp_path, tiny_model):
    from typer.testing import CliRunner

    from curate.cli import app

    write_world(tmp_path, n_prompts=5)
    runner = CliRunner()
    result = runner.invoke(app, ["embed", str(tmp_path), "--model", tiny_model, "--batch-size", "4", "--decode-workers", "1"])
    assert result.exit_code == 0, result.output
    assert "images embedded" in result.output
    rules = tmp_path / "rules.toml"
    rules.write_text("[filter]\nmin_score_quantile = 0.3\nmax_image_cosine = 0.999\nduplicate_epsilon = 0.01\n")
    result = runner.invoke(app, ["filter", str(tmp_path), "--rules", str(rules)])
    assert result.exit_code == 0, result.output
    filters = Dataset(tmp_path).read_table("filters").to_pylist()
    assert len(filters) == Dataset(tmp_path).num_rows("pairs") == 15
    assert all(f["keep"] == (not f["reasons"]) for f in filters)
    first = {rule: sum(1 for f in filters if f["reasons"][:1] == [rule]) for rule in
             ("unscored", "low_prompt_score", "near_identical_images", "semantic_duplicate")}
    assert first["unscored"] == 2  # the corrupt image is in two pairs
    lines = {line.split()[1] if line.startswith("  -") else line.split()[0]: line.split() for line in result.output.splitlines()}
    for rule, count in first.items():
        assert int(lines[rule][2]) == count
    assert int(lines["kept"][1]) == sum(f["keep"] for f in filters)

    bad = runner.invoke(app, ["embed", str(tmp_path), "--model", "ViT-B-33"])
    assert bad.exit_code == 2 and "ViT-B-32" in bad.output


def test_filter_rules_from_toml_and_quantile(tmp_path, tiny_model):
    (tmp_path / "bad.toml").write_text("min_scor = 0.2\n")
    with pytest.raises(RuleError, match="unknown rule keys \\['min_scor'\\]"):
        FilterRules.from_toml(tmp_path / "bad.toml")
    (tmp_path / "off.toml").write_text("max_image_cosine = false\nduplicate_epsilon = false\n")
    assert FilterRules.from_toml(tmp_path / "off.toml").max_image_cosine is None

    write_world(tmp_path, n_prompts=4, corrupt=None)
    embed_dataset(tmp_path, resolve(tiny_model), options=OPTIONS)
    ds = Dataset(tmp_path)
    stage = build_filter_stage(ds, FilterRules(min_score_quantile=0.5, score_of="mean", max_image_cosine=None, duplicate_epsilon=None))
    report = run_stage(stage, ds)
    assert report.stats["removed_low_prompt_score"] == 6  # strictly below the median of 12 distinct mean scores
    assert funnel_lines(report.stats, 12)[-1].split() == ["kept", "6"]


def test_split_preprocess_equals_open_clip_preprocess(tiny_model):
    import torch

    from curate.clip.decode import PixelPipeline, decode_image
    from curate.clip.models import load_clip

    model = load_clip(resolve(tiny_model))
    pipeline = PixelPipeline(model.preprocess)
    assert pipeline.split and pipeline.min_side == 32
    data = sc.render_bytes(sc.Scene((sc.Obj("star", "red", "large"),), "left"), size=48, fmt="png")
    expected = model.preprocess(decode_image(data))
    got = pipeline.finish(torch.stack([pipeline.to_pixels(data)]))[0]
    assert pipeline.to_pixels(data).dtype == torch.uint8
    assert torch.allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------------------------- domain CLIP
def test_bucket_of_matches_the_hex_definition():
    digests = [ids.image_id(bytes([k])) for k in range(50)]
    assert bucket_of(pa.array(digests), 7).tolist() == [int(d[:8], 16) % 7 for d in digests]
    assert bucket_of(["0000001a" + "0" * 24], 16).tolist() == [10]
    with pytest.raises(ValueError, match="hex"):
        bucket_of(["zz" * 16], 4)


def test_domain_clip_scores_the_matching_prompt_highest():
    from curate.clip.decode import decode_image
    from curate.clip.models import load_domain_clip
    from curate.synth.pool import random_scenes

    model = load_domain_clip()
    assert model.key.startswith("domain-clip/")
    scenes = [sc.Scene.from_codes(row) for row in random_scenes(np.random.default_rng(7), 8)]
    images = [model.preprocess(decode_image(sc.render_bytes(s, size=64, seed=k))) for k, s in enumerate(scenes)]
    import torch

    image_f = model.encode_images(torch.stack(images))
    text_f = model.encode_texts([sc.prompt_for(s) for s in scenes])
    assert (image_f @ text_f.T).argmax(axis=1).tolist() == list(range(8))
    # The hard case: the same objects with the relation flipped ("left of" vs "right of", ...).
    two = [s for s in scenes if len(s.objects) == 2]
    flipped = [sc.Scene(s.objects, {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[s.layout],
                        s.background) for s in two]
    own = np.array([image_f[scenes.index(s)] for s in two])
    right, wrong = model.encode_texts([sc.prompt_for(s) for s in two]), model.encode_texts([sc.prompt_for(s) for s in flipped])
    assert ((own * right).sum(1) > (own * wrong).sum(1)).all()


def test_dedup_keeps_repeat_judgements_and_removes_re_encoded_copies(tmp_path, tiny_model):
    """Two people judging the same two images is the crowd, not a duplicate; a re-encoded copy is."""
    import io

    from PIL import Image
    from typer.testing import CliRunner

    from curate.cli import app

    scene = Image.new("RGB", (48, 48), "white")
    scene.paste((200, 30, 30), (8, 8, 30, 30))
    other = Image.new("RGB", (48, 48), "black")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, img, level in (("x.png", scene, 6), ("x_copy.png", scene, 1), ("y.png", other, 6)):
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=level)  # same pixels, different bytes for the copy
        (folder / name).write_bytes(buf.getvalue())
    assert (folder / "x.png").read_bytes() != (folder / "x_copy.png").read_bytes()
    (tmp_path / "pairs.csv").write_text("prompt,image_a,image_b,label,annotator\n"
                                        "a red square,x.png,y.png,a,ann1\n"
                                        "a red square,y.png,x.png,b,ann2\n"       # the same pair, judged again
                                        "a red square,x_copy.png,y.png,a,ann3\n")  # a re-encoded copy of it
    runner = CliRunner()
    for args in (["ingest", str(tmp_path / "pairs.csv"), "-f", "table", "-o", str(tmp_path / "ds"), "--image-root", str(folder)],
                 ["embed", str(tmp_path / "ds"), "--model", tiny_model, "--decode-workers", "0"],
                 ["filter", str(tmp_path / "ds"), "--no-near-identical"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    pairs = {p["pair_id"]: p["annotator_id"] for p in Dataset(tmp_path / "ds").read_table("pairs").to_pylist()}
    verdict = {pairs[f["pair_id"]]: f["reasons"] for f in Dataset(tmp_path / "ds").read_table("filters").to_pylist()}
    kept_pair = "ann3" if verdict["ann3"] == [] else "ann1"  # the smallest pair_id of the cluster stays
    if kept_pair == "ann1":
        assert verdict == {"ann1": [], "ann2": [], "ann3": ["semantic_duplicate"]}
    else:
        assert verdict == {"ann1": ["semantic_duplicate"], "ann2": ["semantic_duplicate"], "ann3": []}


# ------------------------------------------------------------------------------------- the shuffle
def _two_generations(root, tiny_model) -> tuple[Dataset, str]:
    """6 prompts embedded in image files of 3, then 3 more prompts in files of 2: two generations."""
    write_world(root, n_prompts=6)
    key = embed_dataset(root, resolve(tiny_model), options=OPTIONS, images_per_shard=3).model
    write_world(root, seed=1, n_prompts=3, corrupt=None, shard="00001")
    embed_dataset(root, resolve(tiny_model), options=OPTIONS, images_per_shard=2)
    return Dataset(root), key


def test_the_partition_gives_each_bucket_what_a_scan_of_the_tables_finds(tmp_path, tiny_model):
    from curate.clip import partition as shuffle

    ds, key = _two_generations(tmp_path, tiny_model)
    columns = list(shuffle.PAIR_COLUMNS)
    pairs = ds.read_table("pairs", columns)
    stored = {t: {r[c]: np.array(r["embedding"], np.float32) for r in ds.read_table(t).to_pylist()}
              for t, c in (("image_embeddings", "image_id"), ("prompt_embeddings", "prompt_id"))}
    for buckets, files_per_task in ((1, 25), (3, 1), (4, 2)):
        stage = shuffle.partition_stage(ds, key, buckets, files_per_task)
        assert sum(t.table == "image_embeddings" for t in stage.layout) > 1 or files_per_task == 25
        report = run_stage(stage, ds)
        assert report.stats["partition:pairs"] == pairs.num_rows == 18 + 9
        part = shuffle.partition_of(ds, stage)
        seen_pairs = 0
        for b in range(buckets):
            expected = pairs.filter(pa.array(bucket_of(pairs["prompt_id"], buckets) == b))
            got = shuffle.bucket_pairs(ds, part, b, columns)
            assert got.to_pylist() == expected.to_pylist()  # the same rows, in the pairs table's order
            seen_pairs += got.num_rows
            images = shuffle.bucket_embeddings(ds, part, b, "image_embeddings")
            shown = set(expected["image_a_id"].to_pylist() + expected["image_b_id"].to_pylist())
            assert set(images) == shown & set(stored["image_embeddings"])  # the corrupt image has none
            prompts = shuffle.bucket_embeddings(ds, part, b, "prompt_embeddings")
            assert set(prompts) == set(expected["prompt_id"].to_pylist())
            for found, table in ((images, "image_embeddings"), (prompts, "prompt_embeddings")):
                for k, v in found.items():
                    assert v == pytest.approx(stored[table][k] / np.linalg.norm(stored[table][k]), abs=1e-6)
        assert seen_pairs == pairs.num_rows


def test_clip_scores_and_filter_do_not_depend_on_the_bucket_count(tmp_path, tiny_model):
    from curate.clip.scores import ClipScoreStage

    ds, key = _two_generations(tmp_path, tiny_model)
    rules = FilterRules(model=key, min_score_quantile=0.3, max_image_cosine=0.999)
    results = []
    for buckets in (1, 3):
        run_stage(ClipScoreStage(key, buckets), ds)
        stage = build_filter_stage(ds, rules)
        report = run_stage(type(stage)(stage.rules, stage.threshold, buckets), ds)
        assert [p.stage for p in report.needs] == [f"clip-partition-{key_slug(key)}"]
        assert report.needs[0].already_complete  # the scores stage made it for the same count
        results.append({t: sorted(ds.read_table(t).to_pylist(), key=lambda r: tuple(map(str, r.values())))
                        for t in ("clip_scores", "scores", "filters")})
    assert results[0] == results[1]
    assert sum(not r["keep"] for r in results[0]["filters"]) > 0


def test_filter_asks_for_the_scores_of_the_current_pairs(tmp_path, tiny_model):
    from curate.clip.scores import ClipScoreStage
    from curate.dataset import DatasetError

    ds, key = _two_generations(tmp_path, tiny_model)
    run_stage(ClipScoreStage(key, 2), ds)  # scores in 2 buckets: the filter's bucket 0 of 1 is not a file of theirs
    stage = build_filter_stage(ds, FilterRules(model=key))
    with pytest.raises(DatasetError, match="run `prefcurate embed"):
        stage.plan(ds)


def key_slug(key: str) -> str:
    from curate.clip.embed import model_slug

    return model_slug(key)
