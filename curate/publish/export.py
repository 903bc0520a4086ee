"""Export a curated dataset as a Hugging Face dataset folder: ``data/<split>-NNNNN-of-NNNNN.parquet`` + README.md.

The pair metadata and the curation tables (pair_scores, filters, clip_scores: whichever exist) are
joined by polars into one temporary file, streaming. Each split is then written chunk by chunk: a
chunk's image bytes are taken from the memory-mapped images table, the rows are cut into row groups
bounded by rows and bytes, and a new shard file is started before one would pass ``max_shard_bytes``.
At most one chunk of images is ever in memory. Shards get their final ``-of-N`` names once a split
is complete, and the card is written last, so a folder with a README.md is a finished export.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.dataset import Dataset
from curate.publish.parquet import IMAGE, ShardedParquetWriter, plan_row_groups, row_group_cap

SPLIT_ORDER = ("train", "validation", "test")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class ExportError(RuntimeError):
    """The export cannot be made as asked (missing table, existing folder, bad option)."""


def parse_size(text: str | int) -> int:
    """Bytes from ``500MB`` (decimal, as Hugging Face's max_shard_size), ``1GiB`` (binary) or a plain number."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ExportError(f"size {text!r} is not understood; write e.g. 500MB, 2GB, 512MiB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


@dataclass(frozen=True)
class ExportOptions:
    max_shard_bytes: int = 500 * 10**6
    pickapic_columns: bool = False  # jpg_0/jpg_1 binary, label_0/label_1, caption: for existing training scripts
    drop_ties: bool = False
    drop_filtered: bool = False
    drop_flagged: bool = False
    clip_model: str | None = None  # which clip_scores model to export; default: the only one
    license: str = "other"
    rows_per_group: int = 100  # Hugging Face's row-group size for image data: the viewer reads one group at a time
    chunk_rows: int = 1000  # rows whose images are fetched together
    overwrite: bool = False


@dataclass
class Column:
    name: str
    type: pa.DataType
    doc: str
    feature: str = "value"  # value | image


@dataclass
class ExportResult:
    out: Path
    columns: list[Column]
    splits: dict[str, dict] = field(default_factory=dict)  # split -> rows, files, num_bytes, dropped
    clip_model: str | None = None
    options: ExportOptions = field(default_factory=ExportOptions)

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.splits.values())

    def dropped(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for split in self.splits.values():
            for reason, n in split["dropped"].items():
                total[reason] = total.get(reason, 0) + n
        return total


# ----------------------------------------------------------------------------------------- columns
def declare_columns(ds: Dataset, pickapic: bool, clip_model: str | None) -> list[Column]:
    """The exported columns, declared from which tables exist (never inferred from the data)."""
    s, f32, flag = pa.string(), pa.float32(), pa.bool_()
    if pickapic:
        head = [Column("caption", s, "The prompt."),
                Column("jpg_0", pa.binary(), "Image 0, raw encoded bytes (Pick-a-Pic layout; PNG or JPEG)."),
                Column("jpg_1", pa.binary(), "Image 1, raw encoded bytes."),
                Column("label_0", pa.float64(), "1 if image 0 won, 0 if it lost, 0.5 for a tie."),
                Column("label_1", pa.float64(), "1 - label_0.")]
    else:
        head = [Column("prompt", s, "The prompt."),
                Column("image_a", IMAGE, "First image.", "image"), Column("image_b", IMAGE, "Second image.", "image"),
                Column("label", s, "Which image the annotator preferred: a, b or tie.")]
    columns = [Column("pair_id", s, "Stable id of the judgement (prefcurate pairs.pair_id).")] + head + [
        Column("annotator_id", s, "Who judged; null when unknown."),
        Column("model_a", s, "Generator of the first image."), Column("model_b", s, "Generator of the second image."),
        Column("votes_a", pa.int32(), "Votes for the first image (multi-vote data)."),
        Column("votes_b", pa.int32(), "Votes for the second image."),
        Column("created_at", pa.timestamp("us", tz="UTC"), "When the judgement was made."),
        Column("source", s, "Input file the judgement came from.")]
    if ds.has("pair_scores"):
        columns += [Column("u", f32, "Adaptive-DPO minority metric u = a s; null with fewer than 2 signals or for ties."),
                    Column("minority_score", f32, "1 - P(label right | consensus, annotator reliability); null for ties."),
                    Column("is_minority", flag, "Flagged as a minority (likely mislabelled or idiosyncratic) judgement."),
                    Column("reasons", pa.list_(s), "Why it was flagged (empty when not)."),
                    Column("weight", f32, "Adaptive-DPO training weight W = 1 / (k x + c); 0 for ties.")]
    if ds.has("filters"):
        columns += [Column("filter_keep", flag, "True when no CLIP filter rule removed the pair."),
                    Column("filter_reasons", pa.list_(s), "The filter rules that removed it (empty when kept).")]
    if clip_model is not None:
        columns += [Column("clip_score_a", f32, f"CLIP ({clip_model}) prompt-image cosine of the first image."),
                    Column("clip_score_b", f32, "CLIP prompt-image cosine of the second image."),
                    Column("clip_margin", f32, "CLIP score of the winner minus the loser's; 0 for a tie."),
                    Column("clip_image_cosine", f32, "CLIP cosine of the two images (near 1: no preference signal).")]
    return columns


def feature_json(column: Column) -> dict:
    """The column in the ``datasets`` Features JSON stored in the parquet schema metadata."""
    if column.feature == "image":
        return {"_type": "Image"}
    if pa.types.is_list(column.type):
        return {"feature": feature_json(Column(column.name, column.type.value_type, "")), "_type": "Sequence"}
    return {"dtype": dtype_name(column.type), "_type": "Value"}


def dtype_name(arrow_type: pa.DataType) -> str:
    """The ``datasets`` dtype string of a scalar Arrow type."""
    if pa.types.is_timestamp(arrow_type):
        return f"timestamp[{arrow_type.unit}" + (f", tz={arrow_type.tz}]" if arrow_type.tz else "]")
    names = {pa.string(): "string", pa.binary(): "binary", pa.bool_(): "bool", pa.float32(): "float32",
             pa.float64(): "float64", pa.int32(): "int32", pa.int64(): "int64"}
    if arrow_type not in names:
        raise ExportError(f"no datasets dtype for Arrow type {arrow_type}; add it to curate.publish.export.dtype_name")
    return names[arrow_type]


def arrow_schema(columns: list[Column]) -> pa.Schema:
    features = {c.name: feature_json(c) for c in columns}
    return pa.schema([pa.field(c.name, c.type) for c in columns],
                     metadata={"huggingface": json.dumps({"info": {"features": features}})})


def drop_masks(batch: pa.RecordBatch | pa.Table, options: ExportOptions) -> dict[str, np.ndarray]:
    """Rows each drop option removes, each row counted under the first option that removes it."""
    n = batch.num_rows
    taken = np.zeros(n, bool)
    masks = {}
    wanted = (("tie", options.drop_ties, lambda: pc.equal(batch["label"], "tie")),
              ("filtered", options.drop_filtered, lambda: pc.invert(pc.fill_null(batch["filter_keep"], True))),
              ("flagged", options.drop_flagged, lambda: pc.fill_null(batch["is_minority"], False)))
    for name, on, mask in wanted:
        if on:
            hit = mask().to_numpy(zero_copy_only=False).astype(bool) & ~taken
            masks[name] = hit
            taken |= hit
    return masks


# ------------------------------------------------------------------------------------------ export
def export_dataset(dataset_dir: str | Path, out: str | Path, options: ExportOptions = ExportOptions()) -> ExportResult:
    """Write the Hugging Face folder ``out`` from the dataset: shards per split, then the card."""
    import polars as pl

    from curate.publish.card import render_card
    from curate.images import ImageIndex

    ds = Dataset(dataset_dir)
    ds.require("pairs", "run `prefcurate ingest` first")
    if options.drop_filtered and not ds.has("filters"):
        raise ExportError(f"--drop-filtered: {ds.root} has no filters table; run `prefcurate filter {ds.root}` first")
    if options.drop_flagged and not ds.has("pair_scores"):
        raise ExportError(f"--drop-flagged: {ds.root} has no pair_scores table; run `prefcurate flag {ds.root}` first")
    clip_model = choose_clip_model(ds, options.clip_model)
    columns = declare_columns(ds, options.pickapic_columns, clip_model)
    out = prepare_folder(Path(out), options.overwrite)
    result = ExportResult(out=out, columns=columns, clip_model=clip_model, options=options)
    work = out / ".prefcurate-export"
    work.mkdir()
    try:
        meta = work / "pairs.arrow"
        # The oldest compat level writes plain (large) strings, which pyarrow's dataset filters understand.
        metadata_frame(ds, clip_model).sink_ipc(meta, compat_level=pl.CompatLevel.oldest())
        index, schema = ImageIndex(ds), arrow_schema(columns)
        for split in split_names(ds):
            result.splits[split] = write_split(meta, split, out / "data", schema, columns, index, options)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result.rows == 0:
        raise ExportError(f"every pair was dropped ({result.dropped()}); nothing to export. Drop fewer rows "
                          f"(--drop-ties / --drop-filtered / --drop-flagged)")
    (out / "README.md").write_text(render_card(result, ds))  # last: a folder with a card is a finished export
    return result


def choose_clip_model(ds: Dataset, wanted: str | None) -> str | None:
    if not ds.has("clip_scores"):
        if wanted:
            raise ExportError(f"--clip-model {wanted!r}: {ds.root} has no clip_scores; run `prefcurate embed` first")
        return None
    models = sorted(ds.scan("clip_scores").select("model").unique().collect()["model"].to_list())
    if wanted is None and len(models) > 1:
        raise ExportError(f"{ds.root} has CLIP scores of {len(models)} models ({', '.join(models)}); "
                          f"choose one with --clip-model")
    if wanted is not None and wanted not in models:
        raise ExportError(f"--clip-model {wanted!r} is not in clip_scores; expected one of {', '.join(models)}")
    return wanted or models[0]


def prepare_folder(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} exists and is not empty; choose a new folder or pass --overwrite "
                              f"(replaces its data/ and README.md)")
        shutil.rmtree(out / "data", ignore_errors=True)
        shutil.rmtree(out / ".prefcurate-export", ignore_errors=True)
        (out / "README.md").unlink(missing_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)
    return out


def split_names(ds: Dataset) -> list[str]:
    names = ds.scan("pairs").select("split").unique().collect()["split"].to_list()
    for name in names:
        if not re.fullmatch(r"\w+(\.\w+)*", name):
            raise ExportError(f"split {name!r} cannot be a Hugging Face split name (letters, digits, _ and .); "
                              f"re-ingest with --split NAME")
    return sorted(names, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))


def metadata_frame(ds: Dataset, clip_model: str | None):
    """A polars LazyFrame: every pair's metadata and curation columns, in pairs order."""
    import polars as pl

    lf = ds.scan("pairs").select("pair_id", "prompt", "image_a_id", "image_b_id", "label", "annotator_id", "model_a",
                                 "model_b", "votes_a", "votes_b", "created_at", "source", "split")
    joins = []
    if ds.has("pair_scores"):
        joins.append(ds.scan("pair_scores").select("pair_id", "u", "minority_score", "is_minority", "reasons", "weight"))
    if ds.has("filters"):
        joins.append(ds.scan("filters").select("pair_id", pl.col("keep").alias("filter_keep"),
                                               pl.col("reasons").alias("filter_reasons")))
    if clip_model is not None:
        joins.append(ds.scan("clip_scores").filter(pl.col("model") == clip_model).select(
            "pair_id", pl.col("score_a").alias("clip_score_a"), pl.col("score_b").alias("clip_score_b"),
            pl.col("margin").alias("clip_margin"), pl.col("image_cosine").alias("clip_image_cosine")))
    for right in joins:
        lf = lf.join(right, on="pair_id", how="left", maintain_order="left")
    return lf


def write_split(meta: Path, split: str, folder: Path, schema: pa.Schema, columns: list[Column], index,
                options: ExportOptions) -> dict:
    """Stream one split into byte-bounded shards; returns its rows, files, bytes and dropped counts."""
    import pyarrow.dataset as pads

    writer = ShardedParquetWriter(folder, split, schema, options.max_shard_bytes)
    dropped: dict[str, int] = {}
    source = pads.dataset(str(meta), format="ipc")
    try:
        for batch in source.to_batches(filter=pads.field("split") == split, batch_size=options.chunk_rows):
            masks = drop_masks(batch, options)
            keep = np.ones(batch.num_rows, bool)
            for reason, mask in masks.items():
                dropped[reason] = dropped.get(reason, 0) + int(mask.sum())
                keep &= ~mask
            if not keep.any():
                continue
            table, row_bytes = build_rows(pa.Table.from_batches([batch]).filter(pa.array(keep)), columns, schema,
                                          index)
            for start, end in plan_row_groups(row_bytes, options.rows_per_group, row_group_cap(options.max_shard_bytes)):
                writer.write(table.slice(start, end - start), int(row_bytes[start:end].sum()))
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    return {"rows": sum(f["rows"] for f in files), "files": files, "dropped": dropped,
            "num_bytes": sum(f["num_bytes"] for f in files)}


def build_rows(meta: pa.Table, columns: list[Column], schema: pa.Schema, index) -> tuple[pa.Table, np.ndarray]:
    """The output rows of a metadata chunk, images attached; and each row's approximate byte size."""
    n = meta.num_rows
    ids = pa.concat_arrays([meta["image_a_id"].combine_chunks().cast(pa.string()),
                            meta["image_b_id"].combine_chunks().cast(pa.string())])
    images = index.take(ids.to_numpy(zero_copy_only=False))
    blobs = images.column("bytes").combine_chunks()
    formats = images.column("format").combine_chunks()
    label = meta["label"].combine_chunks().cast(pa.string())
    label_0 = pc.if_else(pc.equal(label, "a"), 1.0, pc.if_else(pc.equal(label, "b"), 0.0, 0.5))
    derived = {
        "caption": meta["prompt"], "jpg_0": blobs.slice(0, n), "jpg_1": blobs.slice(n),
        "label_0": label_0, "label_1": pc.subtract(1.0, label_0),
        "image_a": image_struct(blobs.slice(0, n), ids.slice(0, n), formats.slice(0, n)),
        "image_b": image_struct(blobs.slice(n), ids.slice(n), formats.slice(n)),
    }
    arrays = [(derived[c.name] if c.name in derived else meta[c.name]).cast(c.type) for c in columns]
    table = pa.Table.from_arrays(arrays, schema=schema)
    sizes = pc.fill_null(pc.binary_length(blobs), 0).to_numpy()
    other = max(0, table.nbytes - int(sizes.sum())) / max(1, n)
    return table, sizes[:n] + sizes[n:] + other


def image_struct(blobs: pa.Array, image_ids: pa.Array, formats: pa.Array) -> pa.StructArray:
    """The Image feature: encoded bytes plus a file name (id and extension), null where there are no bytes."""
    ext = pc.replace_substring(pc.fill_null(formats, "bin"), "jpeg", "jpg")
    paths = pc.binary_join_element_wise(image_ids, ext, ".")
    return pa.StructArray.from_arrays([blobs, paths], fields=list(IMAGE), mask=pc.is_null(blobs))
