"""MME ground truth: VLMEvalKit's TSV, or JSONL / JSON with the same field names; the two
questions of an image are paired by `image_path`, or by the `image` cell."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

from refsav.schemas.errors import SchemaError

from .ids import _column_key, canonical_id
from .records import MMEQuestion
from .tables import _check_unique_ids, _delimited_header, _gt_format, _iter_gt_rows, _required_text, _row_id

# Cells longer than this are never used as text (base64 images): they are hashed.
_LONG_CELL = 256
# VLMEvalKit: an `image` cell of at most 64 characters is the index of the row holding the image.
_IMAGE_REFERENCE_MAX = 64

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
