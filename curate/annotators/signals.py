"""Per-shard facts the annotator and flag stages are built from (pure functions over polars frames).

A judgement's *signals* are margins for its labelled winner from independent evidence: each scorer
(an AI annotator), a Bradley-Terry fit over all judgements, and other people's votes on the same
prompt and images. Positive means the evidence agrees with the label.
"""
from __future__ import annotations

import numpy as np
import polars as pl

PAIR_COLUMNS = ["pair_id", "prompt_id", "image_a_id", "image_b_id", "label", "annotator_id", "votes_a", "votes_b"]


def with_keys(pairs: pl.DataFrame) -> pl.DataFrame:
    """Integer keys for images (first 60 bits of the id) and for the unordered (prompt, image pair) group.

    ``lo_wins``/``hi_wins``/``tied`` count the votes of the row in the group's canonical orientation
    (the image with the smaller key first); a multi-vote row contributes its vote counts.
    """
    key = lambda c: pl.col(c).str.slice(0, 15).str.to_integer(base=16)  # noqa: E731
    frame = pairs.with_columns(key_a=key("image_a_id"), key_b=key("image_b_id"), prompt_key=key("prompt_id"))
    a_first = pl.col("key_a") < pl.col("key_b")
    votes_a = pl.col("votes_a").fill_null(pl.when(pl.col("label") == "a").then(1).otherwise(0)).cast(pl.Int64)
    votes_b = pl.col("votes_b").fill_null(pl.when(pl.col("label") == "b").then(1).otherwise(0)).cast(pl.Int64)
    tied = (pl.col("label") == "tie") & pl.col("votes_a").is_null()
    return frame.with_columns(
        group=pl.struct("prompt_key", pl.min_horizontal("key_a", "key_b").alias("lo"),
                        pl.max_horizontal("key_a", "key_b").alias("hi")).hash(seed=7),
        lo_wins=pl.when(a_first).then(votes_a).otherwise(votes_b),
        hi_wins=pl.when(a_first).then(votes_b).otherwise(votes_a),
        tied=tied.cast(pl.Int64),
    )


def group_votes(keyed: pl.DataFrame) -> pl.DataFrame:
    """Votes per (prompt, image pair) group: partial sums that merge by adding."""
    return keyed.group_by("group").agg(pl.col("lo_wins").sum(), pl.col("hi_wins").sum(), pl.col("tied").sum())


def annotator_counts(pairs: pl.DataFrame) -> pl.DataFrame:
    """Per annotator: judgements, ties, and non-tie judgements won by the first image (partial sums)."""
    return (pairs.filter(pl.col("annotator_id").is_not_null())
            .group_by("annotator_id")
            .agg(judgements=pl.len().cast(pl.Int64), ties=(pl.col("label") == "tie").sum().cast(pl.Int64),
                 chose_a=(pl.col("label") == "a").sum().cast(pl.Int64)))


def comparisons(keyed: pl.DataFrame) -> dict[str, np.ndarray]:
    """Bradley-Terry comparisons: winner and loser image keys, tie flag, weight (votes for multi-vote rows)."""
    winner_is_a = pl.col("label") != "b"
    frame = keyed.select(
        winner=pl.when(winner_is_a).then("key_a").otherwise("key_b"),
        loser=pl.when(winner_is_a).then("key_b").otherwise("key_a"),
        tie=pl.col("label") == "tie",
        # the bootstrap resamples people: a judgement without an annotator id is its own "person"
        who=pl.col("annotator_id").fill_null(pl.col("pair_id")).hash(seed=11),
    )
    return {c: frame[c].to_numpy() for c in ("winner", "loser", "tie", "who")}


def label_sign(labels: pl.Series) -> np.ndarray:
    """+1 when image A is the labelled winner, -1 for B, NaN for a tie."""
    return np.select([labels.to_numpy() == "a", labels.to_numpy() == "b"], [1.0, -1.0], np.nan)


def scorer_margins(pairs: pl.DataFrame, scores: pl.DataFrame, scorers: list[str]) -> np.ndarray:
    """(scorers x pairs) raw margins score(winner) - score(other); NaN for ties or a missing score."""
    sign = label_sign(pairs["label"])
    out = np.full((len(scorers), pairs.height), np.nan)
    base = pairs.select("prompt_id", "image_a_id", "image_b_id").with_row_index("row")
    for k, scorer in enumerate(scorers):
        mine = scores.filter(pl.col("scorer") == scorer).select("image_id", "prompt_id", "score")
        joined = (base.join(mine.rename({"image_id": "image_a_id", "score": "score_a"}), on=["prompt_id", "image_a_id"], how="left")
                  .join(mine.rename({"image_id": "image_b_id", "score": "score_b"}), on=["prompt_id", "image_b_id"], how="left")
                  .sort("row"))
        diff = (joined["score_a"] - joined["score_b"]).cast(pl.Float64).fill_null(np.nan).to_numpy()
        out[k] = diff * sign
    return out


def laplace_share(agree: np.ndarray, total: np.ndarray) -> np.ndarray:
    """(agree + 1) / (total + 2): a vote share that is never exactly 0 or 1 on a handful of votes."""
    return (agree + 1.0) / (total + 2.0)
