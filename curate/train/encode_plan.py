"""What an encode generation has to do: which images (per orientation) and prompts of a dataset's
non-tie pairs no committed earlier generation of the model encoded (curate.train.encode runs it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from curate import schema as schemas
from curate.dataset import Dataset, read_shard
from curate.generations import committed_generation_files
from curate.generations import generations as runner_generations
from curate.ids import prompt_id

TABLES = ("latents", "text_embeddings")


def stage_prefix(key: str) -> str:
    return f"encode-{key.replace(':', '-')}-g"


def generations(ds: Dataset, key: str) -> list[tuple[int, bool]]:
    """(generation, committed) of every encode run of ``key``, oldest first."""
    return runner_generations(ds, stage_prefix(key))


def committed_files(ds: Dataset, key: str, before: int | None = None) -> dict[str, tuple[str, ...]]:
    """Non-empty output files of the committed encode generations of ``key`` older than ``before``, per table."""
    return committed_generation_files(ds, stage_prefix(key), TABLES, before)


def read_columns(path: Path, table: str, columns: list[str]) -> pa.Table:
    """Some columns of a shard, without decompressing the others (the tensors)."""
    names = schemas.load(table).names
    options = ipc.IpcReadOptions(included_fields=[names.index(c) for c in columns])
    with ipc.open_file(pa.memory_map(str(path)), options=options) as reader:
        return reader.read_all()


# ---------------------------------------------------------------------------------- the work
@dataclass
class Work:
    """What a generation has to encode, and the counts behind it."""

    image_specs: list[dict] = field(default_factory=list)
    prompt_specs: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def specs(self) -> list[dict]:
        return self.image_specs + self.prompt_specs


def pending_work(ds: Dataset, key: str, resolution: int, flip: bool, prior: dict[str, tuple[str, ...]],
                 images_per_shard: int, prompts_per_shard: int) -> Work:
    """Image rows (per images shard, with the orientations each still needs) and prompt ids not yet encoded."""
    import polars as pl

    ds.require("pairs", "run `prefcurate ingest` first")
    ds.require("images", "ingest a source with image bytes first")
    trained = ds.scan("pairs").filter(pl.col("label") != "tie").select("image_a_id", "image_b_id", "prompt_id").collect()
    needed = pl.concat([trained["image_a_id"], trained["image_b_id"]]).unique()
    done = _done_latents(ds, prior["latents"], key, resolution)
    work = Work(counts={"images_needed": len(needed), "images_found": 0, "latents_already_encoded": 0,
                        "latents_to_encode": 0})
    for shard in ds.shards("images"):
        ids = pl.from_arrow(read_shard(shard, ["image_id"])).with_row_index("row")
        ids = ids.filter(pl.col("image_id").is_in(needed.implode()))
        plain = ~ids["image_id"].is_in(done[False].implode())
        flipped = ~ids["image_id"].is_in(done[True].implode()) if flip else pl.Series([False] * ids.height)
        # mask bit 1: encode as is; bit 2: encode flipped
        ids = ids.with_columns(mask=plain.cast(pl.Int8) + 2 * flipped.cast(pl.Int8))
        todo = int(plain.sum() + flipped.sum())
        work.counts["images_found"] += ids.height
        work.counts["latents_to_encode"] += todo
        work.counts["latents_already_encoded"] += ids.height * (2 if flip else 1) - todo
        ids = ids.filter(pl.col("mask") > 0)
        for start in range(0, ids.height, images_per_shard):
            chunk = ids.slice(start, images_per_shard)
            work.image_specs.append({"kind": "images", "shard": str(shard), "rows": chunk["row"].to_list(),
                                     "mask": chunk["mask"].to_list()})
    work.counts["images_missing"] = work.counts["images_needed"] - work.counts["images_found"]
    # The empty prompt too: prompt dropout trains a pair on it.
    prompts = pl.concat([trained["prompt_id"], pl.Series([prompt_id("")])]).unique()
    encoded = _done_prompts(ds, prior["text_embeddings"], key)
    todo = sorted(prompts.filter(~prompts.is_in(encoded.implode())).to_list())
    work.counts.update(prompts_needed=len(prompts), prompts_to_encode=len(todo),
                       prompts_already_encoded=len(prompts) - len(todo))
    work.prompt_specs = [{"kind": "prompts", "ids": todo[s:s + prompts_per_shard]}
                         for s in range(0, len(todo), prompts_per_shard)]
    return work


def _done_latents(ds: Dataset, files: tuple[str, ...], key: str, resolution: int):
    """image_ids already encoded at ``resolution``, per orientation."""
    import polars as pl

    parts = [pl.from_arrow(read_columns(ds.root / f, "latents", ["image_id", "model", "resolution", "flipped"]))
             for f in files]
    empty = pl.Series("image_id", [], pl.String)
    if not parts:
        return {False: empty, True: empty}
    rows = pl.concat(parts).filter((pl.col("model") == key) & (pl.col("resolution") == resolution))
    return {o: rows.filter(pl.col("flipped") == o)["image_id"] for o in (False, True)}


def _done_prompts(ds: Dataset, files: tuple[str, ...], key: str):
    import polars as pl

    parts = [pl.from_arrow(read_columns(ds.root / f, "text_embeddings", ["prompt_id", "model"])) for f in files]
    if not parts:
        return pl.Series("prompt_id", [], pl.String)
    return pl.concat(parts).filter(pl.col("model") == key)["prompt_id"]
