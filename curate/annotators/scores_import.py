"""Import a scorer's values computed elsewhere (PickScore, HPS, ImageReward, an aesthetic model).

Two layouts, CSV / JSONL / Parquet:
- by image: ``image_id``, ``prompt_id`` (or ``prompt``, hashed the way ingest does), ``score``;
- by pair: ``pair_id``, ``score_a``, ``score_b`` (matched to the pairs table for image and prompt ids).
Rows that match nothing in the dataset are counted and reported, never silently dropped; a file
that would store nothing is an error naming the key columns that did not match.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curate import ids
from curate.dataset import Dataset
from curate.ingest.pickapic import SourceError
from curate.runner import ShardContext, Stage


def read_any(path: Path):
    import polars as pl

    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            ids_as_text = {c: pl.String for c in ("pair_id", "image_id", "prompt_id", "prompt")}  # "0012" stays "0012"
            return pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", schema_overrides=ids_as_text)
        if suffix in (".jsonl", ".ndjson"):
            return pl.read_ndjson(path)
        if suffix == ".parquet":
            return pl.read_parquet(path)
    except Exception as exc:
        raise SourceError(f"{path}: cannot read it ({exc})") from None
    raise SourceError(f"{path}: scores are read from .csv, .tsv, .jsonl or .parquet, not {suffix or 'no suffix'}")


@dataclass
class ScoresImportStage(Stage):
    file: str
    scorer: str
    outputs = {"scores": "scores"}
    inputs = ("pairs",)
    version = 1

    @property
    def name(self) -> str:  # one run (and one set of files) per scorer
        return f"scores-{''.join(ch if ch.isalnum() or ch in '-_.' else '_' for ch in self.scorer)}"

    def config(self) -> dict:
        return {"file": str(Path(self.file).resolve()), "scorer": self.scorer}

    def source_fingerprint(self) -> dict:
        stat = Path(self.file).stat()
        return {"file": [stat.st_size, stat.st_mtime_ns]}

    def plan(self, dataset: Dataset) -> list[str]:
        dataset.require("pairs", "run `prefcurate ingest` first")
        return [self.file]

    def check(self, dataset: Dataset) -> None:
        """Raise SourceError now, before the run replaces an earlier import of this scorer, if nothing would be stored."""
        matched_scores(Path(self.file), dataset)

    def process(self, spec: str, ctx: ShardContext):
        import polars as pl

        from curate import schema as schemas

        rows, stats = matched_scores(Path(spec), ctx.dataset)
        ctx.stats.update(stats)
        yield "scores", schemas.load("scores").table({
            "image_id": rows["image_id"].to_arrow(), "prompt_id": rows["prompt_id"].to_arrow(),
            "scorer": [self.scorer] * rows.height, "score": rows["score"].cast(pl.Float32).to_arrow()})


def matched_scores(path: Path, dataset: Dataset):
    """(rows image_id, prompt_id, score of the dataset's pairs, stats) of a scores file; SourceError if no row is stored."""
    import polars as pl

    frame = read_any(path)
    cols = set(frame.columns)
    pairs = dataset.scan("pairs").select("pair_id", "prompt_id", "image_a_id", "image_b_id")
    if {"pair_id", "score_a", "score_b"} <= cols:
        keys = "pair_id"
        matched = pairs.join(frame.lazy().select("pair_id", "score_a", "score_b"), on="pair_id", how="inner").collect()
        rows = pl.concat([
            matched.select(image_id="image_a_id", prompt_id="prompt_id", score="score_a"),
            matched.select(image_id="image_b_id", prompt_id="prompt_id", score="score_b")])
        unmatched = frame.height - matched.height
    elif {"image_id", "score"} <= cols and ({"prompt_id"} & cols or {"prompt"} & cols):
        keys = "image_id, prompt_id" if "prompt_id" in cols else "image_id, prompt (hashed to prompt_id as ingest does)"
        if "prompt_id" not in cols:
            frame = frame.with_columns(prompt_id=pl.Series(ids.prompt_ids(frame["prompt"].to_arrow()).to_pylist()))
        known = pairs.select(pl.concat_list("image_a_id", "image_b_id").alias("image_id"), "prompt_id") \
            .explode("image_id").unique().collect()
        rows = frame.select("image_id", "prompt_id", "score").join(known, on=["image_id", "prompt_id"], how="semi")
        unmatched = frame.height - rows.height
    else:
        raise SourceError(f"{path}: columns {sorted(cols)} fit neither layout; expected image_id, prompt_id "
                          f"(or prompt), score — or pair_id, score_a, score_b")
    if not rows.height:
        raise SourceError(f"{path}: none of its {frame.height} rows matches a pair of {dataset.root} on {keys}; "
                          f"nothing to store. Are these the scores of this dataset's pairs (ids as ingest made them)?")
    stored = rows.filter(pl.col("score").is_not_null() & pl.col("score").is_finite()) \
        .unique(["image_id", "prompt_id"], keep="first", maintain_order=True)
    if not stored.height:
        raise SourceError(f"{path}: the {rows.height} rows that match the pairs on {keys} have no finite score; "
                          f"nothing to store")
    return stored, {"unmatched_rows": unmatched, "dropped_missing_or_duplicate": rows.height - stored.height,
                    "scores": stored.height}
