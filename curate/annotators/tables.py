"""The whole-dataset tables of the annotators stage, built from the fitted crowd model.

``read_model`` turns them back into a CrowdModel for the consensus stage: the tables ARE the
state passed between the passes, declared in schemas/ like every other table.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate import schema as schemas
from curate.annotators import crowd
from curate.annotators import signals as sig
from curate.dataset import Dataset


def _list_column(matrix: np.ndarray) -> pa.Array:
    """Rows of a 2-D array as list<float32> (one list per row)."""
    rows, width = matrix.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * width),
                                    pa.array(matrix.astype(np.float32).ravel()))


def merge_people(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-annotator counts summed over shards, sorted by annotator id; ``trust`` the mean of each
    one's trust scores (NaN without any)."""
    ids = np.concatenate([p["annotator_id"] for p in parts]) if parts else np.zeros(0, str)
    who = np.concatenate([p["who"] for p in parts]) if parts else np.zeros(0, np.uint64)
    unique, first, index = np.unique(ids, return_index=True, return_inverse=True)
    out = {"annotator_id": unique, "who": who[first]}
    total = lambda c: np.bincount(index, np.concatenate([p[c] for p in parts]) if parts else None, len(unique))  # noqa: E731
    for c in ("judgements", "ties", "chose_a"):
        out[c] = total(c).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["trust"] = np.where(total("trust_count") > 0, total("trust_sum") / total("trust_count"), np.nan)
    return out


def person_agreement(people: dict, who: np.ndarray, person: np.ndarray, evidence: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per person: judgements with a consensus, those it agreed with (> 1/2), and the mean minority
    score (the expected share of their labels against the majority taste; NaN without one).

    ``who`` are the distinct authors (sorted), ``person`` each judgement's index in it: the authors
    are looked up among the people once each, not once per judgement.
    """
    order = np.argsort(people["who"])
    pos, found = sig.positions(people["who"][order], who)
    row = np.where(found, order[pos] if len(order) else 0, -1)[person]  # each judgement's people row; -1: no annotator id
    n, agreement, minority = len(order), evidence["agreement"], evidence["minority"]
    has = ~np.isnan(agreement) & (row >= 0)
    scored = ~np.isnan(minority) & (row >= 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        against = np.bincount(row[scored], minority[scored], n) / np.bincount(row[scored], minlength=n)
    return (np.bincount(row[has], minlength=n).astype(np.int64),
            np.bincount(row[has], agreement[has] > 0.5, n).astype(np.int64), against)


def group_names(model: crowd.CrowdModel) -> list[str]:
    """majority, taste 1, taste 2, ... (the other components), random."""
    names, taste = [], 0
    for k in range(len(model.theta)):
        if k == model.majority:
            names.append("majority")
        else:
            taste += 1
            names.append(f"taste {taste}")
    return names + ["random"]


def annotators_table(stage, people: dict, counts: tuple[np.ndarray, np.ndarray, np.ndarray], fit) -> pa.Table:
    from curate import stats

    compared, agreed, against = counts
    decided = people["judgements"] - people["ties"]
    rel = stats.shrunk_reliability(agreed, compared, level=stage.level)
    verdict = stats.reliability_verdict(rel)
    resp = fit.resp[np.searchsorted(fit.who, people["who"])]
    names = np.array(group_names(fit.model) if len(fit.model.theta) else ["random"], dtype=object)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(decided > 0, people["chose_a"] / np.maximum(decided, 1), np.nan)
    return schemas.load("annotators").table({
        "annotator_id": pa.array(people["annotator_id"].tolist(), pa.string()),
        "judgements": people["judgements"], "ties": people["ties"],
        "tie_rate": pa.array(people["ties"] / np.maximum(people["judgements"], 1), pa.float32()),
        "chose_a": people["chose_a"], "position_share": pa.array(share, pa.float32(), from_pandas=True),
        "position_pvalue": pa.array(stats.position_bias_pvalue(people["chose_a"], decided)),
        "compared": compared, "agreed": agreed,
        "reliability": pa.array(rel.mean, pa.float32()), "reliability_low": pa.array(rel.lower, pa.float32()),
        "reliability_high": pa.array(rel.upper, pa.float32()),
        "verdict": pa.array(np.choose(verdict + 1, ["unreliable", "undecided", "reliable"]).tolist(), pa.string()),
        "against_majority": pa.array(against, pa.float32(), from_pandas=True),
        "taste_group": pa.array(names[resp.argmax(axis=1)].tolist(), pa.string()),
        "majority_membership": pa.array(resp[:, fit.model.majority] if len(fit.model.theta) else np.ones(len(resp)), pa.float32()),
        "memberships": _list_column(resp),
    })


def taste_groups_table(fit, cols: dict, evidence: dict, raw: np.ndarray, scorers: list[str]) -> pa.Table:
    """One row per component: its people, share of judgements, and which way its taste points."""
    model = fit.model
    if not len(model.theta):
        return schemas.load("taste_groups").empty()
    decided = cols["sign"] != 0
    # A judgement's weight in group k is its author's membership, so each weighted mean over
    # judgements is a sum over people of membership x the person's own sum (bincounts, not
    # 10M-row products per group).
    person, n = fit.person[decided], len(fit.who)
    per_person = lambda values: np.bincount(person, values, n)  # noqa: E731
    judged = per_person(None)
    seen = judged > 0  # = np.isin(fit.who, cols["who"][decided])
    scorer = evidence["scorer_mean"][decided]
    scored = ~np.isnan(scorer)
    sums = {"followed": [per_person(evidence["margins"][k, decided] > 0) for k in range(len(model.theta))],
            "agreed": per_person(evidence["bt"][decided] > 0), "margin": per_person(np.where(scored, scorer, 0.0)),
            "scored": per_person(scored)}

    def weighted(total: np.ndarray, count: np.ndarray, k: int) -> float:
        """sum(w * value) / sum(w) over judgements, w = the author's membership of group k."""
        w = fit.author_resp[:, k] @ count
        return float(fit.author_resp[:, k] @ total / w) if w > 0 else np.nan

    rows = []
    for k, name in enumerate(group_names(model)):
        follows = weighted(sums["followed"][k], judged, k) if k < len(model.theta) else 0.5
        agrees = weighted(sums["agreed"], judged, k)
        margin = weighted(sums["margin"], sums["scored"], k) if len(raw) else np.nan
        judgements = float(fit.author_resp[:, k] @ judged)
        rows.append({"group": k, "name": name, "people": float(fit.resp[seen, k].sum()),
                     "members": int((fit.resp[seen].argmax(axis=1) == k).sum()), "judgements": judgements,
                     "judgement_share": judgements / max(int(decided.sum()), 1), "share": float(model.share[k]),
                     "follows_own_fit": follows, "agrees_with_majority": agrees, "scorer_margin": margin})
    majority_margin = rows[model.majority]["scorer_margin"]
    for row in rows:
        row["direction"] = describe_direction(row, majority_margin)
    columns = {c: [r[c] for r in rows] for c in rows[0]}
    return schemas.load("taste_groups").table({c: pa.array(v, type=schemas.load("taste_groups").arrow().field(c).type,
                                                            from_pandas=True) for c, v in columns.items()})


def describe_direction(row: dict, majority_scorer_margin: float) -> str:
    """Which way a group's choices point, in words, from its numbers."""
    if row["name"] == "majority":
        text = f"the taste most people share: {row['follows_own_fit']:.0%} of its choices follow its own ranking"
    elif row["name"] == "random":
        text = "choices no taste predicts better than a coin"
    else:
        text = (f"a coherent taste of its own: {row['follows_own_fit']:.0%} of its choices follow its ranking, "
                f"{row['agrees_with_majority']:.0%} agree with the majority's")
    if row["scorer_margin"] == row["scorer_margin"] and row["name"] != "majority":
        lean = "higher" if row["scorer_margin"] > majority_scorer_margin else "lower"
        text += (f"; picks images the scorers rank {lean} than the majority does "
                 f"(mean scorer margin {row['scorer_margin']:+.2f} vs {majority_scorer_margin:+.2f})")
    return text


def image_strengths_table(model: crowd.CrowdModel) -> pa.Table:
    return schemas.load("image_strengths").table({
        "image_key": pa.array(model.image_keys, pa.int64()),
        "theta": _list_column(model.theta.T.reshape(len(model.image_keys), len(model.theta))),
        "curvature": _list_column(model.curvature.T.reshape(len(model.image_keys), len(model.theta)))})


def vote_groups_table(groups: sig.VoteGroups) -> pa.Table:
    return schemas.load("vote_groups").table({"group": pa.array(groups.group, pa.uint64()), "lo_wins": groups.lo_wins,
                                              "hi_wins": groups.hi_wins, "tied": groups.tied})


def signal_scales_table(model: crowd.CrowdModel) -> pa.Table:
    """Each signal's RMS, the scorer slope, and the taste model's scalars (alpha, the majority)."""
    names = [*model.signals, "scorer_mean", "majority_alpha"]
    rms = [*model.signal_rms, np.nan, np.nan]
    value = [np.nan] * len(model.signals) + [model.scorer_slope, model.alpha]
    return schemas.load("signal_scales").table({
        "signal": pa.array(names, pa.string()), "rms": pa.array(rms, pa.float64(), from_pandas=True),
        "value": pa.array(value, pa.float64(), from_pandas=True),
        "in_metric": pa.array([True] * len(model.signals) + [False, False])})


def stability_table(fit) -> pa.Table:
    if fit.stability is None:
        return schemas.load("bt_stability").empty()
    keys, consensus = fit.model.image_keys, fit.stability
    lo, hi = np.minimum(consensus.winner, consensus.loser), np.maximum(consensus.winner, consensus.loser)
    return schemas.load("bt_stability").table({"key_lo": pa.array(keys[lo], pa.int64()), "key_hi": pa.array(keys[hi], pa.int64()),
                                               "stability": pa.array(consensus.agreement, pa.float32())})


def empty(stage) -> dict[str, list[pa.Table]]:
    return {t: [schemas.load(s).empty()] for t, s in stage.final_outputs.items()}


def read_model(dataset: Dataset) -> crowd.CrowdModel:
    """The crowd model back from the annotators stage's tables (float32 where the tables are)."""
    import polars as pl

    strengths = dataset.read_table("image_strengths")
    k = int(strengths["theta"].combine_chunks().value_lengths()[0].as_py()) if strengths.num_rows else 0
    flat = lambda c: strengths[c].combine_chunks().flatten().to_numpy().astype(float).reshape(-1, k).T if k else np.zeros((0, 0))  # noqa: E731
    groups = dataset.scan("vote_groups").collect()
    scales = dataset.scan("signal_scales").collect()
    used = scales.filter(pl.col("in_metric"))
    value = dict(zip(scales["signal"].to_list(), scales["value"].to_list()))
    tastes = dataset.scan("taste_groups").collect()
    return crowd.CrowdModel(
        strengths["image_key"].to_numpy(), flat("theta"), flat("curvature"),
        int(tastes.filter(pl.col("name") == "majority")["group"][0]) if tastes.height else 0,
        float(value.get("majority_alpha") or 0.5),
        tastes["share"].cast(pl.Float64).to_numpy() if tastes.height else np.ones(1),
        sig.VoteGroups(*(groups[c].to_numpy() for c in ("group", "lo_wins", "hi_wins", "tied"))),
        tuple(used["signal"].to_list()), used["rms"].to_numpy(), float(value.get("scorer_mean") or 0.0))
