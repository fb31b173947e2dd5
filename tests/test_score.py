"""`refsav score` end to end on the synthetic benchmark, and bad submissions."""
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.baselines import write_baseline
from benchmark.inputs import RefVosGroundTruth, load_predictions
from benchmark.protocols import VIDEO_PROTOCOLS
from benchmark.score import score_refvos
from pipelines.sample import EVAL, SampleConfig, write_sample
from schemas import SchemaError

REFSAV = str(Path(sys.executable).with_name("refsav"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    write_sample(root / "sample", SampleConfig(videos=2, frames=24, seed=11), show_progress=False)
    gt_dir = root / "sample" / EVAL
    gt = RefVosGroundTruth.load(gt_dir)
    for kind in ("perfect", "noisy", "empty"):
        write_baseline(gt, root / kind / "results.json", kind, seed=1)
    return root, gt_dir, gt


def empty_prediction_expected(gt):
    """Independent of the scorer: an empty prediction gets J = F = 1 exactly on the frames
    where the GT is empty too, 0 elsewhere; per expression x100, rounded; long/short means."""
    per_type = {0: [], 1: []}
    for video in gt.videos:
        for exp in video.expressions:
            empty = ~gt.expression_mask(video, exp).any(axis=(1, 2))
            per_type[exp.type_id].append(round(100 * empty.mean(), 2))
    return (np.mean(per_type[0]) + np.mean(per_type[1])) / 2


def test_perfect_noisy_empty_ordering_and_exact_values(bench, tmp_path):
    root, gt_dir, gt = bench
    totals = {}
    for kind in ("perfect", "noisy", "empty"):
        out = tmp_path / kind
        proc = subprocess.run([REFSAV, "score", "--protocol", "refsav", "--gt", str(gt_dir), "--pred",
                               str(root / kind / "results.json"), "--out", str(out), "--strict",
                               "--db", str(tmp_path / "lb.sqlite"), "--name", kind],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        totals[kind] = json.loads((out / "scores.json").read_text())
    perfect, noisy, empty = (totals[k] for k in ("perfect", "noisy", "empty"))
    assert perfect["J&F"] == perfect["J"] == perfect["F"] == 100.0
    assert perfect["subsets"]["long"]["J&F"] == perfect["subsets"]["short"]["J&F"] == 100.0
    assert empty["J"] == empty["F"] == pytest.approx(empty_prediction_expected(gt), abs=1e-9)
    assert perfect["J&F"] > noisy["J&F"] > empty["J&F"]
    assert perfect["validation"]["problems"] == 0
    assert len(perfect["expressions"]) == sum(len(v.expressions) for v in gt.videos)
    assert len(perfect["submission_sha256"]) == 64 and perfect["scorer_version"]
    board = subprocess.run([REFSAV, "leaderboard", "--db", str(tmp_path / "lb.sqlite"), "--out", str(tmp_path / "lb")],
                           capture_output=True, text=True, timeout=120)
    assert board.returncode == 0, board.stderr
    ranks = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert "perfect" in (tmp_path / "lb" / "leaderboard.md").read_text()
    assert ranks  # rendered something for the benchmark


def _png_tree(gt, root: Path, mutate=None):
    for video in gt.videos:
        for exp in video.expressions:
            masks = gt.expression_mask(video, exp)
            for name, m in zip(video.frames, masks):
                path = root / "Annotations" / video.video_id / exp.exp_id / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((m * 255).astype(np.uint8), "L").save(path)
    if mutate:
        mutate(root / "Annotations")


def test_png_tree_zip_and_parquet_score_like_results_json(bench, tmp_path):
    _, gt_dir, gt = bench
    _png_tree(gt, tmp_path / "png")
    report = score_refvos(gt_dir, tmp_path / "png", VIDEO_PROTOCOLS["refsav"])
    assert report.totals["J&F"] == 100.0 and not report.issues
    with zipfile.ZipFile(tmp_path / "sub.zip", "w") as zf:
        for p in (tmp_path / "png").rglob("*.png"):
            zf.write(p, p.relative_to(tmp_path / "png").as_posix())
    report = score_refvos(gt_dir, tmp_path / "sub.zip", VIDEO_PROTOCOLS["refsav"], workers=2)
    assert report.totals["J&F"] == 100.0 and not report.issues


def test_bad_submission_problems_are_reported_and_scored_as_official(bench, tmp_path):
    _, gt_dir, gt = bench
    v0, v1 = gt.videos[0], gt.videos[1]
    e0 = v0.expressions[0]

    def mutate(ann: Path):
        import shutil

        shutil.rmtree(ann / v1.video_id)  # missing video
        shutil.rmtree(ann / v0.video_id / v0.expressions[1].exp_id)  # missing expression
        (ann / "ghost" / "0").mkdir(parents=True)  # extra video
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(ann / "ghost" / "0" / "00000.png")
        frames = ann / v0.video_id / e0.exp_id
        (frames / f"{v0.frames[0]}.png").unlink()  # missing frame
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(frames / f"{v0.frames[1]}.png")  # wrong size
        (frames / f"{v0.frames[2]}.png").write_bytes(b"not a png")  # corrupt
        arr = np.zeros((v0.height, v0.width), np.uint8)
        arr[:5, :5] = 7
        arr[5:9, :5] = 200
        Image.fromarray(arr).save(frames / f"{v0.frames[3]}.png")  # non-binary

    _png_tree(gt, tmp_path / "png", mutate)
    report = score_refvos(gt_dir, tmp_path / "png", VIDEO_PROTOCOLS["refsav"])
    kinds = {i.kind for i in report.issues}
    assert {"missing_video", "missing_expression", "extra_video", "missing_frame", "wrong_size", "corrupt_file", "non_binary"} <= kinds
    missing = [s for s in report.items if s.missing]
    assert len(missing) == len(v1.expressions) + 1
    assert all(s.metrics == {"J": 0.0, "F": 0.0, "A": 0.0} for s in missing)
    assert report.totals["J&F"] < 100.0
    proc = subprocess.run([REFSAV, "score", "--protocol", "refsav", "--gt", str(gt_dir), "--pred", str(tmp_path / "png"),
                           "--out", str(tmp_path / "out"), "--strict"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--strict" in proc.stderr and "missing_video" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "scores.json").exists()  # the report is still written


def test_unsafe_and_unreadable_zips(bench, tmp_path):
    _, gt_dir, gt = bench
    v, e = gt.videos[0], gt.videos[0].expressions[0]
    buf = io.BytesIO()
    Image.fromarray(np.zeros((v.height, v.width), np.uint8)).save(buf, format="PNG")
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr(f"{v.video_id}/{e.exp_id}/{v.frames[0]}.png", buf.getvalue())
        zf.writestr("../escape.png", buf.getvalue())
        zf.writestr("/abs/x.png", buf.getvalue())
    pred = load_predictions(tmp_path / "evil.zip")
    assert [i.kind for i in pred.issues].count("unsafe_entry") == 2
    assert not (tmp_path.parent / "escape.png").exists()
    with pytest.raises(SchemaError, match="over the limit"):
        load_predictions(tmp_path / "evil.zip", max_unzipped=10)
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 truncated")
    proc = subprocess.run([REFSAV, "score", "--protocol", "refsav", "--gt", str(gt_dir), "--pred", str(tmp_path / "bad.zip"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a readable zip" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1:]) == 1
