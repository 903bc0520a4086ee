"""`prefcurate annotators`, pass 2: each judgement's consensus, shard by shard.

Reads what pass 1 left for its shard (the judgements' keys, labels, authors and votes, and the
scorers' raw margins: the annotators stage's stored partial, declared data, so the pairs are not
hashed twice), the shard's pair and annotator ids, and the annotators stage's tables (the crowd
model: image strengths per taste group, people's memberships, vote groups, signal scales), and
writes that shard's consensus rows. The evidence about a judgement comes from everything but the
judgement itself:
- the majority taste's Bradley-Terry margin, this judgement's own pull removed (first order), on
  top of the scorers' calibrated log-odds (the prior margin that fit corrects, crowd.scorer_prior);
- without a taste model, other people's votes on the same prompt and images plus the scorers'
  mean normalised margin times that slope;
- and the posterior that the majority taste prefers the other image, given who gave the label.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate import schema as schemas
from curate.annotators import crowd
from curate.annotators.stage import JUDGEMENT_KEYS, AnnotatorsStage
from curate.annotators.tables import read_model
from curate.stats import unit_sketch
from curate.dataset import Dataset, DatasetError
from curate.runner import Finalized, ShardContext, Stage, read_partial, table_fingerprint

MODEL_TABLES = ("annotators", "taste_groups", "image_strengths", "vote_groups", "signal_scales", "bt_stability")


class ConsensusStage(Stage):
    name = "consensus"
    version = 1
    outputs = {"consensus": "consensus"}
    final_outputs = {"minority_sketch": "minority_sketch"}
    inputs = ("pairs", "scores", *MODEL_TABLES)

    def plan(self, dataset: Dataset) -> list[dict]:
        shards = dataset.require("pairs", "run `prefcurate ingest` first")
        for table in MODEL_TABLES:
            dataset.require(table, "run `prefcurate annotators` (it writes the crowd model, then the consensus)")
        stale = [p.name for p in dataset.shards("consensus") if not p.name.startswith(f"{self.name}-")]
        if stale:
            raise DatasetError(f"{dataset.table_dir('consensus')} holds {len(stale)} consensus file(s) of an older "
                               f"annotators stage ({stale[0]}, ...); delete them and rerun `prefcurate annotators`")
        return [{"pairs": str(p), "shard": i} for i, p in enumerate(shards)]  # pass 1's shard i read these pairs

    def process(self, spec: dict, ctx: ShardContext):
        import polars as pl

        pairs = pl.read_ipc(spec["pairs"], columns=["pair_id", "annotator_id"])
        model = cached_model(ctx.dataset)
        cols, raw = first_pass_facts(ctx.dataset, spec, pairs.height)
        resp, reliability = authors(ctx.dataset, pairs, model)
        evidence = crowd.judgement_evidence(model, cols, resp, raw, reliability)
        bins, counts = unit_sketch(evidence["minority"])
        ctx.partial = {"bin": bins, "count": counts}
        yield "consensus", consensus_table(pairs, cols, model, evidence, raw, stability(ctx.dataset, cols))

    def finalize(self, dataset: Dataset, results, executor=None) -> Finalized:
        bins = np.concatenate([r.partial["bin"] for r in results]) if results else np.zeros(0, np.int32)
        counts = np.concatenate([r.partial["count"] for r in results]) if results else np.zeros(0, np.int64)
        merged, index = np.unique(bins, return_inverse=True)
        table = schemas.load("minority_sketch").table({"bin": pa.array(merged, pa.int32()),
                                                       "count": np.bincount(index, counts, len(merged)).astype(np.int64)})
        return Finalized({"scored": int(counts.sum())}, {"minority_sketch": [table]})


def first_pass_facts(dataset: Dataset, spec: dict, rows: int) -> tuple[dict, np.ndarray]:
    """The judgement columns and the scorers' raw margins (as float64) pass 1 stored for this shard."""
    facts = read_partial(dataset, AnnotatorsStage.name, spec["shard"], [*JUDGEMENT_KEYS, "scorer_margins"])
    if len(facts["sign"]) != rows:
        raise DatasetError(f"{spec['pairs']} has {rows} rows but pass 1 of `prefcurate annotators` stored "
                           f"{len(facts['sign'])} for it (shard {spec['shard']}); rerun `prefcurate annotators`")
    return {k: facts[k] for k in JUDGEMENT_KEYS}, facts["scorer_margins"].astype(float)


_MODELS: dict[tuple, crowd.CrowdModel] = {}


def cached_model(dataset: Dataset) -> crowd.CrowdModel:
    """The crowd model, read once per process and content (keyed by the checksums of its tables)."""
    key = (str(dataset.root), *(table_fingerprint(dataset, t) for t in MODEL_TABLES))
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = read_model(dataset)
    return _MODELS[key]


def authors(dataset: Dataset, pairs, model: crowd.CrowdModel) -> tuple[np.ndarray, np.ndarray]:
    """Per judgement: its author's memberships (judgements x K+1; the people share for unknown
    authors) and reliability (NaN without a track record: no annotator, or nothing compared)."""
    import polars as pl

    people = dataset.scan("annotators").select("annotator_id", "memberships", "reliability", "compared").collect()
    joined = pairs.select("annotator_id").join(people, on="annotator_id", how="left", maintain_order="left")
    known = joined["memberships"].is_not_null().to_numpy()
    resp = np.tile(model.share, (pairs.height, 1))
    if known.any():
        values = joined.filter(pl.col("memberships").is_not_null())["memberships"].explode().cast(pl.Float64).to_numpy()
        resp[known] = values.reshape(-1, len(model.share))
    record = joined["compared"].fill_null(0).to_numpy() > 0
    reliability = np.where(record, joined["reliability"].cast(pl.Float64).fill_null(np.nan).to_numpy(), np.nan)
    return resp, reliability


def stability(dataset: Dataset, cols: dict) -> np.ndarray:
    """The bootstrap stability of the order of each judgement's two images (NaN without a bootstrap)."""
    import polars as pl

    table = dataset.scan("bt_stability").collect()
    if not table.height:
        return np.full(len(cols["key_a"]), np.nan)
    pairs = pl.DataFrame({"key_lo": np.minimum(cols["key_a"], cols["key_b"]), "key_hi": np.maximum(cols["key_a"], cols["key_b"])})
    joined = pairs.join(table, on=["key_lo", "key_hi"], how="left", maintain_order="left")
    return joined["stability"].cast(pl.Float64).fill_null(np.nan).to_numpy()


def _offsets(rows: int, width: int) -> pa.Array:
    return pa.array(np.arange(rows + 1, dtype=np.int32) * width)


def _repeated_list(names: list[str], rows: int) -> pa.Array:
    """The same list of strings on every row, built from buffers rather than Python lists."""
    values = pa.DictionaryArray.from_arrays(pa.array(np.tile(np.arange(len(names), dtype=np.int32), rows)),
                                            pa.array(names, pa.string())).cast(pa.string())
    return pa.ListArray.from_arrays(_offsets(rows, len(names)), values)


def consensus_table(pairs, cols: dict, model: crowd.CrowdModel, evidence: dict, raw: np.ndarray,
                    bt_stability: np.ndarray) -> pa.Table:
    votes, n = evidence["votes"], pairs.height
    margins = crowd.signal_rows(model, raw, evidence)
    source = pa.DictionaryArray.from_arrays(pa.array(evidence["code"].astype(np.int32)),
                                            pa.array(crowd.source_names())).cast(pa.string())
    f32 = lambda x: pa.array(x, pa.float32(), from_pandas=True)  # noqa: E731 (NaN -> null)
    return schemas.load("consensus").table({
        "pair_id": pairs["pair_id"].to_arrow(), "source": source, "agreement": f32(evidence["agreement"]),
        "minority_score": f32(evidence["minority"]),
        "other_votes": pa.array(votes["total"].astype(np.int32)),
        "other_agree_share": f32(np.where(votes["total"] > 0, votes["agree"] / np.maximum(votes["total"], 1), np.nan)),
        "vote_entropy": f32(votes["entropy"]), "bt_margin": f32(evidence["bt"]), "bt_stability": f32(bt_stability),
        "signal_names": _repeated_list(list(model.signals), n),
        "signal_margins": pa.ListArray.from_arrays(_offsets(n, len(model.signals)),
                                                   pa.array(margins.T.astype(np.float32).ravel())),
    })
