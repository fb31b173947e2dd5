"""QA metrics: MME yes/no, MMBench-style multiple choice, yes/no accuracy, exact match.

The extraction heuristics and the MME / MMBench aggregation reproduce
open-compass/VLMEvalKit (see `docs/metrics.md` §6-§7), including
its quirks, so that numbers computed here match numbers reported with it:

- `process_punctuation` / `extract_yes_no`: `vlmeval/smp/misc.py`
  `process_punctuation` and `vlmeval/dataset/utils/yorn.py` `YOrN_Extraction`.
- `extract_option`: `vlmeval/utils/matching_util.py` `can_infer`
  (`can_infer_option`, then `can_infer_text`), then the LLM-judge retry loop of
  `multiple_choice.py` `extract_answer_from_item` (minus its random fallback).
- `score_mcq`: `mcq_vanilla_eval` / `mcq_circular_eval` + `report_acc`.
- `score_mme`: `ImageYORNDataset.evaluate` + `MME_rating`.

An LLM judge is optional everywhere. It is any callable `judge(prompt) -> str`
(see `Judge`); it is asked only when the heuristics leave an answer unresolved.
Without one, the behaviour is VLMEvalKit's `exact_matching` policy:
unresolved answers count as wrong.
"""
from __future__ import annotations

import re
import string
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Protocol, Sequence

from refsav.schemas.errors import SchemaError

YesNo = Literal["Yes", "No", "Unknown"]

# A judge reply containing this is VLMEvalKit's marker for a failed API call;
# such a reply is never parsed, it just uses up one try.
API_FAILURE_MARKER = "Failed to obtain answer via API"
DEFAULT_JUDGE_TRIES = 3


class Judge(Protocol):
    """An LLM used to map a free-form answer onto a label; returns its raw reply."""

    def __call__(self, prompt: str) -> str: ...


# ---------------------------------------------------------------------------
# Input records
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MCQRecord:
    """One row of an MMBench-style TSV plus the model's prediction.

    `options` maps option letters ("A", "B", ...) to option texts; `answer` is
    the ground-truth letter. In circular datasets the option-rotated copies of
    a question have `index = g_index + k * 1_000_000`.
    """

    index: int
    question: str
    options: Mapping[str, str]
    answer: str
    prediction: str
    category: str | None = None
    l2_category: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class MMERecord:
    """One MME question; every (category, image) pair carries exactly two."""

    image: str
    question: str
    answer: str  # "Yes" or "No"
    prediction: str
    category: str


@dataclass(frozen=True)
class QARecord:
    """A generic question with one reference answer (yes/no or open-ended)."""

    id: str
    answer: str
    prediction: str
    category: str | None = None
    question: str = ""  # only used to build the judge prompt


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Accuracy:
    """`correct` of `total` units (questions, or question groups when circular)."""

    accuracy: float
    correct: int
    total: int


@dataclass(frozen=True)
class MCQItemResult:
    """Per-row outcome. `extracted` is a choice letter, "Z" (refusal / none of
    the options) or None (unresolved, or never looked at because its circular
    group had already failed)."""

    index: int
    extracted: str | None
    correct: bool


@dataclass(frozen=True)
class CircularGroupResult:
    g_index: int
    indices: tuple[int, ...]
    correct: bool


@dataclass(frozen=True)
class MCQScore:
    """Accuracy overall, per `split` (missing split -> "none", as VLMEvalKit),
    per `category` and per `l2_category` (rows without one are left out of
    that breakdown). In circular mode every count is in groups."""

    circular: bool
    overall: Accuracy
    per_split: dict[str, Accuracy]
    per_category: dict[str, Accuracy]
    per_l2_category: dict[str, Accuracy]
    items: tuple[MCQItemResult, ...]
    groups: tuple[CircularGroupResult, ...]  # empty unless circular


@dataclass(frozen=True)
class YesNoItemResult:
    key: str  # QARecord.id, or the MME image
    extracted: YesNo
    correct: bool


@dataclass(frozen=True)
class MMECategoryScore:
    """`acc` over questions and `acc_plus` over images, both fractions in [0, 1];
    `score = 100 * acc + 100 * acc_plus` (max 200), as MME reports it."""

    acc: float
    acc_plus: float
    score: float
    questions: int
    images: int


@dataclass(frozen=True)
class MMEScore:
    """`perception` / `cognition` are the MME sub-totals (max 2000 / 800) and
    `total` their sum; each is None unless every category it sums over is
    present, because a partial sum is not comparable with published numbers."""

    per_category: dict[str, MMECategoryScore]
    perception: float | None
    cognition: float | None
    total: float | None
    items: tuple[YesNoItemResult, ...]


@dataclass(frozen=True)
class YesNoScore:
    """Accuracy, plus POPE-style precision / recall / F1 with "Yes" as the
    positive class (an "Unknown" extraction counts as a negative prediction)."""

    overall: Accuracy
    per_category: dict[str, Accuracy]
    precision: float
    recall: float
    f1: float
    yes_ratio: float  # fraction of predictions extracted as "Yes"
    unknown: int  # predictions neither heuristics nor judge resolved
    items: tuple[YesNoItemResult, ...]


@dataclass(frozen=True)
class ExactMatchItemResult:
    id: str
    correct: bool


@dataclass(frozen=True)
class ExactMatchScore:
    overall: Accuracy
    per_category: dict[str, Accuracy]
    items: tuple[ExactMatchItemResult, ...]


# ---------------------------------------------------------------------------
# Yes / No extraction (MME, POPE, ...)
# ---------------------------------------------------------------------------

_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# VLMEvalKit writes this as `(?!<=\d)(\.)(?!\d)`: the intended look-behind is
# really a look-ahead for the text "<=digit", which can never match in front
# of a ".", so only "not followed by a digit" is tested. We reproduce that.
_STRAY_PERIOD = re.compile(r"\.(?!\d)")
# VLMEvalKit passes `re.UNICODE` (== 32) where `re.sub` expects `count`.
_PERIOD_REMOVAL_CAP = 32


def process_punctuation(text: str) -> str:
    """VLMEvalKit `process_punctuation` (the VQA-eval punctuation rule).

    For each punctuation mark p, decided on the *original* text: if p is
    adjacent to a space anywhere, or the text contains a digit,digit pattern,
    every p is deleted; otherwise every p becomes a space. Then periods not
    followed by a digit are deleted, at most the first 32 of them.
    """
    has_digit_comma_digit = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        if (p + " ") in text or (" " + p) in text or has_digit_comma_digit:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _STRAY_PERIOD.sub("", out, count=_PERIOD_REMOVAL_CAP)


def _yes_no_heuristic(answer: str) -> YesNo:
    words = process_punctuation(answer.lower()).split()
    has_yes = "yes" in words
    has_no = "no" in words
    if has_yes and not has_no:
        return "Yes"
    if has_no and not has_yes:
        return "No"
    return "Unknown"


def build_yes_no_judge_prompt(question: str, answer: str) -> str:
    """Prompt asking a judge whether a free-form answer means yes or no
    (same role as VLMEvalKit `build_prompt_YOrN`; our own wording)."""
    return (
        "You are given a yes/no question and a model's answer to it. Decide whether the "
        "answer means Yes or No. Reply with exactly one word: Yes, No, or Unknown if the "
        "answer commits to neither.\n"
        f"Question: {question}\n"
        f"Answer: {answer}\n"
        "Your output: "
    )


def extract_yes_no(
    answer: str,
    judge: Judge | None = None,
    *,
    question: str = "",
    max_tries: int = DEFAULT_JUDGE_TRIES,
) -> YesNo:
    """VLMEvalKit `YOrN_Extraction`, then (optionally) `YOrN_auxeval`.

    Lowercase, `process_punctuation`, split on whitespace: "yes" present and
    "no" absent -> "Yes"; the reverse -> "No"; otherwise "Unknown". Only when
    that gives "Unknown" and a judge is given, the judge is asked up to
    `max_tries` times and its reply goes through the same rule.
    """
    extracted = _yes_no_heuristic(answer)
    if extracted != "Unknown" or judge is None:
        return extracted
    prompt = build_yes_no_judge_prompt(question, answer)
    for _ in range(max_tries):
        reply = judge(prompt)
        if API_FAILURE_MARKER in reply:
            continue
        extracted = _yes_no_heuristic(reply)
        if extracted != "Unknown":
            return extracted
    return "Unknown"


# ---------------------------------------------------------------------------
# Multiple-choice option extraction (MMBench & co.)
# ---------------------------------------------------------------------------

_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_OPTION_SEPARATORS = ".()[],:;!*#{}"
# Only A-D, even when a question has more options: VLMEvalKit's pattern.
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
# `can_infer_option` accepts a lone letter only if its first occurrence has
# index > len(tokens) - 5, i.e. it is one of the last *four* tokens.
_TAIL_OFFSET = 5


def _check_choices(choices: Mapping[str, str]) -> None:
    for letter in choices:
        if len(letter) != 1 or letter not in string.ascii_uppercase:
            raise SchemaError(f"option keys must be single letters A-Z, got {letter!r}", field="options")


def _infer_from_letter(answer: str, choices: Mapping[str, str], verbose_article_rule: bool) -> str | None:
    """VLMEvalKit `can_infer_option`; None where it returns False."""
    if API_FAILURE_MARKER in answer:
        return None
    if any(refusal in answer for refusal in _REFUSALS):
        return "Z"

    spaced = answer
    for char in _OPTION_SEPARATORS:
        spaced = spaced.replace(char, " ")
    tokens = spaced.split()
    present = [letter for letter in choices if letter in tokens]

    if len(present) == 1:
        # With VERBOSE set, VLMEvalKit gives up here (before the regex) since
        # a lone "A" in a sentence may be the article.
        if verbose_article_rule and "A" in tokens and len(tokens) > 3:
            return None
        letter = present[0]
        if tokens.index(letter) > len(tokens) - _TAIL_OFFSET:
            return letter
    elif not present and "Z" in tokens:
        return "Z"

    match = _ANSWER_IS.search(answer)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def _infer_from_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit `can_infer_text`; None where it returns False."""
    lowered = answer.lower()
    # Long answers (explanations) mention several options by accident.
    if len(lowered) > 2 * sum(len(str(text)) for text in choices.values()):
        return None
    matches = [letter for letter, text in choices.items() if str(text).lower() in lowered]
    return matches[0] if len(matches) == 1 else None


def _infer_option(answer: str, choices: Mapping[str, str], verbose_article_rule: bool) -> str | None:
    """VLMEvalKit `can_infer`: the letter heuristic, else the option-text one."""
    return _infer_from_letter(answer, choices, verbose_article_rule) or _infer_from_text(answer, choices)


def _option_lines(options: Mapping[str, str]) -> list[str]:
    # VLMEvalKit collects options by walking A..Z, whatever the input order.
    return [f"{letter}. {options[letter]}" for letter in string.ascii_uppercase if letter in options]


def build_mcq_prompt(question: str, options: Mapping[str, str], hint: str | None = None) -> str:
    """VLMEvalKit `ImageMCQDataset.build_prompt` text part (MMBench prompt).

    `"Hint: {hint}\\n"` when a hint is given (an empty string counts as given,
    as in VLMEvalKit where only NaN means absent), `"Question: {q}\\n"`, then
    if there are options `"Options:\\n"`, one `"X. text\\n"` line per option in
    letter order, and `"Please select the correct answer from the options above. \\n"`.
    """
    _check_choices(options)
    prompt = f"Hint: {hint}\n" if hint is not None else ""
    prompt += f"Question: {question}\n"
    if options:
        prompt += "Options:\n"
        prompt += "".join(line + "\n" for line in _option_lines(options))
        prompt += "Please select the correct answer from the options above. \n"
    return prompt


def build_mcq_judge_prompt(question: str, options: Mapping[str, str], answer: str) -> str:
    """Prompt asking a judge which option a free-form answer picks (same role
    as VLMEvalKit `multiple_choice.build_prompt`; our own wording)."""
    _check_choices(options)
    letters = ", ".join(letter for letter in string.ascii_uppercase if letter in options)
    return (
        "You match a model's answer to the options of a single-choice question. "
        "Find the option whose meaning the answer selects. If the answer selects none of "
        "them, or declines to answer, output Z. "
        f"Output a single uppercase letter: one of {letters}, or Z.\n"
        f"Question: {question}\n"
        f"Options: {' '.join(_option_lines(options))}\n"
        f"Answer: {answer}\n"
        "Your output: "
    )


def extract_option(
    answer: str,
    choices: Mapping[str, str],
    judge: Judge | None = None,
    *,
    question: str = "",
    verbose_article_rule: bool = False,
    max_tries: int = DEFAULT_JUDGE_TRIES,
) -> str | None:
    """Map a free-form answer to an option letter, "Z", or None (unresolved).

    Heuristics = VLMEvalKit `can_infer`:
    1. the answer contains "Failed to obtain answer via API" -> skip to step 5;
       it contains a refusal string -> "Z";
    2. replace each of `.()[],:;!*#{}` by a space, split on whitespace;
    3. exactly one choice letter among the tokens -> that letter if its first
       occurrence index is > len(tokens) - 5 (one of the last four tokens),
       else continue; no choice letter but a "Z" token -> "Z". With
       `verbose_article_rule` (VLMEvalKit's `VERBOSE` env var), one choice
       letter while an "A" token is present among > 3 tokens -> skip to step 5;
    4. regex "(correct) answer is **X**" (X in A-D, case-insensitive) -> X if a choice;
    5. `can_infer_text`: unless len(answer) > 2 * total length of the option
       texts, the single option whose lowercased text is a substring of the
       lowercased answer.
    Only if all of that fails and `judge` is given: ask the judge up to
    `max_tries` times and parse its reply with the same heuristics (replies
    containing the API-failure marker are skipped). VLMEvalKit then picks a
    random option; we return None instead.
    """
    _check_choices(choices)
    found = _infer_option(answer, choices, verbose_article_rule)
    if found is not None or judge is None:
        return found
    prompt = build_mcq_judge_prompt(question, choices, answer)
    for _ in range(max_tries):
        reply = judge(prompt)
        if API_FAILURE_MARKER in reply:
            continue
        found = _infer_option(reply, choices, verbose_article_rule)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------

CIRCULAR_STRIDE = 1_000_000
NO_SPLIT = "none"  # VLMEvalKit's split name when the data has no `split` column


def _accuracy(hits: Sequence[bool]) -> Accuracy:
    correct = sum(1 for hit in hits if hit)
    return Accuracy(accuracy=correct / len(hits), correct=correct, total=len(hits))


def _breakdown(pairs: Iterable[tuple[str | None, bool]]) -> dict[str, Accuracy]:
    """Accuracy per key, keys sorted; None keys are left out."""
    by_key: dict[str, list[bool]] = defaultdict(list)
    for key, hit in pairs:
        if key is not None:
            by_key[key].append(hit)
    return {key: _accuracy(by_key[key]) for key in sorted(by_key)}


def _require_records(records: Sequence[object], what: str) -> None:
    if not records:
        raise SchemaError(f"no {what} records to score")


def _check_unique_indices(records: Sequence[MCQRecord]) -> None:
    seen: set[int] = set()
    for rec in records:
        if rec.index in seen:
            raise SchemaError("duplicate index", record=rec.index, field="index")
        seen.add(rec.index)


def _score_vanilla(
    records: Sequence[MCQRecord], judge: Judge | None, verbose_article_rule: bool
) -> tuple[list[MCQItemResult], list[MCQRecord], list[bool]]:
    items = []
    for rec in records:
        # `extract_answer_from_item` strips the prediction before `can_infer`.
        extracted = extract_option(
            rec.prediction.strip(), rec.options, judge,
            question=rec.question, verbose_article_rule=verbose_article_rule,
        )
        items.append(MCQItemResult(rec.index, extracted, extracted == rec.answer))
    return items, list(records), [item.correct for item in items]


def _score_circular(
    records: Sequence[MCQRecord], judge: Judge | None, verbose_article_rule: bool
) -> tuple[list[MCQItemResult], list[CircularGroupResult], list[MCQRecord], list[bool]]:
    groups: dict[int, list[MCQRecord]] = defaultdict(list)
    for rec in sorted(records, key=lambda r: r.index):
        groups[rec.index % CIRCULAR_STRIDE].append(rec)

    extracted: dict[int, str | None] = {}
    group_results, main_rows, hits = [], [], []
    for g_index in sorted(groups):
        rows = groups[g_index]
        main = rows[0]
        if main.index != g_index:
            # VLMEvalKit reports a group through its un-rotated row; without
            # it the group would silently vanish, so refuse instead.
            raise SchemaError(f"circular group {g_index} has no un-rotated row", record=main.index, field="index")

        # Pre-fetch (`prefetch_circular_group`): heuristics on the raw
        # predictions; a resolved wrong answer fails the group at once.
        correct = True
        for rec in rows:
            found = _infer_option(rec.prediction, rec.options, verbose_article_rule)
            extracted[rec.index] = found
            if found is not None and found != rec.answer:
                correct = False
                break
        # Unresolved rotations: wrong under exact matching; with a judge, go
        # through `extract_answer_from_item` in order, stopping at the first miss.
        if correct:
            for rec in rows:
                if extracted[rec.index] is not None:
                    continue
                if judge is None:
                    correct = False
                    break
                found = extract_option(
                    rec.prediction.strip(), rec.options, judge,
                    question=rec.question, verbose_article_rule=verbose_article_rule,
                )
                extracted[rec.index] = found
                if found != rec.answer:
                    correct = False
                    break

        group_results.append(CircularGroupResult(g_index, tuple(r.index for r in rows), correct))
        main_rows.append(main)
        hits.append(correct)

    items = [
        MCQItemResult(rec.index, extracted.get(rec.index), extracted.get(rec.index) == rec.answer)
        for rec in records
    ]
    return items, group_results, main_rows, hits


def score_mcq(
    records: Sequence[MCQRecord],
    circular: bool,
    judge: Judge | None = None,
    *,
    verbose_article_rule: bool = False,
) -> MCQScore:
    """MMBench-style accuracy: VLMEvalKit `mcq_vanilla_eval` or
    `mcq_circular_eval`, aggregated like `report_acc`.

    Vanilla: a row is correct when `extract_option(prediction.strip())`
    equals its `answer` (unresolved -> wrong).
    Circular: rows are grouped by `index % 1_000_000`; a group scores 1 only
    if every rotation is answered correctly (heuristics first on all rows,
    any wrong one fails the group; the judge, if any, is then asked for the
    unresolved ones). Breakdowns use the un-rotated row's (index ==
    g_index) category / l2_category / split, which must exist.
    """
    _require_records(records, "multiple-choice")
    _check_unique_indices(records)
    if circular:
        items, groups, units, hits = _score_circular(records, judge, verbose_article_rule)
    else:
        items, units, hits = _score_vanilla(records, judge, verbose_article_rule)
        groups = []
    return MCQScore(
        circular=circular,
        overall=_accuracy(hits),
        per_split=_breakdown((rec.split if rec.split is not None else NO_SPLIT, hit) for rec, hit in zip(units, hits)),
        per_category=_breakdown((rec.category, hit) for rec, hit in zip(units, hits)),
        per_l2_category=_breakdown((rec.l2_category, hit) for rec, hit in zip(units, hits)),
        items=tuple(items),
        groups=tuple(groups),
    )


# Sum order matters for bit-exact float totals: it is `MME_rating`'s order.
MME_PERCEPTION = (
    "OCR", "artwork", "celebrity", "color", "count",
    "existence", "landmark", "position", "posters", "scene",
)
MME_COGNITION = ("code_reasoning", "numerical_calculation", "commonsense_reasoning", "text_translation")


def _subtotal(per_category: Mapping[str, MMECategoryScore], categories: Sequence[str]) -> float | None:
    if any(category not in per_category for category in categories):
        return None
    total = 0.0
    for category in categories:
        total += per_category[category].score
    return total


def score_mme(records: Sequence[MMERecord], judge: Judge | None = None) -> MMEScore:
    """MME: VLMEvalKit `ImageYORNDataset.evaluate` + `MME_rating`.

    Row correct = `answer == extract_yes_no(prediction)` (case-sensitive;
    ground truth must be "Yes" or "No"). Per category: acc = mean over
    questions, acc+ = mean over images of (q1 correct and q2 correct), score =
    100*acc + 100*acc+. Images are keyed by (category, image) and must carry
    exactly two questions. Perception / cognition = sums over the fixed
    category lists `MME_PERCEPTION` / `MME_COGNITION`.
    """
    _require_records(records, "MME")
    by_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    items = []
    for rec in records:
        if rec.answer not in ("Yes", "No"):
            raise SchemaError(f"MME answer must be 'Yes' or 'No', got {rec.answer!r}", record=rec.image, field="answer")
        extracted = extract_yes_no(rec.prediction, judge, question=rec.question)
        correct = extracted == rec.answer
        items.append(YesNoItemResult(rec.image, extracted, correct))
        by_image[rec.category][rec.image].append(correct)

    per_category: dict[str, MMECategoryScore] = {}
    for category in sorted(by_image):
        images = by_image[category]
        for image, hits in images.items():
            if len(hits) != 2:
                raise SchemaError(
                    f"MME image in category {category!r} has {len(hits)} questions, expected 2", record=image
                )
        question_hits = [hit for hits in images.values() for hit in hits]
        image_hits = [hits[0] and hits[1] for hits in images.values()]
        acc = sum(question_hits) / len(question_hits)
        acc_plus = sum(image_hits) / len(image_hits)
        per_category[category] = MMECategoryScore(
            acc=acc,
            acc_plus=acc_plus,
            score=acc * 100 + acc_plus * 100,
            questions=len(question_hits),
            images=len(image_hits),
        )

    perception = _subtotal(per_category, MME_PERCEPTION)
    cognition = _subtotal(per_category, MME_COGNITION)
    total = perception + cognition if perception is not None and cognition is not None else None
    return MMEScore(
        per_category=per_category, perception=perception, cognition=cognition, total=total, items=tuple(items)
    )


def _normalise_yes_no_answer(rec: QARecord) -> YesNo:
    answer = rec.answer.strip().lower()
    if answer == "yes":
        return "Yes"
    if answer == "no":
        return "No"
    raise SchemaError(f"yes/no answer must be 'yes' or 'no', got {rec.answer!r}", record=rec.id, field="answer")


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def score_yes_no(records: Sequence[QARecord], judge: Judge | None = None) -> YesNoScore:
    """Yes/no accuracy with VLMEvalKit `YOrN_Extraction` (+ optional judge).

    The reference answer is matched case-insensitively ("yes"/"Yes"), a
    prediction extracted as "Unknown" is wrong. Precision / recall / F1 treat
    "Yes" as the positive class; a zero denominator gives 0.0.
    """
    _require_records(records, "yes/no")
    items = []
    true_pos = pred_pos = gt_pos = 0
    for rec in records:
        truth = _normalise_yes_no_answer(rec)
        extracted = extract_yes_no(rec.prediction, judge, question=rec.question)
        items.append(YesNoItemResult(rec.id, extracted, extracted == truth))
        pred_pos += extracted == "Yes"
        gt_pos += truth == "Yes"
        true_pos += extracted == "Yes" and truth == "Yes"

    precision = _ratio(true_pos, pred_pos)
    recall = _ratio(true_pos, gt_pos)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    hits = [item.correct for item in items]
    return YesNoScore(
        overall=_accuracy(hits),
        per_category=_breakdown((rec.category, hit) for rec, hit in zip(records, hits)),
        precision=precision,
        recall=recall,
        f1=f1,
        yes_ratio=pred_pos / len(records),
        unknown=sum(1 for item in items if item.extracted == "Unknown"),
        items=tuple(items),
    )


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 `normalize_answer`: lowercase, drop ASCII punctuation
    (`string.punctuation`), drop the articles a/an/the as whole words, and
    collapse whitespace runs to single spaces (trimmed)."""
    text = text.lower()
    text = "".join(char for char in text if char not in _ASCII_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def score_exact_match(records: Sequence[QARecord], normalize: bool = True) -> ExactMatchScore:
    """Exact-match accuracy for open answers (SQuAD-style EM).

    With `normalize`, prediction and answer are compared after
    `normalize_answer`; without it, as raw strings.
    """
    _require_records(records, "exact-match")
    items = []
    for rec in records:
        if normalize:
            correct = normalize_answer(rec.prediction) == normalize_answer(rec.answer)
        else:
            correct = rec.prediction == rec.answer
        items.append(ExactMatchItemResult(rec.id, correct))
    hits = [item.correct for item in items]
    return ExactMatchScore(
        overall=_accuracy(hits),
        per_category=_breakdown((rec.category, hit) for rec, hit in zip(records, hits)),
        items=tuple(items),
    )


__all__ = [
    "API_FAILURE_MARKER",
    "Accuracy",
    "CircularGroupResult",
    "ExactMatchItemResult",
    "ExactMatchScore",
    "Judge",
    "MCQItemResult",
    "MCQRecord",
    "MCQScore",
    "MME_COGNITION",
    "MME_PERCEPTION",
    "MMECategoryScore",
    "MMERecord",
    "MMEScore",
    "QARecord",
    "YesNo",
    "YesNoItemResult",
    "YesNoScore",
    "build_mcq_judge_prompt",
    "build_mcq_prompt",
    "build_yes_no_judge_prompt",
    "extract_option",
    "extract_yes_no",
    "normalize_answer",
    "process_punctuation",
    "score_exact_match",
    "score_mcq",
    "score_mme",
    "score_yes_no",
]
