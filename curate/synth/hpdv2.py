"""HPDv2 layout: OUT/hpdv2/train.json, OUT/hpdv2/test.json and image files under OUT/hpdv2/images.

Paths in file_path / image_path are relative to the JSON files' folder OUT/hpdv2 (ingest's default
image root for HPDv2): "images/train/<uid>.png", "images/test/<uid>.jpg".

Pair expansion (how truth's source_item numbers the pairs of a record), image indices i < j in
lexicographic order ((0,1), (0,2), ..., (1,2), ...), A = image i, B = image j:
- train.json (source "hpdv2:train.json"): every record has 2 images, so one pair, source_item 0.
  human_preference [1, 0] -> a, [0, 1] -> b, [1, 1] -> tie (the higher value wins). The annotator
  is not in the file; truth names them by user_hash anyway.
- test.json (source "hpdv2:test.json"): for raw annotation k (in order) and the p-th pair (i, j),
  source_item = k * n(n-1)/2 + p; label a if that annotation's rank[i] < rank[j] (rank 1 = best),
  else b (rankings have no ties); annotator_id = that annotation's user_hash.
Malformed records are planted in train.json only, so a broken record is exactly one broken pair.
"""
from __future__ import annotations

import json
from itertools import combinations

import numpy as np

from curate import ids
from curate.synth import annotators as an
from curate.synth import malformed as mf
from curate.synth.writers import drop_repeats

ANNOTATIONS_PER_TEST_RECORD = 3
IMAGES_PER_TEST_RECORD = 4


def _train_records(world, folder):
    n_good = world.config.layout_sizes()["hpdv2_train"]
    rng = world.rng("hpdv2_train")
    planted = mf.plan(rng, n_good, world.config.malformed, mf.KINDS["hpdv2"])
    n = n_good + len(planted)
    a, b = world.sample_pairs(rng, n)
    who = an.sample_annotators(rng, world.population, n)
    label = an.judge(rng, world.population, who, world.tastes, a, b)
    world.store.ensure(np.concatenate([a, b]), world.progress)
    preference = {an.A: [1, 0], an.B: [0, 1], an.TIE: [1, 1]}
    records = [{"prompt": p, "file_path": [f"images/train/{world.store.file_name(i)}", f"images/train/{world.store.file_name(j)}"], "human_preference": preference[l]}
               for p, i, j, l in zip(world.pool.prompts[world.pool.prompt_of(a)].tolist(), a.tolist(), b.tolist(), label.tolist())]
    for i in np.unique(np.concatenate([a, b])).tolist():
        (folder / "train" / world.store.file_name(i)).write_bytes(world.store.bytes(i))
    for row, reason in planted.items():
        _plant(records[row], reason, row, b[row], world, folder)
    good = np.ones(n, dtype=bool)
    good[list(planted)] = False
    again = drop_repeats(good, a, b, label)  # train.json names no annotator: the same pair and label repeat
    keep = np.flatnonzero(good)
    source = ids.source_name("hpdv2", "train.json")
    world.truth.add_repeats(source, again, np.zeros(len(again), dtype=int))
    world.add_truth(source, keep, np.zeros(len(keep)), a[keep], b[keep], who[keep], label[keep], world.population.user_hash[who[keep]])
    world.truth.add_planted(source, planted)
    world.count(who[keep])
    return records


def _plant(record: dict, reason: str, row: int, image_b: int, world, folder) -> None:
    paths = record["file_path"]
    if reason == "missing_label":
        del record["human_preference"]  # [0, 0] would be a tie, not a missing label
    elif reason == "bad_type":
        record["human_preference"] = ["x", 0]
    elif reason == "identical_images":
        paths[1] = paths[0]
    elif reason == "undecodable_image":
        paths[0] = f"images/train/broken-{row}.png"
        (folder.parent / paths[0]).write_bytes(mf.GARBAGE)
    elif reason == "truncated_image":
        paths[1] = f"images/train/truncated-{row}.{paths[1].rsplit('.', 1)[1]}"
        (folder.parent / paths[1]).write_bytes(mf.truncate(world.store.bytes(image_b)))
    elif reason == "missing_file":
        paths[0] = f"images/train/missing-{row}.png"
    elif reason == "path_outside_root":
        paths[1] = mf.OUTSIDE_ROOT
    elif reason == "empty_prompt":
        record["prompt"] = ""


def _test_records(world, folder):
    rng = world.rng("hpdv2_test")
    pool, k = world.pool, min(world.pool.per_prompt, IMAGES_PER_TEST_RECORD)
    n = world.config.layout_sizes()["hpdv2_test"]
    prompts = rng.integers(0, len(pool.targets), n)
    images = np.stack([p * pool.per_prompt + rng.permutation(pool.per_prompt)[:k] for p in prompts.tolist()])
    world.store.ensure(images.ravel(), world.progress)
    for i in np.unique(images).tolist():
        (folder / "test" / world.store.file_name(i)).write_bytes(world.store.bytes(i))
    drawn = an.sample_annotators(rng, world.population, n * 12).reshape(n, 12)
    pairs = list(combinations(range(k), 2))
    records, truth = [], {"row": [], "item": [], "a": [], "b": [], "who": [], "label": []}
    for r in range(n):
        annotators = list(dict.fromkeys(drawn[r].tolist()))[:ANNOTATIONS_PER_TEST_RECORD]
        ranks = [an.rank(rng, an.TYPES[world.population.kind[w]], world.tastes, images[r]) for w in annotators]
        mean = np.mean(ranks, axis=0)
        average = np.empty(k, dtype=np.int64)
        average[np.argsort(mean, kind="stable")] = np.arange(1, k + 1)
        records.append({
            "prompt": pool.prompts[prompts[r]], "image_path": [f"images/test/{world.store.file_name(i)}" for i in images[r].tolist()],
            "rank": average.tolist(), "raw_annotations": [{"rank": rk.tolist(), "user_hash": world.population.user_hash[w]} for rk, w in zip(ranks, annotators)],
        })
        for kk, (w, rk) in enumerate(zip(annotators, ranks)):
            for p, (i, j) in enumerate(pairs):
                truth["row"].append(r), truth["item"].append(kk * len(pairs) + p), truth["who"].append(w)
                truth["a"].append(images[r, i]), truth["b"].append(images[r, j]), truth["label"].append(an.A if rk[i] < rk[j] else an.B)
    t = {key: np.array(v, dtype=np.int64) for key, v in truth.items()}
    good = np.ones(len(t["row"]), dtype=bool)
    again = drop_repeats(good, t["a"], t["b"], t["label"], t["who"])
    source = ids.source_name("hpdv2", "test.json")
    world.truth.add_repeats(source, t["row"][again], t["item"][again])
    t = {key: v[good] for key, v in t.items()}
    world.add_truth(source, t["row"], t["item"], t["a"], t["b"], t["who"], t["label"].astype(np.int8), world.population.user_hash[t["who"]])
    world.count(t["who"])
    return records


def write_hpdv2(world) -> None:
    folder = world.out / "hpdv2"
    for sub in ("train", "test"):
        (folder / "images" / sub).mkdir(parents=True, exist_ok=True)
    for name, make in (("train.json", _train_records), ("test.json", _test_records)):
        records = make(world, folder / "images")
        (folder / name).write_text(json.dumps(records, indent=1) + "\n")
        world.files[f"hpdv2/{name}"] = len(records)
