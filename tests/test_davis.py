"""DAVIS-2017 semi-supervised / unsupervised scoring (benchmark/davis.py).

Tiny DAVIS trees (64x48, 6-10 frames, 2-3 objects, void pixels on object boundaries)
are written as palette PNGs; expected numbers come from a plain per-frame reference
built here on refsav.benchmark.oracle (the literal transcription of the official J and F) and
scipy's Hungarian solver, following davis2017-evaluation's structure.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import FrozenInstanceError, asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from refsav.benchmark import oracle
from refsav.benchmark.davis import (
    DAVIS_PROTOCOLS,
    METRIC_KEYS,
    DavisGroundTruth,
    DavisPredictions,
    object_masks,
    score_davis,
    semi_per_frame,
)
from refsav.schemas.errors import SchemaError

H, W = 48, 64
SEQUENCES = {"alpha": (8, 3), "beta": (6, 2), "gamma-x": (10, 3)}  # name: (frames, objects)
TRAIN = {"delta": (7, 2)}
PALETTE = [0, 0, 0] + [(i * c) % 256 for i in range(1, 256) for c in (37, 91, 53)]
SEMI, UNSUP = "davis17-semi", "davis17-unsup"


# --------------------------------------------------------------------------- writing trees


def frame_names(t: int) -> list[str]:
    return [f"{i:05d}" for i in range(t)]


def save_ids(path: Path, ids: np.ndarray, mode: str = "P") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8))
    if mode == "P":
        img.putpalette(PALETTE)  # turns the 'L' image into a palette image, indices kept
    img.save(path)


def write_tree(root: Path, labels: dict[str, np.ndarray], mode: str = "P") -> Path:
    for seq, arr in labels.items():
        for name, frame in zip(frame_names(len(arr)), arr):
            save_ids(root / seq / f"{name}.png", frame, mode)
    return root


def make_gt(rng: np.random.Generator, t: int, n: int) -> np.ndarray:
    """(t, H, W) labels: n moving ellipses, some boundary pixels void (255).
    Every object keeps non-void pixels in every frame (so empty predictions give 0)."""
    yy, xx = np.mgrid[0:H, 0:W]
    while True:
        lab = np.zeros((t, H, W), np.uint8)
        for k in range(1, n + 1):
            cy, cx = rng.uniform(14, H - 14), (k - 0.5) * W / n + rng.uniform(-3, 3)
            ry, rx = rng.uniform(6, 10), rng.uniform(5, 8)
            vy, vx = rng.uniform(-1.5, 1.5, 2)
            for i in range(t):
                inside = ((yy - cy - vy * i) / ry) ** 2 + ((xx - cx - vx * i) / rx) ** 2 <= 1
                lab[i][inside] = k
        edge = np.zeros(lab.shape, bool)
        edge[:, :, :-1] |= lab[:, :, :-1] != lab[:, :, 1:]
        edge[:, :-1, :] |= lab[:, :-1, :] != lab[:, 1:, :]
        lab[edge & (rng.random(lab.shape) < 0.5)] = 255
        if all((lab[i] == k).sum() >= 10 for i in range(t) for k in range(1, n + 1)):
            return lab


def clean(gt: np.ndarray) -> np.ndarray:
    return np.where(gt == 255, 0, gt).astype(np.uint8)


def noisy(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """Shifted, speckled predictions using only ids 0..n; void painted at random."""
    lab = clean(gt)
    n = int(lab[0].max())
    out = np.empty_like(lab)
    for i in range(len(lab)):
        out[i] = np.roll(lab[i], tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        speck = rng.random((H, W)) < 0.03
        out[i][speck] = rng.integers(0, n + 1, size=int(speck.sum()))
    void = gt == 255
    out[void] = rng.integers(0, n + 1, size=int(void.sum()))
    mid = len(lab) // 2
    out[mid][out[mid] == 1] = 0  # object 1 lost in one frame: J = 0 there
    return out


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    rng = np.random.default_rng(2017)
    root = tmp_path_factory.mktemp("DAVIS")
    gt = {seq: make_gt(rng, t, n) for seq, (t, n) in {**SEQUENCES, **TRAIN}.items()}
    for folder in ("Annotations", "Annotations_unsupervised"):
        write_tree(root / folder / "480p", gt)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(SEQUENCES) + "\n")
    (root / "ImageSets" / "2017" / "train.txt").write_text("\n".join(TRAIN) + "\n")
    val = {s: gt[s] for s in SEQUENCES}
    return root, gt, val, {s: noisy(rng, val[s]) for s in SEQUENCES}


# --------------------------------------------------------------------------- reference


def ref_metrics(j: np.ndarray, f: np.ndarray) -> dict[str, float]:
    js, fs = oracle.db_statistics(j), oracle.db_statistics(f)
    m = {"J": 100 * js["M"], "J-Recall": 100 * js["R"], "J-Decay": 100 * js["D"],
         "F": 100 * fs["M"], "F-Recall": 100 * fs["R"], "F-Decay": 100 * fs["D"]}
    m["J&F"] = (m["J"] + m["F"]) / 2
    return m


def ref_semi(gt: np.ndarray, pred: np.ndarray) -> dict[int, tuple[dict, int]]:
    """davis2017 semi: objects of the first frame, frames 1..T-2, no void."""
    lab = clean(gt)
    out = {}
    for k in range(1, int(lab[0].max()) + 1):
        frames = range(1, len(lab) - 1)
        j = np.array([oracle.db_eval_iou(pred[i] == k, lab[i] == k) for i in frames])
        f = np.array([oracle.f_measure(pred[i] == k, lab[i] == k) for i in frames])
        out[k] = (ref_metrics(j, f), k)
    return out


def ref_unsup(gt: np.ndarray, pred: np.ndarray) -> dict[int, tuple[dict, int]]:
    """davis2017 unsup: all frames, void, proposals zero-padded, Hungarian on mean (J+F)/2.
    Ids above 20 are dropped (the scorer's documented stand-in for the official exit)."""
    void, lab = gt == 255, clean(gt)
    n = int(lab[0].max())
    pred = np.where(pred > 20, 0, pred)
    n_res = int(pred.max())
    p_count, t = max(n_res, n), len(lab)
    jm, fm = np.zeros((p_count, n, t)), np.zeros((p_count, n, t))
    for p in range(p_count):
        for k in range(n):
            for i in range(t):
                jm[p, k, i] = oracle.db_eval_iou(pred[i] == p + 1, lab[i] == k + 1, void[i])
                fm[p, k, i] = oracle.f_measure(pred[i] == p + 1, lab[i] == k + 1, void[i])
    rows, cols = linear_sum_assignment(-(jm.mean(axis=2) + fm.mean(axis=2)) / 2)
    return {int(c) + 1: (ref_metrics(jm[r, c], fm[r, c]), int(r) + 1 if r < n_res else 0) for r, c in zip(rows, cols)}


def reference(protocol: str, gt: dict, pred: dict) -> tuple[dict, dict]:
    per_seq = {s: (ref_semi if protocol == SEMI else ref_unsup)(gt[s], pred[s]) for s in gt}
    objs = [m for s in gt for _, (m, _) in sorted(per_seq[s].items())]
    totals = {k: float(np.mean([m[k] for m in objs])) for k in METRIC_KEYS if k != "J&F"}
    totals["J&F"] = (totals["J"] + totals["F"]) / 2
    return per_seq, totals


def assert_matches_reference(report, protocol, gt, pred):
    per_seq, totals = reference(protocol, gt, pred)
    got = {(it.sequence, it.object_id): it for it in report.items}
    assert set(got) == {(s, k) for s in per_seq for k in per_seq[s]}
    for s in per_seq:
        for k, (metrics, pred_id) in per_seq[s].items():
            assert got[(s, k)].metrics == metrics, (s, k)
            assert got[(s, k)].pred_id == pred_id, (s, k)
    assert report.totals == totals


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("protocol", [SEMI, UNSUP])
def test_noisy_predictions_match_the_reference(davis, tmp_path, protocol):
    root, _, val, pred = davis
    report = score_davis(root, write_tree(tmp_path / "res", pred), protocol)
    assert_matches_reference(report, protocol, val, pred)
    assert report.issues == []
    assert 20 < report.totals["J&F"] < 95  # really noisy, really overlapping
    n_frames = {it.n_frames for it in report.items if it.sequence == "alpha"}
    assert n_frames == {SEQUENCES["alpha"][0] - (2 if protocol == SEMI else 0)}


def test_per_frame_values_equal_the_oracle_bit_for_bit(davis):
    _, _, val, pred = davis
    gt, lab = val["gamma-x"], clean(val["gamma-x"])
    j, f = semi_per_frame(object_masks(lab, 3), pred["gamma-x"])
    for k in range(3):
        for i in range(len(lab)):
            assert j[k, i] == oracle.db_eval_iou(pred["gamma-x"][i] == k + 1, lab[i] == k + 1)
            assert f[k, i] == oracle.f_measure(pred["gamma-x"][i] == k + 1, lab[i] == k + 1)
    assert (gt == 255).any()  # the fixture really has void pixels


@pytest.mark.parametrize("protocol", [SEMI, UNSUP])
def test_perfect_predictions_score_100(davis, tmp_path, protocol):
    root, _, val, _ = davis
    report = score_davis(root, write_tree(tmp_path / "res", {s: clean(g) for s, g in val.items()}), protocol)
    assert report.issues == []
    for key in ("J&F", "J", "F", "J-Recall", "F-Recall"):
        assert report.totals[key] == 100.0
    assert report.totals["J-Decay"] == report.totals["F-Decay"] == 0.0
    assert len(report.items) == sum(n for _, n in SEQUENCES.values())


@pytest.mark.parametrize("protocol", [SEMI, UNSUP])
def test_empty_predictions_score_0(davis, tmp_path, protocol):
    root, _, val, _ = davis
    report = score_davis(root, write_tree(tmp_path / "res", {s: np.zeros_like(g) for s, g in val.items()}), protocol)
    assert report.issues == []
    assert all(report.totals[k] == 0.0 for k in METRIC_KEYS)
    if protocol == UNSUP:
        assert {it.pred_id for it in report.items} == {0}  # every object matched to padding


def test_void_is_ignored_in_unsup_but_not_in_semi(davis, tmp_path):
    root, _, val, _ = davis
    painted = {}
    for s, g in val.items():
        p = clean(g)
        p[g == 255] = 1  # object 1 claims every void pixel
        painted[s] = p
    res = write_tree(tmp_path / "res", painted)
    assert score_davis(root, res, UNSUP).totals["J&F"] == 100.0
    semi = score_davis(root, res, SEMI)
    assert semi.totals["J"] < 100.0
    assert all(it.metrics["J"] == 100.0 for it in semi.items if it.object_id != 1)
    assert_matches_reference(semi, SEMI, val, painted)


def test_semi_drops_first_and_last_frames(davis, tmp_path):
    root, _, val, _ = davis
    rng = np.random.default_rng(5)
    pred = {}
    for s, g in val.items():
        p = clean(g)
        p[0] = rng.integers(0, 40, size=(H, W))  # wrong, with ids above the object count
        p[-1] = 0
        pred[s] = p
    res = write_tree(tmp_path / "res", pred)
    semi = score_davis(root, res, SEMI)
    assert semi.totals["J&F"] == 100.0
    assert semi.issues == []  # the first frame is never read
    unsup = score_davis(root, res, UNSUP)
    assert unsup.totals["J&F"] < 100.0
    assert_matches_reference(unsup, UNSUP, val, pred)


def background_corner(gt_frame: np.ndarray) -> np.ndarray:
    """A few top-left pixels that are background (not object, not void) in a GT frame."""
    region = np.zeros((H, W), bool)
    region[:3, :5] = True
    region &= gt_frame == 0
    assert region.any()
    return region


def test_unsup_matches_permuted_ids_and_ignores_extra_proposals(davis, tmp_path):
    root, _, val, _ = davis
    perm = {1: 5, 2: 1, 3: 2}  # id 5 > object count: the proposals are not cut at 3
    pred = {}
    for s, g in val.items():
        lab, p = clean(g), np.zeros_like(g)
        n = int(lab[0].max())
        for k in range(1, n + 1):
            p[lab == k] = perm[k] if n == 3 else 3 - k
        for i in range(len(g)):
            p[i][background_corner(g[i])] = 7  # an extra proposal that matches nothing
        pred[s] = p
    report = score_davis(root, write_tree(tmp_path / "res", pred), UNSUP)
    assert report.totals["J&F"] == 100.0 and report.issues == []
    alpha = {it.object_id: it.pred_id for it in report.items if it.sequence == "alpha"}
    assert alpha == perm
    beta = {it.object_id: it.pred_id for it in report.items if it.sequence == "beta"}
    assert beta == {1: 2, 2: 1}
    assert score_davis(root, tmp_path / "res", SEMI).totals["J&F"] < 60  # semi takes ids literally


def test_unsup_fewer_proposals_are_zero_padded(davis, tmp_path):
    root, _, val, _ = davis
    pred = {s: np.where(clean(g) == 2, 1, 0).astype(np.uint8) for s, g in val.items()}  # one proposal = object 2
    report = score_davis(root, write_tree(tmp_path / "res", pred), UNSUP)
    assert_matches_reference(report, UNSUP, val, pred)
    for it in report.items:
        if it.object_id == 2:
            assert it.pred_id == 1 and it.metrics["J&F"] == 100.0
        else:
            assert it.pred_id == 0 and it.metrics["J"] == 0.0


def test_more_than_20_proposals_is_an_issue_and_extra_ids_are_ignored(davis, tmp_path):
    root, _, val, pred = davis
    crowded = {s: p.copy() for s, p in pred.items()}
    for i, k in enumerate(range(18, 26)):  # ids 18..25 as small blobs in frame 1
        crowded["beta"][1, 40:44, 4 * i : 4 * i + 3] = k
    report = score_davis(root, write_tree(tmp_path / "res", crowded), UNSUP)
    assert [(i.kind, i.where) for i in report.issues] == [("too_many_proposals", "beta")]
    assert_matches_reference(report, UNSUP, val, crowded)
    trimmed = {s: np.where(p > 20, 0, p).astype(np.uint8) for s, p in crowded.items()}
    same = score_davis(root, write_tree(tmp_path / "trimmed", trimmed), UNSUP)
    assert same.totals == report.totals


def test_semi_ids_above_the_object_count_are_an_issue_and_ignored(davis, tmp_path):
    root, _, val, pred = davis
    extra = {s: p.copy() for s, p in pred.items()}
    extra["beta"][2, 10:20, 10:20] = 3  # beta has 2 objects
    report = score_davis(root, write_tree(tmp_path / "res", extra), SEMI)
    assert [(i.kind, i.where) for i in report.issues] == [("id_above_objects", "beta")]
    assert_matches_reference(report, SEMI, val, extra)
    cleaned = {s: np.where(p > SEQUENCES[s][1], 0, p).astype(np.uint8) for s, p in extra.items()}
    assert score_davis(root, write_tree(tmp_path / "cleaned", cleaned), SEMI).totals == report.totals


@pytest.mark.parametrize("protocol", [SEMI, UNSUP])
def test_broken_files_are_issues_scored_as_empty(davis, tmp_path, protocol):
    root, _, val, pred = davis
    res = write_tree(tmp_path / "res", pred)
    (res / "alpha" / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    (res / "beta" / "00002.png").unlink()
    save_ids(res / "gamma-x" / "00004.png", np.ones((H // 2, W), np.uint8))
    Image.new("RGB", (W, H), (128, 0, 0)).save(res / "gamma-x" / "00005.png")
    save_ids(res / "gamma-x" / "00099.png", np.zeros((H, W), np.uint8))
    write_tree(res, {"not-in-gt": pred["beta"]})
    report = score_davis(root, res, protocol)
    kinds = {(i.kind, i.where) for i in report.issues}
    assert kinds == {
        ("corrupt_file", "alpha/00003"), ("missing_frame", "beta/00002"), ("wrong_size", "gamma-x/00004"),
        ("wrong_mode", "gamma-x/00005"), ("extra_frame", "gamma-x"), ("extra_sequence", "not-in-gt"),
    }
    emptied = {s: p.copy() for s, p in pred.items()}
    for s, i in (("alpha", 3), ("beta", 2), ("gamma-x", 4), ("gamma-x", 5)):
        emptied[s][i] = 0
    assert_matches_reference(report, protocol, val, emptied)


def test_missing_sequence_is_an_issue_scored_against_empty_masks(davis, tmp_path):
    root, _, val, pred = davis
    res = write_tree(tmp_path / "res", {s: p for s, p in pred.items() if s != "beta"})
    report = score_davis(root, res, SEMI)
    assert [(i.kind, i.where) for i in report.issues] == [("missing_sequence", "beta")]
    assert [it.metrics["J"] for it in report.items if it.sequence == "beta"] == [0.0, 0.0]
    assert_matches_reference(report, SEMI, val, {**pred, "beta": np.zeros_like(pred["beta"])})


def test_zip_input_gives_the_same_report(davis, tmp_path):
    root, _, _, pred = davis
    res = write_tree(tmp_path / "res", pred, mode="L")  # grayscale ids work as well as palette ids
    folder = score_davis(root, res, UNSUP)
    for name, prefix in (("flat.zip", ""), ("nested.zip", "results/")):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            for png in sorted(res.rglob("*.png")):
                zf.write(png, prefix + png.relative_to(res).as_posix())
            zf.writestr("../escape.png", b"x")
        report = score_davis(root, tmp_path / name, UNSUP)
        assert report.totals == folder.totals and report.items == folder.items
        assert [i.kind for i in report.issues] == ["unsafe_entry"]


def test_flat_root_needs_an_explicit_sequence_list(davis, tmp_path):
    root, gt, _, pred = davis
    flat = tmp_path / "flat"
    shutil.copytree(root / "Annotations" / "480p", flat)
    res = write_tree(tmp_path / "res", pred)
    with pytest.raises(SchemaError, match="ImageSets/2017/val.txt"):
        score_davis(flat, res, SEMI)
    chosen = ["gamma-x", "alpha"]
    report = score_davis(flat, res, SEMI, sequences=chosen)
    assert list(report.subsets) == chosen
    assert_matches_reference(report, SEMI, {s: gt[s] for s in chosen}, pred)


def test_image_set_selects_the_sequence_list(davis, tmp_path):
    root, gt, _, _ = davis
    res = write_tree(tmp_path / "res", {"delta": clean(gt["delta"])})
    report = score_davis(root, res, UNSUP, image_set="train")
    assert list(report.subsets) == ["delta"] and report.totals["J&F"] == 100.0
    assert DavisGroundTruth.open(root, DAVIS_PROTOCOLS[SEMI]).sequences == tuple(SEQUENCES)


def test_workers_match_serial_and_report_progress(davis, tmp_path):
    root, _, _, pred = davis
    res = write_tree(tmp_path / "res", pred)
    (res / "alpha" / "00002.png").unlink()
    done = []
    serial = score_davis(root, res, UNSUP)
    parallel = score_davis(root, res, UNSUP, workers=2, on_sequence=done.append)
    assert sum(done) == len(SEQUENCES)
    assert parallel.items == serial.items and parallel.issues == serial.issues
    assert parallel.totals == serial.totals


def test_report_shape(davis, tmp_path):
    root, _, _, pred = davis
    report = score_davis(root, write_tree(tmp_path / "res", pred), SEMI)
    assert (report.protocol, report.primary_metric, report.item_kind) == (SEMI, "J&F", "objects")
    assert tuple(report.totals) == METRIC_KEYS
    assert list(report.subsets) == list(SEQUENCES)
    alpha = [it for it in report.items if it.sequence == "alpha"]
    assert report.subsets["alpha"]["J"] == pytest.approx(np.mean([it.metrics["J"] for it in alpha]), abs=1e-12)
    assert [it.object_id for it in alpha] == [1, 2, 3] and alpha[0].subset == "alpha"
    json.dumps([asdict(it) for it in report.items])
    with pytest.raises(FrozenInstanceError):
        alpha[0].object_id = 5  # type: ignore[misc]
    for p in DAVIS_PROTOCOLS.values():
        assert p.source and p.description


def test_bad_ground_truth_or_arguments_raise_schema_error(davis, tmp_path):
    root, _, _, pred = davis
    res = write_tree(tmp_path / "res", pred)
    with pytest.raises(SchemaError, match="unknown DAVIS protocol"):
        score_davis(root, res, "davis16")
    with pytest.raises(SchemaError, match="not found"):
        score_davis(tmp_path / "nowhere", res, SEMI)
    with pytest.raises(SchemaError, match="no annotation folder"):
        score_davis(root, res, SEMI, sequences=["alpha", "zeta"])
    with pytest.raises(SchemaError, match="no predictions found"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "README.txt").write_text("no masks here")
        DavisPredictions.open(tmp_path / "empty")
    assert DavisPredictions.open(tmp_path).index.keys() == pred.keys()  # one top folder: read from inside
    broken = tmp_path / "broken"
    shutil.copytree(root / "Annotations" / "480p" / "beta", broken / "beta")
    (broken / "beta" / "00001.png").write_bytes(b"garbage")
    with pytest.raises(SchemaError, match="unreadable ground-truth PNG"):
        score_davis(broken, res, SEMI, sequences=["beta"])


def test_16_bit_ids_above_the_limit_are_ignored_not_wrapped(davis, tmp_path):
    root, _, val, _ = davis
    res = write_tree(tmp_path / "res", {s: clean(g) for s, g in val.items()})
    ids = clean(val["alpha"][3]).astype(np.uint16)
    ids[background_corner(val["alpha"][3])] = 257  # would read as proposal 1 if cast to uint8
    Image.fromarray(ids).save(res / "alpha" / "00003.png")
    report = score_davis(root, res, UNSUP)
    assert [(i.kind, i.where) for i in report.issues] == [("too_many_proposals", "alpha")]
    assert report.totals["J&F"] == 100.0


def test_objects_are_those_of_the_first_frame(tmp_path):
    gt = np.zeros((6, H, W), np.uint8)
    gt[:, 5:20, 5:20] = 1
    gt[:, 25:40, 30:50] = 2
    gt[2:, 5:15, 40:60] = 3  # appears in frame 2: not a scored object
    gt[:, 20, 5:20] = 255
    write_tree(tmp_path / "gt", {"late": gt})
    res = write_tree(tmp_path / "res", {"late": clean(gt)})
    unsup = score_davis(tmp_path / "gt", res, UNSUP, sequences=["late"])
    assert [it.object_id for it in unsup.items] == [1, 2] and unsup.issues == []
    assert unsup.totals["J&F"] == 100.0
    semi = score_davis(tmp_path / "gt", res, SEMI, sequences=["late"])
    assert [it.object_id for it in semi.items] == [1, 2] and semi.totals["J&F"] == 100.0
    assert [(i.kind, i.where) for i in semi.issues] == [("id_above_objects", "late")]


def test_decay_bins_do_not_wrap_on_long_sequences(tmp_path):
    t = 260  # the official uint8 bin indices wrap from 256 frames on
    gt = np.zeros((t, H, W), np.uint8)
    gt[:, 10:30, 10:40] = 1
    pred = clean(gt)
    pred[t // 2 :, 10:30, 25:40] = 0  # second half: half the object lost
    write_tree(tmp_path / "gt", {"long": gt})
    res = write_tree(tmp_path / "res", {"long": pred})
    report = score_davis(tmp_path / "gt", res, SEMI, sequences=["long"])
    j = np.array([oracle.db_eval_iou(pred[i], gt[i]) for i in range(1, t - 1)])
    assert report.items[0].metrics["J-Decay"] == 100 * oracle.db_statistics(j)["D"] == 50.0
    wrapped = score_davis(tmp_path / "gt", res, SEMI, sequences=["long"], replicate_uint8_wrap=True)
    assert np.isnan(wrapped.items[0].metrics["J-Decay"])
