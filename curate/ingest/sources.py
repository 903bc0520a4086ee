"""What ``ingest`` reads: files, folders and Hub dataset ids expanded to input files, and the layout chosen.

``--format auto`` (the default) sniffs the first file (curate.ingest.sniff) and reads every file as
that layout; the choice is reported to the caller with the reason, so the CLI can say it.
"""
from __future__ import annotations

from pathlib import Path

from curate.ingest import hub
from curate.ingest.pickapic import SourceError
from curate.options import Format

GLOBS = {Format.pickapic: ("*.parquet",), Format.rapidata: ("*.parquet",), Format.hpdv2: ("*.json",),
         Format.hpdv3: ("*.json",), Format.table: ("*.csv", "*.tsv", "*.jsonl", "*.ndjson", "*.parquet")}
GLOBS[Format.auto] = tuple(dict.fromkeys(p for patterns in GLOBS.values() for p in patterns))
_PARQUET_FORMATS = (Format.auto, Format.pickapic, Format.rapidata, Format.table)


def expand_sources(sources: list[str], fmt: Format, hub_mirror: str | None = None) -> list[str]:
    """Input files from paths, folders (searched recursively) or Hub dataset ids (``owner/name[:GLOB]``,
    as ``hf://`` references: nothing is downloaded here)."""
    files: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            files.append(str(path))
        elif path.is_dir():
            found = sorted({p for pattern in GLOBS[fmt] for p in path.rglob(pattern)})
            if not found:
                raise SourceError(f"{path}: no {' / '.join(GLOBS[fmt])} files inside for --format {fmt.value}")
            files.extend(map(str, found))
        elif hub.looks_like_repo_id(source):
            if fmt not in _PARQUET_FORMATS:
                raise SourceError(f"{source}: a Hub dataset id is read as parquet shards; --format {fmt.value} reads "
                                  f"JSON files: download them and pass their folder")
            files.extend(hub.parquet_refs(source, hub_mirror))
        else:
            raise SourceError(f"{source}: no such file or folder")
    return files


def resolve_format(fmt: Format, files: list[str], hub_mirror: str | None = None) -> tuple[Format, list[str], str | None]:
    """(the layout to read every file as, the files of that layout, why it was chosen: None when asked for).

    Under auto, a folder searched for every layout's files keeps only the chosen layout's."""
    if fmt is not Format.auto:
        return fmt, files, None
    from curate.ingest import sniff

    first = files[0]
    if hub.is_ref(first):
        chosen, why = sniff.choose_format(set(hub.read_schema_names(first, hub_mirror)), first, table_ok=True)
    else:
        chosen, why = sniff.sniff_file(Path(first))
    kept = [f for f in files if any(Path(f).match(p) for p in GLOBS[chosen])]
    return chosen, kept, f"{Path(first).name}: {why}"
