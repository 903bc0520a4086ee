"""`prefcurate annotators`: the consensus each judgement is compared with, and per-annotator statistics.

Pass 1 (one task per pairs shard) leaves partial sums: votes per (prompt, image pair) group,
per-annotator counts, Bradley-Terry comparisons, and each scorer's raw margins (in a file per shard).
The driver merges them (sums, one sparse Bradley-Terry fit, each signal's RMS) and saves the merged
state; pass 2 (one task per shard again) writes each shard's consensus rows and leaves per-annotator
agreement counts, which the driver merges into the annotators table. Nothing is gathered whole
onto one worker except those small merged aggregates.

The consensus is the evidence about a judgement from everything but the judgement itself, summed
in log-odds that the labelled winner is the better image:
- the Bradley-Terry fit over all judgements (a N(0, 1/ridge) prior on log-strengths), with this
  judgement's own pull removed to first order; without it, other people's votes on the same
  prompt and images (log (agree + 1) / (disagree + 1));
- plus the scorers' mean normalised margin times a slope fitted against the human labels of the
  whole dataset (a one-parameter logistic regression), so a scorer counts as much as it predicts people.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.annotators import signals as sig
from curate.dataset import Dataset
from curate.runner import ShardContext, Stage, commit_shard_file

RHO_RMS = 3.75  # the authors' rho = 15 with an L2 norm over a batch of 16, in batch-size-free RMS form


@dataclass
class AnnotatorsStage(Stage):
    bradley_terry: bool = True
    ridge: float = 1.0
    level: float = 0.95
    bootstrap: int = 0

    name = "annotators"
    version = 1
    outputs = {"consensus": "consensus", "annotators": "annotators"}
    inputs = ("pairs", "scores")

    def config(self) -> dict:
        return {"bradley_terry": self.bradley_terry, "ridge": self.ridge, "level": self.level,
                "bootstrap": self.bootstrap}

    def plan(self, dataset: Dataset) -> list[dict]:
        shards = dataset.require("pairs", "run `prefcurate ingest` first")
        scorers = sorted(dataset.scan("scores").select("scorer").unique().collect()["scorer"].to_list()) \
            if dataset.has("scores") else []
        return [{"pairs": str(p), "scorers": scorers} for p in shards]

    def process(self, spec: dict, ctx: ShardContext):
        import polars as pl

        pairs = pl.read_ipc(spec["pairs"], columns=sig.PAIR_COLUMNS)
        keyed = sig.with_keys(pairs)
        margins = np.zeros((0, pairs.height))
        if spec["scorers"]:
            scores = (ctx.dataset.scan("scores").filter(pl.col("prompt_id").is_in(pairs["prompt_id"].unique().implode()))
                      .collect())
            margins = sig.scorer_margins(pairs, scores, spec["scorers"])
        _save(_margins_file(ctx.dataset, ctx.index), margins)
        ctx.partial = {
            "votes": sig.group_votes(keyed).to_arrow(),
            "annotators": sig.annotator_counts(pairs).to_arrow(),
            "comparisons": sig.comparisons(keyed) if self.bradley_terry else None,
            "scorer_sq": np.nansum(margins ** 2, axis=1), "scorer_n": np.sum(~np.isnan(margins), axis=1),
        }
        return iter(())

    def finalize(self, dataset: Dataset, results, executor) -> dict[str, int]:
        import polars as pl

        partials = [r.partial for r in results]
        state = _merge_votes([p["votes"] for p in partials])
        state.update(_fit_bradley_terry([p["comparisons"] for p in partials], self.ridge, self.bootstrap)
                     if self.bradley_terry else {})
        sq = sum(p["scorer_sq"] for p in partials) if partials else np.zeros(0)
        n = sum(p["scorer_n"] for p in partials) if partials else np.zeros(0)
        state["scorer_rms"] = np.sqrt(sq / np.maximum(n, 1)) if len(partials) else np.zeros(0)
        state["scorer_slope"] = np.array(_scorer_slope(dataset, len(results), state["scorer_rms"]))
        state_file = dataset.run_dir(self.name) / "merged.npz"
        np.savez(state_file, **state)
        specs = self.plan(dataset)
        scorers = specs[0]["scorers"] if specs else []
        jobs = [(self, i, str(dataset.root), str(state_file), spec) for i, spec in enumerate(specs)]
        agreement = executor.map(_consensus_shard, jobs, desc="annotators: consensus per shard")
        counts = pl.concat([pl.from_arrow(p["annotators"]) for p in partials]) if partials else None
        stats = _write_annotators(self, dataset, counts, agreement)
        stats.update({"signals:bradley_terry": int(self.bradley_terry), "signals:scorers": len(scorers),
                      "krippendorff_alpha_x1000": _alpha_x1000(state)})
        return stats


def _alpha_x1000(state) -> int:
    """Krippendorff's alpha over the groups that several people judged (x1000, -1000 when undefined)."""
    from curate.stats import krippendorff_alpha_nominal

    counts = np.stack([state["lo_wins"], state["hi_wins"], state["tied"]], axis=1).astype(float)
    counts = counts[counts.sum(axis=1) >= 2]
    alpha = krippendorff_alpha_nominal(counts) if len(counts) else float("nan")
    return -1000 if np.isnan(alpha) else int(round(alpha * 1000))


def _mean_scorer_margin(raw: np.ndarray, rms: np.ndarray) -> np.ndarray:
    """Mean over scorers of each pair's RMS-normalised margin (NaN where no scorer has both images)."""
    if not len(raw):
        return np.full(raw.shape[1] if raw.ndim == 2 else 0, np.nan)
    norm = raw / np.where(rms > 0, rms, 1.0)[:, None]
    counted = (~np.isnan(norm)).sum(axis=0)
    return np.where(counted > 0, np.nansum(norm, axis=0) / np.maximum(counted, 1), np.nan)


def _scorer_slope(dataset: Dataset, shards: int, rms: np.ndarray) -> float:
    """b maximising sum log sigmoid(b m) over judgements: how well the scorers predict people.

    In the label's frame every judgement is a "1", so this is the logistic regression of which image
    people chose on the scorer margin, without intercept (the layout A/B is arbitrary). Newton steps.
    """
    if not len(rms):
        return 0.0
    m = np.concatenate([_mean_scorer_margin(np.load(_margins_file(dataset, i)), rms) for i in range(shards)])
    m = m[~np.isnan(m)]
    b = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-b * m))
        grad, hess = np.sum(m * (1 - p)), np.sum(m * m * p * (1 - p)) + 1e-9
        step = grad / hess
        b = float(np.clip(b + step, 0.0, 50.0))
        if abs(step) < 1e-6:
            break
    return b


def _margins_file(dataset: Dataset, index: int) -> Path:
    return dataset.run_dir("annotators") / "margins" / f"{index:05d}.npy"


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    tmp.replace(path)


def _merge_votes(parts: list[pa.Table]) -> dict[str, np.ndarray]:
    import polars as pl

    if not parts:
        return {"group": np.zeros(0, np.uint64), "lo_wins": np.zeros(0), "hi_wins": np.zeros(0), "tied": np.zeros(0)}
    merged = (pl.concat([pl.from_arrow(p) for p in parts]).group_by("group")
              .agg(pl.col("lo_wins").sum(), pl.col("hi_wins").sum(), pl.col("tied").sum()).sort("group"))
    return {c: merged[c].to_numpy() for c in ("group", "lo_wins", "hi_wins", "tied")}


def _fit_bradley_terry(parts: list[dict], ridge: float, bootstrap: int = 0) -> dict[str, np.ndarray]:
    """One sparse fit over every image: image keys, log-strengths, each image's curvature and, with
    ``bootstrap`` > 0, the stability of every compared image pair's order under resampled annotators."""
    from curate.bradley_terry import bootstrap_consensus, fit_bradley_terry

    cat = lambda name, dtype: np.concatenate([p[name] for p in parts]) if parts else np.zeros(0, dtype)  # noqa: E731
    winner, loser, tie, who = cat("winner", np.int64), cat("loser", np.int64), cat("tie", bool), cat("who", np.uint64)
    keys, index = np.unique(np.concatenate([winner, loser]), return_inverse=True)
    w_idx, l_idx = index[: len(winner)], index[len(winner):]
    if not len(keys):
        return {"bt_keys": keys, "bt_scores": np.zeros(0), "bt_curvature": np.zeros(0)}
    out: dict[str, np.ndarray] = {"bt_keys": keys}
    if bootstrap > 0:
        consensus = bootstrap_consensus(w_idx, l_idx, who, len(keys), n_boot=bootstrap, ties=tie, ridge=ridge)
        fit = consensus.full
        lo, hi = np.minimum(consensus.winner, consensus.loser), np.maximum(consensus.winner, consensus.loser)
        order = np.argsort(lo * len(keys) + hi)
        out.update(bt_pair=(lo * len(keys) + hi)[order], bt_stability=consensus.agreement[order])
    else:
        fit = fit_bradley_terry(w_idx, l_idx, len(keys), ties=tie, ridge=ridge)
    p = 1.0 / (1.0 + np.exp(-(fit.scores[w_idx] - fit.scores[l_idx])))
    curvature = ridge + np.bincount(w_idx, p * (1 - p), len(keys)) + np.bincount(l_idx, p * (1 - p), len(keys))
    out.update(bt_scores=fit.scores, bt_curvature=curvature)
    return out


def _bt_stability(keyed, state) -> np.ndarray:
    """The bootstrap stability of the order of each pair's two images (NaN without a bootstrap)."""
    ka, kb = keyed["key_a"].to_numpy(), keyed["key_b"].to_numpy()
    if "bt_stability" not in state:
        return np.full(len(ka), np.nan)
    keys, n = state["bt_keys"], len(state["bt_keys"])
    ia, ib = np.searchsorted(keys, ka), np.searchsorted(keys, kb)
    return _lookup(state["bt_pair"], state["bt_stability"], np.minimum(ia, ib) * n + np.maximum(ia, ib))


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, keys: np.ndarray, missing=np.nan) -> np.ndarray:
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, max(len(sorted_keys) - 1, 0))
    found = (sorted_keys[pos] == keys) if len(sorted_keys) else np.zeros(len(keys), bool)
    out = np.full(len(keys), missing, dtype=float)
    out[found] = values[pos[found]]
    return out


def _consensus_shard(job) -> dict:
    """Pass 2 for one shard: write its consensus rows; return per-annotator agreement counts."""
    import polars as pl

    stage, index, root, state_file, spec = job
    dataset, scorers = Dataset(root), spec["scorers"]
    state = dict(np.load(state_file))
    pairs = pl.read_ipc(spec["pairs"], columns=sig.PAIR_COLUMNS)
    keyed = sig.with_keys(pairs)
    sign = sig.label_sign(pairs["label"])
    votes = _other_votes(keyed, state, sign)
    bt = _bt_margin(keyed, state, sign) if "bt_scores" in state else np.full(pairs.height, np.nan)
    raw = np.load(_margins_file(dataset, index))
    scorer_norm = raw / np.where(state["scorer_rms"] > 0, state["scorer_rms"], 1.0)[:, None] if len(raw) else raw
    names, margins = _signals(scorers, scorer_norm, bt, votes)
    scorer_mean = _mean_scorer_margin(raw, state["scorer_rms"])
    source, agreement = _consensus(votes, scorer_mean, float(state["scorer_slope"]), bt, sign)
    from curate import schema as schemas

    table = schemas.load("consensus").table({
        "pair_id": pairs["pair_id"].to_arrow(), "source": source,
        "agreement": pa.array(agreement, pa.float32(), from_pandas=True),
        "other_votes": pa.array(votes["total"].astype(np.int32)),
        "other_agree_share": pa.array(np.where(votes["total"] > 0, votes["agree"] / np.maximum(votes["total"], 1), np.nan),
                                      pa.float32(), from_pandas=True),
        "vote_entropy": pa.array(votes["entropy"], pa.float32(), from_pandas=True),
        "bt_margin": pa.array(bt, pa.float32(), from_pandas=True),
        "bt_stability": pa.array(_bt_stability(keyed, state), pa.float32(), from_pandas=True),
        "signal_names": _repeated_list(names, pairs.height),
        "signal_margins": pa.ListArray.from_arrays(_offsets(pairs.height, len(names)),
                                                   pa.array(margins.T.astype(np.float32).ravel())),
    })
    commit_shard_file(dataset, stage, index, "consensus", stage.shard_file("consensus", index), [table])
    judged = pairs.with_columns(agreement=pl.Series(agreement, dtype=pl.Float64, nan_to_null=True))
    return (judged.filter(pl.col("annotator_id").is_not_null() & pl.col("agreement").is_not_null())
            .group_by("annotator_id")
            .agg(compared=pl.len().cast(pl.Int64), agreed=(pl.col("agreement") > 0.5).sum().cast(pl.Int64))
            .to_arrow())


def _offsets(rows: int, width: int) -> pa.Array:
    return pa.array(np.arange(rows + 1, dtype=np.int32) * width)


def _repeated_list(names: list[str], rows: int) -> pa.Array:
    """The same list of strings on every row, built from buffers rather than Python lists."""
    values = pa.DictionaryArray.from_arrays(pa.array(np.tile(np.arange(len(names), dtype=np.int32), rows)),
                                            pa.array(names, pa.string())).cast(pa.string())
    return pa.ListArray.from_arrays(_offsets(rows, len(names)), values)


def _other_votes(keyed, state, sign) -> dict[str, np.ndarray]:
    """Votes on the same prompt and images by everyone else (this row's own votes removed)."""
    group = keyed["group"].to_numpy()
    lo = _lookup(state["group"], state["lo_wins"], group, 0) - keyed["lo_wins"].to_numpy()
    hi = _lookup(state["group"], state["hi_wins"], group, 0) - keyed["hi_wins"].to_numpy()
    ties = _lookup(state["group"], state["tied"], group, 0) - keyed["tied"].to_numpy()
    multi = keyed["votes_a"].is_not_null().to_numpy()
    # A multi-vote row IS the crowd: its own votes are the consensus for its majority label.
    lo = np.where(multi, keyed["lo_wins"].to_numpy(), lo)
    hi = np.where(multi, keyed["hi_wins"].to_numpy(), hi)
    a_is_lo = (keyed["key_a"] < keyed["key_b"]).to_numpy()
    for_a, for_b = np.where(a_is_lo, lo, hi), np.where(a_is_lo, hi, lo)
    agree = np.where(sign > 0, for_a, for_b)
    total = for_a + for_b
    every = np.stack([lo, hi, np.where(multi, 0, ties)]).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = every / every.sum(axis=0)
        entropy = -np.nansum(np.where(shares > 0, shares * np.log2(shares), 0.0), axis=0)
    entropy[every.sum(axis=0) == 0] = np.nan
    return {"agree": agree.astype(float), "total": total.astype(float), "entropy": entropy}


def _bt_margin(keyed, state, sign) -> np.ndarray:
    """theta(winner) - theta(loser), minus this judgement's own pull (one Newton step, leave-one-out)."""
    ka, kb = keyed["key_a"].to_numpy(), keyed["key_b"].to_numpy()
    ta, tb = _lookup(state["bt_keys"], state["bt_scores"], ka), _lookup(state["bt_keys"], state["bt_scores"], kb)
    ha, hb = _lookup(state["bt_keys"], state["bt_curvature"], ka, 1.0), _lookup(state["bt_keys"], state["bt_curvature"], kb, 1.0)
    d = sign * (ta - tb)
    own_pull = (1.0 - 1.0 / (1.0 + np.exp(-d))) * (1.0 / ha + 1.0 / hb)
    return d - own_pull


def _signals(scorers, scorer_norm, bt, votes) -> tuple[list[str], np.ndarray]:
    """Signal names and (signals x pairs) RMS-normalised margins for the minority metric."""
    names, rows = [f"scorer:{s}" for s in scorers], list(scorer_norm)
    if np.isfinite(bt).any():
        rms = np.sqrt(np.nanmean(bt ** 2)) or 1.0
        names.append("bradley_terry")
        rows.append(bt / rms)
    has_votes = votes["total"] > 0
    if has_votes.any():
        share = np.where(has_votes, votes["agree"] / np.maximum(votes["total"], 1) - 0.5, np.nan)
        names.append("votes")
        rows.append(share / (np.sqrt(np.nanmean(share ** 2)) or 1.0))
    return names, np.array(rows) if rows else np.zeros((0, len(bt)))


def _consensus(votes, scorer_mean, slope, bt, sign) -> tuple[pa.Array, np.ndarray]:
    """Which evidence each judgement has, and P(labelled winner is better) from all of it."""
    n = len(sign)
    usable = ~np.isnan(sign)
    has_bt = usable & ~np.isnan(bt)
    has_votes = usable & ~has_bt & (votes["total"] > 0)
    has_scores = usable & ~np.isnan(scorer_mean) & (slope > 0)
    logit = np.zeros(n)
    logit[has_bt] += bt[has_bt]
    disagree = votes["total"] - votes["agree"]
    logit[has_votes] += np.log((votes["agree"][has_votes] + 1) / (disagree[has_votes] + 1))
    logit[has_scores] += slope * scorer_mean[has_scores]
    code = has_votes * 1 + has_scores * 2 + has_bt * 4
    names = ["votes", "scorers", "bradley_terry"]
    labels = ["+".join(name for bit, name in enumerate(names) if c >> bit & 1) or "none" for c in range(8)]
    source = pa.DictionaryArray.from_arrays(pa.array(code.astype(np.int32)), pa.array(labels)).cast(pa.string())
    agreement = np.where(code > 0, 1.0 / (1.0 + np.exp(-logit)), np.nan)
    return source, agreement


def _write_annotators(stage, dataset: Dataset, counts, agreement_parts) -> dict[str, int]:
    import polars as pl

    from curate import schema as schemas
    from curate import stats

    if counts is None or counts.height == 0:
        table = schemas.load("annotators").empty()
    else:
        totals = counts.group_by("annotator_id").agg(pl.col("judgements", "ties", "chose_a").sum())
        agreed = pl.concat([pl.from_arrow(a) for a in agreement_parts]).group_by("annotator_id").agg(
            pl.col("compared", "agreed").sum()) if agreement_parts else None
        frame = totals.join(agreed, on="annotator_id", how="left").fill_null(0).sort("annotator_id") \
            if agreed is not None else totals.with_columns(compared=pl.lit(0), agreed=pl.lit(0))
        decided = (frame["judgements"] - frame["ties"]).to_numpy()
        chose_a = frame["chose_a"].to_numpy()
        rel = stats.shrunk_reliability(frame["agreed"].to_numpy(), frame["compared"].to_numpy(), level=stage.level)
        verdict = stats.reliability_verdict(rel)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(decided > 0, chose_a / np.maximum(decided, 1), np.nan)
        table = schemas.load("annotators").table({
            "annotator_id": frame["annotator_id"].to_arrow(), "judgements": frame["judgements"].to_arrow(),
            "ties": frame["ties"].to_arrow(),
            "tie_rate": pa.array(frame["ties"].to_numpy() / frame["judgements"].to_numpy(), pa.float32()),
            "chose_a": frame["chose_a"].to_arrow(), "position_share": pa.array(share, pa.float32(), from_pandas=True),
            "position_pvalue": pa.array(stats.position_bias_pvalue(chose_a, decided)),
            "compared": frame["compared"].cast(pl.Int64).to_arrow(), "agreed": frame["agreed"].cast(pl.Int64).to_arrow(),
            "reliability": pa.array(rel.mean, pa.float32()), "reliability_low": pa.array(rel.lower, pa.float32()),
            "reliability_high": pa.array(rel.upper, pa.float32()),
            "verdict": pa.array(np.choose(verdict + 1, ["unreliable", "undecided", "reliable"]).tolist(), pa.string()),
        })
    if not len(dataset.shards("pairs")):
        return {}
    commit_shard_file(dataset, stage, 0, "annotators", stage.shard_file("annotators", 0), [table])
    verdicts = table["verdict"].to_pylist()
    return {"annotators": table.num_rows, **{f"verdict:{v}": verdicts.count(v) for v in set(verdicts)}}
