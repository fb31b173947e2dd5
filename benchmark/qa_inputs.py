"""Ground truth, predictions and named protocols for the QA benchmarks: MME,
MMBench (circular) and generic multiple choice, scored with `refsav.benchmark.qa`.

Ground truth is the published VLMEvalKit TSV (or a JSONL / JSON list of
objects with the same field names). Column names are matched the way
VLMEvalKit's evaluators match them: lower-cased, except single capital
letters, which are option columns. Only the needed columns are read, in
chunks, so a TSV with base64 images never sits in memory as a whole.

Predictions may be refsav `QAPrediction` Parquet, JSONL / JSON of
`{question_id | index, prediction}` (or a JSON object mapping id to
prediction), a VLMEvalKit result TSV / CSV / XLSX (`index` + `prediction`
columns; XLSX needs openpyxl), or a `.zip` (or folder) of any of these.
Problems with a submission are `Issue`s, never exceptions: a missing
question counts as wrong, as it would in VLMEvalKit where an absent answer
extracts to nothing; extra and duplicate ids are reported and ignored.
Malformed files raise a one-line `SchemaError`.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import posixpath
import re
import string
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, NamedTuple

from refsav.schemas.errors import SchemaError
from refsav.schemas.predictions import QAPrediction

from .inputs import DEFAULT_MAX_UNZIPPED, Issue, ReadOnlyFiles
from .qa import (
    CIRCULAR_STRIDE,
    NO_SPLIT,
    Accuracy,
    Judge,
    MCQRecord,
    MMERecord,
    score_mcq,
    score_mme,
)
from .report import ScoreReport

# ---------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QAProtocol:
    name: str
    source: str  # the official scorer this reproduces
    description: str
    kind: Literal["mcq", "mme"]
    circular: bool = False
    primary_metric: str = "accuracy"


QA_PROTOCOLS: dict[str, QAProtocol] = {
    p.name: p
    for p in [
        QAProtocol(
            "mcq",
            "open-compass/VLMEvalKit vlmeval/dataset/image_mcq.py (mcq_vanilla_eval + report_acc)",
            "Multiple choice, vanilla: each row is one question; the option letter is extracted from the "
            "answer with VLMEvalKit's can_infer (optional LLM judge, else exact matching: unresolved = wrong); "
            "accuracy over rows, per category / l2-category / split.",
            kind="mcq",
        ),
        QAProtocol(
            "mmbench",
            "open-compass/VLMEvalKit vlmeval/dataset/image_mcq.py (mcq_circular_eval + report_acc)",
            "MMBench circular evaluation: rows sharing index % 1e6 are option-rotated copies of one question; "
            "a question counts only if every copy is answered correctly; accuracy over questions, per "
            "category / l2-category / split.",
            kind="mcq",
            circular=True,
        ),
        QAProtocol(
            "mme",
            "open-compass/VLMEvalKit vlmeval/dataset/image_yorn.py + utils/yorn.py (MME_rating)",
            "MME: yes/no extraction (YOrN_Extraction, optional LLM judge); per category "
            "100*acc + 100*acc+ (both questions of an image right), max 200; score = perception "
            "(10 categories, max 2000) + cognition (4 categories, max 800), NaN unless all 14 are present.",
            kind="mme",
            primary_metric="score",
        ),
    ]
}


def get_qa_protocol(name: str) -> QAProtocol:
    try:
        return QA_PROTOCOLS[name]
    except KeyError:
        raise SchemaError(f"unknown QA protocol {name!r}; choose from {', '.join(sorted(QA_PROTOCOLS))}") from None


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MCQQuestion:
    """One ground-truth row of a multiple-choice TSV (a circular copy is its own row)."""

    question_id: str  # canonical `index` (see `canonical_id`)
    index: int  # the integer index; the row position when ids are not integers (vanilla only)
    question: str
    options: dict[str, str]  # letter -> text, only the non-empty option columns
    answer: str  # ground-truth letter
    category: str | None = None
    l2_category: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class MMEQuestion:
    question_id: str
    question: str
    answer: str  # "Yes" or "No"
    category: str
    image: str  # the key that pairs the two questions of an image


@dataclass(frozen=True)
class QAPredictions:
    source: str  # "parquet", "jsonl", "json", "tsv", "csv", "xlsx"; "+"-joined for several files
    answers: dict[str, str]  # canonical question id -> raw answer (the first one when repeated)
    issues: tuple[Issue, ...]


@dataclass(frozen=True)
class QuestionResult:
    """Outcome of one question (one row of the ground truth)."""

    question_id: str
    category: str | None
    answer: str
    extracted: str | None  # letter / "Z" / "Yes" / "No" / "Unknown"; None: unresolved, skipped or missing
    correct: bool  # this row's answer on its own (False where circular evaluation stopped before it)
    missing: bool  # no prediction: counted wrong
    group: str | None = None  # MMBench: g_index; MME: the image key
    group_correct: bool | None = None  # MMBench: the circular group; MME: both questions of the image


# ---------------------------------------------------------------------------
# Ids and cells
# ---------------------------------------------------------------------------

# Integers written as "12", "12.0" (Excel, float columns) or 12 / 12.0 are one id;
# leading zeros make a string id, since "007" and "7" may both be real ids.
_INTEGER_TEXT = re.compile(r"-?(?:0|[1-9]\d*)(?:\.0+)?")
_OPTION_LETTERS = frozenset(string.ascii_uppercase)
# Cells longer than this are never used as text (base64 images): they are hashed.
_LONG_CELL = 256
# VLMEvalKit: an `image` cell of at most 64 characters is the index of the row holding the image.
_IMAGE_REFERENCE_MAX = 64
# Rows per pandas chunk: the chunk bounds the memory a base64 image column
# costs (256 rows of MMBench, ~10-15 MB), since unneeded columns are dropped per chunk.
_CHUNK_ROWS = 256


def canonical_id(value: Any) -> str:
    """The id used to match predictions to ground truth: integers (also 12.0, "12.0") as
    their decimal digits, any other string stripped."""
    if isinstance(value, bool) or value is None:
        raise SchemaError(f"expected an id (string or integer), got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        raise SchemaError(f"expected an integer or string id, got {value!r}")
    if not isinstance(value, str):
        raise SchemaError(f"expected an id (string or integer), got {type(value).__name__}")
    text = value.strip()
    if _INTEGER_TEXT.fullmatch(text):
        return text.split(".")[0]
    return text


def _as_int(question_id: str) -> int | None:
    return int(question_id) if _INTEGER_TEXT.fullmatch(question_id) else None


def _column_key(name: Any) -> str:
    """VLMEvalKit lower-cases column names except the single-letter option columns."""
    name = str(name)
    return name if name in _OPTION_LETTERS else name.lower()


def _cell_text(value: Any, *, file, record, field: str) -> str | None:
    """A scalar cell as text; None for NaN / null."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, dict)):
        raise SchemaError(f"expected a single value, got {type(value).__name__}", file=file, record=record, field=field)
    return str(value)


# ---------------------------------------------------------------------------
# Table reading (TSV / CSV / JSONL / JSON), needed columns only
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Ground truth: multiple choice (MMBench & co.)
# ---------------------------------------------------------------------------

_MCQ_FIELDS = frozenset({"index", "question", "answer", "category", "l2-category", "split"})


def read_mcq_ground_truth(path: str | os.PathLike, *, circular: bool = False) -> list[MCQQuestion]:
    """Read an MMBench-style TSV / JSONL / JSON: `index`, `question`, option columns
    A, B, ... (empty = no such option), `answer` (a letter), and optional `category`,
    `l2-category`, `split`. `hint`, `image` and other columns are not read.

    With `circular`, indices must be integers and every group (`index % 1e6`) must
    contain its un-rotated row (index < 1e6), as in VLMEvalKit's circular TSVs.
    """
    path = Path(path)
    keep = lambda name: name in _MCQ_FIELDS or name in _OPTION_LETTERS  # noqa: E731
    questions: list[MCQQuestion] = []
    for n, row in enumerate(_iter_gt_rows(path, keep, ("index", "answer"))):
        qid = _row_id(row, n, path)
        options = {}
        for letter in string.ascii_uppercase:
            text = _cell_text(row.get(letter), file=path, record=qid, field=letter)
            if text is not None:
                options[letter] = text
        answer = _required_text(row, "answer", file=path, record=qid).strip()
        if answer not in options:
            raise SchemaError(
                f"answer {answer!r} is not one of the options ({', '.join(options) or 'none'})",
                file=path, record=qid, field="answer",
            )
        questions.append(
            MCQQuestion(
                question_id=qid,
                index=-1,  # set below, once it is known whether all ids are integers
                question=_cell_text(row.get("question"), file=path, record=qid, field="question") or "",
                options=options,
                answer=answer,
                category=_cell_text(row.get("category"), file=path, record=qid, field="category"),
                l2_category=_cell_text(row.get("l2-category"), file=path, record=qid, field="l2-category"),
                split=_cell_text(row.get("split"), file=path, record=qid, field="split"),
            )
        )
    if not questions:
        raise SchemaError("the ground truth has no questions", file=path)
    _check_unique_ids([q.question_id for q in questions], path)

    integers = [_as_int(q.question_id) for q in questions]
    if circular:
        for q, value in zip(questions, integers):
            if value is None or value < 0:
                raise SchemaError("circular evaluation needs non-negative integer indices", file=path, record=q.question_id, field="index")
        mains = {value for value in integers if value < CIRCULAR_STRIDE}
        for q, value in zip(questions, integers):
            if value % CIRCULAR_STRIDE not in mains:
                raise SchemaError(
                    f"circular copy of question {value % CIRCULAR_STRIDE}, which is not in the file",
                    file=path, record=q.question_id, field="index",
                )
    elif any(value is None for value in integers):
        integers = list(range(len(questions)))  # string ids: positions stand in for indices
    return [_with_index(q, value) for q, value in zip(questions, integers)]


def _with_index(q: MCQQuestion, index: int) -> MCQQuestion:
    return MCQQuestion(q.question_id, index, q.question, q.options, q.answer, q.category, q.l2_category, q.split)


# ---------------------------------------------------------------------------
# Ground truth: MME
# ---------------------------------------------------------------------------

_MME_FIELDS = frozenset({"index", "question", "answer", "category", "image_path", "image"})


def read_mme_ground_truth(path: str | os.PathLike) -> list[MMEQuestion]:
    """Read the VLMEvalKit MME TSV (or JSONL / JSON): `index`, `question`, `answer`
    ("Yes" / "No"), `category` and `image_path`, which pairs the two questions of an
    image. Without `image_path` the `image` column is used: a short cell that is
    another row's index refers to that row's image (VLMEvalKit's de-duplication),
    a long (base64) cell is identified by its hash and never kept.
    """
    path = Path(path)
    fmt = _gt_format(path) if path.is_file() else None
    image_field = "image_path"
    fields = _MME_FIELDS  # JSON rows may carry either field: the first row decides
    if fmt == "tsv":
        header = {_column_key(c) for c in _delimited_header(path, str(path), "\t")}
        if "image_path" not in header and "image" in header:
            image_field = "image"
        # Only the chosen column is read, so the base64 one stays on disk when image_path exists.
        fields = (_MME_FIELDS - {"image_path", "image"}) | {image_field}
    required = ("index", "question", "answer", "category") + ((image_field,) if fmt == "tsv" else ())

    rows: list[_MMERow] = []
    for n, row in enumerate(_iter_gt_rows(path, fields.__contains__, required)):
        qid = _row_id(row, n, path)
        if n == 0 and fmt != "tsv":
            image_field = "image_path" if "image_path" in row else "image"
        question = _required_text(row, "question", file=path, record=qid)
        answer = _required_text(row, "answer", file=path, record=qid)
        if answer not in ("Yes", "No"):
            raise SchemaError(f"MME answer must be 'Yes' or 'No', got {answer!r}", file=path, record=qid, field="answer")
        category = _required_text(row, "category", file=path, record=qid)
        if image_field not in row:
            raise SchemaError("required field is missing", file=path, record=qid, field="image_path")
        image = _required_text(row, image_field, file=path, record=qid)
        inline = len(image) > _LONG_CELL
        if inline:
            image = hashlib.sha256(image.encode()).hexdigest()
        rows.append(_MMERow(qid, question, answer, category, image, inline))
    if not rows:
        raise SchemaError("the ground truth has no questions", file=path)
    _check_unique_ids([r.question_id for r in rows], path)
    keys = _mme_image_keys(rows) if image_field == "image" else {r.question_id: r.image for r in rows}
    return [MMEQuestion(r.question_id, r.question, r.answer, r.category, keys[r.question_id]) for r in rows]


class _MMERow(NamedTuple):
    question_id: str
    question: str
    answer: str
    category: str
    image: str  # the cell, or the SHA-256 of an inline (base64) image
    inline: bool


def _mme_image_keys(rows: list[_MMERow]) -> dict[str, str]:
    by_id = {r.question_id: r for r in rows}
    digest_name: dict[str, str] = {}  # image hash -> "image@<first row holding it>"
    keys = {}
    for r in rows:
        image, inline = r.image, r.inline
        if not inline and len(image) <= _IMAGE_REFERENCE_MAX:
            target = by_id.get(_safe_id(image))
            if target is not None and target.question_id != r.question_id and target.inline:
                image, inline = target.image, True
        if inline:
            image = digest_name.setdefault(image, f"image@{r.question_id}")
        keys[r.question_id] = image
    return keys


def _safe_id(text: str) -> str:
    try:
        return canonical_id(text)
    except SchemaError:
        return text


# ---------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def match_predictions(
    question_ids: list[str], preds: QAPredictions, missing_message: str
) -> tuple[dict[str, str], list[Issue]]:
    """Predictions of the ground-truth questions, and coverage issues."""
    issues: list[Issue] = []
    known = set(question_ids)
    found = {}
    # One `empty_file` issue says it all; no need for one issue per question too.
    report_missing = bool(preds.answers)
    for qid in question_ids:
        if qid in preds.answers:
            found[qid] = preds.answers[qid]
        elif report_missing:
            issues.append(Issue("missing_question", qid, missing_message))
    for qid in preds.answers:
        if qid not in known:
            issues.append(Issue("extra_question", qid, "not in the ground truth; ignored"))
    return found, issues


def score_qa(
    gt_path: str | os.PathLike,
    pred_path: str | os.PathLike,
    protocol_name: str,
    *,
    judge: Judge | None = None,
) -> ScoreReport:
    """Score QA predictions against a ground-truth TSV / JSONL / JSON with a named protocol."""
    protocol = get_qa_protocol(protocol_name)
    if protocol.kind == "mme":
        mme_gt = read_mme_ground_truth(gt_path)
        preds = load_qa_predictions(pred_path)
        return _score_mme_report(protocol, mme_gt, preds, judge, gt_path)
    mcq_gt = read_mcq_ground_truth(gt_path, circular=protocol.circular)
    preds = load_qa_predictions(pred_path)
    return _score_mcq_report(protocol, mcq_gt, preds, judge, gt_path)


def _missing_mcq_prediction(q: MCQQuestion) -> str:
    # A lone "Z" token extracts to "Z" (none of the options) without asking a
    # judge, so a missing answer is wrong and, in circular mode, fails its group
    # during pre-fetching, exactly like an answered-but-wrong copy.
    if "Z" not in q.options:
        return "Z"
    return next((letter for letter in q.options if letter != q.answer), "")


def _accuracy_values(acc: Accuracy, unit: str, extra: dict[str, float] | None = None) -> dict[str, float]:
    return {"accuracy": acc.accuracy * 100, "correct": float(acc.correct), unit: float(acc.total), **(extra or {})}


def _score_mcq_report(
    protocol: QAProtocol, gt: list[MCQQuestion], preds: QAPredictions, judge: Judge | None, gt_path
) -> ScoreReport:
    message = "no prediction; its circular group scores 0" if protocol.circular else "no prediction; scored as wrong"
    found, coverage = match_predictions([q.question_id for q in gt], preds, message)
    records = [
        MCQRecord(
            index=q.index,
            question=q.question,
            options=q.options,
            answer=q.answer,
            prediction=found.get(q.question_id, _missing_mcq_prediction(q)),
            category=q.category,
            l2_category=q.l2_category,
            split=q.split,
        )
        for q in gt
    ]
    try:
        score = score_mcq(records, protocol.circular, judge)
    except SchemaError as err:
        raise err.at(file=gt_path) from None

    group_of: dict[int, bool] = {}
    for g in score.groups:
        group_of.update({index: g.correct for index in g.indices})
    items = []
    for q, item in zip(gt, score.items):
        missing = q.question_id not in found
        group = str(q.index % CIRCULAR_STRIDE) if protocol.circular else None
        items.append(
            QuestionResult(
                question_id=q.question_id,
                category=q.category,
                answer=q.answer,
                extracted=None if missing else item.extracted,
                correct=item.correct and not missing,
                missing=missing,
                group=group,
                group_correct=group_of.get(q.index) if protocol.circular else None,
            )
        )

    if protocol.circular:
        # Rows per breakdown key, counted through each group's un-rotated row.
        mains = {q.index: q for q in gt if q.index < CIRCULAR_STRIDE}
        units = [mains[q.index % CIRCULAR_STRIDE] for q in gt]
        unit = "groups"
    else:
        units = list(gt)
        unit = "questions"
    rows_by: dict[str, int] = defaultdict(int)
    for q in units:
        for key in _subset_keys(q):
            rows_by[key] += 1

    def values(acc: Accuracy, key: str | None) -> dict[str, float]:
        if not protocol.circular:
            return _accuracy_values(acc, unit)
        return _accuracy_values(acc, unit, {"questions": float(rows_by[key] if key else len(gt))})

    subsets: dict[str, dict[str, float]] = {}
    for name, acc in score.per_category.items():
        subsets[name] = values(acc, name)
    for name, acc in score.per_l2_category.items():
        subsets[f"l2-category:{name}"] = values(acc, f"l2-category:{name}")
    if any(q.split is not None for q in gt):
        for name, acc in score.per_split.items():
            subsets[f"split:{name}"] = values(acc, f"split:{name}")
    issues = list(preds.issues) + coverage
    return ScoreReport(protocol.name, protocol.primary_metric, values(score.overall, None), subsets, items, issues, "questions")


def _subset_keys(q: MCQQuestion) -> list[str]:
    keys = []
    if q.category is not None:
        keys.append(q.category)
    if q.l2_category is not None:
        keys.append(f"l2-category:{q.l2_category}")
    keys.append(f"split:{q.split if q.split is not None else NO_SPLIT}")
    return keys


def _score_mme_report(
    protocol: QAProtocol, gt: list[MMEQuestion], preds: QAPredictions, judge: Judge | None, gt_path
) -> ScoreReport:
    found, coverage = match_predictions([q.question_id for q in gt], preds, "no prediction; scored as wrong")
    records = [
        MMERecord(
            image=q.image,
            question=q.question,
            answer=q.answer,
            # The opposite answer: deterministically wrong, and no judge is asked.
            prediction=found.get(q.question_id, "No" if q.answer == "Yes" else "Yes"),
            category=q.category,
        )
        for q in gt
    ]
    try:
        score = score_mme(records, judge)
    except SchemaError as err:
        raise err.at(file=gt_path) from None

    hits_by_image: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for q, item in zip(gt, score.items):
        hits_by_image[(q.category, q.image)].append(item.correct)
    items = []
    for q, item in zip(gt, score.items):
        missing = q.question_id not in found
        items.append(
            QuestionResult(
                question_id=q.question_id,
                category=q.category,
                answer=q.answer,
                extracted=None if missing else item.extracted,
                correct=item.correct,
                missing=missing,
                group=q.image,
                group_correct=all(hits_by_image[(q.category, q.image)]),
            )
        )

    nan = math.nan
    totals = {
        "score": score.total if score.total is not None else nan,
        "perception": score.perception if score.perception is not None else nan,
        "cognition": score.cognition if score.cognition is not None else nan,
        "questions": float(len(gt)),
        "images": float(sum(c.images for c in score.per_category.values())),
    }
    subsets = {
        name: {
            "score": c.score,
            "acc": c.acc * 100,
            "acc_plus": c.acc_plus * 100,
            "questions": float(c.questions),
            "images": float(c.images),
        }
        for name, c in score.per_category.items()
    }
    issues = list(preds.issues) + coverage
    return ScoreReport(protocol.name, protocol.primary_metric, totals, subsets, items, issues, "questions")


__all__ = [
    "MCQQuestion",
    "MMEQuestion",
    "QAPredictions",
    "QAProtocol",
    "QA_PROTOCOLS",
    "QuestionResult",
    "canonical_id",
    "get_qa_protocol",
    "load_qa_predictions",
    "match_predictions",
    "read_mcq_ground_truth",
    "read_mme_ground_truth",
    "score_qa",
]
