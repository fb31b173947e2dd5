"""Reading TSV / CSV / JSONL / JSON tables, needed columns only, in chunks so that a
column of base64 images never sits in memory as a whole; ground-truth rows and ids."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator

from refsav.schemas.errors import SchemaError

from .ids import _cell_text, _column_key, canonical_id

# Rows per pandas chunk: the chunk bounds the memory a base64 image column
# costs (256 rows of MMBench, ~10-15 MB), since unneeded columns are dropped per chunk.
_CHUNK_ROWS = 256

Source = Path | bytes


def _open(source: Source):
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _pandas_error(err: Exception, label: str) -> SchemaError:
    return SchemaError(f"not a readable table ({type(err).__name__}: {err})", file=label)


def _delimited_header(source: Source, label: str, sep: str) -> list[str]:
    import pandas as pd

    try:
        return [str(c) for c in pd.read_csv(_open(source), sep=sep, nrows=0).columns]
    except pd.errors.EmptyDataError:
        return []
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise _pandas_error(err, label) from None


def _iter_delimited(
    source: Source, label: str, sep: str, keep: Callable[[str], bool], *, na_default: bool
) -> Iterator[dict[str, Any]]:
    """Rows as {normalised column: cell}, keeping only the columns `keep` accepts,
    read in chunks so that an image column is never held whole.

    `na_default` keeps pandas' (and so VLMEvalKit's) NA parsing: empty cells and
    words like "None" or "NA" become missing. Without it every cell is raw text.
    """
    import pandas as pd

    if not _delimited_header(source, label, sep):
        return
    # No `usecols`: with it pandas silently drops the extra fields of a ragged
    # line (an unquoted tab), where a plain read, like VLMEvalKit's, fails.
    try:
        with pd.read_csv(
            _open(source), sep=sep, dtype=str, chunksize=_CHUNK_ROWS,
            keep_default_na=na_default, na_filter=na_default,
        ) as reader:
            for chunk in reader:
                chunk = chunk[[c for c in chunk.columns if keep(_column_key(c))]]
                chunk.columns = [_column_key(c) for c in chunk.columns]
                yield from chunk.to_dict("records")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise _pandas_error(err, label) from None


def _iter_json_rows(source: Source, label: str, jsonl: bool) -> Iterator[dict[str, Any]]:
    """Objects of a JSONL file or of a JSON list, keys normalised like TSV columns."""
    raw = source if isinstance(source, bytes) else None
    if jsonl:
        lines = raw.splitlines() if raw is not None else _file_lines(source)
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise SchemaError(f"not valid JSON ({err})", file=label, record=f"line {n}") from None
            if not isinstance(obj, dict):
                raise SchemaError(f"expected a JSON object, got {type(obj).__name__}", file=label, record=f"line {n}")
            yield {_column_key(k): v for k, v in obj.items()}
        return
    obj = _load_json(source, label)
    if not isinstance(obj, list):
        raise SchemaError(f"expected a JSON list of objects, got {type(obj).__name__}", file=label)
    for n, item in enumerate(obj):
        if not isinstance(item, dict):
            raise SchemaError(f"expected a JSON object, got {type(item).__name__}", file=label, record=n)
        yield {_column_key(k): v for k, v in item.items()}


def _file_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from fh


def _load_json(source: Source, label: str) -> Any:
    try:
        data = source if isinstance(source, bytes) else source.read_bytes()
        return json.loads(data.decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SchemaError(f"not valid JSON ({err})", file=label) from None


def _gt_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".tsv", ".jsonl", ".json"):
        raise SchemaError("unsupported ground-truth format; expected .tsv, .jsonl or .json", file=path)
    return suffix[1:]


def _iter_gt_rows(path: Path, keep: Callable[[str], bool], required: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Ground-truth rows (normalised keys) with every `required` field present."""
    if not path.is_file():
        raise SchemaError("ground-truth file not found", file=path)
    fmt = _gt_format(path)
    if fmt == "tsv":
        header = {_column_key(c) for c in _delimited_header(path, str(path), "\t")}
        for name in required:
            if name not in header:
                shown = ", ".join(sorted(header)[:20]) or "none"
                raise SchemaError(f"required column is missing (columns: {shown})", file=path, field=name)
        rows: Iterator[dict[str, Any]] = _iter_delimited(path, str(path), "\t", keep, na_default=True)
    else:
        rows = _iter_json_rows(path, str(path), jsonl=fmt == "jsonl")
    for n, row in enumerate(rows):
        for name in required:
            if name not in row:
                raise SchemaError("required field is missing", file=path, record=n, field=name)
        yield {k: v for k, v in row.items() if keep(k)}


def _required_text(row: dict[str, Any], name: str, *, file, record) -> str:
    text = _cell_text(row.get(name), file=file, record=record, field=name)
    if text is None:
        raise SchemaError("value is missing", file=file, record=record, field=name)
    return text


def _row_id(row: dict[str, Any], n: int, file) -> str:
    value = row.get("index")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise SchemaError("value is missing", file=file, record=n, field="index")
    try:
        return canonical_id(value)
    except SchemaError as err:
        raise err.at(file=file, record=n, field="index") from None


def _check_unique_ids(ids: list[str], file) -> None:
    seen: set[str] = set()
    for qid in ids:
        if qid in seen:
            raise SchemaError("duplicate index in the ground truth", file=file, record=qid, field="index")
        seen.add(qid)
