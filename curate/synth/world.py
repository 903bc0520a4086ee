"""Build a synthetic preference world: config, shared state, and the run that writes every layout.

``build_world(out, WorldConfig(...))`` writes the layouts asked for, the truth sidecar and, last,
OUT/world.json (its presence marks a complete world). Same config and seed -> byte-identical files:
every component draws from its own random stream named after it, so turning a layout off does not
change the others.
"""
from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from curate import ids
from curate.synth import annotators as an
from curate.synth import pool as pl
from curate.synth import scene as sc
from curate.synth import truth as tr

FORMATS = ("pickapic", "hpdv2", "multivote", "table", "votes", "hpdv2_pref", "hpdv3")
DEFAULT_FORMATS = FORMATS[:4]
Progress = Callable[[str, int, int], None]  # (task, done, total)


@dataclass(frozen=True)
class WorldConfig:
    """``pairs`` is the number of good Pick-a-Pic rows; the other layouts get about a tenth each
    (see ``layout_sizes``). ``malformed`` rows are planted in EACH layout on top of the good ones."""

    pairs: int = 500
    seed: int = 0
    minority_rate: float = 0.2
    image_size: int = 64
    formats: tuple[str, ...] = DEFAULT_FORMATS
    images: bool = True
    malformed: int = 0
    per_prompt: int = 4
    max_prompts: int | None = None  # default: 1000 when images are rendered, 100,000 when not
    rows_per_file: int | None = None  # Pick-a-Pic rows per parquet file; default 20,000 (1,000,000 without images)
    n_annotators: int | None = None  # default: pairs / 20, within [30, 50,000]
    heavy_user_share: float = 0.0  # > 0: one extra annotator makes this share of all judgements
    heavy_user_type: str = "minority_artsy"  # ... with this taste (curate.synth.annotators.TYPES)

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown format(s) {', '.join(unknown)}; expected some of {', '.join(FORMATS)}")
        if not self.images and set(self.formats) - {"pickapic"}:
            raise ValueError(f"--no-images writes only the metadata-only Pick-a-Pic layout; drop {sorted(set(self.formats) - {'pickapic'})} from --formats")
        if not 0 <= self.minority_rate < 1:
            raise ValueError(f"minority rate {self.minority_rate} is outside [0, 1)")
        if not 0 <= self.heavy_user_share < 1 or self.heavy_user_type not in an.TYPES:
            raise ValueError(f"heavy user share {self.heavy_user_share} of type {self.heavy_user_type!r}: need a share in "
                             f"[0, 1) and a type among {', '.join(an.TYPES)}")
        if self.pairs < 1 or self.image_size < 16 or self.per_prompt < 2 or self.malformed < 0:
            raise ValueError(f"need pairs >= 1, image_size >= 16, per_prompt >= 2, malformed >= 0; got {self}")

    def n_prompts(self) -> int:
        """About 6 pairs per prompt (Pick-a-Pic has more), capped so rendering stays cheap."""
        cap = self.max_prompts or (1000 if self.images else 100_000)
        return int(min(max(4, math.ceil(self.pairs / 6)), cap))

    def layout_sizes(self) -> dict[str, int]:
        """Good records per layout: Pick-a-Pic rows, HPDv2 train records (one pair each) and test
        records (a ranking of per_prompt images by 3 annotators), multi-vote rows, table rows."""
        tenth = max(20, self.pairs // 10)
        return {"pickapic": self.pairs, "hpdv2_train": tenth, "hpdv2_test": max(10, self.pairs // 50), "multivote": tenth,
                "table": tenth, "votes": tenth, "hpdv2_pref": tenth, "hpdv3": tenth}


class ImageStore:
    """Encoded bytes and image ids of pool images, each rendered at most once."""

    def __init__(self, pool: pl.Pool, size: int, render: bool):
        self.pool, self.size, self.render = pool, size, render
        self.data: dict[int, bytes] = {}
        self.used: set[int] = set()
        self._ids = np.full(pool.n_images, None, dtype=object)

    def ensure(self, images, progress: Progress | None = None) -> None:
        images = np.unique(np.asarray(images))
        self.used.update(images.tolist())
        missing = np.array([i for i in images.tolist() if i not in self.data], dtype=np.int64)
        if self.render and len(missing):
            report = (lambda done, total: progress("render images", done, total)) if progress else None
            self.data.update(pl.render_pool(self.pool, missing, self.size, report))

    def bytes(self, image: int) -> bytes:
        return self.data[image]

    def ids(self, images) -> np.ndarray:
        """image_id of each image: content hash of its bytes, or of its uid when bytes are not written."""
        images = np.asarray(images, dtype=np.int64)
        todo = np.unique(images[self._ids[images] == None])  # noqa: E711 (elementwise on an object array)
        if self.render:
            self._ids[todo] = [ids.image_id(self.data[i]) for i in todo.tolist()]
        else:
            self._ids[todo] = [ids.uid_image_id(u) for u in self.pool.uid[todo].tolist()]
        return self._ids[images]

    def file_name(self, image: int) -> str:
        return f"{self.pool.uid[image]}.{'png' if self.pool.fmt[image] == 'png' else 'jpg'}"


@dataclass
class World:
    """The shared state every layout writer draws from."""

    config: WorldConfig
    out: Path
    pool: pl.Pool
    tastes: dict[str, np.ndarray]
    population: an.Population
    store: ImageStore
    calibration: dict
    truth: tr.TruthLog = field(default_factory=tr.TruthLog)
    judged: np.ndarray = None  # judgements per annotator (see truth.annotators_table)
    files: dict[str, int] = field(default_factory=dict)  # written file -> records
    progress: Progress | None = None

    def rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, zlib.crc32(name.encode())])

    def sample_pairs(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Two different candidates of one prompt, in random display order."""
        k = self.pool.per_prompt
        prompt = rng.integers(0, len(self.pool.targets), n)
        first = rng.integers(0, k, n)
        second = (first + rng.integers(1, k, n)) % k
        return prompt * k + first, prompt * k + second

    def annotator_ids(self, who: np.ndarray) -> np.ndarray:
        return np.array([str(u) for u in self.population.user_id[who].tolist()], dtype=object)

    def annotator_types(self, who: np.ndarray) -> np.ndarray:
        return np.array(an.TYPES, dtype=object)[self.population.kind[who]]

    def count(self, who: np.ndarray, times: int = 1) -> None:
        np.add.at(self.judged, who, times)

    def add_truth(self, source: str, rows, items, a, b, who, label, annotator_id=None) -> None:
        """Truth rows for judgements by known annotators (``who``; None for crowd rows). The
        annotator id defaults to str(user_id); HPDv2 passes its user_hash form."""
        crowd = who is None
        if annotator_id is None:
            annotator_id = [None] * len(a) if crowd else self.annotator_ids(who)
        self.truth.add_pairs(
            source, rows, items, self.pool.prompts[self.pool.prompt_of(a)], self.store.ids(a), self.store.ids(b),
            annotator_id,
            ["crowd"] * len(a) if crowd else self.annotator_types(who),
            label, self.pool.fidelity, self.pool.quality, a, b,
        )


def make_world(out: Path, config: WorldConfig, progress: Progress | None = None) -> World:
    base = np.random.default_rng([config.seed, zlib.crc32(b"pool")])
    pool = pl.make_pool(base, config.n_prompts(), config.per_prompt)
    tastes = an.taste_rewards(pool)
    world = World(config, out, pool, tastes, None, ImageStore(pool, config.image_size, config.images), {}, progress=progress)
    # Solve the minority label share on a sample of pairs drawn like every layout draws them.
    a, b = world.sample_pairs(world.rng("calibration"), 50_000)
    share, world.calibration = an.minority_share(config.minority_rate, tastes, a, b)
    world.calibration["minority_label_share"] = round(share, 4)
    n_annotators = config.n_annotators or int(np.clip(config.pairs // 20, 30, 50_000))
    world.population = an.make_population(world.rng("population"), n_annotators, an.label_shares(share))
    if config.heavy_user_share > 0:
        world.population = an.add_heavy_user(world.population, config.heavy_user_type, config.heavy_user_share)
    world.judged = np.zeros(len(world.population.user_id), dtype=np.int64)
    return world


def build_world(out: str | Path, config: WorldConfig = WorldConfig(), progress: Progress | None = None) -> dict:
    """Write the world under ``out`` and return the summary also saved as OUT/world.json."""
    from curate.synth import hpdv2, votes, writers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "world.json").unlink(missing_ok=True)  # written last: its absence marks an unfinished world
    world = make_world(out, config, progress)
    layouts = {"pickapic": writers.write_pickapic, "hpdv2": hpdv2.write_hpdv2, "multivote": writers.write_multivote,
               "table": writers.write_table, "votes": votes.write_votes, "hpdv2_pref": votes.write_hpdv2_pref,
               "hpdv3": votes.write_hpdv3}
    for name in config.formats:
        layouts[name](world)
    used = np.array(sorted(world.store.used), dtype=np.int64)
    annotators = tr.annotators_table(world.population, world.judged)
    world.files.update(tr.write(out, world.truth, annotators, tr.images_table(world.pool, used, world.store.ids(used))))
    summary = summarise(world)
    (out / "world.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def summarise(world: World) -> dict:
    import pyarrow.compute as pc

    pairs = world.truth.pairs()
    by_source = {}
    for source in sorted(set(pairs.column("source").to_pylist())):
        rows = pairs.filter(pc.equal(pairs.column("source"), source))
        by_source[source] = {"pairs": rows.num_rows, "minority_share": round(float(pc.mean(rows.column("is_minority")).as_py()), 4)}
    individual = pairs.filter(pc.not_equal(pairs.column("annotator_type"), "crowd"))
    types = np.array(an.TYPES)[world.population.kind]
    return {
        "config": asdict(world.config), "seed": world.config.seed,
        "formulas": {"true_reward": f"{sc.W_FIDELITY} * fidelity + {sc.W_QUALITY} * quality", "majority_tie_eps": an.MAJORITY_TIE_EPS},
        "files": dict(sorted(world.files.items())),
        "prompts": len(world.pool.targets), "images_used": len(world.store.used),
        "minority": {"requested": world.config.minority_rate, **world.calibration,
                     "realised": round(float(pc.mean(individual.column("is_minority")).as_py() or 0.0), 4) if individual.num_rows else None,
                     "by_source": by_source},
        "annotators": {t: int((types == t).sum()) for t in an.TYPES},
        "judgements_by_type": {t: int(world.judged[types == t].sum()) for t in an.TYPES},
        "planted": sum(1 for p in world.truth.planted if p[4]),
        "chance_repeats": sum(1 for p in world.truth.planted if not p[4]),
    }
