"""`refsav score` routes every protocol family to its scorer, writes scores.json and
ranks the result on the leaderboard by the protocol's primary metric."""
import json

import numpy as np
import pytest
from test_davis import SEQUENCES, make_gt, write_tree
from test_qa_inputs import MMB_ANSWERS, MMB_HEADER, MMB_ROWS, pred_jsonl, write_tsv
from test_refcoco import REFCOCO_REFS, data_root, write_json_preds  # noqa: F401 - fixture

from refsav.benchmark.cli import score_command
from refsav.benchmark.davis import DAVIS_PROTOCOLS
from refsav.benchmark.leaderboard import LeaderboardDB
from refsav.benchmark.protocols import VIDEO_PROTOCOLS
from refsav.benchmark.qa_inputs import QA_PROTOCOLS
from refsav.benchmark.refcoco import IMAGE_PROTOCOLS
from refsav.cli import main
from refsav.schemas.refer import load_ground_truth


def test_the_cli_lists_every_registered_protocol():
    (choices,) = [p.type.choices for p in score_command.params if p.name == "protocol"]
    assert sorted(choices) == sorted([*VIDEO_PROTOCOLS, *DAVIS_PROTOCOLS, *IMAGE_PROTOCOLS, *QA_PROTOCOLS])


def _score(args, capsys):
    code = main(["score", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_davis_semi_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gt = {seq: make_gt(rng, t, n) for seq, (t, n) in SEQUENCES.items()}
    write_tree(tmp_path / "DAVIS" / "Annotations" / "480p", gt)
    (tmp_path / "DAVIS" / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "DAVIS" / "ImageSets" / "2017" / "val.txt").write_text("\n".join(SEQUENCES))
    write_tree(tmp_path / "pred", gt)
    db = tmp_path / "lb.sqlite"
    out = _score(["--protocol", "davis17-semi", "--gt", str(tmp_path / "DAVIS"), "--pred", str(tmp_path / "pred"),
                  "--out", str(tmp_path / "s"), "--db", str(db)], capsys)
    assert "davis17-semi" in out
    scores = json.loads((tmp_path / "s" / "scores.json").read_text())
    assert scores["primary_metric"] == "J&F" and scores["J&F"] == pytest.approx(100.0)
    assert set(scores["subsets"]) == set(SEQUENCES)
    assert len(scores["objects"]) == sum(n for _, n in SEQUENCES.values())
    (entry,) = LeaderboardDB(db).entries()
    assert entry.primary_metric == "J&F" and entry.metrics["J-Recall"] == pytest.approx(100.0)


def test_refcoco_through_the_cli_ranks_by_ciou(data_root, tmp_path, capsys):  # noqa: F811 - fixture
    gt = load_ground_truth(data_root, "refcoco", "testA")
    masks = {s.sample_id: gt.mask(s) for s in gt.samples}
    pred = write_json_preds(tmp_path / "pred.json", masks)
    db = tmp_path / "lb.sqlite"
    _score(["--protocol", "refcoco", "--gt", str(data_root), "--pred", str(pred), "--split", "testA",
            "--out", str(tmp_path / "s"), "--db", str(db)], capsys)
    scores = json.loads((tmp_path / "s" / "scores.json").read_text())
    assert scores["primary_metric"] == "cIoU" and scores["cIoU"] == pytest.approx(100.0)
    assert len(scores["samples"]) == len(gt.samples) > 0
    assert LeaderboardDB(db).entries()[0].primary_metric == "cIoU"


def test_mmbench_through_the_cli_with_one_wrong_group(tmp_path, capsys):
    gt = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", MMB_HEADER, MMB_ROWS)
    answers = dict(MMB_ANSWERS)
    answers["1000002"] = "B" if answers["1000002"] != "B" else "C"  # one rotated copy of q2 wrong
    pred = pred_jsonl(tmp_path / "pred.jsonl", answers)
    _score(["--protocol", "mmbench", "--gt", str(gt), "--pred", str(pred), "--out", str(tmp_path / "s")], capsys)
    scores = json.loads((tmp_path / "s" / "scores.json").read_text())
    assert scores["primary_metric"] == "accuracy"
    assert scores["accuracy"] == pytest.approx(200 / 3)  # circular: q2's group fails, q1 and q3 pass
    assert "questions" in scores


def test_strict_lists_problems_and_exits_non_zero(data_root, tmp_path, capsys):  # noqa: F811 - fixture
    gt = load_ground_truth(data_root, "refcoco", "val")
    first = gt.samples[0]
    pred = write_json_preds(tmp_path / "pred.json", {first.sample_id: gt.mask(first)})  # the rest missing
    code = main(["score", "--protocol", "refcoco", "--gt", str(data_root), "--pred", str(pred), "--split", "val",
                 "--out", str(tmp_path / "s"), "--strict"])
    err = capsys.readouterr().err
    assert code == 1 and "--strict" in err and "missing" in err
