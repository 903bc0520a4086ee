"""``--format auto``: the layout from the first file's columns (parquet, CSV header) or first record's keys (JSON).

Each layout is recognised by the columns it cannot do without; a file that fits two layouts, or
none, stops the run with the candidates and what each needs.
"""
from __future__ import annotations

import json
from pathlib import Path

from curate.ingest.pickapic import SourceError
from curate.options import Format

# layout -> (what it needs, as a test over the column/key names, and how to say it)
_SIGNATURES = {
    Format.pickapic: (lambda c: {"caption", "label_0", "label_1"} <= c and bool({"jpg_0", "image_0_uid"} & c),
                      "caption, label_0, label_1 and jpg_0/jpg_1 or image_0_uid/image_1_uid"),
    Format.rapidata: (lambda c: {"prompt", "image1", "image2"} <= c and bool({"detailed_results", "votes_image1"} & c),
                      "prompt, image1, image2 and detailed_results or votes_image1/votes_image2"),
    Format.hpdv2: (lambda c: {"file_path", "human_preference"} <= c or {"image_path", "rank"} <= c,
                   "file_path + human_preference (train.json) or image_path + rank (test.json)"),
    Format.hpdv3: (lambda c: {"path1", "path2", "prompt"} <= c, "prompt, path1, path2"),
}
_JSON_PEEK = 1 << 20  # the first record of a JSON list is found in its first MB


def choose_format(names: set[str], where: str, table_ok: bool) -> tuple[Format, str]:
    """(the layout, why) for a file with these column or key names; SourceError if none or several fit."""
    fits = [fmt for fmt, (test, _) in _SIGNATURES.items() if test(names)]
    if len(fits) == 1:
        return fits[0], f"its columns include {_SIGNATURES[fits[0]][1]}"
    if not fits and table_ok:
        return Format.table, "no dataset-specific layout fits, so a generic table (columns found by name)"
    wanted = "; ".join(f"{fmt.value} needs {need}" for fmt, (_, need) in _SIGNATURES.items())
    verdict = f"fits {' and '.join(f.value for f in fits)}" if fits else "fits no layout"
    raise SourceError(f"{where}: --format auto cannot tell the layout: the file {verdict} (columns "
                      f"{sorted(names)[:12]}); {wanted}, table reads CSV/JSONL/Parquet with --map; pass --format")


def sniff_file(path: Path) -> tuple[Format, str]:
    from curate.ingest import table

    suffix = path.suffix.lower()
    if suffix == ".json":
        return choose_format(_first_record_keys(path), str(path), table_ok=False)
    if suffix == ".parquet":
        return choose_format(set(table.open_parquet(path).schema_arrow.names), str(path), table_ok=True)
    if suffix in table.SUFFIXES:
        return Format.table, f"{suffix} files are read as a generic table"
    raise SourceError(f"{path}: --format auto reads .parquet, .json, .csv, .tsv, .jsonl or .ndjson files, not "
                      f"{suffix or 'files without a suffix'}; pass --format")


def _first_record_keys(path: Path) -> set[str]:
    from curate.ingest.textfiles import json_array_items

    with open(path, "rb") as f:
        head = f.read(_JSON_PEEK).decode("utf-8", errors="ignore").lstrip()
    start = len(head) - len(head[1:].lstrip()) if head.startswith("[") else 0
    try:
        first, _ = json.JSONDecoder().raw_decode(head, start) if start else (None, 0)
    except json.JSONDecodeError:  # a first record longer than the peek: read the file
        items = json_array_items(path)
        first = items[0] if items else None
    if not isinstance(first, dict):
        raise SourceError(f"{path}: --format auto expects a JSON list of records (HPDv2, HPDv3); the file does not "
                          f"start with one; pass --format")
    return set(first)
