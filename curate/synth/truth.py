"""Ground truth sidecar tables (OUT/truth/*.parquet), keyed to join the ingested tables.

pairs.parquet has one row per judgement ingest should turn into a pair (planted rows are in
planted.parquet instead): ``pair_id = curate.ids.pair_id(source, source_row, source_item)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import ids
from curate.synth import annotators as an
from curate.synth import scene as sc
from curate.synth.pool import GENERATORS

PAIRS_SCHEMA = pa.schema([
    ("source", pa.string()), ("source_row", pa.int64()), ("source_item", pa.int32()), ("pair_id", pa.string()),
    ("prompt", pa.string()), ("image_a_id", pa.string()), ("image_b_id", pa.string()),
    ("annotator_id", pa.string()), ("annotator_type", pa.string()),
    ("label", pa.string()), ("majority_label", pa.string()), ("is_minority", pa.bool_()),
    ("fidelity_a", pa.float64()), ("fidelity_b", pa.float64()), ("quality_a", pa.float64()), ("quality_b", pa.float64()),
    ("reward_a", pa.float64()), ("reward_b", pa.float64()),
])
PLANTED_SCHEMA = pa.schema([
    ("source", pa.string()), ("source_row", pa.int64()), ("source_item", pa.int32()), ("reason", pa.string()),
    ("deliberate", pa.bool_()),  # false: a judgement that repeated an earlier one by chance (duplicate_row)
])
ANNOTATORS_SCHEMA = pa.schema([
    ("annotator_id", pa.string()), ("user_hash", pa.string()), ("type", pa.string()), ("n_judgements", pa.int64()),
])


@dataclass
class TruthLog:
    """Collects truth rows layout by layout; ``write`` puts them on disk."""

    chunks: list[pa.Table] = field(default_factory=list)
    planted: list[tuple[str, int, int, str, bool]] = field(default_factory=list)

    def add_pairs(self, source: str, rows, items, prompts, image_a_id, image_b_id, annotator_id, annotator_type,
                  label, fidelity, quality, image_a, image_b) -> None:
        """Columns for judgements of ``source``; ``label`` are codes, image_a / image_b pool indices."""
        rows, items = np.asarray(rows, dtype=np.int64), np.asarray(items, dtype=np.int32)
        reward = sc.true_reward(fidelity, quality)
        majority = an.majority_label(reward[image_a] - reward[image_b])
        names = np.array(an.LABELS, dtype=object)
        self.chunks.append(pa.table({
            "source": pa.array([source] * len(rows), pa.string()), "source_row": rows, "source_item": items,
            "pair_id": ids.pair_ids(source, rows, items),
            "prompt": pa.array(prompts, pa.string()), "image_a_id": pa.array(image_a_id, pa.string()),
            "image_b_id": pa.array(image_b_id, pa.string()), "annotator_id": pa.array(annotator_id, pa.string()),
            "annotator_type": pa.array(annotator_type, pa.string()), "label": pa.array(names[label], pa.string()),
            "majority_label": pa.array(names[majority], pa.string()), "is_minority": an.is_minority(label, majority),
            "fidelity_a": fidelity[image_a], "fidelity_b": fidelity[image_b], "quality_a": quality[image_a],
            "quality_b": quality[image_b], "reward_a": reward[image_a], "reward_b": reward[image_b],
        }, schema=PAIRS_SCHEMA))

    def add_planted(self, source: str, planted: dict[int, str], item: int = 0) -> None:
        self.planted.extend((source, row, item, reason, True) for row, reason in sorted(planted.items()))

    def add_repeats(self, source: str, rows, items) -> None:
        """Good judgements that repeat an earlier one by chance: expected rejects (duplicate_row)."""
        self.planted.extend((source, int(r), int(i), "duplicate_row", False) for r, i in zip(rows, items))

    def pairs(self) -> pa.Table:
        return pa.concat_tables(self.chunks) if self.chunks else PAIRS_SCHEMA.empty_table()

    def planted_table(self) -> pa.Table:
        columns = list(zip(*sorted(self.planted))) if self.planted else [[]] * len(PLANTED_SCHEMA)
        return pa.table(dict(zip(PLANTED_SCHEMA.names, columns)), schema=PLANTED_SCHEMA)


def annotators_table(pop: an.Population, n_judgements: np.ndarray) -> pa.Table:
    types = np.array(an.TYPES, dtype=object)[pop.kind]
    return pa.table({
        "annotator_id": [str(u) for u in pop.user_id.tolist()], "user_hash": pop.user_hash,
        "type": types, "n_judgements": n_judgements.astype(np.int64),
    }, schema=ANNOTATORS_SCHEMA)


def names_of(generator: np.ndarray) -> pa.Array:
    return pa.array(np.array([g.name for g in GENERATORS], dtype=object)[generator], pa.string())


def images_table(pool, images: np.ndarray, image_ids: np.ndarray) -> pa.Table:
    """Scene attributes (names, '' for an absent second object) and quality of the listed pool images."""
    codes = pool.codes[images]

    def names(col: int, vocab) -> np.ndarray:
        return pa.array(np.array(list(vocab) + [""], dtype=object)[codes[:, col]], pa.string())  # MISSING (-1) -> ""

    return pa.table({
        "image_id": pa.array(image_ids, pa.string()), "image_uid": pa.array(pool.uid[images], pa.string()),
        "format": pa.array(pool.fmt[images], pa.string()), "model": names_of(pool.generator[images]),
        "prompt": pa.array(pool.prompts[pool.prompt_of(images)], pa.string()),
        "scene": pa.array(sc.prompts_for_codes(codes), pa.string()),
        "n_objects": codes[:, sc.N_OBJ].astype(np.int8),
        "shape_0": names(sc.SHAPE0, sc.SHAPES), "colour_0": names(sc.COLOUR0, sc.COLOUR_NAMES), "size_0": names(sc.SIZE0, sc.SIZES),
        "shape_1": names(sc.SHAPE1, sc.SHAPES), "colour_1": names(sc.COLOUR1, sc.COLOUR_NAMES), "size_1": names(sc.SIZE1, sc.SIZES),
        "layout": names(sc.LAYOUT, sc.LAYOUTS), "background": names(sc.BG, sc.BACKGROUND_NAMES),
        "blur": pool.blur[images], "noise": pool.noise[images], "jpeg_quality": pool.jpeg_quality[images].astype(np.int16),
        "quality": pool.quality[images], "fidelity": pool.fidelity[images],
    })


def write(out: Path, log: TruthLog, annotators: pa.Table, images: pa.Table) -> dict[str, int]:
    folder = out / "truth"
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"pairs": log.pairs(), "planted": log.planted_table(), "annotators": annotators, "images": images}
    for name, table in tables.items():
        pq.write_table(table, folder / f"{name}.parquet", row_group_size=500_000)
    return {f"truth/{name}.parquet": table.num_rows for name, table in tables.items()}
