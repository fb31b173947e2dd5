"""`refsav export refsav-json` / `benchmark` on a synthetic annotate output: contents checked
against the synthetic sample's own ground truth, round trip through the refsav scorer,
selection rules, and bad inputs."""
import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from annotated_fixture import MIN_GROUNDING, build_annotated, long_score, short_score
from refsav.benchmark.baselines import write_baseline
from refsav.benchmark.inputs import RefVosGroundTruth
from refsav.benchmark.protocols import VIDEO_PROTOCOLS
from refsav.benchmark.score import score_refvos
from refsav.cli import main
from refsav.pipelines.export import (
    POOL_FACTOR,
    Candidate,
    export_benchmark,
    export_group,
    motion_bucket,
    motion_speed,
    pool_for_measuring,
    rle_centroid,
    select_balanced,
)
from refsav.pipelines.publish import SplitRule, assign_splits, load_annotated
from refsav.pipelines.sample import CHUNK, EVAL
from refsav.schemas import SchemaError
from refsav.schemas import rle as rle_ops
from refsav.schemas.refsav_json import read_refsav_json
from refsav.schemas.refvos import read_mask_dict, read_meta_expressions
from refsav.schemas.sav import read_sav_json


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return build_annotated(tmp_path_factory.mktemp("annotated"))


def invoke(*args):
    result = CliRunner().invoke(export_group, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def test_refsav_json_matches_the_sample_ground_truth(fx, tmp_path):
    out = tmp_path / "Ref-SAV.json"
    invoke("refsav-json", "--data", fx.out, "--out", out, "--split", "all")
    exported = {v.video_id: v for v in read_refsav_json(out)}
    truth = {v.video_id: v for v in read_refsav_json(fx.sample / "Ref-SAV.json")}  # written by the sample itself
    assert sorted(exported) == fx.video_ids
    raw = json.loads(out.read_text())
    for vid, v in exported.items():
        # Sa2VA reads these three keys and nothing else; object keys are masklet columns.
        assert set(raw[vid]) == {"video_path", "anno_path", "objects"}
        assert (v.video_path, v.anno_path) == (truth[vid].video_path, truth[vid].anno_path)
        assert (fx.sample / v.video_path).is_file() and v.anno_path.endswith("_manual.json")
        want = {o.index: o for o in truth[vid].objects if (vid, o.index) not in fx.dropped}
        assert {o.index: (o.formated, o.short_caps) for o in v.objects} == {
            k: (o.formated, o.short_caps) for k, o in want.items()}
        for key, obj in raw[vid]["objects"].items():
            assert set(obj) == {"formated", "short_caps"} and key.isdigit()
    assert sum(len(v.objects) for v in exported.values()) == len(fx.expressions)


def test_refsav_json_splits_are_disjoint_and_drop_ambiguous(fx, tmp_path):
    parts = {}
    for split in ("train", "validation"):
        invoke("refsav-json", "--data", fx.out, "--out", tmp_path / f"{split}.json", "--split", split)
        parts[split] = {v.video_id for v in read_refsav_json(tmp_path / f"{split}.json")}
    assert parts["train"] and parts["validation"] and not parts["train"] & parts["validation"]
    assert parts["train"] | parts["validation"] == set(fx.video_ids)
    splits = assign_splits(fx.video_ids, SplitRule())
    assert parts["validation"] == {v for v, s in splits.items() if s == "validation"}

    invoke("refsav-json", "--data", fx.out, "--out", tmp_path / "clean.json", "--split", "all", "--drop-ambiguous")
    kept = {(v.video_id, o.index) for v in read_refsav_json(tmp_path / "clean.json") for o in v.objects}
    assert len(kept) == len(fx.expressions) - len(fx.ambiguous)
    assert not kept & set(fx.ambiguous)

    invoke("refsav-json", "--data", fx.out, "--out", tmp_path / "prefixed.json", "--split", "all", "--prefix", "sam_v_full/")
    assert all(v.video_path.startswith("sam_v_full/sav_train/") for v in read_refsav_json(tmp_path / "prefixed.json"))


def test_benchmark_round_trip_scores_100(fx, tmp_path):
    bench = tmp_path / "ref_sav_eval"
    invoke("benchmark", "--data", fx.out, "--out", bench, "--split", "all", "--select", 6, "--seed", 3)
    meta = read_meta_expressions(bench / "meta_expressions_valid.json")
    masks = read_mask_dict(bench / "mask_dict.json")
    rows = {e.key: e for e in fx.expressions}
    longs = []
    for video in meta:
        ann = read_sav_json(fx.sample / CHUNK / f"{video.video_id}_manual.json")
        assert video.frames == [f"{t:05d}" for t in ann.masklets[0].frame_indices]
        assert (video.height, video.width) == (fx.config.height, fx.config.width)
        for exp in video.expressions:
            (oid,), (anno,) = exp.obj_id, exp.anno_id
            row = rows[(video.video_id, oid)]
            assert not row.ambiguous
            if exp.type_id == 0:
                longs.append((video.video_id, oid))
                assert exp.exp == row.formated
            else:
                assert exp.type_id == 1 and exp.exp in row.short_caps
            # The benchmark mask is the SA-V masklet, null exactly where the object is absent.
            for sav, got in zip(ann.masklet(oid).rles, masks[str(anno)]):
                if got is None:
                    assert rle_ops.area(sav) == 0
                else:
                    assert np.array_equal(rle_ops.decode(got), rle_ops.decode(sav))
    assert len(longs) == len(set(longs)) == 6
    assert sum(e.type_id == 1 for v in meta for e in v.expressions) == sum(len(rows[k].short_caps) for k in longs)

    # The JPEGs are the annotated frames: each is closest to the sample's own JPEG of that frame.
    video = meta[0]
    ours = [cv2.imread(str(bench / "videos" / video.video_id / f"{f}.jpg")).astype(float) for f in video.frames]
    ref = [cv2.imread(str(fx.sample / EVAL / "videos" / video.video_id / f"{f}.jpg")).astype(float) for f in video.frames]
    for i, img in enumerate(ours):
        errors = [np.abs(img - r).mean() for r in ref]
        assert int(np.argmin(errors)) == i and errors[i] < 4.0

    gt = RefVosGroundTruth.load(bench)
    write_baseline(gt, tmp_path / "perfect.json", "perfect")
    write_baseline(gt, tmp_path / "empty.json", "empty")
    report = score_refvos(bench, tmp_path / "perfect.json", VIDEO_PROTOCOLS["refsav"])
    assert report.totals["J&F"] == 100.0 and report.totals["J"] == report.totals["F"] == 100.0
    assert report.subsets["long"]["J&F"] == report.subsets["short"]["J&F"] == 100.0
    assert not report.issues
    assert score_refvos(bench, tmp_path / "empty.json", VIDEO_PROTOCOLS["refsav"]).totals["J&F"] < 50.0

    # The CLI scorer reads the export too.
    assert main(["score", "--protocol", "refsav", "--gt", str(bench), "--pred", str(tmp_path / "perfect.json"),
                 "--out", str(tmp_path / "scores")]) == 0
    assert json.loads((tmp_path / "scores" / "scores.json").read_text())["J&F"] == 100.0


def test_benchmark_selection_is_deterministic_balanced_and_unambiguous(fx, tmp_path):
    run = load_annotated(fx.out)
    a = export_benchmark(run, tmp_path / "a", select=7, seed=5, split="all")
    b = export_benchmark(run, tmp_path / "b", select=7, seed=5, split="all", workers=2)
    sel_a, sel_b = (json.loads((tmp_path / d / "selection.json").read_text())["objects"] for d in "ab")
    assert sel_a == sel_b and a.objects == b.objects == 7
    assert (tmp_path / "a" / "mask_dict.json").read_bytes() == (tmp_path / "b" / "mask_dict.json").read_bytes()
    assert (tmp_path / "a" / "meta_expressions_valid.json").read_bytes() == (tmp_path / "b" / "meta_expressions_valid.json").read_bytes()
    chosen = {(o["video_id"], o["object_id"]) for o in sel_a}
    assert not chosen & set(fx.ambiguous) and a.excluded_ambiguous == len(fx.ambiguous)
    # Categories as even as the data allow: a category with fewer objects than the
    # average share is used up, the others differ by at most one.
    available = {}
    for e in fx.expressions:
        if not e.ambiguous:
            available[e.category] = available.get(e.category, 0) + 1
    counts = {c: sum(o["category"] == c for o in sel_a) for c in available}
    level = max(counts.values())
    assert all(n >= level - 1 or n == available[c] for c, n in counts.items())
    assert all(o["category"] == fx.categories[(o["video_id"], o["object_id"])] for o in sel_a)

    everything = export_benchmark(run, tmp_path / "all", select=None, seed=0, split="all")
    assert everything.objects == len(fx.expressions) - len(fx.ambiguous)
    other_seeds = {tuple(sorted((o["video_id"], o["object_id"]) for o in json.loads(
        (tmp_path / f"s{s}" / "selection.json").read_text())["objects"]))
        for s in range(4) if export_benchmark(run, tmp_path / f"s{s}", select=5, seed=s, split="all")}
    assert len(other_seeds) > 1  # the seed matters

    with pytest.raises(SchemaError, match="not empty"):
        export_benchmark(run, tmp_path / "a", select=7, seed=5, split="all")
    (tmp_path / "a" / "keep.txt").write_text("mine")
    export_benchmark(run, tmp_path / "a", select=3, seed=5, split="all", overwrite=True)
    assert (tmp_path / "a" / "keep.txt").read_text() == "mine"
    assert len(json.loads((tmp_path / "a" / "selection.json").read_text())["objects"]) == 3


def test_benchmark_default_split_is_validation(fx, tmp_path):
    run = load_annotated(fx.out)
    r = export_benchmark(run, tmp_path / "v", select=None, seed=0)
    vids = {v.video_id for v in read_meta_expressions(tmp_path / "v" / "meta_expressions_valid.json")}
    splits = assign_splits(fx.video_ids, SplitRule())
    assert vids and all(splits[v] == "validation" for v in vids)
    assert r.videos == len(vids)


def test_select_balanced_spreads_categories_then_motion():
    cands = []
    for cat, n in (("person", 12), ("dog", 9), ("kite", 1)):
        for i in range(n):
            motion = ("static", "slow", "fast")[i % 3] if cat != "dog" else ("fast" if i < 7 else "static")
            cands.append(Candidate(f"v{cat}{i // 3}", i, cat, motion, 0.0))
    chosen = select_balanced(cands, 9, seed=1)
    by_cat = {c: [x for x in chosen if x.category == c] for c in ("person", "dog", "kite")}
    assert [len(by_cat[c]) for c in ("person", "dog", "kite")] == [4, 4, 1]
    person_motion = sorted(x.motion for x in by_cat["person"])
    assert {person_motion.count(m) for m in ("static", "slow", "fast")} <= {1, 2}  # all three buckets, spread
    assert {x.motion for x in by_cat["dog"]} == {"fast", "static"}  # the rare bucket is not starved
    assert select_balanced(cands, 9, seed=1) == chosen
    assert select_balanced(list(reversed(cands)), 9, seed=1) == chosen  # order of the rows does not matter
    assert len(select_balanced(cands, None, seed=1)) == len(cands)
    pool = pool_for_measuring(cands, 2, seed=1)
    assert len(pool) == POOL_FACTOR * 2 and {c.category for c in pool} == {"person", "dog", "kite"}


def test_motion_speed_and_buckets():
    still = [(50.0, 50.0)] * 12
    assert motion_speed(still, 300, 400, window=6) == 0.0 and motion_bucket(0.0) == "static"
    # 10 px per annotated frame, 60 px per second, on a 500 px diagonal: 0.12 diagonals/s.
    moving = [(10.0 * t, 20.0) for t in range(12)]
    assert motion_speed(moving, 300, 400, window=6) == pytest.approx(0.12)
    assert motion_bucket(0.12) == "fast" and motion_bucket(0.05) == "slow"
    # Absent frames are skipped; one glitch (occlusion) does not move the median.
    glitch = list(moving)
    glitch[3] = (250.0, 300.0)
    glitch[8] = None
    assert motion_speed(glitch, 300, 400, window=6) == pytest.approx(0.12)
    # Visible for less than a window: first-to-last travel scaled to one window.
    short = [None, (0.0, 0.0), (5.0, 0.0), None]
    assert motion_speed(short, 300, 400, window=6) == pytest.approx(30.0 / 500)
    assert motion_speed([None, (1.0, 1.0), None], 300, 400, window=6) == 0.0


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line_errors(fx, tmp_path, capsys):
    broken = tmp_path / "out"
    shutil.copytree(fx.out, broken)
    (broken / "run.json").unlink()
    err = _one_line_error(capsys, ["export", "refsav-json", "--data", str(broken), "--out", str(tmp_path / "x.json")])
    assert "run.json" in err and "not found" in err

    empty = tmp_path / "empty"
    shutil.copytree(fx.out, empty)
    shutil.rmtree(empty / "data")
    err = _one_line_error(capsys, ["export", "benchmark", "--data", str(empty), "--out", str(tmp_path / "b")])
    assert "no Parquet shards" in err

    partial = tmp_path / "partial"
    shutil.copytree(fx.out, partial)
    next((partial / "markers").glob("*.done")).unlink()
    err = _one_line_error(capsys, ["export", "refsav-json", "--data", str(partial), "--out", str(tmp_path / "p.json")])
    assert "incomplete" in err
    invoke("refsav-json", "--data", partial, "--out", tmp_path / "p.json", "--allow-incomplete")

    # A video that is gone: copy the sample, delete one mp4, point run.json at the copy.
    sample = tmp_path / "sav"
    shutil.copytree(fx.sample, sample)
    gone = sample / CHUNK / f"{fx.video_ids[1]}.mp4"
    gone.unlink()
    moved = tmp_path / "moved"
    shutil.copytree(fx.out, moved)
    run = json.loads((moved / "run.json").read_text())
    run["input"] = str(sample)
    (moved / "run.json").write_text(json.dumps(run))
    err = _one_line_error(capsys, ["export", "benchmark", "--data", str(moved), "--out", str(tmp_path / "g"), "--split", "all"])
    assert str(gone) in err and "gone" in err
    err = _one_line_error(capsys, ["export", "refsav-json", "--data", str(moved), "--out", str(tmp_path / "g.json"), "--split", "all"])
    assert str(gone) in err
    assert not (tmp_path / "g.json").exists()


def test_rle_centroid_matches_the_decoded_mask():
    rng = np.random.default_rng(0)
    for h, w in ((7, 5), (48, 64), (360, 640)):
        for density in (0.0, 0.01, 0.3, 1.0):
            mask = rng.random((h, w)) < density
            if density == 0.3:  # a blob as well as noise
                mask[h // 4 : h // 2, w // 3 : w // 2] = True
            got = rle_centroid(rle_ops.encode(mask))
            if not mask.any():
                assert got is None
                continue
            ys, xs = np.nonzero(mask)
            assert got == pytest.approx((xs.mean(), ys.mean()), abs=1e-6)


# --------------------------------------------------------------------------- grounding


@pytest.fixture(scope="module")
def gfx(tmp_path_factory):
    return build_annotated(tmp_path_factory.mktemp("grounded"), grounded=True)


def _selected(folder) -> list[tuple[str, int]]:
    return [(o["video_id"], o["object_id"]) for o in json.loads((folder / "selection.json").read_text())["objects"]]


def test_benchmark_prefers_grounded_objects(gfx, tmp_path):
    run = load_annotated(gfx.out)
    unambiguous = [e.key for e in gfx.expressions if e.key not in gfx.ambiguous]
    # The fixture grounds every video but the last one.
    grounded = {(v, o) for v, o in unambiguous if v != gfx.video_ids[-1]}
    ungrounded = set(unambiguous) - grounded
    assert len(grounded) >= 5 and ungrounded
    for n in (3, len(grounded)):
        r = export_benchmark(run, tmp_path / f"g{n}", select=n, seed=1, split="all")
        assert set(_selected(tmp_path / f"g{n}")) <= grounded and r.objects == r.grounded == n
    # One more than the grounded ones: every grounded object, then one ungrounded.
    r = export_benchmark(run, tmp_path / "more", select=len(grounded) + 1, seed=1, split="all")
    chosen = set(_selected(tmp_path / "more"))
    assert grounded < chosen and len(chosen - grounded) == 1 and chosen - grounded <= ungrounded
    assert r.grounded == len(grounded) and r.excluded_ungrounded == 0  # no threshold: nothing left out for it
    # Without a threshold an ungrounded row keeps all its short expressions.
    meta = read_meta_expressions(tmp_path / "more" / "meta_expressions_valid.json")
    rows = {e.key: e for e in gfx.expressions}
    (extra,) = chosen - grounded
    shorts = [x.exp for v in meta if v.video_id == extra[0] for x in v.expressions if x.obj_id == [extra[1]] and x.type_id == 1]
    assert shorts == rows[extra].short_caps


def test_benchmark_min_grounding_leaves_out_objects_and_shorts_below_it(gfx, tmp_path, capsys):
    x = 0.6
    truth = json.loads((gfx.sample / "Ref-SAV.json").read_text())
    # Expected benchmark, from the fixture's score functions and the sample's own texts.
    want, below, ungrounded, shorts_below = {}, 0, 0, 0
    for vi, vid in enumerate(gfx.video_ids):
        for oid in range(gfx.config.objects):
            if (vid, oid) in gfx.dropped or (vid, oid) in gfx.ambiguous:
                continue
            if vi == len(gfx.video_ids) - 1:
                ungrounded += 1
                continue
            if long_score(vi, oid) < x:
                below += 1
                continue
            texts = truth[vid]["objects"][str(oid)]
            kept = [(t, short_score(vi, oid, k)) for k, t in enumerate(texts["short_caps"])
                    if short_score(vi, oid, k) >= MIN_GROUNDING]  # what the grounding stage kept
            want[(vid, oid)] = [texts["formated"]] + [t for t, s in kept if s >= x]
            shorts_below += sum(s < x for _, s in kept)
    assert below and ungrounded and shorts_below and want

    bench = tmp_path / "bench"
    assert main(["export", "benchmark", "--data", str(gfx.out), "--out", str(bench), "--split", "all",
                 "--min-grounding", str(x)]) == 0
    out = capsys.readouterr().out
    assert f"--min-grounding 0.6 left out: {below} objects below it, {ungrounded} ungrounded objects, " \
           f"{shorts_below} short expressions below it" in out
    assert f"grounded objects: {len(want)} of {len(want)}" in out
    got = {}
    for v in read_meta_expressions(bench / "meta_expressions_valid.json"):
        for e in v.expressions:
            got.setdefault((v.video_id, e.obj_id[0]), []).append((e.type_id, e.exp))
    assert {k: [t for _, t in v] for k, v in got.items()} == want
    assert all([tid for tid, _ in v] == [0] + [1] * (len(v) - 1) for v in got.values())
    sel = json.loads((bench / "selection.json").read_text())
    assert sel["grounding"]["min_grounding"] == x and sel["grounding"]["excluded_ungrounded"] == ungrounded
    assert {(o["video_id"], o["object_id"]): o["grounding_j_and_f"] for o in sel["objects"]} == {
        (v, o): long_score(gfx.video_ids.index(v), o) for v, o in want}

    # Still a benchmark the scorer reads: a perfect prediction scores 100.
    gt = RefVosGroundTruth.load(bench)
    write_baseline(gt, tmp_path / "perfect.json", "perfect")
    assert score_refvos(bench, tmp_path / "perfect.json", VIDEO_PROTOCOLS["refsav"]).totals["J&F"] == 100.0


def test_min_grounding_on_ungrounded_rows_is_a_one_line_error(fx, capsys, tmp_path):
    err = _one_line_error(capsys, ["export", "benchmark", "--data", str(fx.out), "--out", str(tmp_path / "b"),
                                   "--split", "all", "--min-grounding", "0.5"])
    assert "grounding J&F >= 0.5" in err
    assert main(["export", "benchmark", "--data", str(fx.out), "--out", str(tmp_path / "c"), "--split", "all",
                 "--min-grounding", "1.5"]) == 2
