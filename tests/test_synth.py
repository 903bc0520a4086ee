"""The synthetic preference world: scene ground truth, annotators, layouts, determinism, CLI."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from curate import ids
from curate.cli import app
from curate.synth import annotators as an
from curate.synth import malformed as mf
from curate.synth.scene import Obj, QualityParams, Scene, fidelity, prompt_for, quality, render, render_bytes, true_reward
from curate.synth.world import WorldConfig, build_world

RED_CIRCLE, BLUE_TRIANGLE = Obj("circle", "red", "large"), Obj("triangle", "blue", "small")
TARGET = Scene((RED_CIRCLE, BLUE_TRIANGLE), "left of", "white")

PICKAPIC_TYPES = {
    "caption": pa.string(), "jpg_0": pa.binary(), "jpg_1": pa.binary(), "label_0": pa.float64(), "label_1": pa.float64(),
    "has_label": pa.bool_(), "are_different": pa.bool_(), "image_0_uid": pa.string(), "image_1_uid": pa.string(),
    "best_image_uid": pa.string(), "image_0_url": pa.string(), "image_1_url": pa.string(), "model_0": pa.string(),
    "model_1": pa.string(), "user_id": pa.int64(), "ranking_id": pa.int64(), "created_at": pa.timestamp("ns"),
    "num_example_per_prompt": pa.int64(), "__index_level_0__": pa.int64(),
}
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MULTIVOTE_TYPES = {
    "prompt": pa.string(), "image1": HF_IMAGE, "image2": HF_IMAGE, "votes_image1": pa.int64(), "votes_image2": pa.int64(),
    "model1": pa.string(), "model2": pa.string(), "detailed_results": pa.string(),
}
PLANTED = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    summary = build_world(out, WorldConfig(pairs=300, seed=3, image_size=32, malformed=PLANTED, rows_per_file=128))
    return out, summary


# ---------------------------------------------------------------- scene ground truth
def test_prompt_describes_the_scene():
    assert prompt_for(TARGET) == "a large red circle left of a small blue triangle on a white background"
    assert prompt_for(Scene((RED_CIRCLE,), "top", "grey")) == "a large red circle at the top of a grey background"


def test_fidelity_counts_matching_attributes():
    assert fidelity(TARGET, TARGET) == 1.0
    # The same scene described the other way round.
    assert fidelity(TARGET, Scene((BLUE_TRIANGLE, RED_CIRCLE), "right of", "white")) == 1.0
    # 8 attributes (3 per object, layout, background): a wrong colour loses 1, a wrong relation 1.
    assert fidelity(TARGET, Scene((Obj("circle", "green", "large"), BLUE_TRIANGLE), "left of", "white")) == pytest.approx(7 / 8)
    assert fidelity(TARGET, Scene((RED_CIRCLE, BLUE_TRIANGLE), "above", "black")) == pytest.approx(6 / 8)
    # A dropped object: the circle matches (3), layout never does, background does -> 4 / 8.
    assert fidelity(TARGET, Scene((RED_CIRCLE,), "center", "white")) == pytest.approx(4 / 8)


def test_quality_and_reward():
    assert quality(QualityParams()) == 1.0
    blurs = [quality(QualityParams(blur=b)) for b in (0.0, 0.5, 1.5, 2.5)]
    assert blurs == sorted(blurs, reverse=True) and blurs[-1] == 0.0
    assert quality(QualityParams(noise=0.125, jpeg_quality=50)) == pytest.approx(0.5 * (1 - 45 / 90))
    assert true_reward(1.0, 1.0) == pytest.approx(1.0) and true_reward(0.0, 0.0) == 0.0


def test_render_gives_real_images():
    image = render(TARGET, size=48)
    assert image.size == (48, 48)
    assert image.getpixel((2, 2)) == (250, 250, 250)  # the white background
    left, right = np.asarray(image)[24, 13], np.asarray(image)[24, 34]
    assert left[0] > 150 and left[2] < 100 and right[2] > 100  # red on the left, blue on the right
    assert render_bytes(TARGET, fmt="png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert render_bytes(TARGET, fmt="jpeg")[:3] == b"\xff\xd8\xff"
    assert render_bytes(TARGET, seed=1) != render_bytes(TARGET, seed=2)


def test_minority_definition_ignores_ties():
    label = np.array([an.A, an.B, an.TIE, an.A, an.B])
    majority = np.array([an.B, an.B, an.A, an.TIE, an.A])
    assert an.is_minority(label, majority).tolist() == [True, False, False, False, True]


# ---------------------------------------------------------------- layouts
def test_pickapic_columns_images_and_files(world):
    out, _ = world
    files = sorted((out / "pickapic").glob("train-*.parquet"))
    assert [f.name for f in files] == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]  # 312 rows, 128 a file
    table = pa.concat_tables([pq.read_table(f) for f in files])
    assert dict(zip(table.schema.names, table.schema.types)) == PICKAPIC_TYPES
    assert table.schema.names == list(PICKAPIC_TYPES)
    planted = pq.read_table(out / "truth" / "planted.parquet").to_pandas()
    broken = set(zip(planted.source, planted.source_row))
    formats, undecodable = {}, 0
    for f in files:
        for row, (b0, b1) in enumerate(zip(pq.read_table(f).column("jpg_0").to_pylist(), pq.read_table(f).column("jpg_1").to_pylist())):
            for data in (b0, b1):
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        im.load()
                        formats[im.format] = formats.get(im.format, 0) + 1
                except OSError:
                    undecodable += 1
                    assert (ids.source_name("pickapic", f.name), row) in broken
    assert formats["PNG"] > 100 and formats["JPEG"] > 100
    assert undecodable >= 2  # the planted undecodable and truncated images


def test_other_layouts(world):
    out, _ = world
    multivote = pq.read_table(out / "multivote" / "train.parquet")
    assert dict(zip(multivote.schema.names, multivote.schema.types)) == MULTIVOTE_TYPES
    votes = json.loads(multivote.column("detailed_results")[0].as_py())
    assert len(votes) == multivote.column("votes_image1")[0].as_py() + multivote.column("votes_image2")[0].as_py()
    train = json.loads((out / "hpdv2" / "train.json").read_text())
    assert {"prompt", "file_path"} <= set(train[0]) and len(train[0]["file_path"]) == 2
    assert (out / "hpdv2" / train[0]["file_path"][0]).is_file()  # relative to the JSON files' folder
    test = json.loads((out / "hpdv2" / "test.json").read_text())
    assert set(test[0]) == {"prompt", "image_path", "rank", "raw_annotations"}
    assert len({a["user_hash"] for a in test[0]["raw_annotations"]}) == 3  # several annotators, same images
    assert sorted(test[0]["raw_annotations"][0]["rank"]) == [1, 2, 3, 4]
    csv_lines = (out / "table" / "pairs.csv").read_text().splitlines()
    assert csv_lines[0] == "prompt,image_a,image_b,label,annotator"
    first = json.loads((out / "table" / "pairs.jsonl").read_text().splitlines()[0])
    assert list(first) == ["prompt", "image_a", "image_b", "label", "annotator"] and first["label"] in ("a", "b", "tie")


def test_truth_joins_and_counts(world):
    out, summary = world
    truth = pq.read_table(out / "truth" / "pairs.parquet").to_pandas()
    planted = pq.read_table(out / "truth" / "planted.parquet").to_pandas()
    row = truth.iloc[5]
    assert row.pair_id == ids.pair_id(row.source, int(row.source_row), int(row.source_item))
    assert truth.pair_id.is_unique
    # Every record of a one-pair-per-row file is either a truth pair or an expected reject.
    for name, records in summary["files"].items():
        if name.startswith(("pickapic/", "table/", "multivote/")):
            source = ids.source_name("table" if name.startswith("multivote") else name.split("/")[0], name.split("/")[1])
            assert (truth.source == source).sum() + (planted.source == source).sum() == records, name
    # Planted: every kind a layout can carry, none of them in the truth pairs.
    deliberate = planted[planted.deliberate]
    assert set(deliberate[deliberate.source == "hpdv2:train.json"].reason) == set(mf.KINDS["hpdv2"])
    assert set(deliberate[deliberate.source == "table:pairs.jsonl"].reason) == set(mf.KINDS["table"])
    keys = set(zip(truth.source, truth.source_row, truth.source_item))
    assert not keys & set(zip(planted.source, planted.source_row, planted.source_item))
    # HPDv2 test: 3 annotations x C(4, 2) pairs per record, numbered annotation-major.
    test = truth[truth.source == "hpdv2:test.json"]
    assert test.source_item.max() == 17 and set(test.annotator_type) <= set(an.TYPES)
    images = pq.read_table(out / "truth" / "images.parquet").to_pandas()
    assert set(truth.image_a_id) <= set(images.image_id)
    assert images.quality.between(0, 1).all() and images.fidelity.between(0, 1).all()


def test_annotator_activity_has_a_long_tail(world):
    out, _ = world
    counts = np.sort(pq.read_table(out / "truth" / "annotators.parquet").column("n_judgements").to_numpy())[::-1]
    top_tenth = counts[: max(1, len(counts) // 10)].sum() / counts.sum()
    assert top_tenth > 0.3 and np.median(counts) < counts.mean()


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_realised_minority_share_follows_the_knob(tmp_path, rate):
    summary = build_world(tmp_path, WorldConfig(pairs=20_000, seed=1, minority_rate=rate, images=False, formats=("pickapic",)))
    truth = pq.read_table(tmp_path / "truth" / "pairs.parquet", columns=["is_minority", "annotator_type"]).to_pandas()
    assert abs(truth.is_minority.mean() - rate) < 0.015
    minority_types = truth.annotator_type.isin(an.MINORITY_TYPES)
    assert truth.is_minority[minority_types].mean() > 3 * truth.is_minority[~minority_types].mean()
    assert "jpg_0" not in pq.read_schema(next((tmp_path / "pickapic").glob("*.parquet"))).names
    assert summary["minority"]["realised"] == pytest.approx(truth.is_minority.mean(), abs=1e-4)


# ---------------------------------------------------------------- determinism and CLI
def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    config = WorldConfig(pairs=60, seed=7, image_size=24, malformed=3)
    build_world(tmp_path / "one", config)
    build_world(tmp_path / "two", config)
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert one.keys() == two.keys() and all(one[k] == two[k] for k in one)
    build_world(tmp_path / "three", WorldConfig(pairs=60, seed=8, image_size=24, malformed=3))
    assert _files(tmp_path / "three")["truth/pairs.parquet"] != one["truth/pairs.parquet"]


def test_cli_writes_a_world(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["demo-data", str(tmp_path / "w"), "--pairs", "40", "--image-size", "24", "--formats", "pickapic,table"])
    assert result.exit_code == 0, result.output
    assert "minority share" in result.output and "table/pairs.csv" in result.output
    written = json.loads((tmp_path / "w" / "world.json").read_text())
    assert written["files"]["pickapic/train-00000-of-00001.parquet"] == 40
    refused = runner.invoke(app, ["demo-data", str(tmp_path / "x"), "--no-images", "--formats", "pickapic,hpdv2"])
    assert refused.exit_code == 2 and "--no-images" in refused.output
