"""A QA submission: refsav `QAPrediction` Parquet, JSONL / JSON, a VLMEvalKit result table
(TSV / CSV / XLSX), or a zip or folder of these; problems are `Issue`s."""
from __future__ import annotations

import io
import os
import posixpath
from pathlib import Path
from typing import Any

from refsav.schemas.errors import SchemaError
from refsav.schemas.predictions import QAPrediction

from ..files import DEFAULT_MAX_UNZIPPED, ReadOnlyFiles
from ..report import Issue
from .ids import _cell_text, _column_key, canonical_id
from .records import QAPredictions
from .tables import Source, _delimited_header, _iter_delimited, _iter_json_rows, _load_json, _open, _pandas_error

_PREDICTION_SUFFIXES = (".parquet", ".jsonl", ".json", ".tsv", ".csv", ".xlsx")
_ID_FIELDS = ("question_id", "index")


def load_qa_predictions(path: str | os.PathLike, max_unzipped: int = DEFAULT_MAX_UNZIPPED) -> QAPredictions:
    """Read a prediction file, or every prediction file in a zip or folder.

    Ids are canonicalised like the ground truth's; when an id repeats, the first
    answer is kept and a `duplicate` issue raised. A file with no predictions gives
    an `empty_file` issue.
    """
    path = Path(path)
    if not path.exists():
        raise SchemaError("prediction path not found", file=path)
    issues: list[Issue] = []
    pairs: list[tuple[str, str, str]] = []  # id, prediction, label
    sources: list[str] = []
    if path.is_file() and path.suffix.lower() != ".zip":
        fmt = _prediction_format(path.name, path)
        pairs += [(qid, pred, str(path)) for qid, pred in _read_prediction_file(path, fmt, str(path))]
        sources.append(fmt)
    else:
        files = ReadOnlyFiles(path, max_unzipped)
        issues += files.issues
        names = [n for n in files.names() if _is_prediction_name(n)]
        if not names:
            raise SchemaError(f"no prediction file ({', '.join(_PREDICTION_SUFFIXES)}) found", file=path)
        for name in names:
            fmt = _prediction_format(name, path)
            label = f"{path}:{name}"
            source: Source = files.local_path(name) or files.read(name)
            pairs += [(qid, pred, label) for qid, pred in _read_prediction_file(source, fmt, label)]
            sources.append(fmt)

    answers: dict[str, str] = {}
    for qid, prediction, label in pairs:
        if qid in answers:
            issues.append(Issue("duplicate", qid, f"predicted more than once (again in {label}); the first is scored"))
            continue
        answers[qid] = prediction
    if not pairs:
        issues.append(Issue("empty_file", str(path), "no predictions; every question scores 0"))
    return QAPredictions("+".join(dict.fromkeys(sources)), answers, tuple(issues))


def _is_prediction_name(name: str) -> bool:
    base = posixpath.basename(name)
    # macOS archive clutter: "__MACOSX/..." and "._name" resource forks.
    if name.startswith("__MACOSX/") or base.startswith("."):
        return False
    return base.lower().endswith(_PREDICTION_SUFFIXES)


def _prediction_format(name: str, path: Path) -> str:
    lowered = name.lower()
    for suffix in _PREDICTION_SUFFIXES:
        if lowered.endswith(suffix):
            return suffix[1:]
    raise SchemaError(f"unsupported prediction format; expected one of {', '.join(_PREDICTION_SUFFIXES)} or .zip", file=path)


def _is_empty(source: Source) -> bool:
    if isinstance(source, bytes):
        return not source.strip()
    return source.stat().st_size == 0 or (source.stat().st_size < 64 and not source.read_bytes().strip())


def _read_prediction_file(source: Source, fmt: str, label: str) -> list[tuple[str, str]]:
    if _is_empty(source):
        return []
    if fmt == "parquet":
        return [(_pred_id(p.question_id, label, n), p.prediction) for n, p in enumerate(_read_qa_parquet(source, label))]
    if fmt == "json":
        obj = _load_json(source, label)
        if isinstance(obj, dict):  # {id: prediction}
            return [(_pred_id(k, label, k), _pred_text(v, label, k)) for k, v in obj.items()]
        return [_json_pair(row, label, n) for n, row in enumerate(_iter_json_rows(source, label, jsonl=False))]
    if fmt == "jsonl":
        return [_json_pair(row, label, n) for n, row in enumerate(_iter_json_rows(source, label, jsonl=True))]
    return _table_pairs(source, fmt, label)


def _read_qa_parquet(source: Source, label: str) -> list[QAPrediction]:
    from refsav.schemas.io import read_parquet, rows_to_records

    if not isinstance(source, bytes):
        return read_parquet(source, QAPrediction)
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(source))
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise SchemaError(f"not a readable Parquet file ({err})", file=label) from None
    missing = [f.name for f in QAPrediction.ARROW_SCHEMA if f.name not in table.column_names]
    if missing:
        raise SchemaError("column missing from QAPrediction table", file=label, field=missing[0])
    return list(rows_to_records(table.to_pylist(), QAPrediction, file=label))


def _pred_id(value: Any, label: str, record: Any) -> str:
    try:
        return canonical_id(value)
    except SchemaError as err:
        raise err.at(file=label, record=record, field="question_id") from None


def _pred_text(value: Any, label: str, record: Any) -> str:
    # VLMEvalKit stringifies every prediction; an empty answer extracts to nothing.
    text = _cell_text(value, file=label, record=record, field="prediction")
    return "" if text is None else text


def _json_pair(row: dict[str, Any], label: str, n: int) -> tuple[str, str]:
    id_field = next((f for f in _ID_FIELDS if f in row), None)
    if id_field is None:
        raise SchemaError("required key is missing (question_id or index)", file=label, record=n, field="question_id")
    if "prediction" not in row:
        raise SchemaError("required key is missing", file=label, record=n, field="prediction")
    return _pred_id(row[id_field], label, n), _pred_text(row["prediction"], label, n)


def _table_pairs(source: Source, fmt: str, label: str) -> list[tuple[str, str]]:
    """VLMEvalKit result tables: all ground-truth columns plus `prediction`; only the
    id and the prediction are read, as raw text (a "None" answer stays "None")."""
    if fmt == "xlsx":
        frame = _read_xlsx(source, label)
        columns = {_column_key(c): c for c in frame.columns}
        rows: list[dict[str, Any]] = [
            {_column_key(k): v for k, v in r.items()} for r in frame.to_dict("records")
        ]
    else:
        sep = "\t" if fmt == "tsv" else ","
        columns = {_column_key(c): c for c in _delimited_header(source, label, sep)}
        rows = []
    id_field = next((f for f in _ID_FIELDS if f in columns), None)
    if id_field is None or "prediction" not in columns:
        field = "prediction" if id_field is not None else "index"
        raise SchemaError("required column is missing", file=label, field=field)
    if fmt != "xlsx":
        rows = list(_iter_delimited(source, label, sep, lambda c: c in (id_field, "prediction"), na_default=False))
    pairs = []
    for n, row in enumerate(rows):
        value = row[id_field]
        if value is None or value == "":
            raise SchemaError("value is missing", file=label, record=n, field=id_field)
        pairs.append((_pred_id(value, label, n), _pred_text(row["prediction"], label, n)))
    return pairs


def _read_xlsx(source: Source, label: str):
    import pandas as pd

    try:
        return pd.read_excel(_open(source), engine="openpyxl", dtype=str, keep_default_na=False, na_filter=False)
    except ImportError:
        raise SchemaError("reading .xlsx needs the openpyxl package; install it or save the results as TSV", file=label) from None
    except (ValueError, OSError, KeyError) as err:
        raise _pandas_error(err, label) from None
    except Exception as err:  # openpyxl's own errors (e.g. a zip that is not a workbook)
        raise _pandas_error(err, label) from None
