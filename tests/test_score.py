"""`refsav score` end to end on the synthetic benchmark, and bad submissions."""
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataclasses import replace

from refsav.benchmark import metrics, oracle
from refsav.benchmark.baselines import write_baseline
from refsav.benchmark.inputs import RefVosGroundTruth, _read_mask_dict, load_predictions, rles_from_json
from refsav.benchmark.protocols import VIDEO_PROTOCOLS
from refsav.benchmark.score import plan_chunks, score_refvos
from refsav.pipelines.sample import EVAL, SampleConfig, write_sample
from refsav.schemas import SchemaError
from refsav.schemas.refvos import RefExpression, read_mask_dict, write_meta_expressions
from refsav.schemas.rle import Rle

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


# ------------------------------------------------------- engine vs oracle, executors


@pytest.fixture(scope="module")
def multi(bench, tmp_path_factory):
    """The sample GT plus an expression over two objects and a dropped ReVOS type,
    with noisy predictions, one expression missing and one corrupt mask."""
    _, gt_dir, gt = bench
    root = tmp_path_factory.mktemp("multi")
    v0 = gt.videos[0]
    a, b = v0.expressions[0].anno_id[0], v0.expressions[2].anno_id[0]
    extra = [RefExpression("both", "the two of them", [0, 1], [a, b], 0),
             RefExpression("dropped", "a type-2 sentence", [0], [a], 2)]
    videos = [replace(v0, expressions=list(v0.expressions) + extra)] + gt.videos[1:]
    write_meta_expressions(root / "meta_expressions_valid.json", videos)
    shutil.copy(gt_dir / "mask_dict.json", root / "mask_dict.json")
    full = RefVosGroundTruth.load(root)
    write_baseline(full, root / "complete.json", "noisy", seed=5)
    sub = json.loads((root / "complete.json").read_text())
    del sub[gt.videos[1].video_id][gt.videos[1].expressions[3].exp_id]
    sub[v0.video_id]["1"]["prediction_masks"][2] = {"size": [v0.height, v0.width], "counts": "0P"}
    (root / "flawed.json").write_text(json.dumps(sub))
    return root, full


UNROUNDED = {name: replace(VIDEO_PROTOCOLS[name], round_per_expression=False) for name in ("refsav", "revos")}


def test_engine_equals_the_plain_oracle_scorer(multi):
    root, full = multi
    want = oracle.score_refvos(root, root / "complete.json")
    assert ("synth_011_0000", "both") in want
    for name, proto in UNROUNDED.items():
        report = score_refvos(root, root / "complete.json", proto)
        # ReVOS drops type 2 as its scorer does; Ref-SAV knows no type 2 and says so.
        assert [(i.kind, i.where) for i in report.issues] == ([] if name == "revos" else
                                                              [("unknown_type_id", "synth_011_0000/dropped")])
        assert len(report.items) == len(want) - 1  # type 2 is in neither protocol's subsets
        for s in report.items:
            for k in "JFA":
                assert abs(s.metrics[k] / 100 - want[(s.video_id, s.exp_id)][k]) <= 1e-9, (s, k)
    # R against the dense functions, with the video foreground as the union of its objects.
    pred = load_predictions(root / "complete.json")
    by_key = {(s.video_id, s.exp_id): s for s in score_refvos(root, root / "complete.json", UNROUNDED["revos"]).items}
    for video in full.videos:
        fg = full.video_foreground(video)
        for exp in video.expressions:
            if exp.type_id == 2:
                continue
            masks, _ = pred.masks(video, exp, full.frame_size(video))
            r = np.mean(metrics.revos_robustness(masks, full.expression_mask(video, exp), fg))
            assert abs(by_key[(video.video_id, exp.exp_id)].metrics["R"] / 100 - r) <= 1e-9


def _same_report(a, b):
    assert a.items == b.items and a.issues == b.issues
    assert a.totals == b.totals and a.subsets == b.subsets


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as c:
        yield c


@pytest.mark.timeout(180)
def test_local_processes_and_dask_cluster_score_like_one_process(multi, cluster):
    from distributed import Client

    root, full = multi
    inline = score_refvos(root, root / "flawed.json", VIDEO_PROTOCOLS["refsav"])
    kinds = [i.kind for i in inline.issues]
    assert "corrupt_mask" in kinds and "missing_expression" in kinds
    done = []
    pool = score_refvos(root, root / "flawed.json", VIDEO_PROTOCOLS["refsav"], workers=2, on_video=done.append)
    _same_report(pool, inline)
    assert sum(done) == len(full.videos)
    done.clear()
    dask = score_refvos(root, root / "flawed.json", VIDEO_PROTOCOLS["refsav"],
                        scheduler=cluster.scheduler_address, on_video=done.append)
    _same_report(dask, inline)
    assert sum(done) == len(full.videos)
    # The chunks ran on the cluster's workers, each of which opened the inputs once.
    with Client(cluster.scheduler_address, timeout="30s") as client:
        opened = client.run(_opened_inputs)
    assert len(opened) == 2 and sum(opened.values()) >= 1 and set(opened.values()) <= {0, 1}
    # And through the CLI.
    out = root / "cli_out"
    proc = subprocess.run([REFSAV, "score", "--protocol", "refsav", "--gt", str(root), "--pred", str(root / "flawed.json"),
                           "--out", str(out), "--scheduler", cluster.scheduler_address],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads((out / "scores.json").read_text())
    assert payload["J&F"] == inline.totals["J&F"]
    assert [e["metrics"] for e in payload["expressions"]] == [s.metrics for s in inline.items]


def _opened_inputs() -> int:
    from refsav.benchmark import score

    return len(score._OPENED)


def test_plan_chunks_balances_and_covers_every_video(bench):
    _, _, gt = bench
    chunks = plan_chunks(gt, VIDEO_PROTOCOLS["refsav"], 8)
    assert sorted(v for c in chunks for v in c) == sorted(v.video_id for v in gt.videos)
    assert len(chunks) == min(8, len(gt.videos))


def test_bulk_rle_validation_is_rle_from_json(bench, tmp_path):
    _, gt_dir, gt = bench
    good = next(r for rles in gt.masks.values() for r in rles if r is not None).to_json()
    items = [good, None, {"size": [4, 4], "counts": "0P"}, {"size": [4, 4], "counts": "4"},
             {"size": [4.0, 4], "counts": "<"}, {"size": [4, 4], "counts": [3, 13]}, {"size": [4, 4]}, "x",
             {"size": [4, 4], "counts": chr(200)}, {"size": [-1, 4], "counts": ""}]
    for item, got in zip(items, rles_from_json(items)):
        try:
            want = Rle.from_json(item)
        except SchemaError as err:
            assert isinstance(got, SchemaError) and got.message == err.message, item
        else:
            assert got == want, item
    assert _read_mask_dict(gt_dir / "mask_dict.json") == read_mask_dict(gt_dir / "mask_dict.json")
    # A corrupt GT mask: the same one-line error as the reference reader, raised where the
    # object is first read (here: by the scorer, in this process or in a worker).
    root = tmp_path / "gt"
    shutil.copytree(gt_dir, root)
    bad = json.loads((root / "mask_dict.json").read_text())
    key = str(gt.videos[0].expressions[0].anno_id[0])
    bad[key][1] = {"size": [gt.videos[0].height, gt.videos[0].width], "counts": "0P"}
    (root / "mask_dict.json").write_text(json.dumps(bad))
    with pytest.raises(SchemaError) as slow:
        read_mask_dict(root / "mask_dict.json")
    assert "[1]" in str(slow.value) and key in str(slow.value)
    with pytest.raises(SchemaError) as fast:
        _read_mask_dict(root / "mask_dict.json")[key]
    assert str(fast.value) == str(slow.value)
    write_baseline(gt, tmp_path / "perfect.json", "perfect")
    for workers in (1, 2):
        with pytest.raises(SchemaError) as scored:
            score_refvos(root, tmp_path / "perfect.json", VIDEO_PROTOCOLS["refsav"], workers=workers)
        assert str(scored.value) == str(slow.value)
