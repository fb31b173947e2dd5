"""Tests for refsav.benchmark.qa_inputs: QA ground-truth / prediction readers and score_qa.

Every ground truth here is a tiny hand-written file; expected scores are worked
out by hand next to each assertion.
"""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest

from refsav.benchmark.qa import MME_COGNITION, MME_PERCEPTION
from refsav.benchmark.qa_inputs import (
    QA_PROTOCOLS,
    QuestionResult,
    canonical_id,
    load_qa_predictions,
    read_mcq_ground_truth,
    read_mme_ground_truth,
    score_qa,
)
from refsav.schemas.errors import SchemaError
from refsav.schemas.io import write_parquet
from refsav.schemas.predictions import QAPrediction

FAKE_B64 = "iVBORw0KGgo" + "A" * 400  # long enough to count as an inline image


def write_tsv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = ["\t".join(header)] + ["\t".join("" if v is None else str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def kinds(report) -> list[tuple[str, str]]:
    return sorted((i.kind, i.where) for i in report.issues)


# ---------------------------------------------------------------------------
# MMBench-style ground truth: 3 questions, 7 rows (2 rotated copies for q1, q2)
# ---------------------------------------------------------------------------

MMB_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"]
MMB_ROWS = [
    # q1 "cat": rotations move the right option A -> D -> C
    [1, "Which animal purrs?", None, "cat", "dog", "bird", "fish", "A", "pets", "animals", "dev", FAKE_B64],
    [1000001, "Which animal purrs?", None, "dog", "bird", "fish", "cat", "D", "pets", "animals", "dev", 1],
    [2000001, "Which animal purrs?", None, "bird", "fish", "cat", "dog", "C", "pets", "animals", "dev", 1],
    # q2 "green", three options (empty D)
    [2, "What colour is grass?", "Look outside.", "red", "green", "blue", None, "B", "colours", "perception", "dev", FAKE_B64],
    [1000002, "What colour is grass?", "Look outside.", "green", "blue", "red", None, "A", "colours", "perception", "dev", 2],
    [2000002, "What colour is grass?", "Look outside.", "blue", "red", "green", None, "C", "colours", "perception", "dev", 2],
    # q3, no rotations
    [3, "How many suns?", None, "one", "two", None, None, "A", "counting", "perception", "dev", FAKE_B64],
]
MMB_ANSWERS = {str(row[0]): row[7] for row in MMB_ROWS}


@pytest.fixture
def mmb_tsv(tmp_path):
    return write_tsv(tmp_path / "MMBench_DEV_EN.tsv", MMB_HEADER, MMB_ROWS)


def pred_jsonl(path: Path, answers: dict[str, str], key: str = "index") -> Path:
    return write_jsonl(path, [{key: int(k) if k.isdigit() else k, "prediction": v} for k, v in answers.items()])


def test_protocol_registry():
    assert set(QA_PROTOCOLS) == {"mcq", "mme", "mmbench"}
    for proto in QA_PROTOCOLS.values():
        assert proto.source and proto.description
    assert QA_PROTOCOLS["mmbench"].circular and not QA_PROTOCOLS["mcq"].circular
    assert QA_PROTOCOLS["mme"].kind == "mme" and QA_PROTOCOLS["mcq"].kind == "mcq"  # primary metrics: tests/test_protocols.py
    with pytest.raises(SchemaError, match="mcq, mmbench, mme"):
        score_qa("x.tsv", "y.jsonl", "vqa")


def test_mcq_reader_options_and_fields(mmb_tsv):
    questions = read_mcq_ground_truth(mmb_tsv, circular=True)
    assert [q.index for q in questions] == [1, 1000001, 2000001, 2, 1000002, 2000002, 3]
    q2 = questions[3]
    # The empty D cell is no option; hint and image are not read.
    assert q2.options == {"A": "red", "B": "green", "C": "blue"}
    assert (q2.answer, q2.category, q2.l2_category, q2.split) == ("B", "colours", "perception", "dev")
    assert questions[6].options == {"A": "one", "B": "two"}


def test_mmbench_perfect_predictions(mmb_tsv, tmp_path):
    report = score_qa(mmb_tsv, pred_jsonl(tmp_path / "p.jsonl", MMB_ANSWERS), "mmbench")
    assert report.primary_metric == "accuracy"
    assert report.item_kind == "questions"
    assert report.totals == {"accuracy": 100.0, "correct": 3.0, "groups": 3.0, "questions": 7.0}
    assert report.issues == []
    assert report.subsets["pets"] == {"accuracy": 100.0, "correct": 1.0, "groups": 1.0, "questions": 3.0}
    assert report.subsets["l2-category:perception"]["groups"] == 2.0
    assert report.subsets["l2-category:perception"]["questions"] == 4.0
    assert report.subsets["split:dev"]["accuracy"] == 100.0
    assert len(report.items) == 7 and all(isinstance(i, QuestionResult) for i in report.items)
    assert all(i.correct and i.group_correct and not i.missing for i in report.items)
    assert [i.group for i in report.items] == ["1", "1", "1", "2", "2", "2", "3"]


def test_mmbench_one_wrong_copy_fails_its_group(mmb_tsv, tmp_path):
    answers = dict(MMB_ANSWERS, **{"1000001": "A"})  # right is D
    report = score_qa(mmb_tsv, pred_jsonl(tmp_path / "p.jsonl", answers), "mmbench")
    # Groups 2 and 3 right, group 1 wrong: 2 of 3.
    assert report.totals["correct"] == 2.0
    assert report.totals["accuracy"] == pytest.approx(200 / 3)
    assert report.subsets["pets"]["accuracy"] == 0.0
    assert report.subsets["l2-category:animals"]["accuracy"] == 0.0
    assert report.subsets["colours"]["accuracy"] == 100.0
    by_id = {i.question_id: i for i in report.items}
    assert by_id["1000001"].extracted == "A" and not by_id["1000001"].correct
    assert by_id["1"].correct and by_id["1"].group_correct is False
    assert by_id["2"].group_correct is True

    # The same file under vanilla `mcq`: every row is a question; 6 of 7 right.
    vanilla = score_qa(mmb_tsv, tmp_path / "p.jsonl", "mcq")
    assert (vanilla.totals["correct"], vanilla.totals["questions"]) == (6.0, 7.0)
    assert vanilla.totals["accuracy"] == pytest.approx(600 / 7)
    assert "groups" not in vanilla.totals


def test_missing_extra_and_duplicate_predictions(mmb_tsv, tmp_path):
    answers = {k: v for k, v in MMB_ANSWERS.items() if k != "2000002"}
    rows = [{"index": int(k), "prediction": v} for k, v in answers.items()]
    rows += [
        {"index": 99, "prediction": "A"},  # not in the GT
        {"index": 3, "prediction": "B"},  # repeat of a right answer: the first one counts
    ]
    report = score_qa(mmb_tsv, write_jsonl(tmp_path / "p.jsonl", rows), "mmbench")
    assert kinds(report) == [("duplicate", "3"), ("extra_question", "99"), ("missing_question", "2000002")]
    # The missing copy fails group 2; groups 1 and 3 stay right: 2 of 3.
    assert report.totals["correct"] == 2.0
    assert report.subsets["colours"]["accuracy"] == 0.0
    missing = next(i for i in report.items if i.question_id == "2000002")
    assert missing.missing and not missing.correct and missing.extracted is None

    # Vanilla: the missing row is simply wrong, 6 of 7.
    vanilla = score_qa(mmb_tsv, tmp_path / "p.jsonl", "mcq")
    assert (vanilla.totals["correct"], vanilla.totals["questions"]) == (6.0, 7.0)


def test_duplicate_keeps_the_first_answer(mmb_tsv, tmp_path):
    rows = [{"index": int(k), "prediction": v} for k, v in MMB_ANSWERS.items() if k != "3"]
    rows += [{"index": 3, "prediction": "B"}, {"index": 3, "prediction": "A"}]  # right is A
    report = score_qa(mmb_tsv, write_jsonl(tmp_path / "p.jsonl", rows), "mmbench")
    assert kinds(report) == [("duplicate", "3")]
    assert report.totals["correct"] == 2.0


def test_missing_prediction_never_reaches_the_judge(mmb_tsv, tmp_path):
    asked: list[str] = []

    def judge(prompt: str) -> str:
        asked.append(prompt)
        return "A"  # would make every copy "right" if it were consulted

    answers = {k: v for k, v in MMB_ANSWERS.items() if k != "3"}
    report = score_qa(mmb_tsv, pred_jsonl(tmp_path / "p.jsonl", answers), "mcq", judge=judge)
    assert asked == []
    assert report.totals["correct"] == 6.0


def test_empty_prediction_file_is_one_issue(mmb_tsv, tmp_path):
    for name, text in [("p.jsonl", ""), ("p.json", "[]"), ("p.tsv", "index\tprediction\n")]:
        (tmp_path / name).write_text(text)
        report = score_qa(mmb_tsv, tmp_path / name, "mmbench")
        assert [i.kind for i in report.issues] == ["empty_file"], name
        assert report.totals["accuracy"] == 0.0
        assert all(i.missing for i in report.items)


# ---------------------------------------------------------------------------
# Prediction formats
# ---------------------------------------------------------------------------


def test_prediction_formats_agree(mmb_tsv, tmp_path):
    answers = dict(MMB_ANSWERS, **{"3": "The answer is two."})  # wrong (right: one), by text match
    expected = {canonical_id(k): v for k, v in answers.items()}

    write_parquet(tmp_path / "p.parquet", [QAPrediction(k, v) for k, v in answers.items()], QAPrediction)
    pred_jsonl(tmp_path / "p.jsonl", answers, key="question_id")
    (tmp_path / "p.json").write_text(json.dumps(answers))  # {id: prediction}
    (tmp_path / "list.json").write_text(json.dumps([{"index": k, "prediction": v} for k, v in answers.items()]))
    # A VLMEvalKit result table: GT columns plus prediction, column order arbitrary.
    write_tsv(
        tmp_path / "result.tsv",
        ["Index", "question", "A", "answer", "prediction"],
        [[k, "q", "x", MMB_ANSWERS[k], v] for k, v in answers.items()],
    )
    (tmp_path / "result.csv").write_text("index,prediction\n" + "".join(f'{k},"{v}"\n' for k, v in answers.items()))

    for name, source in [
        ("p.parquet", "parquet"), ("p.jsonl", "jsonl"), ("p.json", "json"),
        ("list.json", "json"), ("result.tsv", "tsv"), ("result.csv", "csv"),
    ]:
        preds = load_qa_predictions(tmp_path / name)
        assert preds.source == source
        assert preds.answers == expected, name
        assert preds.issues == ()
        report = score_qa(mmb_tsv, tmp_path / name, "mmbench")
        assert report.totals["correct"] == 2.0, name


def test_prediction_text_is_kept_raw(tmp_path):
    # pandas would turn "None" / "NA" into NaN; predictions must stay as written.
    write_tsv(tmp_path / "r.tsv", ["index", "prediction"], [[1, "None"], [2, "NA"], [3, None]])
    assert load_qa_predictions(tmp_path / "r.tsv").answers == {"1": "None", "2": "NA", "3": ""}


def test_zip_of_predictions(mmb_tsv, tmp_path):
    answers = dict(MMB_ANSWERS, **{"2": "C"})  # group 2 wrong
    with zipfile.ZipFile(tmp_path / "sub.zip", "w") as zf:
        zf.writestr("results/preds.jsonl", "".join(json.dumps({"index": int(k), "prediction": v}) + "\n" for k, v in answers.items()))
        zf.writestr("__MACOSX/results/._preds.jsonl", "junk")
        zf.writestr("README.txt", "not a prediction file")
        zf.writestr("../evil.jsonl", "{}")
    preds = load_qa_predictions(tmp_path / "sub.zip")
    assert preds.source == "jsonl"
    assert [i.kind for i in preds.issues] == ["unsafe_entry"]
    report = score_qa(mmb_tsv, tmp_path / "sub.zip", "mmbench")
    assert report.totals["correct"] == 2.0
    assert [i.kind for i in report.issues] == ["unsafe_entry"]


def test_zip_of_parquet_and_duplicates_across_files(mmb_tsv, tmp_path):
    write_parquet(tmp_path / "a.parquet", [QAPrediction(k, v) for k, v in MMB_ANSWERS.items()], QAPrediction)
    with zipfile.ZipFile(tmp_path / "sub.zip", "w") as zf:
        zf.write(tmp_path / "a.parquet", "a.parquet")
        zf.writestr("b.jsonl", json.dumps({"question_id": "1", "prediction": "B"}) + "\n")
    report = score_qa(mmb_tsv, tmp_path / "sub.zip", "mmbench")
    assert kinds(report) == [("duplicate", "1")]
    assert report.totals["accuracy"] == 100.0  # a.parquet comes first, so its "A" counts


def test_xlsx_predictions(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"index": [1, 2], "prediction": ["A", "B"]})
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        # Without the optional dependency: a one-line error, not a traceback.
        (tmp_path / "r.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
        with pytest.raises(SchemaError, match=r"r\.xlsx.*openpyxl"):
            load_qa_predictions(tmp_path / "r.xlsx")
    else:
        frame.to_excel(tmp_path / "r.xlsx", index=False)
        assert load_qa_predictions(tmp_path / "r.xlsx").answers == {"1": "A", "2": "B"}


@pytest.mark.parametrize(
    ("name", "text", "field"),
    [
        ("p.jsonl", '{"index": 1}\n', "prediction"),
        ("p.jsonl", '{"prediction": "A"}\n', "question_id"),
        ("p.jsonl", '{"index": 1, "prediction": ["A"]}\n', "prediction"),
        ("p.tsv", "index\tanswer\n1\tA\n", "prediction"),
        ("p.tsv", "qid\tprediction\n1\tA\n", "index"),
    ],
)
def test_malformed_prediction_files_name_file_and_field(tmp_path, name, text, field):
    (tmp_path / name).write_text(text)
    with pytest.raises(SchemaError) as err:
        load_qa_predictions(tmp_path / name)
    message = str(err.value)
    assert "\n" not in message and name in message and f"field '{field}'" in message


def test_bad_json_and_unsupported_formats(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"index": 1, "prediction": "A"}\n{oops\n')
    with pytest.raises(SchemaError, match="line 2"):
        load_qa_predictions(tmp_path / "p.jsonl")
    (tmp_path / "p.txt").write_text("A\n")
    with pytest.raises(SchemaError, match="unsupported prediction format"):
        load_qa_predictions(tmp_path / "p.txt")
    with pytest.raises(SchemaError, match="not found"):
        load_qa_predictions(tmp_path / "nope.jsonl")


def test_canonical_ids():
    assert canonical_id(12) == canonical_id("12") == canonical_id(" 12.0 ") == canonical_id(12.0) == "12"
    assert canonical_id("007") == "007"  # leading zeros: a string id, kept
    assert canonical_id("q1") == "q1"
    with pytest.raises(SchemaError):
        canonical_id(1.5)
    with pytest.raises(SchemaError):
        canonical_id(True)


# ---------------------------------------------------------------------------
# Ground-truth validation
# ---------------------------------------------------------------------------


def test_tsv_without_answer_column_is_a_one_line_error(tmp_path):
    header = [h for h in MMB_HEADER if h != "answer"]
    rows = [[v for h, v in zip(MMB_HEADER, row) if h != "answer"] for row in MMB_ROWS]
    gt = write_tsv(tmp_path / "MMBench_TEST_EN.tsv", header, rows)
    write_jsonl(tmp_path / "p.jsonl", [{"index": 1, "prediction": "A"}])
    for protocol in ("mmbench", "mcq"):
        with pytest.raises(SchemaError) as err:
            score_qa(gt, tmp_path / "p.jsonl", protocol)
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"{gt}: field 'answer': required column is missing")


def test_ground_truth_row_errors_name_the_record(tmp_path):
    rows = [list(r) for r in MMB_ROWS]
    rows[6][7] = "C"  # q3 has only options A and B
    gt = write_tsv(tmp_path / "gt.tsv", MMB_HEADER, rows)
    with pytest.raises(SchemaError, match=r"gt\.tsv: record 3: field 'answer'"):
        read_mcq_ground_truth(gt)

    rows = [list(r) for r in MMB_ROWS]
    rows[6][7] = None  # test split: no answer
    gt = write_tsv(tmp_path / "gt.tsv", MMB_HEADER, rows)
    with pytest.raises(SchemaError, match=r"record 3: field 'answer': value is missing"):
        read_mcq_ground_truth(gt)

    gt = write_tsv(tmp_path / "gt.tsv", MMB_HEADER, [MMB_ROWS[0], MMB_ROWS[0]])
    with pytest.raises(SchemaError, match="duplicate index"):
        read_mcq_ground_truth(gt)


def test_ragged_tsv_line_is_an_error(tmp_path):
    # An unquoted tab shifts every later cell; reading on would misplace options.
    gt = tmp_path / "gt.tsv"
    gt.write_text("index\tquestion\tA\tB\tanswer\n1\tq\tx\ty\tA\n2\tq\tx\tpart\tof y\tB\n")
    with pytest.raises(SchemaError, match=r"gt\.tsv: not a readable table .*line 3"):
        read_mcq_ground_truth(gt)


def test_circular_ground_truth_needs_integer_ids_and_unrotated_rows(tmp_path):
    gt = write_tsv(tmp_path / "gt.tsv", MMB_HEADER, [r for r in MMB_ROWS if r[0] != 2])
    with pytest.raises(SchemaError, match=r"record 1000002: field 'index'"):
        read_mcq_ground_truth(gt, circular=True)
    # Vanilla does not care about groups.
    assert len(read_mcq_ground_truth(gt)) == 6

    gt = write_jsonl(tmp_path / "gt.jsonl", [{"index": "q1", "question": "?", "A": "x", "B": "y", "answer": "A"}])
    with pytest.raises(SchemaError, match="integer"):
        read_mcq_ground_truth(gt, circular=True)


def test_unsupported_or_missing_ground_truth(tmp_path):
    with pytest.raises(SchemaError, match="not found"):
        read_mcq_ground_truth(tmp_path / "none.tsv")
    (tmp_path / "gt.xlsx").write_bytes(b"")
    with pytest.raises(SchemaError, match="unsupported ground-truth format"):
        read_mcq_ground_truth(tmp_path / "gt.xlsx")
    (tmp_path / "gt.tsv").write_text("index\tquestion\tA\tanswer\n")
    with pytest.raises(SchemaError, match="no questions"):
        read_mcq_ground_truth(tmp_path / "gt.tsv")


# ---------------------------------------------------------------------------
# Generic MCQ from JSONL with string ids
# ---------------------------------------------------------------------------


def test_generic_mcq_jsonl_with_string_ids(tmp_path):
    gt = write_jsonl(
        tmp_path / "gt.jsonl",
        [
            {"index": "q1", "question": "Sky?", "A": "blue", "B": "green", "answer": "A", "category": "colour"},
            {"index": "q2", "question": "Snow?", "A": "black", "B": "white", "answer": "B", "category": "colour"},
            {"index": "q3", "question": "Legs of a dog?", "A": 2, "B": 4, "C": None, "answer": "B", "category": "count"},
            {"index": "q4", "question": "Wheels of a bike?", "A": 2, "B": 3, "answer": "A", "category": "count"},
        ],
    )
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"question_id": "q1", "prediction": "The answer is A."},
            {"question_id": "q2", "prediction": "white"},  # option-text match -> B
            {"question_id": "q3", "prediction": "B"},
            {"question_id": "q4", "prediction": "I think it is B"},  # wrong
        ],
    )
    questions = read_mcq_ground_truth(gt)
    assert questions[2].options == {"A": "2", "B": "4"}
    report = score_qa(gt, preds, "mcq")
    # 3 of 4; colour 2/2, count 1/2.
    assert report.totals == {"accuracy": 75.0, "correct": 3.0, "questions": 4.0}
    assert report.subsets == {
        "colour": {"accuracy": 100.0, "correct": 2.0, "questions": 2.0},
        "count": {"accuracy": 50.0, "correct": 1.0, "questions": 2.0},
    }
    assert [i.extracted for i in report.items] == ["A", "B", "B", "B"]
    assert [i.question_id for i in report.items] == ["q1", "q2", "q3", "q4"]


# ---------------------------------------------------------------------------
# MME
# ---------------------------------------------------------------------------

MME_HEADER = ["index", "image", "question", "answer", "category", "image_path"]


def mme_rows(categories: list[str]) -> list[list[object]]:
    """Two images per category except the last, two questions each."""
    rows, index = [], 0
    for category in categories:
        for image in (f"{category}/1.jpg", f"{category}/2.jpg"):
            for answer in ("Yes", "No"):
                # Every `image` cell is the same blob: pairing must come from image_path.
                rows.append([index, FAKE_B64, f"Is it {answer}?", answer, category, image])
                index += 1
    return rows


def test_mme_perfect_and_one_wrong(tmp_path):
    rows = mme_rows(["existence", "count"])
    gt = write_tsv(tmp_path / "MME.tsv", MME_HEADER, rows)
    perfect = {str(r[0]): r[3] for r in rows}
    report = score_qa(gt, pred_jsonl(tmp_path / "p.jsonl", perfect), "mme")
    assert report.primary_metric == "score"
    assert report.subsets["existence"] == {"score": 200.0, "acc": 100.0, "acc_plus": 100.0, "questions": 4.0, "images": 2.0}
    assert report.subsets["count"]["score"] == 200.0
    # Only 2 of 14 categories: no comparable total.
    assert math.isnan(report.totals["score"]) and math.isnan(report.totals["perception"])
    assert (report.totals["questions"], report.totals["images"]) == (8.0, 4.0)

    wrong = dict(perfect, **{"1": "Yes, it is."})  # existence/1.jpg, answer No
    report = score_qa(gt, pred_jsonl(tmp_path / "p.jsonl", wrong), "mme")
    # existence: acc 3/4 = 75, acc+ 1/2 = 50 -> 125.
    assert report.subsets["existence"]["acc"] == 75.0
    assert report.subsets["existence"]["acc_plus"] == 50.0
    assert report.subsets["existence"]["score"] == 125.0
    assert report.subsets["count"]["score"] == 200.0
    by_id = {i.question_id: i for i in report.items}
    assert by_id["1"].extracted == "Yes" and not by_id["1"].correct
    assert by_id["0"].correct and by_id["0"].group_correct is False and by_id["0"].group == "existence/1.jpg"
    assert by_id["2"].group_correct is True


def test_mme_total_over_all_14_categories(tmp_path):
    rows = mme_rows(list(MME_PERCEPTION) + list(MME_COGNITION))
    gt = write_tsv(tmp_path / "MME.tsv", MME_HEADER, rows)
    answers = {str(r[0]): r[3] for r in rows}
    report = score_qa(gt, pred_jsonl(tmp_path / "p.jsonl", answers), "mme")
    assert (report.totals["perception"], report.totals["cognition"], report.totals["score"]) == (2000.0, 800.0, 2800.0)

    # Drop one OCR answer (missing = wrong): OCR acc 3/4 -> 75, acc+ 1/2 -> 50: 125,
    # so perception 2000 - 75 = 1925 and the total 2725.
    ocr_first = next(str(r[0]) for r in rows if r[4] == "OCR")
    del answers[ocr_first]
    report = score_qa(gt, pred_jsonl(tmp_path / "p.jsonl", answers), "mme")
    assert report.subsets["OCR"]["score"] == 125.0
    assert (report.totals["perception"], report.totals["score"]) == (1925.0, 2725.0)
    assert kinds(report) == [("missing_question", ocr_first)]
    assert next(i for i in report.items if i.question_id == ocr_first).missing


def test_mme_missing_answer_is_wrong_even_with_a_judge(tmp_path):
    rows = mme_rows(["scene"])
    gt = write_tsv(tmp_path / "MME.tsv", MME_HEADER, rows)
    asked: list[str] = []

    def judge(prompt: str) -> str:
        asked.append(prompt)
        return "Yes"

    # Question 0 (answer Yes) is missing; the judge would have said "Yes".
    answers = {str(r[0]): r[3] for r in rows[1:]}
    report = score_qa(gt, pred_jsonl(tmp_path / "p.jsonl", answers), "mme", judge=judge)
    assert asked == []
    # scene: acc 3/4 -> 75, acc+ 1/2 -> 50.
    assert report.subsets["scene"]["score"] == 125.0


def test_mme_pairs_by_deduplicated_image_column(tmp_path):
    # VLMEvalKit's MME.tsv stores each image once; the second question's `image`
    # cell holds the index of the row with the image.
    blob_a, blob_b = FAKE_B64 + "a", FAKE_B64 + "b"
    rows = [
        [10, blob_a, "Q?", "Yes", "color"],
        [11, "10", "Q?", "No", "color"],
        [12, blob_b, "Q?", "Yes", "color"],
        [13, "12", "Q?", "No", "color"],
    ]
    gt = write_tsv(tmp_path / "MME.tsv", ["index", "image", "question", "answer", "category"], rows)
    questions = read_mme_ground_truth(gt)
    assert [q.image for q in questions] == ["image@10", "image@10", "image@12", "image@12"]
    preds = pred_jsonl(tmp_path / "p.jsonl", {"10": "Yes", "11": "Yes", "12": "Yes", "13": "No"})
    report = score_qa(gt, preds, "mme")
    # Image 10 half right, image 12 right: acc 3/4 = 75, acc+ 1/2 = 50.
    assert report.subsets["color"]["score"] == 125.0


def test_mme_jsonl_ground_truth(tmp_path):
    gt = write_jsonl(
        tmp_path / "mme.jsonl",
        [
            {"index": 0, "question": "Q?", "answer": "Yes", "category": "OCR", "image_path": "OCR/a.jpg"},
            {"index": 1, "question": "Q?", "answer": "No", "category": "OCR", "image_path": "OCR/a.jpg"},
        ],
    )
    report = score_qa(gt, pred_jsonl(tmp_path / "p.jsonl", {"0": "yes", "1": "no"}), "mme")
    assert report.subsets["OCR"]["score"] == 200.0


def test_mme_ground_truth_errors(tmp_path):
    gt = write_tsv(tmp_path / "MME.tsv", ["index", "question", "answer", "category"], [[0, "Q?", "Yes", "OCR"]])
    with pytest.raises(SchemaError, match=r"MME\.tsv: field 'image_path': required column is missing"):
        read_mme_ground_truth(gt)
    gt = write_tsv(tmp_path / "MME.tsv", MME_HEADER, [[0, "", "Q?", "yes", "OCR", "a.jpg"]])
    with pytest.raises(SchemaError, match=r"record 0: field 'answer'"):
        read_mme_ground_truth(gt)
    rows = mme_rows(["OCR"])[:3]  # the second image has one question
    gt = write_tsv(tmp_path / "MME.tsv", MME_HEADER, rows)
    write_jsonl(tmp_path / "p.jsonl", [])
    with pytest.raises(SchemaError, match=r"MME\.tsv.*OCR/2\.jpg.*expected 2"):
        score_qa(gt, tmp_path / "p.jsonl", "mme")
