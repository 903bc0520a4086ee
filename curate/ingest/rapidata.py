"""Rapidata preference sets: one parquet row per image pair, every individual vote its own judgement.

Published layout (the dataset cards of e.g. Rapidata/human-style-preferences-images and
Rapidata/700k_Human_Preference_Dataset_FLUX_SD3_MJ_DALLE3; shards ``data/train-*.parquet``):
``prompt``; ``image1``, ``image2`` (HF Image feature: struct{bytes, path}); ``votes_image1``,
``votes_image2`` (int64 counts); ``model1``, ``model2``; often ``image1_path``, ``image2_path``;
``detailed_results``, a JSON string holding the individual answers as Rapidata's API returns them
(docs.rapidata.ai, "Interpreting the results": ``detailedResults``)::

    [{"votedFor": "<the chosen image>",
      "userDetails": {"country": "BY", "language": "ru", "userScore": 0.4469,
                      "age": "...", "gender": "...", "occupation": "..."}}, ...]

``votedFor`` names the chosen image by its file name (``image1_path`` / the Image struct's
``path``; some sets write the model name instead, or ``image1``/``image2``); newer exports nest the
score as ``"userScores": {"global": 0.4469}``. The records carry no voter id: a vote whose record has
none (no ``userId``/``user_id``/``voter``/``annotator`` key) gets the deterministic id
``SOURCE#ROW:K`` (its pair and its position K in the list), so each such voter counts as a
one-vote annotator. The score is kept as ``annotator_trust``.

Expansion: vote K of row R is the pair (R, K), A = image1, label a or b. A row whose counts
disagree with its list of votes is rejected whole (``unparseable_label``), as is a row whose
``detailed_results`` is not a JSON list of objects (``bad_type``); a vote whose ``votedFor`` names
neither image is rejected alone. A row without ``detailed_results`` is one judgement from its counts.
"""
from __future__ import annotations

import json
import math
from pathlib import PurePosixPath

import pyarrow as pa

from curate.ingest.candidates import CANDIDATE_SCHEMA
from curate.ingest.columns import identifier, label_from_votes, trust_value
from curate.ingest.images import load_image_ref
from curate.ingest.pickapic import SourceError, one_line
from curate.ingest.planning import record_ranges
from curate.ingest.reasons import Reason, Rejected
from curate.ingest.table import open_parquet, parquet_rows
from curate.ingest.textfiles import structure_problem

REQUIRED = ("prompt", "image1", "image2")
_ID_KEYS = ("userId", "user_id", "voter", "voterId", "annotator", "annotator_id")


def check_file(path) -> list[str]:
    names = open_parquet(path).schema_arrow.names
    missing = [c for c in REQUIRED if c not in names]
    if not ({"votes_image1", "votes_image2"} <= set(names) or "detailed_results" in names):
        missing.append("detailed_results (or votes_image1/votes_image2)")
    if missing:
        raise SourceError(f"{path}: columns {missing} missing for --format rapidata (found {sorted(names)}); "
                          f"for another layout use --format table with --map")
    return names


def plan(path, shard_rows: int) -> list[dict]:
    """Shards of whole rows, grouped until their votes (votes_image1 + votes_image2) reach ``shard_rows``."""
    names = check_file(path)
    parquet = open_parquet(path)
    if {"votes_image1", "votes_image2"} <= set(names):
        try:
            counts = parquet.read(columns=["votes_image1", "votes_image2"]).to_pydict()
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"{path}: the vote counts cannot be decoded ({one_line(exc)}); the file is damaged: "
                              f"get it again") from None
        weights = [_whole(a) + _whole(b) for a, b in zip(counts["votes_image1"], counts["votes_image2"])]
    else:
        weights = [1] * parquet.metadata.num_rows
    return [{"file": str(path), "first_row": start, "rows": stop - start}
            for start, stop in record_ranges(weights, shard_rows)]


def _whole(value) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value >= 0 else 0


def read(spec: dict, batch_rows: int, source: str, root, allow_network: bool):
    rows = parquet_rows(spec["file"], spec["first_row"], spec["rows"])
    first, out = spec["first_row"], []
    for offset, row in enumerate(rows):
        out += _expand(row, first + offset, offset, source, root, allow_network)
        if len(out) >= batch_rows:
            yield pa.Table.from_pylist(out, schema=CANDIDATE_SCHEMA), (lambda i: rows[i])
            out = []
    if out:
        yield pa.Table.from_pylist(out, schema=CANDIDATE_SCHEMA), (lambda i: rows[i])


def anonymous_votes(cand: pa.Table, source: str) -> int:
    """How many of these candidates are votes whose record named no voter (they got ``SOURCE#ROW:K``)."""
    import pyarrow.compute as pc

    given = pc.starts_with(pc.fill_null(cand["annotator_id"], ""), f"{source}#")
    return int(pc.sum(pc.and_(given, cand["reason"].is_null())).as_py() or 0)


def _candidate(row_index: int, item: int, raw_index: int, **values) -> dict:
    base = dict.fromkeys(CANDIDATE_SCHEMA.names)
    base.update(source_row=row_index, source_item=item, raw_index=raw_index, **values)
    return base


def _expand(row: dict, row_index: int, raw_index: int, source: str, root, allow_network: bool) -> list[dict]:
    """The row's candidates: one per vote, or one rejected row."""
    try:
        shared, votes = _check_row(row, root, allow_network)
        if votes is None:  # counts only
            label, va, vb = label_from_votes(row.get("votes_image1"), row.get("votes_image2"))
            return [_candidate(row_index, 0, raw_index, label=label, votes_a=va, votes_b=vb, **shared)]
    except Rejected as exc:
        return [_candidate(row_index, 0, raw_index, reason=exc.reason.value, message=exc.message)]
    names = _side_names(row)
    return [_vote_candidate(vote, k, names, row_index, raw_index, source, shared) for k, vote in enumerate(votes)]


def _vote_candidate(vote: dict, k: int, names, row_index: int, raw_index: int, source: str, shared: dict) -> dict:
    try:
        label = _side_of(vote.get("votedFor"), names)
        who, trust = _voter(vote, f"{source}#{row_index}:{k}")
    except Rejected as exc:
        return _candidate(row_index, k, raw_index, reason=exc.reason.value, message=f"vote {k}: {exc.message}")
    return _candidate(row_index, k, raw_index, label=label, annotator_id=who, annotator_trust=trust, **shared)


def _check_row(row: dict, root, allow_network: bool) -> tuple[dict, list | None]:
    """(the columns every vote of the row shares, the parsed votes or None for a counts-only row)."""
    if "__bad_text__" in row:
        raise Rejected(Reason.BAD_TYPE, row["__bad_text__"])
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise Rejected(Reason.BAD_TYPE, f"prompt {prompt!r} is not text")
    votes = _parse_votes(row.get("detailed_results"))
    if votes is not None:
        _check_counts(row, votes)
    shared = {"prompt": prompt, "model_a": identifier(row.get("model1"), "model1"),
              "model_b": identifier(row.get("model2"), "model2"),
              "bytes_a": load_image_ref(row.get("image1"), root, allow_network),
              "bytes_b": load_image_ref(row.get("image2"), root, allow_network)}
    return shared, votes


def _parse_votes(text) -> list[dict] | None:
    if text is None:
        return None
    try:
        votes = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as exc:
        raise Rejected(Reason.BAD_TYPE, f"detailed_results is not JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise Rejected(Reason.BAD_TYPE, "detailed_results is nested too deeply to parse") from None
    if (problem := structure_problem(votes)) is not None:
        raise Rejected(Reason.BAD_TYPE, f"detailed_results {problem}")
    if not isinstance(votes, list) or not all(isinstance(v, dict) for v in votes):
        raise Rejected(Reason.BAD_TYPE, "detailed_results must be a JSON list of vote objects "
                                        "({\"votedFor\": ..., \"userDetails\": {...}})")
    if not votes:
        raise Rejected(Reason.MISSING_LABEL, "detailed_results lists no votes")
    return votes


def _check_counts(row: dict, votes: list[dict]) -> None:
    """The published counts must be the list's: a row whose two disagree cannot be trusted either way."""
    counts = (row.get("votes_image1"), row.get("votes_image2"))
    if counts[0] is None and counts[1] is None:
        return
    names = _side_names(row)
    listed = [0, 0]
    for vote in votes:
        try:
            listed[_side_of(vote.get("votedFor"), names) == "b"] += 1
        except Rejected:
            pass
    if list(counts) != listed:
        raise Rejected(Reason.UNPARSEABLE_LABEL, f"votes_image1/votes_image2 are {counts[0]}/{counts[1]} but "
                                                 f"detailed_results holds {listed[0]}/{listed[1]} votes for them")


def _side_names(row: dict) -> tuple[set[str], set[str]]:
    """What a vote may call image1 and image2: their names, file names and (when they differ) models."""
    sides = []
    for k in (1, 2):
        names = {f"image{k}"}
        image = row.get(f"image{k}")
        for path in (row.get(f"image{k}_path"), image.get("path") if isinstance(image, dict) else None):
            if isinstance(path, str) and path:
                names |= {path, PurePosixPath(path).name}
        sides.append(names)
    if row.get("model1") and row.get("model2") and row.get("model1") != row.get("model2"):
        sides[0].add(str(row["model1"]))
        sides[1].add(str(row["model2"]))
    return sides[0] - sides[1], sides[1] - sides[0]


def _side_of(voted_for, names: tuple[set[str], set[str]]) -> str:
    if not isinstance(voted_for, str) or not voted_for:
        raise Rejected(Reason.MISSING_LABEL, f"votedFor is {voted_for!r}: the vote names no image")
    if voted_for in names[0] or PurePosixPath(voted_for).name in names[0]:
        return "a"
    if voted_for in names[1] or PurePosixPath(voted_for).name in names[1]:
        return "b"
    raise Rejected(Reason.UNPARSEABLE_LABEL, f"votedFor {voted_for!r} names neither image (image1 is one of "
                                             f"{sorted(names[0])}, image2 one of {sorted(names[1])})")


def _voter(vote: dict, fallback: str) -> tuple[str, float | None]:
    """(annotator id, trust) of one vote; the fallback id when the record carries none."""
    details = vote.get("userDetails") if isinstance(vote.get("userDetails"), dict) else {}
    key = next((k for k in _ID_KEYS if vote.get(k) is not None or details.get(k) is not None), None)
    who = identifier(vote.get(key, details.get(key)), key) if key else None
    scores = details.get("userScores")
    score = details.get("userScore", vote.get("userScore"))
    if score is None and isinstance(scores, dict):
        score = scores.get("global")
    return who or fallback, trust_value(score, "userScore")
