"""Prompt suites: the fixed prompts an evaluation renders, with a category per prompt where the suite has them.

``load_suite`` reads:
- ``world`` / ``world:N``: N (default 64) held-out prompts of the synthetic world, category = how
  many objects the scene has (drawn from their own random stream, as the alignment benchmark's
  evaluation prompts are; a world of a few hundred prompts shares almost none of them);
- a dataset folder (``prefcurate ingest`` output): the distinct prompts of its held-out split
  (Pick-a-Pic's ``test_unique`` first, then ``validation_unique``, ``test``, ``validation``);
- PartiPrompts' TSV (columns Prompt, Category, ...), or any .tsv/.csv/.jsonl/.parquet with a
  prompt column (``prompt``, ``Prompt``, ``caption`` or ``text``) and optionally ``category``;
- the HPSv2 benchmark prompt files (``anime.json``, ``photo.json``, ...: a JSON list of prompts each),
  one file or their folder, category = the style (the file's name);
- a .txt file, one prompt a line.
Empty prompts are left out and duplicates kept once; both are counted in ``notes``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HELD_OUT_SPLITS = ("test_unique", "validation_unique", "test", "validation")
PROMPT_COLUMNS = ("prompt", "Prompt", "caption", "text")
CATEGORY_COLUMNS = ("category", "Category")
WORLD_PROMPTS = 64
WORLD_STREAM = (200, 7)  # the seed of the world's held-out prompt stream
WORLD_POOL = 4096  # world:N is the first N of these, so a smaller suite is a prefix of a larger one


class SuiteError(ValueError):
    """A prompt suite cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class Suite:
    name: str
    prompts: tuple[str, ...]
    categories: tuple[str, ...] | None = None
    notes: tuple[str, ...] = field(default=())


def load_suite(text: str, max_prompts: int | None = None) -> Suite:
    """The suite ``text`` names (see the module docstring), cut to its first ``max_prompts`` prompts."""
    kind, _, count = text.partition(":")
    if kind == "world" and not Path(text).exists():
        suite = world_suite(int(count) if count.isdigit() else WORLD_PROMPTS)
    else:
        suite = _file_suite(Path(text).expanduser())
    if max_prompts is not None:
        suite = Suite(suite.name, suite.prompts[:max_prompts],
                      suite.categories[:max_prompts] if suite.categories else None, suite.notes)
    if not suite.prompts:
        raise SuiteError(f"prompt suite {text!r} holds no prompt")
    return suite


def world_suite(n: int) -> Suite:
    from curate.synth import scene as sc
    from curate.synth.pool import random_scenes

    codes = random_scenes(np.random.default_rng(list(WORLD_STREAM)), max(n, WORLD_POOL))[:n]
    prompts = tuple(str(p) for p in sc.prompts_for_codes(codes))
    categories = tuple("one object" if k == 1 else "two objects" for k in codes[:, sc.N_OBJ])
    return Suite(f"world:{n}", prompts, categories)


def _file_suite(path: Path) -> Suite:
    if not path.exists():
        raise SuiteError(f"prompt suite {path} does not exist; pass world, a dataset folder, or a .txt/.csv/.tsv/"
                         f".jsonl/.parquet/.json prompt file")
    if path.is_dir():
        if (path / "tables" / "pairs").is_dir():
            return dataset_suite(path)
        files = sorted(path.glob("*.json"))
        if not files:
            raise SuiteError(f"{path} is neither a dataset folder (tables/pairs) nor a folder of HPSv2 prompt files (*.json)")
        return _cleaned(path.name, [(p, f.stem) for f in files for p in _json_prompts(f)])
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _cleaned(path.name, [(p, path.stem) for p in _json_prompts(path)])
    if suffix == ".txt":
        return _cleaned(path.name, [(line, None) for line in path.read_text(encoding="utf-8").splitlines()])
    return _table_suite(path, suffix)


def _json_prompts(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise SuiteError(f"{path}: expected a JSON list of prompt strings (the HPSv2 benchmark layout)")
    return data


def _table_suite(path: Path, suffix: str) -> Suite:
    import polars as pl

    readers = {".csv": lambda: pl.read_csv(path), ".tsv": lambda: pl.read_csv(path, separator="\t", quote_char=None),
               ".jsonl": lambda: pl.read_ndjson(path), ".parquet": lambda: pl.read_parquet(path)}
    if suffix not in readers:
        raise SuiteError(f"{path}: unknown prompt file type {suffix!r}; expected .txt, .csv, .tsv, .jsonl, .parquet or .json")
    frame = readers[suffix]()
    column = next((c for c in PROMPT_COLUMNS if c in frame.columns), None)
    if column is None:
        raise SuiteError(f"{path}: no prompt column; expected one of {', '.join(PROMPT_COLUMNS)}, found "
                         f"{', '.join(frame.columns)}")
    category = next((c for c in CATEGORY_COLUMNS if c in frame.columns), None)
    prompts = [p or "" for p in frame[column].cast(pl.Utf8).to_list()]
    cats = frame[category].cast(pl.Utf8).to_list() if category else [None] * len(prompts)
    return _cleaned(path.name, list(zip(prompts, cats)))


def dataset_suite(root: Path) -> Suite:
    from curate.dataset import Dataset

    table = Dataset(root).read_table("pairs", ["prompt", "split"])
    splits = set(table["split"].to_pylist())
    split = next((s for s in HELD_OUT_SPLITS if s in splits), None)
    if split is None:
        raise SuiteError(f"dataset {root} has no held-out split (it has {', '.join(sorted(splits))}); "
                         f"ingest a test file, or pass a prompt file as --prompts")
    prompts = [p for p, s in zip(table["prompt"].to_pylist(), table["split"].to_pylist()) if s == split]
    return _cleaned(f"{root.name}:{split}", [(p, None) for p in prompts])


def _cleaned(name: str, rows: list[tuple[str, str | None]]) -> Suite:
    seen: dict[str, str | None] = {}
    empty = 0
    for prompt, category in rows:
        prompt = prompt.strip()
        if not prompt:
            empty += 1
        else:
            seen.setdefault(prompt, category)
    notes = [f"{empty} empty prompts left out"] if empty else []
    duplicates = len(rows) - empty - len(seen)
    notes += [f"{duplicates} repeated prompts kept once"] if duplicates else []
    categories = tuple(c or "" for c in seen.values()) if any(c for c in seen.values()) else None
    return Suite(name, tuple(seen), categories, tuple(notes))
