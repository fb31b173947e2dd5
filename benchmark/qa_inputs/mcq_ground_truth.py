"""Multiple-choice ground truth (MMBench & co.): VLMEvalKit's TSV, or JSONL / JSON with the
same field names."""
from __future__ import annotations

import os
import string
from pathlib import Path

from refsav.schemas.errors import SchemaError

from ..qa import CIRCULAR_STRIDE
from .ids import _OPTION_LETTERS, _as_int, _cell_text
from .records import MCQQuestion
from .tables import _check_unique_ids, _iter_gt_rows, _required_text, _row_id

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
