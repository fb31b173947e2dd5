"""`refsav predict` / `refsav evaluate` on a tiny random Sa2VA and a generated Ref-SAV eval split.

The answer is teacher-forced to "Sure, [SEG]." (`--force-answer`) so that the random
model always reaches the mask path, and generation cannot wander for 2048 tokens.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from test_model import one_thread, tiny_dir  # noqa: F401 - fixtures: one torch thread, a tiny Sa2VA

import refsav.model.predict as mp
import refsav.cli as root_cli
from refsav.pipelines.sample import EVAL, SampleConfig, write_sample
from refsav.schemas import rle as rle_ops
from refsav.schemas.refvos import read_meta_expressions

ANSWER = "Sure, [SEG]."


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample(root, SampleConfig(videos=2, width=96, height=64, frames=16, objects=1), show_progress=False)
    return root / EVAL


@pytest.fixture()
def cli():
    """`refsav ...` through the real entry point."""

    def run(*args):
        return root_cli.main([str(a) for a in args])

    return run


def _predict_args(tiny_dir, gt, out, *extra):
    return ["predict", "--model", tiny_dir, "--protocol", "refsav", "--gt", gt, "--out", out, "--dtype", "fp32",
            "--force-answer", ANSWER, "--num-key-frames", "2", *extra]


@pytest.fixture(scope="module")
def first_run(tiny_dir, gt, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "run1"
    assert root_cli.main([str(a) for a in _predict_args(tiny_dir, gt, out)]) == 0
    return out


def test_results_match_ground_truth_and_score_cleanly(first_run, gt, tmp_path):
    results = json.loads((first_run / "results.json").read_text())
    videos = read_meta_expressions(gt / "meta_expressions_valid.json")
    assert list(results) == [v.video_id for v in videos]
    index = 0
    for v in videos:
        assert list(results[v.video_id]) == [e.exp_id for e in v.expressions]
        for e in v.expressions:
            entry = results[v.video_id][e.exp_id]
            assert entry["frames"] == v.frames and entry["exp_id"] == e.exp_id and entry["index"] == index
            assert entry["exp"] == f"<image>\nPlease segment {e.exp}."
            assert entry["text_prediction"] == ANSWER
            masks = [rle_ops.Rle.from_json(r) for r in entry["prediction_masks"]]
            assert len(masks) == len(v.frames) and all(m.size == (v.height, v.width) for m in masks)
            index += 1
    # A random model still segments *something*: the forced [SEG] reaches SAM-2.
    areas = [rle_ops.area(rle_ops.Rle.from_json(r)) for vid in results.values() for e in vid.values()
             for r in e["prediction_masks"]]
    assert len(set(areas)) > 1

    from refsav.benchmark.cli import score_command

    res = CliRunner().invoke(score_command, ["--protocol", "refsav", "--gt", str(gt), "--pred",
                                             str(first_run / "results.json"), "--out", str(tmp_path), "--strict"])
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["validation"]["problems"] == 0
    assert 0.0 <= scores["J&F"] <= 100.0


def test_resume_skips_done_videos_and_redoes_a_deleted_part(first_run, tiny_dir, gt, tmp_path, cli, monkeypatch):
    out = tmp_path / "resume"
    shutil.copytree(first_run, out)
    expected = (first_run / "results.json").read_bytes()

    def no_model(*a):
        raise AssertionError("the model was loaded although every part exists")

    monkeypatch.setattr(mp, "_load_model", no_model)
    monkeypatch.setattr(mp, "_MODELS", {})
    (out / "results.json").unlink()
    assert cli(*_predict_args(tiny_dir, gt, out)) == 0
    assert (out / "results.json").read_bytes() == expected

    # One part gone: only that video is predicted again, with the same result.
    monkeypatch.undo()
    seen = []
    real = mp.predict_video
    monkeypatch.setattr(mp, "predict_video", lambda task: seen.append(task.video.video_id) or real(task))
    victim = sorted((out / "parts").iterdir())[1]
    others = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir() if p != victim}
    victim.unlink()
    assert cli(*_predict_args(tiny_dir, gt, out)) == 0
    assert seen == [victim.stem]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir() if p != victim} == others
    assert (out / "results.json").read_bytes() == expected


def test_other_settings_do_not_mix_with_existing_parts(first_run, tiny_dir, gt, tmp_path, cli, capsys):
    out = tmp_path / "mixed"
    shutil.copytree(first_run, out)
    assert cli(*_predict_args(tiny_dir, gt, out, "--key-frames", "uniform")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key_frames" in err and "run.json" in err


def test_two_dask_workers_give_the_same_results(first_run, tiny_dir, gt, tmp_path, cli):
    out = tmp_path / "dask"
    assert cli(*_predict_args(tiny_dir, gt, out, "--workers", "2")) == 0
    assert (out / "results.json").read_bytes() == (first_run / "results.json").read_bytes()


def test_evaluate_writes_scores_and_a_leaderboard_entry(first_run, tiny_dir, gt, tmp_path, cli):
    from refsav.benchmark.leaderboard import LeaderboardDB

    out = tmp_path / "eval"
    shutil.copytree(first_run, out)  # resumes: scoring is what this test is about
    db = tmp_path / "board.sqlite"
    args = _predict_args(tiny_dir, gt, out)
    args[0] = "evaluate"
    assert cli(*args, "--db", db, "--name", "tiny-random") == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["protocol"] == "refsav" and scores["validation"]["problems"] == 0
    entries = LeaderboardDB(db).entries()
    assert [e.name for e in entries] == ["tiny-random"]
    assert entries[0].metrics["J&F"] == pytest.approx(scores["J&F"])


def test_limit_predicts_only_the_first_videos(first_run, tiny_dir, gt, tmp_path, cli):
    out = tmp_path / "limit"
    assert cli(*_predict_args(tiny_dir, gt, out, "--limit", "1")) == 0
    results = json.loads((out / "results.json").read_text())
    full = json.loads((first_run / "results.json").read_text())
    first = next(iter(full))
    assert results == {first: full[first]}


def test_bad_ground_truth_is_a_one_line_error(tiny_dir, gt, tmp_path, cli, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(*_predict_args(tiny_dir, empty, tmp_path / "o1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "meta_expressions" in err

    # Meta file but no frames: the error names both accepted layouts.
    no_frames = tmp_path / "no_frames"
    no_frames.mkdir()
    shutil.copy(gt / "meta_expressions_valid.json", no_frames)
    assert cli(*_predict_args(tiny_dir, no_frames, tmp_path / "o2")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "videos/" in err and "JPEGImages/" in err


def test_mevis_layout_frames_are_found(tmp_path, gt):
    """JPEGImages/<video>/<frame>.jpg (MeViS, ReVOS) is read like videos/<video>/... ."""
    root = tmp_path / "mevis"
    shutil.copytree(gt / "videos", root / "JPEGImages")
    assert mp.find_frame_root(root) == root / "JPEGImages"
    video = read_meta_expressions(gt / "meta_expressions_valid.json")[0]
    frames = mp.load_frames(video, root / "JPEGImages")
    assert len(frames) == len(video.frames) and frames[0].size == (video.width, video.height)
    assert np.asarray(frames[0]).shape == (video.height, video.width, 3)


def test_prompts_follow_sa2va_evaluation():
    assert mp.prompt_for("the red ball") == "<image>\nPlease segment the red ball."
    assert mp.prompt_for("which ball moves?") == "<image>\n which ball moves? Please respond with a segmentation mask."
    assert mp.prompt_for("man on left", image=True) == "<image>\n Please segment man on left in this image."


@pytest.fixture(scope="module")
def refcoco(tmp_path_factory):
    """The RefCOCO ground truth of tests/test_refcoco.py, plus the images it refers to: (data root, images)."""
    import pickle

    from PIL import Image

    from tests.test_refcoco import REFCOCO_REFS, SIZES, instances

    tmp_path = tmp_path_factory.mktemp("refcoco")
    root = tmp_path / "refer"
    (root / "refcoco").mkdir(parents=True)
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances()))
    with open(root / "refcoco" / "refs(unc).p", "wb") as fh:
        pickle.dump(REFCOCO_REFS, fh, protocol=2)
    images = tmp_path / "train2014"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"COCO_train2014_{i:012d}.jpg")
    return root, images


def _refcoco_args(tiny_dir, refcoco, out, *extra):
    root, images = refcoco
    return ["predict", "--model", tiny_dir, "--protocol", "refcoco", "--gt", root, "--out", out, "--dtype", "fp32",
            "--force-answer", ANSWER, "--images", images, "--split", "val", "--limit", "3", *extra]


@pytest.fixture(scope="module")
def refcoco_run(tiny_dir, refcoco, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred_refcoco") / "plain"
    assert root_cli.main([str(a) for a in _refcoco_args(tiny_dir, refcoco, out)]) == 0
    return out


def test_refcoco_predictions_are_one_parquet_row_per_sentence(refcoco, refcoco_run):
    from refsav.benchmark.refcoco import load_image_predictions
    from refsav.schemas.refer import load_ground_truth
    from refsav.schemas.io import read_parquet
    from refsav.schemas.predictions import ImagePrediction

    root, _ = refcoco
    out = refcoco_run
    rows = read_parquet(out / "predictions.parquet", ImagePrediction)
    truth = load_ground_truth(root, "refcoco", "val")
    assert [r.sample_id for r in rows] == [s.sample_id for s in truth.samples[:3]]
    assert all(r.rle.size == (s.height, s.width) and r.text == ANSWER for r, s in zip(rows, truth.samples))
    read_back = load_image_predictions(out / "predictions.parquet")
    assert len(read_back.entries) == 3 and not read_back.issues


# ----------------------------------------------------------------------------- DeSa2VA heads


@pytest.fixture(scope="module")
def heads(tiny_dir, tmp_path_factory):
    """Untrained DeSa2VA heads of the tiny model (random points and gate, α ≈ 0.5) and
    the same heads with the gate saturated to α = 1 (the vision path = Sa2VA)."""
    import torch

    from refsav.model.checkpoint import load_sa2va
    from refsav.model.desa2va import DeSa2VA, save_heads

    folder = tmp_path_factory.mktemp("heads")
    model = DeSa2VA.from_sa2va(load_sa2va(tiny_dir), seed=1)
    mixed = save_heads(folder / "mixed.safetensors", model.heads)
    with torch.no_grad():
        model.heads.gate.weight.zero_()
        model.heads.gate.bias.fill_(40.0)
    return mixed, save_heads(folder / "saturated.safetensors", model.heads)


@pytest.fixture(scope="module")
def desa2va_run(tiny_dir, gt, heads, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred_desa2va") / "mixed"
    assert root_cli.main([str(a) for a in _predict_args(tiny_dir, gt, out, "--desa2va-heads", heads[0])]) == 0
    return out


def _masks(results: dict) -> dict:
    return {(v, e): entry["prediction_masks"] for v, exps in results.items() for e, entry in exps.items()}


def test_desa2va_video_predictions_score_and_differ_from_sa2va(desa2va_run, first_run, gt, heads, tmp_path):
    from refsav.benchmark.cli import score_command
    from refsav.schemas.io import sha256_file

    run = json.loads((desa2va_run / "run.json").read_text())
    assert run["desa2va_heads"] == str(heads[0].resolve()) and run["desa2va_heads_sha256"] == sha256_file(heads[0])
    assert "desa2va_heads" not in json.loads((first_run / "run.json").read_text())
    results = json.loads((desa2va_run / "results.json").read_text())
    plain = json.loads((first_run / "results.json").read_text())
    assert _masks(results).keys() == _masks(plain).keys()
    assert _masks(results) != _masks(plain)  # the fused prompt, not Sa2VA's, made these masks
    res = CliRunner().invoke(score_command, ["--protocol", "refsav", "--gt", str(gt), "--pred",
                                             str(desa2va_run / "results.json"), "--out", str(tmp_path), "--strict"])
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["validation"]["problems"] == 0 and 0.0 <= scores["J&F"] <= 100.0


def test_desa2va_at_alpha_one_is_sa2va_on_videos(first_run, tiny_dir, gt, heads, tmp_path, cli):
    out = tmp_path / "saturated"
    assert cli(*_predict_args(tiny_dir, gt, out, "--desa2va-heads", heads[1], "--limit", 1)) == 0
    results = json.loads((out / "results.json").read_text())
    full = json.loads((first_run / "results.json").read_text())
    first = next(iter(full))
    # Every frame of every expression, key frames and propagated ones: Sa2VA's masks.
    assert results == {first: full[first]}


def test_desa2va_on_an_image_protocol(refcoco_run, tiny_dir, refcoco, heads, tmp_path, cli):
    from refsav.benchmark.refcoco import load_image_predictions
    from refsav.schemas.io import read_parquet
    from refsav.schemas.predictions import ImagePrediction

    plain = read_parquet(refcoco_run / "predictions.parquet", ImagePrediction)
    runs = {}
    for name, path in zip(("mixed", "saturated"), heads):
        out = tmp_path / name
        assert cli(*_refcoco_args(tiny_dir, refcoco, out, "--desa2va-heads", path)) == 0
        assert not load_image_predictions(out / "predictions.parquet").issues
        runs[name] = read_parquet(out / "predictions.parquet", ImagePrediction)
        assert [r.sample_id for r in runs[name]] == [r.sample_id for r in plain]
    assert [r.rle for r in runs["saturated"]] == [r.rle for r in plain]
    assert [r.rle for r in runs["mixed"]] != [r.rle for r in plain]


def test_other_heads_do_not_mix_with_existing_parts(desa2va_run, first_run, tiny_dir, gt, heads, tmp_path, cli, capsys):
    # A resumed run whose heads file has changed since is refused, before any prediction.
    own = tmp_path / "h.safetensors"
    shutil.copy(heads[0], own)
    out = tmp_path / "resume"
    assert cli(*_predict_args(tiny_dir, gt, out, "--desa2va-heads", own, "--limit", 1)) == 0
    capsys.readouterr()
    shutil.copy(heads[1], own)
    assert cli(*_predict_args(tiny_dir, gt, out, "--desa2va-heads", own, "--limit", 1)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "desa2va_heads_sha256" in err and "run.json" in err

    # Heads added to a plain Sa2VA OUT, or dropped from a DeSa2VA one: refused too.
    mixed = tmp_path / "mixed"
    shutil.copytree(first_run, mixed)
    assert cli(*_predict_args(tiny_dir, gt, mixed, "--desa2va-heads", heads[0])) == 2
    assert "desa2va_heads" in capsys.readouterr().err
    assert cli(*_predict_args(tiny_dir, gt, desa2va_run)) == 2
    assert "desa2va_heads" in capsys.readouterr().err


def test_bad_heads_are_one_line_errors(tiny_dir, gt, tmp_path, cli, capsys):
    from refsav.model.checkpoint import read_config
    from refsav.model.desa2va import DeSa2VAConfig, DecoupleHeads, save_heads

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"no tensors here")
    assert cli(*_predict_args(tiny_dir, gt, tmp_path / "o1", "--desa2va-heads", junk)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "junk.safetensors" in err
    assert not (tmp_path / "o1" / "run.json").exists()  # refused before anything was written

    assert cli(*_predict_args(tiny_dir, gt, tmp_path / "o2", "--desa2va-heads", tmp_path / "none.safetensors")) == 2
    assert "none.safetensors" in capsys.readouterr().err

    hidden = read_config(tiny_dir).llm_hidden_size
    wrong = save_heads(tmp_path / "wrong.safetensors", DecoupleHeads(DeSa2VAConfig(hidden_size=hidden * 2)))
    assert cli(*_predict_args(tiny_dir, gt, tmp_path / "o3", "--desa2va-heads", wrong, "--limit", 1)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wrong.safetensors" in err and "hidden size" in err
    assert not (tmp_path / "o3" / "run.json").exists()
