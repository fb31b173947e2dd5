"""Typed records of the QA family: ground-truth questions, a submission's answers, per-question results."""
from __future__ import annotations

from dataclasses import dataclass

from ..report import Issue


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
