"""Layouts that keep every voter: one row per vote with a trust score, HPDv2-test-style ±1 tables, HPDv3.

- ``votes``: OUT/votes/votes.csv, one row per vote (Datapoint-style): prompt, image_a, image_b
  (paths under OUT/votes/images), winner (image_a / image_b), voter_id, trust_score. 8-12 distinct
  voters per pair; each voter's trust is fixed per person (random clickers get less). Read with
  ``--format table`` (source "table:votes.csv"); truth has one row per vote, by its voter.
- ``hpdv2_pref``: OUT/hpdv2_pref/prefs.parquet, HPDv2-test-style: user_id, prompt, image_left_id,
  image_right_id (image uids: no bytes), pref (1 = left wins, -1 = right), ranking_id. Source
  "table:prefs.parquet"; truth image ids are the uid-derived ones ingest gives image-less rows.
- ``hpdv3``: OUT/hpdv3/train.json, HPDv3 records {prompt, path1 (the crowd's winner), path2,
  model1, model2, confidence (the winner's vote share), choice_dist [votes for path1, for path2]};
  images under OUT/hpdv3/images. Source "hpdv3:train.json"; truth is the crowd's label (always a).
No malformed rows are planted in these layouts.
"""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import ids
from curate.synth import annotators as an
from curate.synth.pool import GENERATORS
from curate.synth.writers import drop_repeats, vote_panels

VOTERS_PER_PAIR = 10  # about: vote_panels draws 8-12


def voter_trust(world) -> np.ndarray:
    """A trust score per annotator in [0.05, 1]: random clickers draw from a lower range."""
    rng = world.rng("trust")
    trust = rng.uniform(0.4, 1.0, len(world.population.user_id))
    random_type = world.population.kind == an.TYPES.index("random")
    trust[random_type] = rng.uniform(0.05, 0.4, int(random_type.sum()))
    return np.round(trust, 4)


def _write_images(world, folder, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in np.unique(images).tolist():
        (folder / world.store.file_name(i)).write_bytes(world.store.bytes(i))


def write_votes(world) -> None:
    rng = world.rng("votes")
    a, b = world.sample_pairs(rng, max(4, world.config.layout_sizes()["votes"] // VOTERS_PER_PAIR))
    voters, choices, flat = vote_panels(world, rng, a, b)
    lengths = np.array([len(v) for v in voters])
    va, vb, label = np.repeat(a, lengths), np.repeat(b, lengths), np.concatenate(choices).astype(np.int8)
    world.store.ensure(np.concatenate([a, b]), world.progress)
    folder = world.out / "votes"
    _write_images(world, folder / "images", np.concatenate([a, b]))
    trust = voter_trust(world)
    prompts = world.pool.prompts[world.pool.prompt_of(va)].tolist()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["prompt", "image_a", "image_b", "winner", "voter_id", "trust_score"])
    writer.writerows([p, world.store.file_name(i), world.store.file_name(j), "image_a" if c == an.A else "image_b",
                      str(world.population.user_id[w]), trust[w]]
                     for p, i, j, c, w in zip(prompts, va.tolist(), vb.tolist(), label.tolist(), flat.tolist()))
    (folder / "votes.csv").write_text(text.getvalue())
    world.files["votes/votes.csv"] = len(flat)
    source = ids.source_name("table", "votes.csv")
    good = np.ones(len(flat), dtype=bool)
    again = drop_repeats(good, va, vb, label, flat)  # the same voter judging the same pair the same way twice
    world.truth.add_repeats(source, again, np.zeros(len(again), dtype=int))
    keep = np.flatnonzero(good)
    world.add_truth(source, keep, np.zeros(len(keep)), va[keep], vb[keep], flat[keep], label[keep])
    world.count(flat[keep])


def write_hpdv2_pref(world) -> None:
    rng = world.rng("hpdv2_pref")
    n = world.config.layout_sizes()["hpdv2_pref"]
    a, b = world.sample_pairs(rng, n)
    who = an.sample_annotators(rng, world.population, n)
    label = an.judge(rng, world.population, who, world.tastes, a, b, allow_tie=False)
    uid = world.pool.uid
    table = pa.table({
        "user_id": pa.array(world.population.user_id[who], pa.int64()),
        "prompt": pa.array(world.pool.prompts[world.pool.prompt_of(a)], pa.string()),
        "image_left_id": pa.array(uid[a], pa.string()), "image_right_id": pa.array(uid[b], pa.string()),
        "pref": pa.array(np.where(label == an.A, 1, -1), pa.int64()),
        "ranking_id": pa.array([f"r{k:07d}" for k in range(n)], pa.string()),
    })
    (world.out / "hpdv2_pref").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, world.out / "hpdv2_pref" / "prefs.parquet")
    world.files["hpdv2_pref/prefs.parquet"] = n
    source = ids.source_name("table", "prefs.parquet")
    good = np.ones(n, dtype=bool)
    again = drop_repeats(good, a, b, label, who)
    world.truth.add_repeats(source, again, np.zeros(len(again), dtype=int))
    keep = np.flatnonzero(good)
    world.truth.add_pairs(source, keep, np.zeros(len(keep)), world.pool.prompts[world.pool.prompt_of(a[keep])],
                          ids.uid_image_ids(uid[a[keep]]).to_pylist(), ids.uid_image_ids(uid[b[keep]]).to_pylist(),
                          world.annotator_ids(who[keep]), world.annotator_types(who[keep]), label[keep],
                          world.pool.fidelity, world.pool.quality, a[keep], b[keep])
    world.count(who[keep])


def write_hpdv3(world) -> None:
    rng = world.rng("hpdv3")
    a, b = world.sample_pairs(rng, world.config.layout_sizes()["hpdv3"])
    _, choices, flat = vote_panels(world, rng, a, b)
    first = np.array([int((c == an.A).sum()) for c in choices])
    second = np.array([len(c) for c in choices]) - first
    swap = second > first  # path1 is the preferred image
    winner, loser = np.where(swap, b, a), np.where(swap, a, b)
    votes_w, votes_l = np.maximum(first, second), np.minimum(first, second)
    world.store.ensure(np.concatenate([a, b]), world.progress)
    folder = world.out / "hpdv3"
    _write_images(world, folder / "images", np.concatenate([a, b]))
    models = np.array([g.name for g in GENERATORS], dtype=object)
    records = [{"prompt": p, "path1": f"images/{world.store.file_name(w)}", "path2": f"images/{world.store.file_name(l)}",
                "model1": models[world.pool.generator[w]], "model2": models[world.pool.generator[l]],
                "confidence": round(float(k / (k + m)), 4), "choice_dist": [int(k), int(m)]}
               for p, w, l, k, m in zip(world.pool.prompts[world.pool.prompt_of(winner)].tolist(), winner.tolist(),
                                        loser.tolist(), votes_w.tolist(), votes_l.tolist())]
    (folder / "train.json").write_text(json.dumps(records))
    world.files["hpdv3/train.json"] = len(records)
    source = ids.source_name("hpdv3", "train.json")
    good = np.ones(len(records), dtype=bool)
    again = drop_repeats(good, winner, loser)  # no annotator in the file: the same pair twice repeats
    world.truth.add_repeats(source, again, np.zeros(len(again), dtype=int))
    keep = np.flatnonzero(good)
    world.add_truth(source, keep, np.zeros(len(keep)), winner[keep], loser[keep], None,
                    np.full(len(keep), an.A, dtype=np.int8))
    world.count(flat)
