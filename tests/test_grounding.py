"""The grounding stage of `refsav annotate` (`--grounder`).

- The policy, exactly: small hand-made masks whose IoU is counted here, a stub grounder
  that returns known masklets, keep / drop / short-expression removal / ambiguity.
- End to end on the synthetic sample with a tiny random Sa2VA (answers teacher-forced so
  that the random model reaches its mask path): in-process, through `refsav serve` on
  127.0.0.1, and on a `distributed.LocalCluster` over TCP. Every row's scores are
  recomputed here from the grounder's cached masklets with the benchmark's scorer.
- Resume: SIGKILL mid-run, then a rerun, gives the same rows.

The VLM is tests/fake_vlm_server.py: deterministic answers in the format of each stage.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fake_vlm_server import FakeVLMServer
from test_annotate import comparable, rows

from refsav.grounding import benchmark_scorer, weights_sha256
from refsav.pipelines.annotate.config import AnnotateConfig, VLMSettings
from refsav.pipelines.annotate.grounding import (
    GROUNDER_ERROR,
    GROUNDING_FAILED,
    GrounderError,
    GroundingSettings,
    cache_key,
    decide,
    grounding_frames,
    masks_at,
    score_against,
)
from refsav.pipelines.annotate.run import annotate
from refsav.pipelines.sample import SampleConfig, write_sample
from refsav.runtime.executor import InlineExecutor
from refsav.schemas import rle as rle_ops
from refsav.schemas.errors import RefsavError
from refsav.schemas.rle import Rle
from refsav.schemas.sav import read_sav_json
from refsav.schemas.video import Masklet

pytestmark = pytest.mark.timeout(300)

ANSWER = "Sure, [SEG]."
STAGES = ("object", "scene", "video", "merge", "grounding")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sav(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    write_sample(root, SampleConfig(videos=2, width=96, height=64, frames=16, objects=2, seed=3), show_progress=False)
    return root / "sav_train"


@pytest.fixture(scope="module")
def vlm():
    with FakeVLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sa2va") / "tiny"
    proc = run([sys.executable, "-m", "refsav", "model", "init-random", "--size", "tiny", "--base", "internvl",
                "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def annotate_cmd(sav: Path, out: Path, vlm, grounder: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "refsav", "annotate", "--input", str(sav), "--out", str(out),
            "--base-url", vlm.base_url, "--model", vlm.model, "--no-check", "--shard-size", "1",
            "--grounder", grounder, "--grounder-force-answer", ANSWER, "--min-grounding", "0", *extra]




def masklets_of(sav: Path, video_id: str) -> dict[int, Masklet]:
    ann = read_sav_json(next(sav.rglob(f"{video_id}_manual.json")))
    return {m.object_id: m for m in ann.masklets}


# ----------------------------------------------------------------------------- the policy on hand-made masks


def square(y0: int, x0: int, side: int, size=(16, 16)) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def rles(masks) -> list[Rle]:
    return [rle_ops.encode(m) for m in masks]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """J of one frame, counted here: 1 when both are empty."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_frames_are_the_visible_span_plus_the_margin():
    empty, obj = np.zeros((16, 16), bool), square(2, 2, 4)
    frames = [0, 4, 8, 12, 16, 20, 24, 28]
    visible = [False, False, True, False, True, False, False, False]  # a gap inside the span stays
    m = Masklet.from_rles("v", 1, frames, rles([obj if v else empty for v in visible]))
    assert grounding_frames(m, 0) == [8, 12, 16]
    assert grounding_frames(m, 1) == [4, 8, 12, 16, 20]
    assert grounding_frames(m, 5) == frames  # clipped to the annotated frames
    never = Masklet.from_rles("v", 2, frames, rles([empty] * len(frames)))
    assert grounding_frames(never, 2) == []
    # Another masklet annotated on fewer frames is empty where it has none.
    short = Masklet.from_rles("v", 3, frames[:2], rles([obj, obj]))
    got = masks_at(short, [0, 4, 8], (16, 16))
    assert [rle_ops.area(r) for r in got] == [16, 16, 0]


def test_policy_keep_drop_short_removal_and_ambiguity():
    # Three frames: the own object (a 4x4 square) is visible in the last two; the first is
    # the margin, where a prediction that starts too early costs.
    empty = np.zeros((16, 16), bool)
    own_m = [empty, square(2, 2, 4), square(2, 3, 4)]
    other_m = [empty, square(10, 10, 4), square(10, 10, 4)]  # same size, far away
    own, other = rles(own_m), rles(other_m)
    frames = [0, 4, 8]

    # Long: exact on the visible frames, but already there in the margin frame.
    early = [square(2, 2, 4), own_m[1], own_m[2]]
    long_c = score_against(benchmark_scorer, "the long one", "long", rles(early), own, {7: other})
    j_hand = np.mean([iou(p, g) for p, g in zip(early, own_m)])  # (0 + 1 + 1) / 3
    assert long_c.own.j == pytest.approx(j_hand) == pytest.approx(2 / 3)
    assert long_c.own.f == pytest.approx(2 / 3)  # F: 0 where only one mask is non-empty, 1 on exact frames
    assert long_c.others[7].j == pytest.approx(np.mean([iou(p, g) for p, g in zip(early, other_m)])) == 0.0

    # Short A: the union of both objects (J = 1/2 against each, counted here).
    both = [np.logical_or(a, b) for a, b in zip(own_m, other_m)]
    short_a = score_against(benchmark_scorer, "a thing", "short", rles(both), own, {7: other})
    assert short_a.own.j == pytest.approx(np.mean([iou(p, g) for p, g in zip(both, own_m)])) == pytest.approx(2 / 3)
    # Short B: nothing at all. J = F = 1 on the margin frame (both empty), 0 elsewhere.
    short_b = score_against(benchmark_scorer, "b thing", "short", rles([empty] * 3), own, {7: other})
    assert (short_b.own.j, short_b.own.f) == (pytest.approx(1 / 3), pytest.approx(1 / 3))

    d = decide(frames, long_c, [short_a, short_b], min_grounding=0.5, ambiguity_margin=0.1)
    assert d.drop is None and d.short_caps == ["a thing"]
    assert [(s.text, s.kind, s.kept) for s in d.grounding.scores] == [
        ("the long one", "long", True), ("a thing", "short", True), ("b thing", "short", False)]
    assert d.grounding.scores[0].j_and_f == pytest.approx(2 / 3)
    assert d.grounding.scores[2].j_and_f == pytest.approx(1 / 3)
    assert d.grounding.scores[0].best_other_id == 7 and d.grounding.scores[0].best_other_j_and_f == 0.0
    # The other object scores 0 against a long expression at 2/3: not ambiguous.
    assert d.ambiguous_with == [] and d.grounding.confusable_with == []
    d.grounding.validate("the long one", d.short_caps)

    # Ambiguity: the long expression segments both objects, so the other object's
    # masklet scores exactly what the own one does (symmetric squares of equal size).
    long_both = score_against(benchmark_scorer, "the long one", "long", rles(both), own, {7: other})
    assert long_both.others[7].j == pytest.approx(long_both.own.j)
    d = decide(frames, long_both, [], min_grounding=0.5, ambiguity_margin=0.0)
    assert d.drop is None and d.ambiguous_with == [7]
    assert [(c.object_id, c.j_and_f) for c in d.grounding.confusable_with] == [(7, pytest.approx(long_both.own.j_and_f))]
    # Within the margin of the own score counts too; just outside it does not.
    lower = score_against(benchmark_scorer, "l", "long", rles(early), own, {7: rles([empty, own_m[1], empty])})
    gap = lower.own.j_and_f - lower.others[7].j_and_f
    assert gap > 0
    assert decide(frames, lower, [], min_grounding=0.5, ambiguity_margin=gap + 1e-9).ambiguous_with == [7]
    assert decide(frames, lower, [], min_grounding=0.5, ambiguity_margin=gap - 1e-6).ambiguous_with == []

    # Drop: the long expression segments the other object.
    wrong = score_against(benchmark_scorer, "the long one", "long", other, own, {7: other})
    d = decide(frames, wrong, [short_a], min_grounding=0.5, ambiguity_margin=0.1)
    assert d.drop is not None and d.drop.reason == GROUNDING_FAILED
    assert d.grounding.scores[0].j_and_f == pytest.approx(1 / 3)  # only the empty margin frame agrees
    assert d.grounding.scores[0].best_other_j_and_f == 1.0


# ----------------------------------------------------------------------------- the stage, with a stub grounder


@dataclass(frozen=True)
class StubSpec:
    """Answers every expression of a video with the masklet of its lowest object id, and
    expressions starting with 'the ' (lower case: one kind of the fake VLM's short ones)
    with nothing. `fail`: every call fails, as an unreachable server would."""

    sav_root: str
    fail: bool = False
    needs_gpu = False

    def identity(self):
        return "stub", "", "in-process", "official"

    def options(self):
        return {"stub": 1}

    def fingerprint(self):
        return {"stub": 1}

    def check(self):
        pass

    def build(self):
        return StubGrounder(self)


class StubGrounder:
    concurrency = 2
    calls = 0

    def __init__(self, spec: StubSpec) -> None:
        self.spec = spec

    def segment(self, request):
        StubGrounder.calls += 1
        if self.spec.fail:
            raise GrounderError("cannot reach the stub")
        masklets = masklets_of(Path(self.spec.sav_root), request.video_id)
        size = request.images.shape[1:3]
        first = masks_at(masklets[min(masklets)], request.frames, size)
        empty = [rle_ops.empty(*size)] * len(request.frames)
        return [empty if t.startswith("the ") else first for t in request.texts]


def stub_config(sav: Path, vlm, out: Path, **policy) -> AnnotateConfig:
    return AnnotateConfig(vlm=VLMSettings(backend="openai", model=vlm.model, base_url=vlm.base_url), stages=STAGES,
                          cache_path=str(out / "cache.sqlite"),
                          grounding=GroundingSettings(StubSpec(str(sav), policy.pop("fail", False)), benchmark_scorer,
                                                      **policy))


def test_stage_keeps_drops_and_trims_rows_with_a_stub_grounder(sav, vlm, tmp_path):
    out = tmp_path / "out"
    summary = annotate(sav, out, stub_config(sav, vlm, out), InlineExecutor(), show_progress=False)
    kept = {(e.video_id, e.object_id): e for e in rows(out)}
    failures = [f for p in sorted((out / "stats").glob("*.json")) for f in json.loads(p.read_text())["failures"]]
    for video in sorted({p.name[: -len("_manual.json")] for p in sav.rglob("*_manual.json")}):
        masklets = masklets_of(sav, video)
        first = min(masklets)
        for oid, m in masklets.items():
            frames = grounding_frames(m, 2)
            own = m.masks()[[m.frame_indices.index(f) for f in frames]]
            lowest = masklets[first].masks()[[masklets[first].frame_indices.index(f) for f in frames]]
            long_j = np.mean([iou(p, g) for p, g in zip(lowest, own)])
            if oid == first:
                e = kept[(video, oid)]  # its long expression segments exactly its masklet
                long, *shorts = e.grounding.scores
                assert (long.j, long.f, long.j_and_f, long.kept) == (1.0, 1.0, 1.0, True)
                assert e.grounding.frames == frames
                empty_share = np.mean([not g.any() for g in own])  # J = F = 1 there, 0 elsewhere
                for s in shorts:
                    if s.text.startswith("the "):
                        assert (s.j, s.f) == (pytest.approx(empty_share), pytest.approx(empty_share))
                        assert s.kept is bool(s.j_and_f >= 0.5) and (s.text in e.short_caps) is s.kept
                    else:
                        assert s.j_and_f == 1.0 and s.kept and s.text in e.short_caps
                # The other object: what its own long expression scored (J and F are symmetric).
                others = [o for o in masklets if o != oid]
                assert long.best_other_id in others
                assert e.ambiguous is bool(e.ambiguous_with) is bool(e.grounding.confusable_with)
                assert e.ambiguous_with == sorted(c.object_id for c in e.grounding.confusable_with)
                assert all(c.j_and_f >= 1.0 - 0.1 for c in e.grounding.confusable_with)
                assert e.provenance.grounder.model == "stub" and "grounding" in e.provenance.stages
            else:
                assert long_j < 0.5  # precondition of the sample: the objects barely overlap
                assert (video, oid) not in kept
                assert any(f["video_id"] == video and f["object_id"] == oid and f["reason"] == GROUNDING_FAILED
                           for f in failures)
    g = summary.grounding
    assert g.dropped == summary.objects_dropped[GROUNDING_FAILED] == len(failures)
    assert g.grounded == summary.objects_seen
    assert g.shorts_removed == sum(not s.kept for e in kept.values() for s in e.grounding.scores) > 0
    values = sorted(s.j_and_f for e in kept.values() for s in e.grounding.scores if s.kept)
    assert g.deciles[0] == min(values) and g.deciles[-1] == max(values) == 1.0
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["summary"]["grounding"]["deciles"] == g.deciles
    assert run_json["config"]["grounding"]["min_grounding"] == 0.5

    # A rerun with another policy is refused; the same one has nothing to do.
    with pytest.raises(RefsavError, match="different settings"):
        annotate(sav, out, stub_config(sav, vlm, out, min_grounding=0.7), InlineExecutor(), show_progress=False)
    again = annotate(sav, out, stub_config(sav, vlm, out), InlineExecutor(), show_progress=False)
    assert again.shards_resumed == again.shards and again.grounding.deciles == g.deciles

    # A fresh folder with the same cache: every masklet comes from it, no grounder call.
    out2 = tmp_path / "out2"
    StubGrounder.calls = 0
    config = stub_config(sav, vlm, out)
    annotate(sav, out2, config, InlineExecutor(), show_progress=False)
    assert StubGrounder.calls == 0
    assert comparable(rows(out2)) == comparable(rows(out))


def test_auto_masklets_are_other_objects_with_masklets_both(sav, vlm, tmp_path):
    """An auto masklet that duplicates a manual one (ids + 100) grounds as well as it: both
    objects are flagged ambiguous with each other, with J&F 1 recorded."""
    import dataclasses
    import shutil

    root = tmp_path / "sav"
    shutil.copytree(sav, root)
    for p in root.rglob("*_manual.json"):
        d = json.loads(p.read_text())
        d["masklet_id"] = [i + 100 for i in d["masklet_id"]]
        d["masklet_type"] = ["auto"] * len(d["masklet_id"])
        (p.parent / p.name.replace("_manual.json", "_auto.json")).write_text(json.dumps(d))
    out = tmp_path / "out"
    config = dataclasses.replace(stub_config(root, vlm, out), masklets="both")
    annotate(root, out, config, InlineExecutor(), show_progress=False)
    kept = {(e.video_id, e.object_id): e for e in rows(out)}
    videos = sorted({p.name[: -len("_manual.json")] for p in root.rglob("*_manual.json")})
    for video in videos:
        first = min(masklets_of(root, video))
        for oid, twin in ((first, first + 100), (first + 100, first)):
            e = kept[(video, oid)]
            assert e.grounding.scores[0].j_and_f == 1.0
            assert e.ambiguous and twin in e.ambiguous_with
            assert (twin, 1.0) in [(c.object_id, c.j_and_f) for c in e.grounding.confusable_with]
            assert e.grounding.scores[0].best_other_id == twin
    assert {k[1] for k in kept} == {min(masklets_of(root, v)) for v in videos} | {min(masklets_of(root, v)) + 100 for v in videos}


def test_a_failing_grounder_loses_nothing_and_the_rerun_redoes_it(sav, vlm, tmp_path):
    out = tmp_path / "out"
    summary = annotate(sav, out, stub_config(sav, vlm, out, fail=True), InlineExecutor(), show_progress=False)
    assert summary.objects_kept == 0 and summary.objects_failed == summary.objects_seen > 0
    assert summary.objects_dropped == {GROUNDER_ERROR: summary.objects_seen}
    assert "cannot reach the stub" in summary.first_error and not summary.complete
    assert summary.grounding.grounder.failed_calls == summary.objects_seen and summary.grounding.grounder.calls == 0
    # Nothing was cached for the failures; a working grounder on the same folder (a
    # policy that did not change) redoes every shard.
    fixed = AnnotateConfig(vlm=VLMSettings(backend="openai", model=vlm.model, base_url=vlm.base_url), stages=STAGES,
                           cache_path=str(out / "cache.sqlite"),
                           grounding=GroundingSettings(StubSpec(str(sav), False), benchmark_scorer))
    StubGrounder.calls = 0
    again = annotate(sav, out, fixed, InlineExecutor(), show_progress=False)
    assert again.shards_resumed == 0 and StubGrounder.calls > 0
    assert again.complete and again.objects_kept > 0 and GROUNDER_ERROR not in again.objects_dropped


def test_unreachable_grounder_is_one_line_and_non_zero(sav, vlm, tmp_path):
    proc = run(annotate_cmd(sav, tmp_path / "out", vlm, "http://127.0.0.1:9/v1", "--workers", "1"))
    assert proc.returncode != 0
    assert "cannot reach the server" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    proc = run(annotate_cmd(sav, tmp_path / "out", vlm, "sa2va:" + str(tmp_path / "none"), "--workers", "1"))
    assert proc.returncode != 0 and "checkpoint folder not found" in proc.stderr and "Traceback" not in proc.stderr


def test_a_server_that_is_no_grounder_fails_each_object_and_exits_1(sav, vlm, tmp_path):
    """A plain VLM server given as --grounder answers without masks: every object fails
    with grounder_error and its cause, the run exits 1 saying how to resume, and the
    rerun asks the VLM nothing again."""
    with FakeVLMServer() as not_a_grounder:
        out = tmp_path / "out"
        cmd = annotate_cmd(sav, out, vlm, not_a_grounder.base_url, "--workers", "1")
        proc = run(cmd)
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "first error: " in proc.stderr and "no refsav field" in proc.stderr
        assert "rerun the same command" in proc.stderr and "Traceback" not in proc.stderr
        s = json.loads((out / "run.json").read_text())["summary"]
        assert s["objects_dropped"] == {GROUNDER_ERROR: s["objects_seen"]} and s["objects_kept"] == 0
        assert s["grounding"]["grounder"]["failed_calls"] == s["objects_seen"]
        again = run(cmd)
        assert again.returncode == 1
        s = json.loads((out / "run.json").read_text())["summary"]
        assert s["shards_resumed"] == 0 and s["vlm"]["calls"] == 0 and s["vlm"]["cache_hits"] > 0


# ----------------------------------------------------------------------------- end to end with a tiny Sa2VA


def check_grounded_rows(out: Path, sav: Path, model_fingerprint: dict, margin: int = 2, ambiguity: float = 0.1):
    """Every row's grounding, recomputed from the grounder's cached masklets with the scorer."""
    import datasets

    found = rows(out)
    assert found and all(e.grounding is not None for e in found)
    db = sqlite3.connect(out / "cache" / "requests.sqlite")
    try:
        for e in found:
            masklets = masklets_of(sav, e.video_id)
            own = masklets[e.object_id]
            frames = grounding_frames(own, margin)
            assert e.grounding.frames == frames and frames
            size = tuple(own.rles[0].size)
            options = json.loads(e.provenance.grounder.settings)["options"]
            assert options["answer"] == ANSWER and e.provenance.grounder.inference == "official"
            fingerprint = {"model": model_fingerprint, "options": options}
            video_sha = e.provenance.input_files[0].sha256
            others = {o: masks_at(m, frames, size) for o, m in masklets.items() if o != e.object_id}
            others = {o: r for o, r in others.items() if any(rle_ops.area(x) for x in r)}
            for sc in e.grounding.scores:
                (text,) = db.execute("SELECT masklet FROM groundings WHERE key = ?",
                                     (cache_key(fingerprint, video_sha, frames, sc.text),)).fetchone()
                pred = [Rle.from_json(r) for r in json.loads(text)]
                mine = benchmark_scorer(pred, masks_at(own, frames, size))
                assert (sc.j, sc.f, sc.j_and_f) == (pytest.approx(mine.j, abs=1e-12), pytest.approx(mine.f, abs=1e-12),
                                                    pytest.approx(mine.j_and_f, abs=1e-12))
                theirs = {o: benchmark_scorer(pred, gt).j_and_f for o, gt in others.items()}
                best = max(theirs.values())
                assert sc.best_other_j_and_f == pytest.approx(best, abs=1e-12) and theirs[sc.best_other_id] == best
                if sc.kind == "long":
                    want = sorted(o for o, v in theirs.items() if v >= mine.j_and_f - ambiguity)
                    assert e.ambiguous_with == want and e.ambiguous is bool(want)
            assert e.short_caps == [s.text for s in e.grounding.scores[1:] if s.kept]
    finally:
        db.close()
    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"))["train"]
    assert ds.num_rows == len(found)
    assert ds[0]["grounding"]["scores"][0]["kind"] == "long"
    assert ds.features["provenance"]["grounder"]["sha256"] is not None
    return found


@pytest.fixture(scope="module")
def in_process(sav, vlm, tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inproc") / "out"
    proc = run(annotate_cmd(sav, out, vlm, f"sa2va:{tiny_dir}", "--workers", "1", "--grounder-device", "cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_in_process_sa2va_rows_match_the_scorer(in_process, sav, tiny_dir):
    found = check_grounded_rows(in_process, sav, {"weights_sha256": weights_sha256(tiny_dir), "dtype": "float32"})
    ident = found[0].provenance.grounder
    assert (ident.model, ident.endpoint) == (str(tiny_dir.resolve()), "in-process")
    assert ident.sha256 == weights_sha256(tiny_dir) == __import__("hashlib").sha256(
        (tiny_dir / "model.safetensors").read_bytes()).hexdigest()
    stats = json.loads((in_process / "run.json").read_text())["summary"]["grounding"]
    assert stats["grounded"] == len(found) and stats["grounder"]["calls"] == len(found)

    # The cached masklets are the model's own: predict the first row again in this process.
    import torch

    from refsav.model.checkpoint import load_sa2va
    from refsav.model.config import PredictOptions
    from refsav.model.predict import prompt_for
    from refsav.schemas.media import read_frames

    e = found[0]
    frames = e.grounding.frames
    video = next(sav.rglob(f"{e.video_id}.mp4"))
    torch.set_num_threads(1)
    model = load_sa2va(tiny_dir)
    pred = model.predict(prompt_for(e.formated), video=list(read_frames(video, frames)), options=PredictOptions(),
                         answer=ANSWER)
    own = masklets_of(sav, e.video_id)[e.object_id]
    size = tuple(own.rles[0].size)
    again = benchmark_scorer([rle_ops.encode(m) for m in pred.masks[0]], masks_at(own, frames, size))
    assert again.j_and_f == pytest.approx(e.grounding.scores[0].j_and_f, abs=0.01)


def test_sigkill_mid_run_then_rerun_gives_the_same_rows(in_process, sav, vlm, tiny_dir, tmp_path):
    out = tmp_path / "out"
    cmd = annotate_cmd(sav, out, vlm, f"sa2va:{tiny_dir}", "--workers", "1", "--grounder-device", "cpu")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if list((out / "markers").glob("*.done")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list((out / "markers").glob("*.done"))) == 1
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    s = json.loads((out / "run.json").read_text())["summary"]
    assert s["shards_done"] == 2 and s["shards_resumed"] == 1
    assert comparable(rows(out)) == comparable(rows(in_process))


@pytest.fixture(scope="module")
def serve_url(tiny_dir, tmp_path_factory):
    logfile = tmp_path_factory.mktemp("serve") / "server.log"
    args = [sys.executable, "-m", "refsav", "serve", "--model", str(tiny_dir), "--model-name", "tiny", "--port", "0",
            "--device", "cpu", "--dtype", "fp32", "--threads", "1"]
    with open(logfile, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            text = logfile.read_text(errors="replace")
            for line in text.splitlines():
                if "listening on http://" in line:
                    url = line.split("listening on ", 1)[1].strip()
            if url is None:
                assert proc.poll() is None, f"refsav serve exited:\n{text}"
                assert time.monotonic() < deadline, f"refsav serve did not start:\n{text}"
                time.sleep(0.2)
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_through_refsav_serve_rows_match_the_scorer(serve_url, sav, vlm, tmp_path):
    out = tmp_path / "out"
    proc = run(annotate_cmd(sav, out, vlm, serve_url, "--workers", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = check_grounded_rows(out, sav, {"served_model": "tiny", "dtype": "float32"})
    ident = found[0].provenance.grounder
    assert (ident.model, ident.sha256, ident.endpoint) == ("tiny", "", serve_url)


def test_on_a_dask_cluster_over_tcp(sav, vlm, tiny_dir, serve_url, in_process, tmp_path):
    """CPU workers with the grounder behind `refsav serve`; then the checkpoint inside the
    worker (the spec travels pickled, the worker loads the model): the in-process run's rows."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as cluster:
        served, local = tmp_path / "served", tmp_path / "local"
        proc = run(annotate_cmd(sav, served, vlm, serve_url, "--scheduler", cluster.scheduler_address))
        assert proc.returncode == 0, proc.stderr[-3000:]
        proc = run(annotate_cmd(sav, local, vlm, f"sa2va:{tiny_dir}", "--grounder-device", "cpu",
                                "--scheduler", cluster.scheduler_address))
        assert proc.returncode == 0, proc.stderr[-3000:]
    for out in (served, local):
        meta = json.loads((out / "run.json").read_text())
        assert meta["executor"] == "dask" and meta["scheduler"] == cluster.scheduler_address
    check_grounded_rows(served, sav, {"served_model": "tiny", "dtype": "float32"})
    assert comparable(rows(local)) == comparable(rows(in_process))
