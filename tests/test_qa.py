"""Tests for refsav.benchmark.qa: every VLMEvalKit rule on hand-made inputs.

Expected values are worked out by hand in the comments next to them.
"""
from __future__ import annotations

import pytest

from refsav.benchmark.qa import (
    MCQRecord,
    MME_COGNITION,
    MME_PERCEPTION,
    MMERecord,
    QARecord,
    build_mcq_prompt,
    extract_option,
    extract_yes_no,
    normalize_answer,
    process_punctuation,
    score_exact_match,
    score_mcq,
    score_mme,
    score_yes_no,
)
from refsav.schemas.errors import SchemaError

ANIMALS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}  # 3+3+4+4 = 14 chars -> length limit 28


class RecordingJudge:
    """Fake judge: replays canned replies and remembers every prompt."""

    def __init__(self, *replies: str):
        self.replies = list(replies)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.replies[len(self.prompts) - 1] if len(self.prompts) <= len(self.replies) else "no idea"


# ---------------------------------------------------------------------------
# process_punctuation
# ---------------------------------------------------------------------------

ALL_MARKS = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


@pytest.mark.parametrize("mark", ALL_MARKS)
def test_punctuation_not_next_to_a_space_becomes_a_space(mark):
    assert process_punctuation(f"x{mark}y") == "x y"


@pytest.mark.parametrize("mark", ALL_MARKS)
def test_punctuation_next_to_a_space_is_deleted_everywhere(mark):
    # " {mark}" occurs once, so *both* occurrences are deleted, not spaced.
    assert process_punctuation(f"x{mark}y {mark}z") == "xy z"


def test_punctuation_followed_by_space_is_deleted():
    assert process_punctuation("yes, it is") == "yes it is"
    assert process_punctuation("yes , it is") == "yes  it is"


def test_punctuation_decision_is_per_mark():
    # "-" touches a space -> deleted; "/" does not -> replaced by a space.
    assert process_punctuation("a-b - c/d") == "ab  c d"


def test_digit_comma_digit_deletes_every_mark():
    # "1,000" triggers deletion of all marks, even the non-space-adjacent "/".
    assert process_punctuation("a/b 1,000") == "ab 1000"
    # Without a digit,digit pattern the same marks become spaces.
    assert process_punctuation("a/b 1,x") == "a b 1 x"


def test_marks_outside_the_list_are_kept():
    assert process_punctuation("it's a:b") == "it's a:b"


def test_periods_not_followed_by_a_digit_are_removed():
    assert process_punctuation("yes.") == "yes"
    assert process_punctuation("3.5 m") == "3.5 m"
    assert process_punctuation("v.2") == "v.2"


def test_period_after_a_digit_is_removed_too():
    # VLMEvalKit's "(?!<=\d)" look-behind is really an inert look-ahead.
    assert process_punctuation("it is 5.") == "it is 5"


def test_only_first_32_periods_are_removed():
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("a." * 33) == "a" * 33 + "."


def test_period_cap_counts_only_removable_periods():
    # The "1.5" periods are not matches, so they do not use up the cap.
    text = "1.5 " + "a." * 32 + "b."
    assert process_punctuation(text) == "1.5 " + "a" * 32 + "b."


# ---------------------------------------------------------------------------
# extract_yes_no
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Yes, there is a dog.", "Yes"),
        ("NO!", "No"),
        ("no.", "No"),
        ("Yes and no", "Unknown"),
        ("yes/no", "Unknown"),  # "/" becomes a space: both words present
        ("I can't tell", "Unknown"),
        ("The eyes are blue", "Unknown"),  # whole words only
        ("yes-man", "Yes"),  # "-" becomes a space; "man" is not "no"
        ("no-yes", "Unknown"),
    ],
)
def test_extract_yes_no(answer, expected):
    assert extract_yes_no(answer) == expected


def test_yes_no_judge_only_when_unknown():
    judge = RecordingJudge("Yes")
    assert extract_yes_no("Yes, clearly.", judge, question="Is it red?") == "Yes"
    assert judge.prompts == []
    assert extract_yes_no("It looks reddish", judge, question="Is it red?") == "Yes"
    assert len(judge.prompts) == 1
    assert "Is it red?" in judge.prompts[0] and "It looks reddish" in judge.prompts[0]


def test_yes_no_judge_gives_up_after_three_tries():
    judge = RecordingJudge("hmm", "Failed to obtain answer via API", "yes and no", "No")
    assert extract_yes_no("unclear", judge) == "Unknown"
    assert len(judge.prompts) == 3


# ---------------------------------------------------------------------------
# extract_option
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("The answer is (C).", "C"),
        ("I pick B for sure", "B"),  # 5 tokens, B at index 2 > 5 - 5
        ("I pick option B", "B"),
    ],
)
def test_lone_letter_near_the_end(answer, expected):
    assert extract_option(answer, ANIMALS) == expected


def test_lone_letter_must_be_in_the_last_four_tokens():
    # 5 tokens, B at index 0: 0 > 5 - 5 is false -> falls through, nothing else matches.
    assert extract_option("B seems right to me", ANIMALS) is None
    # 5 tokens, B at index 1: 1 > 0 -> accepted.
    assert extract_option("Probably B is right here", ANIMALS) == "B"


def test_two_letters_fall_through_to_text_match():
    assert extract_option("A or B", ANIMALS) is None
    # Two letters -> no letter answer; the text "dog" (26 chars <= 28) decides.
    assert extract_option("Either A or B, it is a dog", ANIMALS) == "B"


def test_letters_are_case_sensitive_tokens():
    # Lower-case "a" is not option A; the text rule finds "dog".
    assert extract_option("It's a dog.", ANIMALS) == "B"


@pytest.mark.parametrize(
    "answer",
    [
        "Sorry, I can't help with images of people yet.",
        "I can't process this file.",
        "I'm sorry, but without the image provided, B is a guess",
        "Cannot determine the answer. A?",
    ],
)
def test_refusals_give_z(answer):
    assert extract_option(answer, ANIMALS) == "Z"


def test_z_token_without_any_letter():
    assert extract_option("None of them, so Z.", ANIMALS) == "Z"
    # A letter present takes precedence over Z: two tokens -> B.
    assert extract_option("Z B", ANIMALS) == "B"
    # Z counts only when no choice letter is present at all.
    assert extract_option("A or B, or Z", ANIMALS) is None


def test_api_failure_marker_skips_letter_rule():
    assert extract_option("Failed to obtain answer via API. A", ANIMALS) is None
    assert extract_option("Failed to obtain answer via APX. A", ANIMALS) == "A"


def test_answer_is_regex_rescues_an_early_letter():
    answer = "After careful thought, the answer is **B** because the animal barks and wags its tail"
    assert extract_option(answer, ANIMALS) == "B"
    # Lower-case letter: not a token match, but the regex is case-insensitive.
    answer = "after careful thought the answer is b because the animal barks and wags its tail"
    assert extract_option(answer, ANIMALS) == "B"


def test_answer_is_regex_requires_a_valid_choice():
    two = {"A": "cat", "B": "dog"}
    assert extract_option("Looking at the picture closely, the correct answer is C, I believe", two) is None


def test_answer_is_regex_only_knows_a_to_d():
    five = {"A": "cat", "B": "dog", "C": "bird", "D": "fish", "E": "horse"}
    answer = "After long thought the answer is E and I am really sure about this one"
    assert extract_option(answer, five) is None
    assert extract_option(answer.replace(" E ", " D "), five) == "D"


def test_text_match_needs_exactly_one_option():
    assert extract_option("a fish", ANIMALS) == "D"
    assert extract_option("a cat and a dog", ANIMALS) is None


def test_text_match_length_limit():
    # Limit is 2 * 14 = 28 characters.
    assert extract_option("x" * 25 + "dog", ANIMALS) == "B"
    assert extract_option("x" * 26 + "dog", ANIMALS) is None
    assert extract_option("I think it is most likely a dog, judging by the ears", ANIMALS) is None


def test_verbose_article_rule():
    # 4 tokens, lone "A" among them: accepted normally, refused under VERBOSE.
    assert extract_option("I choose option A", ANIMALS) == "A"
    assert extract_option("I choose option A", ANIMALS, verbose_article_rule=True) is None
    # Up to 3 tokens the rule does not apply.
    assert extract_option("Option A", ANIMALS, verbose_article_rule=True) == "A"
    # It also triggers when the lone letter is another one but an "A" token exists
    # outside the choices (VLMEvalKit checks the token, not the letter).
    assert extract_option("A cat, not B", {"B": "dog", "C": "cow"}, verbose_article_rule=True) is None
    assert extract_option("A cat, not B", {"B": "dog", "C": "cow"}) == "B"


def test_option_keys_are_validated():
    with pytest.raises(SchemaError):
        extract_option("A", {"a": "cat"})


def test_mcq_judge_only_when_heuristics_fail():
    judge = RecordingJudge("C")
    assert extract_option("B", ANIMALS, judge) == "B"
    assert judge.prompts == []
    assert extract_option("a parrot, probably", ANIMALS, judge, question="What animal?") == "C"
    assert len(judge.prompts) == 1
    prompt = judge.prompts[0]
    assert "What animal?" in prompt and "a parrot, probably" in prompt and "C. bird" in prompt


def test_mcq_judge_retries_then_gives_up():
    judge = RecordingJudge("Failed to obtain answer via API", "D")
    assert extract_option("a parrot", ANIMALS, judge) == "D"
    assert len(judge.prompts) == 2

    judge = RecordingJudge("hmm", "not sure", "pass", "A")
    assert extract_option("a parrot", ANIMALS, judge) is None
    assert len(judge.prompts) == 3


def test_mcq_judge_reply_z_counts_as_resolved():
    judge = RecordingJudge("Z")
    assert extract_option("a parrot", ANIMALS, judge) == "Z"
    assert len(judge.prompts) == 1


# ---------------------------------------------------------------------------
# build_mcq_prompt
# ---------------------------------------------------------------------------


def test_mcq_prompt_with_hint_and_sorted_options():
    prompt = build_mcq_prompt("What is it?", {"B": "dog", "A": "cat"}, hint="A pet.")
    assert prompt == (
        "Hint: A pet.\n"
        "Question: What is it?\n"
        "Options:\n"
        "A. cat\n"
        "B. dog\n"
        "Please select the correct answer from the options above. \n"
    )


def test_mcq_prompt_without_hint_or_options():
    assert build_mcq_prompt("What is it?", {"A": "cat"}).startswith("Question: What is it?\nOptions:\nA. cat\n")
    assert build_mcq_prompt("What is it?", {}) == "Question: What is it?\n"


# ---------------------------------------------------------------------------
# score_mcq
# ---------------------------------------------------------------------------


def mcq(index, answer, prediction, category=None, l2=None, split=None):
    return MCQRecord(index, "What animal?", ANIMALS, answer, prediction, category, l2, split)


CIRCULAR_SET = [
    # group 1: three rotations, all right
    mcq(1, "A", "A", "pets", "animals", "dev"),
    mcq(1_000_001, "B", "B", "pets", "animals", "dev"),
    mcq(2_000_001, "C", "The answer is C", "pets", "animals", "dev"),
    # group 2: second rotation wrong
    mcq(2, "B", "B", "wild", "animals", "dev"),
    mcq(1_000_002, "C", "D", "wild", "animals", "dev"),
    # group 3: single row, right, no split / l2
    mcq(3, "D", "fish", "wild"),
]


def test_vanilla_mcq_accuracy_and_breakdowns():
    score = score_mcq(CIRCULAR_SET, circular=False)
    # 5 of 6 rows right.
    assert (score.overall.correct, score.overall.total) == (5, 6)
    assert score.overall.accuracy == pytest.approx(5 / 6)
    assert score.per_category["pets"].accuracy == 1.0
    assert (score.per_category["wild"].correct, score.per_category["wild"].total) == (2, 3)
    assert (score.per_l2_category["animals"].correct, score.per_l2_category["animals"].total) == (4, 5)
    assert set(score.per_split) == {"dev", "none"}
    assert score.per_split["dev"].accuracy == pytest.approx(4 / 5)
    assert score.groups == ()
    assert [item.extracted for item in score.items] == ["A", "B", "C", "B", "D", "D"]


def test_circular_one_wrong_rotation_fails_the_group():
    score = score_mcq(CIRCULAR_SET, circular=True)
    # Groups 1 and 3 right, group 2 wrong.
    assert (score.overall.correct, score.overall.total) == (2, 3)
    assert [(g.g_index, g.correct) for g in score.groups] == [(1, True), (2, False), (3, True)]
    assert score.groups[0].indices == (1, 1_000_001, 2_000_001)
    assert score.per_category["pets"].accuracy == 1.0
    assert score.per_category["wild"].accuracy == 0.5
    assert score.per_split["dev"].accuracy == 0.5
    assert score.per_split["none"].accuracy == 1.0
    assert score.per_l2_category == {"animals": score.per_split["dev"]}


def test_circular_unresolved_rotation_is_wrong_without_judge():
    rows = [mcq(7, "A", "A"), mcq(1_000_007, "B", "I am not sure")]
    assert score_mcq(rows, circular=True).overall.correct == 0
    # Vanilla: the resolved row still counts.
    assert score_mcq(rows, circular=False).overall.correct == 1


def test_circular_judge_fills_unresolved_rotations_only():
    rows = [mcq(7, "A", "A"), mcq(1_000_007, "B", "I am not sure")]
    judge = RecordingJudge("B")
    score = score_mcq(rows, circular=True, judge=judge)
    assert score.overall.correct == 1
    assert len(judge.prompts) == 1 and "I am not sure" in judge.prompts[0]


def test_circular_judge_not_asked_when_another_rotation_is_wrong():
    rows = [mcq(8, "A", "C"), mcq(1_000_008, "B", "I am not sure")]
    judge = RecordingJudge("B")
    assert score_mcq(rows, circular=True, judge=judge).overall.correct == 0
    assert judge.prompts == []


def test_circular_group_needs_its_unrotated_row():
    with pytest.raises(SchemaError):
        score_mcq([mcq(1_000_009, "A", "A")], circular=True)


def test_mcq_rejects_duplicate_indices_and_empty_input():
    with pytest.raises(SchemaError):
        score_mcq([mcq(1, "A", "A"), mcq(1, "A", "B")], circular=False)
    with pytest.raises(SchemaError):
        score_mcq([], circular=False)


def test_vanilla_strips_prediction_before_the_length_rule():
    # 26 chars + 3 newlines would exceed the 28-char limit unstripped.
    rows = [mcq(1, "B", "x" * 23 + "dog\n\n\n")]
    assert score_mcq(rows, circular=False).overall.correct == 1


# ---------------------------------------------------------------------------
# score_mme
# ---------------------------------------------------------------------------


def mme(category, image, answer, prediction):
    return MMERecord(image=image, question="Q?", answer=answer, prediction=prediction, category=category)


def test_mme_acc_acc_plus_score():
    rows = [
        mme("existence", "1.jpg", "Yes", "Yes"),
        mme("existence", "1.jpg", "No", "No, there is not."),
        mme("existence", "2.jpg", "Yes", "yes"),
        mme("existence", "2.jpg", "No", "Yes"),
        mme("count", "1.jpg", "Yes", "No"),  # same file name, other category: another image
        mme("count", "1.jpg", "No", "I don't know"),
    ]
    score = score_mme(rows)
    existence = score.per_category["existence"]
    # acc = 3/4, acc+ = 1/2 (only 1.jpg fully right), score = 75 + 50.
    assert existence.acc == 0.75
    assert existence.acc_plus == 0.5
    assert existence.score == 125.0
    assert (existence.questions, existence.images) == (4, 2)
    count = score.per_category["count"]
    assert (count.acc, count.acc_plus, count.score) == (0.0, 0.0, 0.0)
    # Not all categories present -> no sub-totals.
    assert score.perception is None and score.cognition is None and score.total is None
    assert [item.extracted for item in score.items] == ["Yes", "No", "Yes", "Yes", "No", "Unknown"]


def test_mme_perception_and_cognition_totals():
    rows = []
    for category in MME_PERCEPTION:  # both right: 100 + 100 each
        rows += [mme(category, "p.jpg", "Yes", "Yes"), mme(category, "p.jpg", "No", "No")]
    for category in MME_COGNITION:  # one of two right: 50 + 0 each
        rows += [mme(category, "c.jpg", "Yes", "Yes"), mme(category, "c.jpg", "No", "Yes")]
    score = score_mme(rows)
    assert score.perception == 2000.0
    assert score.cognition == 200.0
    assert score.total == 2200.0


@pytest.mark.parametrize("n_questions", [1, 3])
def test_mme_requires_two_questions_per_image(n_questions):
    rows = [mme("scene", "x.jpg", "Yes", "Yes")] * n_questions
    with pytest.raises(SchemaError, match="x.jpg"):
        score_mme(rows)


def test_mme_requires_capitalised_yes_no_answers():
    with pytest.raises(SchemaError):
        score_mme([mme("scene", "x.jpg", "yes", "Yes"), mme("scene", "x.jpg", "No", "No")])


def test_mme_judge_used_for_unknown_only():
    judge = RecordingJudge("No")
    rows = [mme("scene", "x.jpg", "Yes", "Yes"), mme("scene", "x.jpg", "No", "Hard to say")]
    score = score_mme(rows, judge=judge)
    assert score.per_category["scene"].score == 200.0
    assert len(judge.prompts) == 1


# ---------------------------------------------------------------------------
# score_yes_no
# ---------------------------------------------------------------------------


def test_yes_no_accuracy_precision_recall_f1():
    rows = [
        QARecord("1", "Yes", "Yes", "obj"),  # TP
        QARecord("2", "yes", "No", "obj"),  # FN (GT case-insensitive)
        QARecord("3", "No", "no", "attr"),  # TN
        QARecord("4", "No", "yes", "attr"),  # FP
        QARecord("5", "Yes", "maybe", "attr"),  # Unknown -> wrong, counts as FN
    ]
    score = score_yes_no(rows)
    assert (score.overall.correct, score.overall.total) == (2, 5)
    assert score.precision == 0.5  # 1 TP / 2 predicted yes
    assert score.recall == pytest.approx(1 / 3)  # 1 TP / 3 GT yes
    assert score.f1 == pytest.approx(0.4)  # 2 * 0.5 * 1/3 / (0.5 + 1/3)
    assert score.yes_ratio == 0.4
    assert score.unknown == 1
    assert score.per_category["obj"].accuracy == 0.5
    assert score.per_category["attr"].accuracy == pytest.approx(1 / 3)


def test_yes_no_rejects_non_yes_no_answers():
    with pytest.raises(SchemaError):
        score_yes_no([QARecord("1", "maybe", "Yes")])


def test_yes_no_zero_denominators():
    score = score_yes_no([QARecord("1", "No", "No")])
    assert (score.precision, score.recall, score.f1) == (0.0, 0.0, 0.0)
    assert score.overall.accuracy == 1.0


# ---------------------------------------------------------------------------
# score_exact_match
# ---------------------------------------------------------------------------


def test_normalize_answer():
    assert normalize_answer("  The  quick, brown fox! ") == "quick brown fox"
    assert normalize_answer("An apple.") == "apple"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert normalize_answer("A-B") == "ab"  # punctuation removed, not replaced by a space


def test_exact_match_with_and_without_normalisation():
    rows = [
        QARecord("1", "Eiffel Tower", "The Eiffel Tower!", "place"),
        QARecord("2", "apple", "an apple", "food"),
        QARecord("3", "apple", "pear", "food"),
        QARecord("4", "42", "42", "number"),
    ]
    score = score_exact_match(rows)
    assert [item.correct for item in score.items] == [True, True, False, True]
    assert score.overall.accuracy == 0.75
    assert score.per_category["food"].accuracy == 0.5
    raw = score_exact_match(rows, normalize=False)
    assert [item.correct for item in raw.items] == [False, False, False, True]
