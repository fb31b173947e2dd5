"""Shared plumbing for record dataclasses: rows in, rows out, checks.

Every record type is a frozen dataclass with an explicit `ARROW_SCHEMA` (the
Parquet contract) and a `validate()` that raises `SchemaError` naming the field.
Rows are plain dicts only at the Parquet/JSON boundary; everything between
steps is a typed record.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, ClassVar, Iterable, TypeVar

import pyarrow as pa

from .errors import SchemaError

R = TypeVar("R", bound="Record")


class Record:
    """Mixin for frozen dataclasses that have a Parquet schema."""

    ARROW_SCHEMA: ClassVar[pa.Schema]

    def to_row(self) -> dict[str, Any]:
        return _to_plain(self, kv_dicts=True)

    @classmethod
    def from_row(cls: type[R], row: dict[str, Any]) -> R:
        """Build from a Parquet/`datasets` row; missing or mistyped fields raise SchemaError."""
        return _build(cls, row)

    def validate(self) -> None:  # overridden where there is more to check
        pass


def _to_plain(value: Any, kv_dicts: bool = False) -> Any:
    """Dataclasses to dicts, recursively. With `kv_dicts`, mappings become
    `[{"key", "value"}]` lists: `datasets` cannot read Arrow map columns."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name), kv_dicts) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v, kv_dicts) for v in value]
    if isinstance(value, dict):
        if kv_dicts:
            return [{"key": k, "value": _to_plain(v, kv_dicts)} for k, v in value.items()]
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _build(cls: type, row: Any, path: str = "") -> Any:
    if not isinstance(row, dict):
        raise SchemaError(f"expected an object for {cls.__name__}, got {type(row).__name__}", field=path or None)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = f"{path}.{f.name}" if path else f.name
        if f.name not in row or (row[f.name] is None and not _is_optional(hints[f.name])):
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise SchemaError("missing required field", field=name)
        kwargs[f.name] = _convert(hints[f.name], row[f.name], name)
    return cls(**kwargs)


def _is_optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp) and typing.get_origin(tp) in (typing.Union, types.UnionType)


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path)
    if dataclasses.is_dataclass(tp):
        if hasattr(tp, "from_json"):  # Rle validates its own counts
            try:
                return tp.from_json(value)
            except SchemaError as err:
                raise err.within(path) from None
        return _build(tp, value, path)
    if origin in (list, tuple):
        value = _listify(value)
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"expected a list, got {type(value).__name__}", field=path)
        if origin is tuple and len(args) == 2 and args[1] is not Ellipsis:
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        value = _listify(value)
        if isinstance(value, list):  # key/value rows, as `to_row` writes mappings
            try:
                value = {item["key"]: item["value"] for item in value}
            except (TypeError, KeyError):
                raise SchemaError("expected a list of {key, value} pairs", field=path) from None
        if not isinstance(value, dict):
            raise SchemaError(f"expected a mapping, got {type(value).__name__}", field=path)
        return {str(k): _convert(args[1], v, f"{path}[{k!r}]") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"expected a number, got {value!r}", field=path)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise SchemaError(f"expected an integer, got {value!r}", field=path)
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"expected true/false, got {value!r}", field=path)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"expected a string, got {value!r}", field=path)
        return value
    return value


def _listify(value: Any) -> Any:
    """`datasets` may hand back a list of structs as a struct of lists; undo that."""
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) == 1:
            n = lengths.pop()
            return [{k: v[i] for k, v in value.items()} for i in range(n)]
    return value


def check_unique(records: Iterable[Any], key: typing.Callable[[Any], Any], *, field: str, file=None) -> None:
    """Raise SchemaError on the first record whose key was already seen."""
    seen: dict[Any, int] = {}
    for i, rec in enumerate(records):
        k = key(rec)
        if k in seen:
            raise SchemaError(f"duplicate id {k!r} (first seen at record {seen[k]})", file=file, record=i, field=field)
        seen[k] = i


def canonical_json(value: Any) -> str:
    """Stable JSON text for hashing and for free-form config columns."""
    return json.dumps(_to_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


RLE_STRUCT = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])


def kv_list(value_type: pa.DataType) -> pa.DataType:
    """Arrow type of a `dict[str, X]` field (see `_to_plain`)."""
    return pa.list_(pa.struct([("key", pa.string()), ("value", value_type)]))
