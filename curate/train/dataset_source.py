"""A PairBatchSource over a curated dataset: pairs joined with their latents and text embeddings.

What is trained is decided here, by explicit options, and each pair left out is counted under the
first reason that applies, in this order, so the counts reconcile with the pairs table:

    other_split   not in the selected split (not a drop: another split was asked for)
    tie           ties, always (DPO needs a winner; the diffusers script trains a tie as "image 0 wins")
    filtered      --filtered drop: keep = false in the filters table (no table: nothing is filtered)
    minority      --minority drop: is_minority in pair_scores
    missing_*     only with missing="drop"; by default a pair without latents or text embeddings
                  is an error that names the command to run

The winner is the labelled image. Batches are read lazily, row by row, from the memory-mapped
latents and text_embeddings shards (committed encode generations of the model only); memory holds
the pair index, never the tensors. Epochs are permutations drawn from (seed, epoch), so
``state_dict`` (epoch, cursor) restores the exact position, and with flips the flip of each pair is
drawn from (seed, epoch) too, the same for both of its images.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch

from curate import schema as schemas
from curate.dataset import Dataset
from curate.ids import prompt_id
from curate.options import Filtered, Minority, Missing
from curate.train.data import PairBatch
from curate.train.encode_plan import committed_files, read_columns
from curate.train.sampler import PairSampler

class DataSelectionError(ValueError):
    """The dataset cannot give the pairs asked for: a table is missing, stale, or does not cover them."""


@dataclass(frozen=True)
class Selection:
    """Which pairs are trained, and what comes with them. See the module docstring for the order.
    Ties are always left out: a tie names no winner."""

    split: str | None = "train"         # None: every split
    filtered: Filtered = Filtered.drop
    minority: Minority = Minority.keep  # weight: pair_scores.weight rides along as PairBatch.weight
    missing: Missing = Missing.error    # pairs without latents / text embeddings
    need_u: bool = False                # adaptive-offline: PairBatch.u from pair_scores.u

    def __post_init__(self):
        for name, enum in (("filtered", Filtered), ("minority", Minority), ("missing", Missing)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise DataSelectionError(f"unknown {name} policy {getattr(self, name)!r}; expected one of "
                                         f"{', '.join(e.value for e in enum)}") from None


# --------------------------------------------------------------------------------- selection
def select_pairs(ds: Dataset, sel: Selection):
    """(pairs frame with winner_id / loser_id [/ u / weight], dropped, counts, notes), in pairs-table order."""
    import polars as pl

    ds.require("pairs", "run `prefcurate ingest` first")
    pairs = ds.scan("pairs").select("pair_id", "prompt_id", "image_a_id", "image_b_id", "label", "split").collect()
    counts, dropped, notes = Counter(pairs=pairs.height), Counter(), []
    if sel.split is not None:
        in_split = pairs["split"] == sel.split
        if not in_split.any():
            raise DataSelectionError(f"{ds.root}: no pairs in split {sel.split!r}; the splits are "
                                     f"{sorted(pairs['split'].unique().to_list())} (choose one with --split)")
        counts["other_split"] = int((~in_split).sum())
        pairs = pairs.filter(in_split)
    pairs = _drop(pairs, pairs["label"] == "tie", "tie", dropped)
    pairs = _apply_filters(ds, pairs, sel, dropped, counts, notes)
    pairs = _apply_pair_scores(ds, pairs, sel, dropped, counts)
    a_wins = pl.col("label") == "a"
    pairs = pairs.with_columns(winner_id=pl.when(a_wins).then("image_a_id").otherwise("image_b_id"),
                               loser_id=pl.when(a_wins).then("image_b_id").otherwise("image_a_id"))
    return pairs, dropped, counts, notes


def _drop(frame, mask, reason: str, dropped: Counter):
    dropped[reason] += int(mask.sum())
    return frame.filter(~mask)


def _covering(ds: Dataset, frame, table: str, columns: list[str], fix: str):
    """``frame`` left-joined with ``table``; an error if the table has no row for some pair."""
    import polars as pl

    other = ds.scan(table).select("pair_id", *columns).with_columns(_covered=pl.lit(True)).collect()
    joined = frame.join(other, on="pair_id", how="left", maintain_order="left")
    uncovered = joined.filter(pl.col("_covered").is_null())
    if uncovered.height:
        raise DataSelectionError(f"{ds.root}: the {table} table has no row for {uncovered.height} of {frame.height} "
                                 f"pairs (e.g. {uncovered['pair_id'][0]}): it is older than the pairs; {fix}")
    return joined.drop("_covered")


def _apply_filters(ds: Dataset, pairs, sel: Selection, dropped: Counter, counts: Counter, notes: list[str]):
    if not ds.has("filters"):
        notes.append("no filters table: nothing filtered (`prefcurate filter` makes one)")
        return pairs
    if sel.filtered == "keep":
        notes.append("--filtered keep: pairs the filter removed are trained")
        return pairs
    joined = _covering(ds, pairs, "filters", ["keep", "reasons"], "rerun `prefcurate filter`")
    removed = ~joined["keep"]
    for reason, n in joined.filter(removed)["reasons"].explode().drop_nulls().value_counts().iter_rows():
        counts[f"filtered:{reason}"] = int(n)
    return _drop(joined, removed, "filtered", dropped).drop("keep", "reasons")


def _apply_pair_scores(ds: Dataset, pairs, sel: Selection, dropped: Counter, counts: Counter):
    """Drop, or attach u / weight, as the selection says; `flagged` (is_minority) rides along for the
    training-health metrics whenever there is a pair_scores table."""
    import polars as pl

    if sel.minority == "keep" and not sel.need_u:
        if not ds.has("pair_scores"):
            return pairs
        flags = ds.scan("pair_scores").select("pair_id", flagged=pl.col("is_minority")).collect()
        return (pairs.join(flags, on="pair_id", how="left", maintain_order="left")
                .with_columns(pl.col("flagged").fill_null(False)))
    ds.require("pair_scores", "run `prefcurate annotators` then `prefcurate flag` (per-pair u, flags and weights)")
    joined = _covering(ds, pairs, "pair_scores", ["is_minority", "u", "weight"],
                       "rerun `prefcurate annotators` and `prefcurate flag`")
    if sel.minority == "drop":
        joined = _drop(joined, joined["is_minority"], "minority", dropped)
    if sel.need_u:
        # u is null with fewer than two signals: no evidence that the label is a minority one, so u = 0 (W = 1).
        joined = joined.with_columns(u_known=pl.col("u").is_not_null(), u=pl.col("u").fill_null(0.0))
    keep = ["u"] * sel.need_u + ["weight"] * (sel.minority == "weight")
    joined = joined.with_columns(flagged=pl.col("is_minority"))
    return joined.drop(*[c for c in ("is_minority", "u", "weight") if c not in keep])


# ------------------------------------------------------------------------------------- index
def shard_index(ds: Dataset, files: tuple[str, ...], table: str, columns: list[str]):
    """Rows of ``columns`` of ``files`` with where each lives: file (position in ``files``), batch, row."""
    import polars as pl

    frames = []
    for i, f in enumerate(files):
        data = read_columns(ds.root / f, table, columns)  # one chunk per record batch
        lengths = [len(c) for c in data.column(0).chunks]
        starts = np.repeat(np.cumsum([0] + lengths[:-1]), lengths)
        frames.append(pl.from_arrow(data).with_columns(
            file=pl.lit(i, pl.Int32), batch=pl.Series(np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)),
            row=pl.Series((np.arange(data.num_rows) - starts).astype(np.int32))))
    return pl.concat(frames) if frames else None


class _Columns:
    """Memory-mapped readers of one tensor column, per file; a batch is decoded at most once per fetch."""

    def __init__(self, root: Path, files: tuple[str, ...], table: str, column: str):
        self.paths = [root / f for f in files]
        self.options = ipc.IpcReadOptions(included_fields=[schemas.load(table).names.index(column)])
        self.readers: dict[int, ipc.RecordBatchFileReader] = {}

    def gather(self, locations: np.ndarray) -> np.ndarray:
        """(k, width) float16 values at (file, batch, row) ``locations`` (k, 3)."""
        out = None
        groups = locations[:, 0].astype(np.int64) << 32 | locations[:, 1]
        for group in np.unique(groups):
            take = np.flatnonzero(groups == group)
            f, b = int(locations[take[0], 0]), int(locations[take[0], 1])
            if f not in self.readers:
                self.readers[f] = ipc.open_file(pa.memory_map(str(self.paths[f])), options=self.options)
            column = self.readers[f].get_batch(b).column(0)
            # Fixed-size lists, or lists of one length per model (SDXL's pooled): rows of equal width either way.
            values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
            if out is None:
                out = np.empty((len(locations), values.shape[1]), np.float16)
            out[take] = values[locations[take, 2]]
        return out


# ------------------------------------------------------------------------------------ source
class DatasetPairSource:
    """PairBatches of the selected pairs of a dataset, for the encoder ``key`` (curate.train.encode.encoder_key).

    ``resolution`` None: the only resolution encoded for the model. ``model_hint`` (what the user
    passed as --model) makes error messages name the exact command to run.
    """

    def __init__(self, dataset_dir, key: str, batch_size: int, *, selection: Selection = Selection(),
                 resolution: int | None = None, flip: bool = False, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, grad_accum: int = 1, model_hint: str | None = None):
        self.ds, self.key, self.selection = Dataset(dataset_dir), key, selection
        self.flip, self.seed = flip, seed
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum  # checked by the loop
        self._hint = f"prefcurate encode {self.ds.root} --model {model_hint or '<the model with key ' + key + '>'}"
        pairs, self.dropped, self.counts, self.notes = select_pairs(self.ds, selection)
        files = committed_files(self.ds, key)
        pairs, self.resolution, self.latent_shape = self._attach_latents(pairs, files["latents"], resolution)
        pairs, self.text_shape = self._attach_text(pairs, files["text_embeddings"])
        self.pairs = pairs
        self.counts["trained"] = pairs.height
        self.pair_ids = tuple(pairs["pair_id"].to_list())
        self.digest = hashlib.sha256("\n".join(self.pair_ids).encode()).hexdigest()[:16]
        self._arrays()
        try:
            self.sampler = PairSampler(len(self.pair_ids), batch_size, seed=seed, shuffle=shuffle, flip=flip,
                                       rank=rank, world_size=world_size, grad_accum=grad_accum)
        except ValueError as err:
            raise DataSelectionError(f"{err} (dropped: {dict(self.dropped)})") from None
        self.batches_per_epoch = self.sampler.batches_per_epoch
        self._latents = _Columns(self.ds.root, files["latents"], "latents", "latent")
        self._text = _Columns(self.ds.root, files["text_embeddings"], "text_embeddings", "embedding")
        self._pooled = _Columns(self.ds.root, files["text_embeddings"], "text_embeddings", "pooled")
        self.empty_prompt = self._empty_prompt()

    # ------------------------------------------------------------------ joining
    def _latent_index(self, files, resolution: int | None):
        """(index of this model's latents at one resolution, that resolution, latent shape)."""
        import polars as pl

        index = shard_index(self.ds, files, "latents", ["image_id", "model", "resolution", "flipped", "original_width",
                                                        "original_height", "crop_top", "crop_left", "latent_shape"])
        index = index.filter(pl.col("model") == self.key) if index is not None else None
        if index is None or not index.height:
            raise DataSelectionError(f"{self.ds.root}: no latents for model {self.key}; run `{self._hint}` first")
        encoded = sorted(index["resolution"].unique().to_list())
        if resolution is None and len(encoded) > 1:
            raise DataSelectionError(f"latents of model {self.key} exist at resolutions {encoded}; "
                                     f"pick one with --resolution")
        resolution = encoded[0] if resolution is None else resolution
        if resolution not in encoded:
            raise DataSelectionError(f"no latents of model {self.key} at resolution {resolution} (encoded: {encoded}); "
                                     f"run `{self._hint} --resolution {resolution}`")
        index = (index.filter(pl.col("resolution") == resolution)
                 .unique(["image_id", "flipped"], keep="first", maintain_order=True))
        return index, resolution, tuple(index["latent_shape"][0].to_list())

    def _attach_latents(self, pairs, files, resolution):
        """Where the winner's and loser's latents (and flipped ones) live; the winner's size for time ids."""
        import polars as pl

        index, resolution, shape = self._latent_index(files, resolution)
        sides = [("w", "winner_id", False), ("l", "loser_id", False)]
        sides += [("wf", "winner_id", True), ("lf", "loser_id", True)] if self.flip else []
        for prefix, column, flipped in sides:
            right = index.filter(pl.col("flipped") == flipped)
            extra = ["original_width", "original_height", "crop_top", "crop_left"] if prefix == "w" else []
            right = right.select(pl.col("image_id").alias(column), *extra,
                                 *[pl.col(c).alias(f"{prefix}_{c}") for c in ("file", "batch", "row")])
            pairs = pairs.join(right, on=column, how="left", maintain_order="left")
        has_plain = pl.col("w_file").is_not_null() & pl.col("l_file").is_not_null()
        if self.flip:
            # An image that encoded as is encodes flipped too: a gap here means encode ran without --flip.
            unflipped = pairs.filter(has_plain & (pl.col("wf_file").is_null() | pl.col("lf_file").is_null())).height
            if unflipped:
                raise DataSelectionError(f"{unflipped} pairs have no flipped latents (encoded without --flip); run "
                                         f"`{self._hint} --resolution {resolution} --flip`, or train with --no-flip")
        missing = pairs.select(~has_plain).to_series()
        if missing.any():
            pairs = self._missing(pairs, missing, "missing_latents", f"no latents of model {self.key} at resolution "
                                  f"{resolution}", f"{self._hint} --resolution {resolution}" + " --flip" * self.flip)
        return pairs, resolution, shape

    def _attach_text(self, pairs, files):
        import polars as pl

        index = shard_index(self.ds, files, "text_embeddings", ["prompt_id", "model", "text_shape"])
        index = index.filter(pl.col("model") == self.key) if index is not None else None
        if index is None or not index.height:
            raise DataSelectionError(f"{self.ds.root}: no text embeddings for model {self.key}; "
                                     f"run `{self._hint}` first")
        index = index.unique("prompt_id", keep="first", maintain_order=True)
        empty = index.filter(pl.col("prompt_id") == prompt_id(""))
        self._empty_loc = empty.select("file", "batch", "row").to_numpy() if empty.height else None
        shape = tuple(index["text_shape"][0].to_list())
        right = index.select("prompt_id", *[pl.col(c).alias(f"t_{c}") for c in ("file", "batch", "row")])
        pairs = pairs.join(right, on="prompt_id", how="left", maintain_order="left")
        missing = pairs["t_file"].is_null()
        if missing.any():
            pairs = self._missing(pairs, missing, "missing_text_embeddings", f"no text embedding of model {self.key}",
                                  self._hint)
        return pairs, shape

    def _missing(self, pairs, missing, reason: str, what: str, command: str):
        n, example = int(missing.sum()), pairs.filter(missing).row(0, named=True)
        if self.selection.missing == "error":
            raise DataSelectionError(
                f"{n} of {pairs.height} selected pairs have {what} (e.g. pair {example['pair_id']}, prompt "
                f"{example['prompt_id']}, images {example['winner_id']} / {example['loser_id']}); run `{command}` "
                f"(it encodes only what is missing). If it already ran, those images are absent from the images "
                f"table or undecodable (see its run's stats): filter those pairs out, or pass --missing-latents drop")
        return _drop(pairs, missing, reason, self.dropped)

    def _empty_prompt(self):
        """(text_emb, pooled or None) of the empty prompt, when encode stored it (for prompt dropout)."""
        if self._empty_loc is None:
            return None
        text = torch.from_numpy(self._text.gather(self._empty_loc).astype(np.float32)).view(*self.text_shape)
        pooled = (torch.from_numpy(self._pooled.gather(self._empty_loc).astype(np.float32))[0]
                  if self.key.startswith("sdxl:") else None)
        return text, pooled

    def _arrays(self) -> None:
        p = self.pairs
        loc = lambda prefix: np.stack([p[f"{prefix}_{c}"].to_numpy() for c in ("file", "batch", "row")], 1)  # noqa: E731
        self._loc = {k: loc(k) for k in (["w", "l", "t"] + (["wf", "lf"] if self.flip else []))}
        self._u = p["u"].to_numpy().astype(np.float32) if "u" in p.columns else None
        if self._u is not None:
            self.counts["u_missing_set_to_0"] = int((~p["u_known"]).sum())
        self._weight = p["weight"].to_numpy().astype(np.float32) if "weight" in p.columns else None
        self._flagged = p["flagged"].to_numpy().astype(bool) if "flagged" in p.columns else None
        side = self.resolution
        sizes = np.stack([p["original_height"].to_numpy(), p["original_width"].to_numpy(), p["crop_top"].to_numpy(),
                          p["crop_left"].to_numpy(), np.full(p.height, side), np.full(p.height, side)], 1)
        self._time_ids = sizes.astype(np.float32)  # SDXL: (original h, w, crop top, left, target h, w) of the winner

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[PairBatch]:
        for idx, flips in self.sampler:
            yield self.collate(idx, flips)

    def collate(self, idx: np.ndarray, flips: np.ndarray) -> PairBatch:
        """The batch of pairs ``idx`` (positions in the selection); a flipped pair uses both flipped latents."""
        n = len(idx)
        side = lambda key: (np.where(flips[idx][:, None], self._loc[key + "f"][idx], self._loc[key][idx])  # noqa: E731
                            if self.flip else self._loc[key][idx])
        as_tensor = lambda values, *shape: torch.from_numpy(values.astype(np.float32)).view(*shape)  # noqa: E731
        latents = as_tensor(self._latents.gather(np.concatenate([side("w"), side("l")])), 2 * n, *self.latent_shape)
        text = as_tensor(self._text.gather(self._loc["t"][idx]), n, *self.text_shape)
        sdxl = self.key.startswith("sdxl:")
        pick = lambda values: None if values is None else torch.from_numpy(values[idx])  # noqa: E731
        return PairBatch(
            latent_w=latents[:n], latent_l=latents[n:], text_emb=text,
            pooled=as_tensor(self._pooled.gather(self._loc["t"][idx]), n, -1) if sdxl else None,
            time_ids=self._pair_time_ids(idx, flips) if sdxl else None, u=pick(self._u), weight=pick(self._weight),
            flagged=pick(self._flagged), pair_ids=tuple(self.pair_ids[i] for i in idx))

    def _pair_time_ids(self, idx: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        """SDXL time ids of pairs `idx`; a flipped pair's crop left is mirrored as diffusers' SDXL script does."""
        from curate.train.models import flipped_crop_left

        values = self._time_ids[idx].copy()
        flipped = flips[idx]
        values[flipped, 3] = flipped_crop_left(values[flipped, 3], self.resolution)
        return torch.from_numpy(values)

    # ------------------------------------------------------------------ position
    def state_dict(self) -> dict:
        return {**self.sampler.state_dict(), "pairs_digest": self.digest}

    def load_state_dict(self, state: dict) -> None:
        try:
            self.sampler.load_state_dict(state, extra={"pairs_digest": self.digest})
        except ValueError as err:
            raise DataSelectionError(str(err)) from None

    # ------------------------------------------------------------------ reporting
    def describe(self) -> dict:
        """What was selected and why: saved next to the checkpoints (data.json)."""
        return {"dataset": str(self.ds.root), "model_key": self.key, "resolution": self.resolution, "flip": self.flip,
                "seed": self.seed, "selection": asdict(self.selection), "counts": dict(self.counts),
                "dropped": dict(self.dropped), "notes": self.notes, "pairs_digest": self.digest}

    def summary_rows(self) -> list[tuple[str, object]]:
        """(label, count) lines: selected, each drop reason, trained; the lines reconcile."""
        rows = [("pairs in dataset", self.counts["pairs"])]
        if self.selection.split is not None:
            rows.append((f"  not in split {self.selection.split!r}", self.counts["other_split"]))
        for reason in ("tie", "filtered", "minority", "missing_latents", "missing_text_embeddings"):
            if reason in self.dropped or reason in ("tie", "filtered", "minority"):
                rows.append((f"  dropped: {reason}", self.dropped.get(reason, 0)))
            if reason == "filtered":
                rows += [(f"    {k.split(':', 1)[1]}", v) for k, v in sorted(self.counts.items())
                         if k.startswith("filtered:")]
        rows.append(("trained pairs", self.counts["trained"]))
        if "u_missing_set_to_0" in self.counts:
            rows.append(("  u from pair_scores", self.counts["trained"] - self.counts["u_missing_set_to_0"]))
            rows.append(("  u missing (set to 0)", self.counts["u_missing_set_to_0"]))
        if self._weight is not None:
            rows.append(("  weights from pair_scores", self.counts["trained"]))
        return rows

