"""Pick-a-Pic, multi-vote and generic table layouts (HPDv2 is in hpdv2.py).

Image A of a judgement is always the one shown first: Pick-a-Pic jpg_0, multi-vote image1, table
image_a. Each writer draws its judgements, plants its malformed rows (see malformed.py), writes its
files and logs the truth of every good row.
"""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import ids
from curate.synth import annotators as an
from curate.synth import malformed as mf
from curate.synth.pool import GENERATORS

PICKAPIC_SCHEMA = pa.schema([
    ("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
    ("label_0", pa.float64()), ("label_1", pa.float64()), ("has_label", pa.bool_()), ("are_different", pa.bool_()),
    ("image_0_uid", pa.string()), ("image_1_uid", pa.string()), ("best_image_uid", pa.string()),
    ("image_0_url", pa.string()), ("image_1_url", pa.string()), ("model_0", pa.string()), ("model_1", pa.string()),
    ("user_id", pa.int64()), ("ranking_id", pa.int64()), ("created_at", pa.timestamp("ns")),
    ("num_example_per_prompt", pa.int64()), ("__index_level_0__", pa.int64()),
])
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the HF Image feature in Arrow
MULTIVOTE_SCHEMA = pa.schema([
    ("prompt", pa.string()), ("image1", IMAGE_STRUCT), ("image2", IMAGE_STRUCT), ("votes_image1", pa.int64()),
    ("votes_image2", pa.int64()), ("model1", pa.string()), ("model2", pa.string()), ("detailed_results", pa.string()),
])
TABLE_COLUMNS = ("prompt", "image_a", "image_b", "label", "annotator")
_LABEL_FLOATS = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
_START = np.datetime64("2023-03-01T00:00:00", "ns")


def _judgements(world, name: str, n_good: int, kinds: tuple[str, ...]):
    rng = world.rng(name)
    planted = mf.plan(rng, n_good, world.config.malformed, kinds)
    n = n_good + len(planted)
    a, b = world.sample_pairs(rng, n)
    who = an.sample_annotators(rng, world.population, n)
    label = an.judge(rng, world.population, who, world.tastes, a, b)
    good = np.ones(n, dtype=bool)
    good[list(planted)] = False
    return rng, planted, a, b, who, label, good


def drop_repeats(good: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Take good rows whose key repeats an earlier good row out of ``good``; returns their indices."""
    rows = np.flatnonzero(good)
    again = rows[mf.repeats(*(np.asarray(k)[rows] for k in keys))]
    good[again] = False
    return again


# ---------------------------------------------------------------- Pick-a-Pic
def _pickapic_metadata(world, rng, a, b, who, label) -> dict[str, np.ndarray]:
    pool, n = world.pool, len(a)
    prompt = pool.prompt_of(a)
    uid0, uid1 = pool.uid[a], pool.uid[b]
    models = np.array([g.name for g in GENERATORS], dtype=object)
    return {
        "caption": pool.prompts[prompt], "label_0": _LABEL_FLOATS[label, 0].copy(), "label_1": _LABEL_FLOATS[label, 1].copy(),
        "has_label": np.ones(n, dtype=bool), "are_different": np.ones(n, dtype=bool),
        "image_0_uid": uid0, "image_1_uid": uid1, "best_image_uid": np.where(label == an.A, uid0, np.where(label == an.B, uid1, "")).astype(object),
        "image_0_url": np.array([f"https://images.pickapic.invalid/{u}.png" for u in uid0.tolist()], dtype=object),
        "image_1_url": np.array([f"https://images.pickapic.invalid/{u}.png" for u in uid1.tolist()], dtype=object),
        "model_0": models[pool.generator[a]], "model_1": models[pool.generator[b]],
        "user_id": world.population.user_id[who].copy(), "ranking_id": 30_000_000 + np.arange(n, dtype=np.int64),
        "created_at": _START + np.sort(rng.integers(0, 120 * 86_400, n)).astype("timedelta64[s]").astype("timedelta64[ns]"),
        "num_example_per_prompt": np.bincount(prompt, minlength=len(pool.targets))[prompt].astype(np.int64),
        "__index_level_0__": np.arange(n, dtype=np.int64),
    }


def _plant_pickapic(cols, planted, a, b) -> dict[tuple[int, str], bytes]:
    """Break the planted rows in place; returns image bytes that replace the rendered ones."""
    overrides = {}
    for row, reason in planted.items():
        if reason == "missing_label":
            cols["label_0"][row] = cols["label_1"][row] = np.nan
        elif reason == "unparseable_label":
            cols["label_0"][row], cols["label_1"][row] = 2.0, -1.0
        elif reason == "no_label":
            cols["has_label"][row], cols["label_0"][row], cols["label_1"][row], cols["best_image_uid"][row] = False, 0.0, 0.0, ""
        elif reason == "identical_images":
            b[row] = a[row]
            for src, dst in (("image_0_uid", "image_1_uid"), ("image_0_url", "image_1_url"), ("model_0", "model_1")):
                cols[dst][row] = cols[src][row]
            cols["are_different"][row] = False
        elif reason == "undecodable_image":
            overrides[row, "jpg_0"] = mf.GARBAGE
        elif reason == "truncated_image":
            overrides[row, "jpg_1"] = "truncate"
        elif reason == "empty_prompt":
            cols["caption"][row] = ""
        elif reason == "duplicate_row":
            source = mf.previous_good(row, planted)
            for column in cols.values():
                column[row] = column[source]
            a[row], b[row] = a[source], b[source]
    return overrides


def _pickapic_table(world, cols, a, b, overrides, lo: int, hi: int) -> pa.Table:
    arrays = {}
    for name in PICKAPIC_SCHEMA.names:
        if name in ("jpg_0", "jpg_1"):
            if not world.config.images:
                continue
            images = a if name == "jpg_0" else b
            data = [world.store.bytes(i) for i in images[lo:hi].tolist()]
            for (row, column), value in overrides.items():
                if column == name and lo <= row < hi:
                    data[row - lo] = mf.truncate(data[row - lo]) if value == "truncate" else value
            arrays[name] = pa.array(data, pa.binary())
        else:
            arrays[name] = pa.array(cols[name][lo:hi], PICKAPIC_SCHEMA.field(name).type)
    schema = PICKAPIC_SCHEMA if world.config.images else pa.schema([f for f in PICKAPIC_SCHEMA if f.name not in ("jpg_0", "jpg_1")])
    return pa.table(arrays, schema=schema)


def write_pickapic(world) -> None:
    """OUT/pickapic/train-0000i-of-0000K.parquet; ``source_row`` counts rows within each file."""
    cfg = world.config
    kinds = mf.KINDS["pickapic" if cfg.images else "pickapic_no_images"]
    rng, planted, a, b, who, label, good = _judgements(world, "pickapic", cfg.pairs, kinds)
    cols = _pickapic_metadata(world, rng, a, b, who, label)
    overrides = _plant_pickapic(cols, planted, a, b)
    again = drop_repeats(good, a, b, label, who, cols["created_at"].view(np.int64))
    world.store.ensure(np.concatenate([a, b]), world.progress)
    per_file = cfg.rows_per_file or (20_000 if cfg.images else 1_000_000)
    n_files = math.ceil(len(a) / per_file)
    folder = world.out / "pickapic"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n_files):
        lo, hi = k * per_file, min(len(a), (k + 1) * per_file)
        name = f"train-{k:05d}-of-{n_files:05d}.parquet"
        pq.write_table(_pickapic_table(world, cols, a, b, overrides, lo, hi), folder / name,
                       row_group_size=1_000 if cfg.images else 100_000)
        world.files[f"pickapic/{name}"] = hi - lo
        source = ids.source_name("pickapic", name)
        keep = np.flatnonzero(good[lo:hi]) + lo
        world.add_truth(source, keep - lo, np.zeros(len(keep)), a[keep], b[keep], who[keep], label[keep])
        world.truth.add_planted(source, {r - lo: why for r, why in planted.items() if lo <= r < hi})
        world.truth.add_repeats(source, again[(again >= lo) & (again < hi)] - lo, np.zeros(len(again), dtype=int))
        if world.progress:
            world.progress("write pickapic", k + 1, n_files)
    world.count(who[good])


# ---------------------------------------------------------------- multi-vote
def vote_panels(world, rng, a, b):
    """Per row: 8-12 distinct voters' choices (no ties in a vote); returns voters and choices lists."""
    n_votes = rng.integers(8, 13, len(a))
    drawn = an.sample_annotators(rng, world.population, len(a) * 16).reshape(len(a), 16)
    voters = [list(dict.fromkeys(row))[:k] for row, k in zip(drawn.tolist(), n_votes.tolist())]
    flat = np.array([v for row in voters for v in row], dtype=np.int64)
    lengths = np.array([len(row) for row in voters])
    choices = an.judge(rng, world.population, flat, world.tastes, np.repeat(a, lengths), np.repeat(b, lengths), allow_tie=False)
    return voters, np.split(choices, np.cumsum(lengths)[:-1]), flat


def _detailed_results(world, voters, choices, a, b) -> np.ndarray:
    """Rapidata's per-answer records (see curate.ingest.rapidata): votedFor is the chosen image's file
    name, userDetails its voter's country, language and userScore; like the real sets, no voter id."""
    from curate.synth.votes import voter_trust

    rng, trust = world.rng("multivote-details"), voter_trust(world)
    countries = np.array(["DE", "IN", "BR", "US", "NG", "JP", "EG", "BY"], dtype=object)
    languages = {"DE": "de", "IN": "hi", "BR": "pt", "US": "en", "NG": "en", "JP": "ja", "EG": "ar", "BY": "ru"}
    details = []
    for vs, cs, i, j in zip(voters, choices, a.tolist(), b.tolist()):
        where = countries[rng.integers(0, len(countries), len(vs))]
        details.append(json.dumps([{"votedFor": world.store.file_name(i if c == an.A else j),
                                    "userDetails": {"country": w, "language": languages[w], "userScore": trust[v]}}
                                   for v, c, w in zip(vs, cs.tolist(), where.tolist())]))
    return np.array(details, dtype=object)


def write_multivote(world) -> None:
    """OUT/multivote/train.parquet in Rapidata's layout. Read as a table (source "table:train.parquet")
    its truth label is the vote winner (tie on equal votes), annotator_type "crowd"; read with
    --format rapidata every vote is a pair (source "rapidata:train.parquet", voters without ids)."""
    n_good = world.config.layout_sizes()["multivote"]
    rng, planted, a, b, _, _, good = _judgements(world, "multivote", n_good, mf.KINDS["multivote"])
    voters, choices, flat = vote_panels(world, rng, a, b)
    votes1 = np.array([int((c == an.A).sum()) for c in choices], dtype=object)
    votes2 = np.array([len(c) - v for c, v in zip(choices, votes1)], dtype=object)
    details = _detailed_results(world, voters, choices, a, b)
    prompts = world.pool.prompts[world.pool.prompt_of(a)].copy()
    world.store.ensure(np.concatenate([a, b]), world.progress)
    image1 = [{"bytes": world.store.bytes(i), "path": world.store.file_name(i)} for i in a.tolist()]
    image2 = [{"bytes": world.store.bytes(i), "path": world.store.file_name(i)} for i in b.tolist()]
    for row, reason in planted.items():
        if reason == "missing_label":
            votes1[row] = votes2[row] = None
        elif reason == "no_label":
            votes1[row], votes2[row], details[row] = 0, 0, "[]"
        elif reason == "identical_images":
            image2[row], b[row] = dict(image1[row]), a[row]
        elif reason == "undecodable_image":
            image1[row] = {"bytes": mf.GARBAGE, "path": "broken.png"}
        elif reason == "truncated_image":
            image2[row] = {"bytes": mf.truncate(image2[row]["bytes"]), "path": image2[row]["path"]}
        elif reason == "empty_prompt":
            prompts[row] = ""
        elif reason == "duplicate_row":
            src = mf.previous_good(row, planted)
            prompts[row], image1[row], image2[row] = prompts[src], image1[src], image2[src]
            votes1[row], votes2[row], details[row], a[row], b[row] = votes1[src], votes2[src], details[src], a[src], b[src]
    models = np.array([g.name for g in GENERATORS], dtype=object)
    table = pa.table({
        "prompt": pa.array(prompts, pa.string()), "image1": pa.array(image1, IMAGE_STRUCT), "image2": pa.array(image2, IMAGE_STRUCT),
        "votes_image1": pa.array(votes1.tolist(), pa.int64()), "votes_image2": pa.array(votes2.tolist(), pa.int64()),
        "model1": models[world.pool.generator[a]], "model2": models[world.pool.generator[b]], "detailed_results": pa.array(details, pa.string()),
    }, schema=MULTIVOTE_SCHEMA.with_metadata({"huggingface": json.dumps(_hf_features())}))
    (world.out / "multivote").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, world.out / "multivote" / "train.parquet", row_group_size=1_000)
    world.files["multivote/train.parquet"] = table.num_rows
    # Ingest reads this file as a generic table (image1/image2, votes_image1/votes_image2 are aliases there).
    source = ids.source_name("table", "train.parquet")
    again = drop_repeats(good, a, b, np.where(good, votes1, 0).astype(np.int64), np.where(good, votes2, 0).astype(np.int64))
    world.truth.add_repeats(source, again, np.zeros(len(again), dtype=int))
    keep = np.flatnonzero(good)
    v1, v2 = votes1[keep].astype(np.int64), votes2[keep].astype(np.int64)
    winner = np.where(v1 > v2, an.A, np.where(v2 > v1, an.B, an.TIE)).astype(np.int8)
    world.add_truth(source, keep, np.zeros(len(keep)), a[keep], b[keep], None, winner)
    world.truth.add_planted(source, planted)
    world.count(np.array([v for row in (voters[i] for i in keep.tolist()) for v in row], dtype=np.int64))


def _hf_features() -> dict:
    value = {"_type": "Value"}
    return {"info": {"features": {
        "prompt": value | {"dtype": "string"}, "image1": {"_type": "Image"}, "image2": {"_type": "Image"},
        "votes_image1": value | {"dtype": "int64"}, "votes_image2": value | {"dtype": "int64"},
        "model1": value | {"dtype": "string"}, "model2": value | {"dtype": "string"}, "detailed_results": value | {"dtype": "string"},
    }}}


# ---------------------------------------------------------------- generic table
def _table_rows(world, planted, a, b, who, label) -> tuple[list[dict], dict[str, bytes]]:
    """Row dicts (paths relative to OUT/table/images) and the extra broken files to write."""
    store, extra = world.store, {}
    rows = [{"prompt": p, "image_a": store.file_name(i), "image_b": store.file_name(j), "label": an.LABELS[l], "annotator": str(u)}
            for p, i, j, l, u in zip(world.pool.prompts[world.pool.prompt_of(a)].tolist(), a.tolist(), b.tolist(),
                                     label.tolist(), world.population.user_id[who].tolist())]
    for row, reason in planted.items():
        r = rows[row]
        if reason == "missing_label":
            r["label"] = None
        elif reason == "unparseable_label":
            r["label"] = "x"
        elif reason == "bad_type":
            r["label"] = ["a"]
        elif reason == "identical_images":
            r["image_b"] = r["image_a"]
        elif reason == "undecodable_image":
            r["image_a"] = f"broken-{row}.png"
            extra[r["image_a"]] = mf.GARBAGE
        elif reason == "truncated_image":
            r["image_b"] = f"truncated-{row}.{store.file_name(b[row]).rsplit('.', 1)[1]}"
            extra[r["image_b"]] = mf.truncate(store.bytes(b[row]))
        elif reason == "missing_file":
            r["image_a"] = f"missing-{row}.png"
        elif reason == "path_outside_root":
            r["image_b"] = mf.OUTSIDE_ROOT
        elif reason == "empty_prompt":
            r["prompt"] = ""
        elif reason == "duplicate_row":
            rows[row] = dict(rows[mf.previous_good(row, planted)])
    return rows, extra


def write_table(world) -> None:
    """OUT/table/pairs.csv and pairs.jsonl (the same rows; image paths relative to OUT/table/images)."""
    n_good = world.config.layout_sizes()["table"]
    _, planted, a, b, who, label, good = _judgements(world, "table", n_good, mf.KINDS["table"])
    world.store.ensure(np.concatenate([a, b]), world.progress)
    rows, extra = _table_rows(world, planted, a, b, who, label)
    again = drop_repeats(good, a, b, label, who)
    folder = world.out / "table"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in np.unique(np.concatenate([a, b])).tolist():  # planted rows too: only missing_file may miss
        (folder / "images" / world.store.file_name(i)).write_bytes(world.store.bytes(i))
    for name, data in extra.items():
        (folder / "images" / name).write_bytes(data)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (json.dumps(v) if isinstance(v, list) else ("" if v is None else v)) for k, v in r.items()} for r in rows)
    (folder / "pairs.csv").write_text(text.getvalue())
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    keep = np.flatnonzero(good)
    for name in ("pairs.csv", "pairs.jsonl"):
        source = ids.source_name("table", name)
        world.files[f"table/{name}"] = len(rows)
        world.add_truth(source, keep, np.zeros(len(keep)), a[keep], b[keep], who[keep], label[keep])
        as_text = {r: ("unparseable_label" if why == "bad_type" and name.endswith(".csv") else why) for r, why in planted.items()}
        world.truth.add_planted(source, as_text)
        world.truth.add_repeats(source, again, np.zeros(len(again), dtype=int))
    world.count(who[good])
