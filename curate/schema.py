"""Declared, versioned Arrow schemas.

Every table prefcurate writes has a JSON declaration in ``schemas/<name>.v<version>.json``. Schemas
are never inferred from data: writers build their batches against the declared schema and
``validate`` rejects anything else with a message that names the column and the fix.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

META_NAME = b"prefcurate.schema"
META_VERSION = b"prefcurate.schema_version"


class SchemaError(ValueError):
    """A table does not match its declared schema, or a declaration is malformed."""


def schema_dir() -> Path:
    """The folder of schema declarations: curate/schemas, a link to the top-level schemas/ folder in
    the source tree and a copy of it in the wheel."""
    return Path(__file__).with_name("schemas")


_SCALARS = {
    "bool": pa.bool_(), "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(),
    "int64": pa.int64(), "uint8": pa.uint8(), "uint32": pa.uint32(), "uint64": pa.uint64(),
    "float16": pa.float16(), "float32": pa.float32(), "float64": pa.float64(),
    "string": pa.string(), "binary": pa.binary(), "large_binary": pa.large_binary(),
}
_LIST = re.compile(r"^list<(.+)>$")
_FIXED = re.compile(r"^fixed_size_list<(.+),\s*(\d+|\*)>$")
_TIMESTAMP = re.compile(r"^timestamp\[(s|ms|us|ns)(?:,\s*(.+))?\]$")


def parse_type(spec: str, dims: dict[str, int] | None = None) -> pa.DataType:
    """Turn a declared type string (``float32``, ``list<string>``, ``fixed_size_list<float16,*>``) into Arrow.

    ``*`` as a fixed-list size is a free dimension (an embedding width); pass its value in ``dims``
    under the column's name to build a concrete type, or leave it free for validation.
    """
    spec = spec.strip()
    if spec in _SCALARS:
        return _SCALARS[spec]
    if m := _TIMESTAMP.match(spec):
        return pa.timestamp(m.group(1), tz=m.group(2))
    if m := _LIST.match(spec):
        return pa.list_(parse_type(m.group(1), dims))
    if m := _FIXED.match(spec):
        size = m.group(2)
        if size == "*":
            if not dims or "*" not in dims:
                raise SchemaError(f"type {spec!r} has a free size: bind it, e.g. schema.arrow(embedding=512)")
            size = dims["*"]
        return pa.list_(parse_type(m.group(1)), int(size))
    raise SchemaError(f"unknown type {spec!r} in a schema declaration; expected one of "
                      f"{', '.join(_SCALARS)}, timestamp[unit,tz], list<T>, fixed_size_list<T,N>")


@dataclass(frozen=True)
class TableSchema:
    """A declared table: name, version, key columns, and the Arrow schema."""

    name: str
    version: int
    key: tuple[str, ...]
    doc: str
    fields: tuple[dict, ...]

    def arrow(self, **dims: int) -> pa.Schema:
        """The Arrow schema, with free fixed-list sizes bound by column name (``arrow(embedding=512)``)."""
        arrow_fields = []
        for f in self.fields:
            typ = parse_type(f["type"], {"*": dims[f["name"]]} if f["name"] in dims else None)
            arrow_fields.append(pa.field(f["name"], typ, nullable=f["nullable"]))
        meta = {META_NAME: self.name.encode(), META_VERSION: str(self.version).encode()}
        return pa.schema(arrow_fields, metadata=meta)

    @property
    def names(self) -> list[str]:
        return [f["name"] for f in self.fields]

    def empty(self, **dims: int) -> pa.Table:
        return self.arrow(**dims).empty_table()

    def table(self, columns: dict, **dims: int) -> pa.Table:
        """Build a validated table from python or Arrow columns (one entry per declared column)."""
        schema = self.arrow(**dims)
        missing = [n for n in schema.names if n not in columns]
        extra = [n for n in columns if n not in schema.names]
        if missing or extra:
            raise SchemaError(f"table {self.name} v{self.version}: columns missing {missing}, "
                              f"undeclared {extra}; add them to schemas/{self.name}.v{self.version}.json "
                              f"or build the batch with exactly the declared columns")
        arrays = [pa.array(columns[f.name], type=f.type) if not isinstance(columns[f.name], (pa.Array, pa.ChunkedArray))
                  else columns[f.name] for f in schema]
        table = pa.Table.from_arrays(arrays, schema=schema)
        self.validate(table)
        return table

    def validate(self, data: pa.Table | pa.RecordBatch, where: str = "") -> None:
        """Raise SchemaError unless ``data`` has exactly the declared columns, types and nullability."""
        place = f" ({where})" if where else ""
        got = data.schema
        if got.names != self.names:
            raise SchemaError(f"table {self.name} v{self.version}{place}: columns {got.names} differ from "
                              f"the declared {self.names}")
        for decl, field in zip(self.fields, got):
            if not _type_matches(decl["type"], field.type):
                raise SchemaError(f"table {self.name}{place}: column {field.name!r} has type {field.type}, "
                                  f"declared {decl['type']}; cast it before writing")
            column = data.column(field.name)
            if not decl["nullable"] and column.null_count:
                raise SchemaError(f"table {self.name}{place}: column {field.name!r} has {column.null_count} "
                                  f"nulls but is declared non-nullable")
            if "allowed" in decl and len(column):
                import pyarrow.compute as pc

                bad = pc.filter(column, pc.invert(pc.is_in(column, pa.array(decl["allowed"]))))
                bad = bad.drop_null() if hasattr(bad, "drop_null") else bad
                if len(bad):
                    raise SchemaError(f"table {self.name}{place}: column {field.name!r} holds {bad[0].as_py()!r}; "
                                      f"allowed values are {decl['allowed']}")


def _type_matches(spec: str, got: pa.DataType) -> bool:
    """Whether ``got`` is the declared type; a free fixed-list size (``*``) matches any width."""
    if m := _FIXED.match(spec.strip()):
        return (pa.types.is_fixed_size_list(got) and got.value_type == parse_type(m.group(1))
                and (m.group(2) == "*" or got.list_size == int(m.group(2))))
    return parse_type(spec) == got


@functools.cache
def load(name: str, version: int | None = None) -> TableSchema:
    """The declared schema ``name`` at ``version`` (default: the newest declared)."""
    folder = schema_dir()
    candidates = sorted(folder.glob(f"{name}.v*.json"), key=lambda p: int(p.stem.rsplit(".v", 1)[1]))
    if version is not None:
        candidates = [p for p in candidates if p.stem == f"{name}.v{version}"]
    if not candidates:
        known = sorted({p.name.split(".v")[0] for p in folder.glob("*.v*.json")})
        raise SchemaError(f"no schema {name!r}{f' v{version}' if version else ''} in {folder}; "
                          f"declared tables are {known}")
    path = candidates[-1]
    decl = json.loads(path.read_text())
    for key in ("name", "version", "fields"):
        if key not in decl:
            raise SchemaError(f"{path}: missing {key!r}")
    for f in decl["fields"]:
        if not _FIXED.match(f["type"]):
            parse_type(f["type"])  # fail on a malformed declaration at load time
    return TableSchema(name=decl["name"], version=int(decl["version"]), key=tuple(decl.get("key", ())),
                       doc=decl.get("doc", ""), fields=tuple(decl["fields"]))


def declared_tables() -> list[str]:
    return sorted({p.name.split(".v")[0] for p in schema_dir().glob("*.v*.json")})
