"""Question ids and table cells: ids canonicalised as VLMEvalKit matches them, column
names normalised as its evaluators read them, scalar cells as text."""
from __future__ import annotations

import math
import re
import string
from typing import Any

from refsav.schemas.errors import SchemaError

# Integers written as "12", "12.0" (Excel, float columns) or 12 / 12.0 are one id;
# leading zeros make a string id, since "007" and "7" may both be real ids.
_INTEGER_TEXT = re.compile(r"-?(?:0|[1-9]\d*)(?:\.0+)?")
_OPTION_LETTERS = frozenset(string.ascii_uppercase)


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
