"""Atomic file writes, hashing and Parquet I/O for record types.

A reader never sees a half-written file: everything is written to a temporary
name in the target folder and moved into place with `os.replace`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from .base import Record
from .errors import SchemaError

R = TypeVar("R", bound=Record)

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    # mkstemp creates 0600; the finished file should have the permissions any new file gets.
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Load a JSON file; a missing or malformed file is a one-line SchemaError."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise SchemaError("file not found", file=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SchemaError(f"not valid JSON ({err})", file=path) from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_parquet(path: str | os.PathLike, records: Sequence[R], cls: type[R]) -> None:
    """Validate and write records with the class's Arrow schema, atomically."""
    for i, rec in enumerate(records):
        try:
            rec.validate()
        except SchemaError as err:
            raise err.at(file=path, record=i) from None
    table = pa.Table.from_pylist([rec.to_row() for rec in records], schema=cls.ARROW_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: str | os.PathLike, cls: type[R]) -> list[R]:
    """Read records back; schema problems name the file, the row and the field."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise SchemaError("file not found", file=path) from None
    except (pa.ArrowInvalid, OSError) as err:
        raise SchemaError(f"not a readable Parquet file ({err})", file=path) from None
    # A column whose field has a default may be absent: files written before it was added.
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = [f.name for f in cls.ARROW_SCHEMA if f.name in required and f.name not in table.column_names]
    if missing:
        raise SchemaError(f"column missing from {cls.__name__} table", file=path, field=missing[0])
    return list(rows_to_records(table.to_pylist(), cls, file=path))


def rows_to_records(rows: Iterable[dict], cls: type[R], *, file=None) -> Iterator[R]:
    for i, row in enumerate(rows):
        try:
            rec = cls.from_row(row)
            rec.validate()
        except SchemaError as err:
            raise err.at(file=file, record=i) from None
        yield rec
