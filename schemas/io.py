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
import stat
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


def parse_json(data: bytes | str, *, file: str | os.PathLike) -> Any:
    """Parse JSON text from an untrusted source; any failure is a one-line SchemaError.

    Beyond syntax errors this covers what `json` raises on hostile but well-formed
    text: deep nesting (RecursionError) and integers longer than Python's
    int-parsing limit (ValueError).
    """
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8-sig")
        return json.loads(data)
    except UnicodeDecodeError as err:
        raise SchemaError(f"not UTF-8 text ({err.reason} at byte {err.start})", file=file) from None
    except json.JSONDecodeError as err:
        raise SchemaError(f"not valid JSON ({err})", file=file) from None
    except RecursionError:
        raise SchemaError("JSON nested too deeply to read", file=file) from None
    except ValueError as err:
        # Python refuses integers of more than a few thousand digits (CVE-2020-10735).
        raise SchemaError(f"JSON holds a number too long to read ({str(err)[:80]})", file=file) from None


def read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    """A regular file's bytes; a missing or unreadable file, a folder, a FIFO or a device
    is a one-line SchemaError (opening a FIFO would wait for a writer forever, and a
    device such as /dev/zero never ends)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SchemaError("file not found", file=path) from None
    except OSError as err:
        raise SchemaError(f"cannot read ({err.strerror})", file=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise SchemaError(f"is a folder, expected a {what}", file=path)
    if not stat.S_ISREG(st.st_mode):
        raise SchemaError(f"is not a regular file (a FIFO, socket or device), expected a {what}", file=path)
    try:
        # O_NONBLOCK: should the path have been swapped for a FIFO since the check, the
        # open returns at once instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise SchemaError(f"is not a regular file, expected a {what}", file=path)
            return fh.read()
    except OSError as err:
        raise SchemaError(f"cannot read ({err.strerror})", file=path) from None


def read_json(path: str | os.PathLike) -> Any:
    """Load a JSON file; a missing, unreadable or malformed file is a one-line SchemaError."""
    return parse_json(read_bytes(path, "JSON file"), file=path)


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
        if table.num_rows:
            pq.write_table(table, tmp)
        else:
            # The schema and no row group: `datasets` fails on a folder holding an empty row
            # group ("BatchSize must be greater than 0") but reads this as zero rows.
            pq.ParquetWriter(tmp, cls.ARROW_SCHEMA).close()


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
