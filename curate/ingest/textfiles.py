"""Text inputs (CSV, TSV, JSONL, JSON) read as strict UTF-8, record by record, with byte offsets.

A file that is not UTF-8, or whose JSON cannot be parsed, is unreadable as a whole: the error
names the file, the line and byte, and the fix. One record that is odd (a lone surrogate, nesting
deeper than any preference record needs) is a row-level problem: ``structure_problem`` says what
is wrong and the row is rejected. Record offsets found while planning let each shard seek straight
to its first record instead of re-reading the file from the start.
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

from curate.ingest.pickapic import SourceError

MAX_DEPTH = 64  # a preference record is a flat object with a few lists; deeper means garbage
_WHITESPACE = " \t\n\r"


def _decode(raw: bytes, path: Path, line: int, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: line {line}, byte {offset + exc.start}: 0x{raw[exc.start]:02x} is not UTF-8 (the "
                          f"file may be Latin-1 or cp1252); re-encode it, e.g. `iconv -f latin1 -t utf-8 {path.name} "
                          f"> {path.stem}.utf8{path.suffix}`") from None


def lines(path: Path, offset: int = 0, line: int = 1) -> Iterator[tuple[int, int, str]]:
    """(line number, byte offset after the line, text) of each line from byte ``offset``."""
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            text = _decode(raw, path, line, offset)
            if offset == 0 and text.startswith("\ufeff"):
                text = text[1:]  # a UTF-8 byte-order mark
            offset += len(raw)
            yield line, offset, text
            line += 1


def csv_records(path: Path, delimiter: str, offset: int = 0, line: int = 1) -> Iterator[tuple[int, int, list[str]]]:
    """(byte offset, line, fields) of each non-blank CSV record from ``offset``; quoted fields may span lines."""
    after = [offset, line]  # where the record after the last line fed to the parser starts

    def feed():
        for number, end, text in lines(path, offset, line):
            after[:] = [end, number + 1]
            yield text

    reader = csv.reader(feed(), delimiter=delimiter)
    start = [offset, line]
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise SourceError(f"{path}: line {start[1]}: not readable as CSV ({exc}); fix the quoting of that "
                              f"record") from None
        if fields:
            yield start[0], start[1], fields
        start = list(after)


def structure_problem(value, max_depth: int = MAX_DEPTH) -> str | None:
    """What makes a parsed JSON value unusable (a lone surrogate, nesting past ``max_depth``), else None."""
    stack = [(value, 1, None)]
    while stack:
        item, depth, name = stack.pop()
        if depth > max_depth and isinstance(item, (dict, list)):
            return f"nests deeper than {max_depth} levels"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                where = f"{name!r}" if isinstance(name, str) else "a value"
                return f"{where} holds {item[exc.start]!r}, a lone surrogate (not valid Unicode)"
        elif isinstance(item, dict):
            for key, child in item.items():
                stack += [(key, depth + 1, None), (child, depth + 1, key)]
        elif isinstance(item, list):
            stack += [(child, depth + 1, name) for child in item]
    return None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _may_have_problem(text: str) -> bool:
    """Cheap test on the JSON text: only an escaped surrogate or many brackets can make ``structure_problem`` fire."""
    return text.count("[") + text.count("{") > MAX_DEPTH or bool(_SURROGATE_ESCAPE.search(text))


def parse_json_line(text: str) -> dict:
    """One JSONL line as an object, or a marker row (``__bad_json__``) saying why it is not one."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return {"__bad_json__": text.rstrip("\n")[:2000], "__error__": str(exc)}
    except RecursionError:
        return {"__bad_json__": text[:200], "__error__": "nested too deeply to parse"}
    if not isinstance(value, dict):
        return {"__bad_json__": text.rstrip("\n")[:2000], "__error__": "not an object"}
    problem = structure_problem(value) if _may_have_problem(text) else None
    if problem:
        return {"__bad_json__": text.rstrip("\n")[:2000], "__error__": problem}
    return value


def _skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _value_end(text: str, pos: int, path: Path) -> int:
    """End of the JSON value at ``pos`` found by bracket counting (for values too deep for the parser)."""
    depth, i = 0, pos
    while i < len(text):
        char = text[i]
        if char == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise SourceError(f"{path}: {_where(text, pos)}: a value that never ends; the file is cut short, get it again")


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line}, column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def json_array_items(path: Path) -> list:
    """The elements of a JSON file holding one array; an element too deep to parse becomes a marker row."""
    text = "".join(t for _, _, t in lines(path))
    decoder = json.JSONDecoder()
    pos = _skip_whitespace(text, 0)
    if not text.startswith("[", pos):
        raise SourceError(f"{path}: must hold a JSON list of records, found {text[pos:pos + 20]!r} at {_where(text, pos)}")
    items, pos = [], _skip_whitespace(text, pos + 1)
    if text.startswith("]", pos):
        return items
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
            problem = structure_problem(value) if _may_have_problem(text[pos:end]) else None
        except RecursionError:
            end, problem = _value_end(text, pos, path), "nested too deeply to parse"
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}: {_where(text, exc.pos)}: not valid JSON ({exc.msg}); the file is damaged, "
                              f"get it again") from None
        items.append({"__bad_json__": text[pos:min(end, pos + 200)], "__error__": problem} if problem else value)
        pos = _skip_whitespace(text, end)
        if text.startswith(",", pos):
            pos = _skip_whitespace(text, pos + 1)
        elif text.startswith("]", pos) and _skip_whitespace(text, pos + 1) == len(text):
            return items
        else:
            raise SourceError(f"{path}: {_where(text, pos)}: expected ',' or ']' after a record; the file is damaged, "
                              f"get it again")
