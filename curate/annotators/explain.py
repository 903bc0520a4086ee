"""`prefcurate flag --explain PAIR_ID`: every number behind one pair's verdict, in words."""
from __future__ import annotations

from pathlib import Path

from curate.dataset import Dataset


def _row(dataset: Dataset, table: str, column: str, value: str) -> dict | None:
    import polars as pl

    if not dataset.has(table):
        return None
    rows = dataset.scan(table).filter(pl.col(column) == value).collect()
    return rows.row(0, named=True) if rows.height else None


def _num(x, fmt: str = ".3f") -> str:
    return "n/a" if x is None or x != x else format(x, fmt)


def explain_pair(dataset_dir: Path, pair_id: str) -> str:
    from curate.annotators.flag import REASONS

    dataset = Dataset(dataset_dir)
    pair = _row(dataset, "pairs", "pair_id", pair_id)
    if pair is None:
        raise LookupError(f"no pair {pair_id!r} in {dataset_dir}/tables/pairs; pair ids are 32 hex digits "
                          f"(see the pair_id column)")
    scores = _row(dataset, "pair_scores", "pair_id", pair_id)
    consensus = _row(dataset, "consensus", "pair_id", pair_id)
    person = _row(dataset, "annotators", "annotator_id", pair["annotator_id"]) if pair["annotator_id"] else None
    lines = [f"pair {pair_id}: {pair['prompt']!r}",
             f"  label: {pair['label']} (A = {pair['image_a_id']}, B = {pair['image_b_id']}), "
             f"annotator {pair['annotator_id'] or 'unknown'}, source {pair['source']} row {pair['source_row']}"]
    if scores is None:
        return "\n".join(lines + ["  not scored yet: run `prefcurate annotators` then `prefcurate flag`"])
    verdict = "FLAGGED as a minority sample" if scores["is_minority"] else "not flagged"
    lines.append(f"  verdict: {verdict}; minority score {_num(scores['minority_score'])}, weight {_num(scores['weight'])}")
    for reason in scores["reasons"]:
        lines.append(f"    - {reason}: {REASONS.get(reason, reason)}")
    if consensus:
        lines.append(f"  consensus ({consensus['source']}): P(the majority taste prefers the labelled winner) = {_num(consensus['agreement'])}")
        lines.append(f"    other votes: {consensus['other_votes']} (agreeing share {_num(consensus['other_agree_share'])}), "
                     f"Bradley-Terry margin {_num(consensus['bt_margin'])}"
                     + (f" (order kept in {_num(consensus['bt_stability'], '.0%')} of bootstrap refits)"
                        if consensus.get("bt_stability") is not None else ""))
        for name, margin in zip(consensus["signal_names"], consensus["signal_margins"]):
            lines.append(f"    signal {name}: normalised margin {_num(margin, '+.3f')}")
    lines.append(f"  Adaptive-DPO metric over {scores['signals']} signals: u = {_num(scores['u'])} "
                 f"(a = {_num(scores['a'])}, s = {_num(scores['s'])})")
    if person:
        lines.append(f"  annotator: {person['judgements']} judgements, reliability {_num(person['reliability'])} "
                     f"[{_num(person['reliability_low'])}, {_num(person['reliability_high'])}] -> {person['verdict']}; "
                     f"picks A {_num(person['position_share'], '.0%')} of the time (p = {_num(person['position_pvalue'], '.2g')})")
        lines += taste_lines(dataset, person)
    if consensus and consensus.get("minority_score") is not None:
        lines.append(f"  minority score {_num(consensus['minority_score'])}: the posterior that the majority taste "
                     f"prefers the other image, given this label and who gave it")
    return "\n".join(lines)


def taste_lines(dataset: Dataset, person: dict) -> list[str]:
    """The annotator's taste group and memberships, with each group's direction."""
    if not dataset.has("taste_groups") or person.get("memberships") is None:
        return []
    groups = dataset.scan("taste_groups").collect().sort("group")
    lines = [f"  taste group: {person['taste_group']} (majority membership {_num(person['majority_membership'])})"]
    for row, membership in zip(groups.iter_rows(named=True), person["memberships"]):
        lines.append(f"    {row['name']}: membership {_num(membership)}; {row['people']:.1f} people, "
                     f"{_num(row['judgement_share'], '.0%')} of judgements; {row['direction']}")
    return lines
