"""`score_qa`: a QA submission against its ground truth under a named protocol, as a
`ScoreReport` (the rules themselves are `refsav.benchmark.qa`'s)."""
from __future__ import annotations

import math
import os
from collections import defaultdict

from refsav.schemas.errors import SchemaError
from refsav.schemas.protocols import get_protocol

from ..qa import CIRCULAR_STRIDE, NO_SPLIT, Accuracy, Judge, MCQRecord, MMERecord, score_mcq, score_mme
from ..report import Issue, ScoreReport
from .mcq_ground_truth import read_mcq_ground_truth
from .mme_ground_truth import read_mme_ground_truth
from .predictions import load_qa_predictions
from .protocols import QAProtocol, get_qa_protocol
from .records import MCQQuestion, MMEQuestion, QAPredictions, QuestionResult

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
    return ScoreReport(protocol.name, get_protocol(protocol.name).primary_metric, values(score.overall, None), subsets, items, issues, "questions")


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
    return ScoreReport(protocol.name, get_protocol(protocol.name).primary_metric, totals, subsets, items, issues, "questions")
