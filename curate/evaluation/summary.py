"""The per-image table (``images.parquet``) and ``summary.json`` of a finished evaluation.

summary.json (keys sorted; ``scorer_order`` keeps the order of --scorers), per scorer: the mean
score of each model, and per tuned model the paired comparison with the base
(``curate.evaluation.stats.paired_comparison``), overall and per category.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.evaluation.run import EvalConfig, EvaluationError, row_schema, shard_path
from curate.evaluation.stats import paired_comparison

TABLE = "images.parquet"
SUMMARY = "summary.json"


def read_rows(out: Path, config: EvalConfig) -> pa.Table:
    """Every committed row, ordered by model then image; refuses a run with batches missing."""
    import pyarrow.ipc as ipc

    paths = [shard_path(out, m, b) for m in config.models for b in range(len(config.batches()))]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise EvaluationError(f"{out}: {len(missing)} batches are not rendered yet (e.g. {missing[0]}); "
                              f"run the same evaluate command again to finish them")
    tables = [ipc.open_file(p).read_all() for p in paths]
    return pa.concat_tables(tables) if tables else row_schema(config).empty_table()


def model_scores(table: pa.Table, model: str, scorer: str) -> np.ndarray:
    rows = table.filter(pc.equal(table["model"], model))
    return rows[scorer].to_numpy(zero_copy_only=False).astype(np.float64)


def scorer_summary(table: pa.Table, config: EvalConfig, scorer: str, rows: np.ndarray | None = None) -> dict:
    """Means and paired comparisons of one scorer over the images ``rows`` selects (all when None)."""
    base = model_scores(table, "base", scorer)
    n = len(base)
    rows = np.arange(n) if rows is None else rows
    prompts = np.arange(n) // config.images_per_prompt
    result = {"mean": {"base": float(base[rows].mean())}, "comparisons": {}}
    for tuned in config.models[1:]:
        scores = model_scores(table, tuned, scorer)
        result["mean"][tuned] = float(scores[rows].mean())
        result["comparisons"][tuned] = paired_comparison(scores[rows], base[rows], prompts[rows], seed=config.seed)
    return result


def summarise(table: pa.Table, config: EvalConfig, keys: dict[str, str]) -> dict:
    n = config.n_images
    categories = np.repeat(np.array(config.categories, dtype=object), config.images_per_prompt) if config.categories else None
    scorers = {}
    for scorer in config.scorers:
        entry = {"key": keys.get(scorer, scorer), **scorer_summary(table, config, scorer)}
        if categories is not None:
            entry["by_category"] = {str(c): scorer_summary(table, config, scorer, np.flatnonzero(categories == c))
                                    for c in sorted(set(categories))}
        scorers[scorer] = entry
    return {"suite": config.suite, "model": config.model, "tuned": [t.label for t in config.tuned],
            "prompts": len(config.prompts), "images_per_prompt": config.images_per_prompt, "images_per_model": n,
            "seed": config.seed, "scorer_order": list(config.scorers), "scorers": scorers}


def write_summary(out: Path, config: EvalConfig, keys: dict[str, str]) -> dict:
    """Write the table and the summary (each to a temporary name, then renamed); the summary is last."""
    import pyarrow.parquet as pq

    from curate.dataset import write_json_atomic

    table = read_rows(out, config)
    tmp = out / f".tmp-{TABLE}"
    pq.write_table(table, tmp)
    tmp.replace(out / TABLE)
    summary = summarise(table, config, keys)
    write_json_atomic(out / SUMMARY, summary)
    return summary
