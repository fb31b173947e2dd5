"""refsav's video scorer reproduces the official scripts where a shortcut would not.

* Ref-DAVIS17 in its real layout (ReferFormer's conversion: no anno_id and no height/width
  in meta_expressions.json; VISA's mask_dict.pkl built from the DAVIS palette PNGs), scored
  like bytedance/Sa2VA tools/eval/eval_davis.py.  The expected numbers come from the PNGs
  and a direct J/F written here from the DAVIS definitions, not from refsav's scorer.
* Per-expression rounding as the official scripts do it: `round(100 * j, 2)` on a NumPy
  float64, which differs from Python's rounding of a float at some x.xx5 values.
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco
from scipy import ndimage

from refsav.benchmark.inputs import RefVosGroundTruth
from refsav.benchmark.protocols import VIDEO_PROTOCOLS
from refsav.benchmark.score import score_refvos
from refsav.cli import main

H, W = 48, 64
# Inserted out of sorted order on purpose: the official numbering sorts the videos.
VIDEOS = {"dogs-jump": (4, 3), "bike-packing": (3, 2), "camel": (5, 3)}  # name: (frames, objects)


# --------------------------------------------------------------------------- direct J and F


def direct_j(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else np.logical_and(pred, gt).sum() / union


def _boundary(s: np.ndarray) -> np.ndarray:
    """DAVIS seg2bmap: foreground differing from its east, south or south-east neighbour
    (outside the image counts as 0); the last row compares east only, the last column
    south only, and the bottom-right pixel is never a boundary."""
    east, south, south_east = np.zeros_like(s), np.zeros_like(s), np.zeros_like(s)
    east[:, :-1], south[:-1, :], south_east[:-1, :-1] = s[:, 1:], s[1:, :], s[1:, 1:]
    b = (s != east) | (s != south) | (s != south_east)
    b[-1, :] = s[-1, :] != east[-1, :]
    b[:, -1] = s[:, -1] != south[:, -1]
    b[-1, -1] = False
    return b


def direct_f(pred: np.ndarray, gt: np.ndarray) -> float:
    h, w = gt.shape
    r = math.ceil(0.008 * math.hypot(h, w))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = yy**2 + xx**2 <= r**2
    bp, bg = _boundary(pred), _boundary(gt)
    dp, dg = ndimage.binary_dilation(bp, disk), ndimage.binary_dilation(bg, disk)
    n_p, n_g = bp.sum(), bg.sum()
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision, recall = (bp & dg).sum() / n_p, (bg & dp).sum() / n_g
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- the fixture


def _labels(rng: np.random.Generator, frames: int, objects: int) -> np.ndarray:
    """(T, H, W) DAVIS ids: moving rectangles, later objects on top; object 2 is absent
    from the first frame so that mask_dict holds None entries."""
    out = np.zeros((frames, H, W), np.uint8)
    for k in range(1, objects + 1):
        y, x = rng.integers(0, H - 16), rng.integers(0, W - 20)
        hh, ww = rng.integers(8, 16), rng.integers(8, 20)
        for t in range(frames):
            if k == 2 and t == 0:
                continue
            dy, dx = t * int(rng.integers(-1, 3)), t * int(rng.integers(-2, 3))
            out[t, max(0, y + dy) : y + dy + hh, max(0, x + dx) : x + dx + ww] = k
    return out


def _palette_png(path: Path, ids: np.ndarray) -> None:
    img = Image.fromarray(ids, mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12))
    img.save(path)


def _rle(mask: np.ndarray) -> dict:
    r = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    """ReferFormer's Ref-DAVIS17 layout plus VISA's mask_dict.pkl, and a Sa2VA results.json."""
    root = tmp_path_factory.mktemp("refdavis")
    rng = np.random.default_rng(17)
    labels = {v: _labels(rng, t, n) for v, (t, n) in VIDEOS.items()}
    meta = {"videos": {}}
    for v, (t, n) in VIDEOS.items():
        (root / "Annotations" / v).mkdir(parents=True)
        for i in range(t):
            _palette_png(root / "Annotations" / v / f"{i:05d}.png", labels[v][i])
        # Four expressions per object (two annotators x first-frame / full-video), ids 4(k-1)..4k-1,
        # obj_id a string, no anno_id, no height/width: convert_davis_to_ytvos.py's output.
        exps = {str(4 * (k - 1) + a): {"exp": f"object {k}, sentence {a}", "obj_id": str(k)}
                for k in range(1, n + 1) for a in range(4)}
        meta["videos"][v] = {"expressions": exps, "frames": [f"{i:05d}" for i in range(t)]}
    (root / "meta_expressions.json").write_text(json.dumps(meta))

    # mask_dict.pkl as VISA builds it: a counter over sorted videos and string-sorted
    # expression ids; per frame the RLE of (png == obj_id), or None when absent.
    read = {v: np.stack([np.asarray(Image.open(root / "Annotations" / v / f"{i:05d}.png"))
                         for i in range(t)]) for v, (t, _) in VIDEOS.items()}
    mask_dict, anno_of = {}, {}
    for v in sorted(meta["videos"]):
        for exp_id in sorted(meta["videos"][v]["expressions"]):
            obj = int(meta["videos"][v]["expressions"][exp_id]["obj_id"])
            anno = len(mask_dict)
            anno_of[(v, exp_id)] = anno
            mask_dict[str(anno)] = [coco.encode(np.asfortranarray((m == obj).astype(np.uint8))) if (m == obj).any()
                                    else None for m in read[v]]
    (root / "mask_dict.pkl").write_bytes(pickle.dumps(mask_dict))

    # Predictions of every kind: exact, shifted, grown, another object's, empty.
    results, expected = {}, {}
    for v, (t, n) in VIDEOS.items():
        results[v] = {}
        for exp_id, e in meta["videos"][v]["expressions"].items():
            gt = read[v] == int(e["obj_id"])
            kind = int(exp_id) % 5
            if kind == 0:
                pred = gt.copy()
            elif kind == 1:
                pred = np.roll(gt, (2, -3), axis=(1, 2))
            elif kind == 2:
                pred = ndimage.binary_dilation(gt, np.ones((1, 5, 5), bool))
            elif kind == 3:
                pred = read[v] == (int(e["obj_id"]) % n) + 1
            else:
                pred = np.zeros_like(gt)
            results[v][exp_id] = {"exp_id": exp_id, "prediction_masks": [_rle(p) for p in pred]}
            expected[(v, exp_id)] = (float(np.mean([direct_j(p, g) for p, g in zip(pred, gt)])),
                                     float(np.mean([direct_f(p, g) for p, g in zip(pred, gt)])))
    (root / "results.json").write_text(json.dumps(results))
    return root, anno_of, expected


def test_anno_ids_are_numbered_as_the_official_scorer_does(davis):
    root, anno_of, _ = davis
    gt = RefVosGroundTruth.load(root)
    got = {(v.video_id, e.exp_id): e.anno_id for v in gt.videos for e in v.expressions}
    assert got == {key: [anno] for key, anno in anno_of.items()}
    # String order: in the first video ("bike-packing", 8 expressions) "2" follows "1";
    # in "camel" (12) expression "10" comes before "2".
    assert got[("bike-packing", "2")] == [2] and got[("camel", "10")] == [8 + 2] and got[("camel", "2")] == [8 + 4]
    assert all(gt.frame_size(v) == (H, W) for v in gt.videos)  # from the masks


def _expected_totals(expected: dict) -> dict:
    j = 100 * float(np.mean([jf[0] for jf in expected.values()]))
    f = 100 * float(np.mean([jf[1] for jf in expected.values()]))
    return {"J": j, "F": f, "J&F": (j + f) / 2}


@pytest.mark.parametrize("masks", ["mask_dict.pkl", "mask_dict.json"])
def test_ref_davis17_real_layout_scores_like_the_official_script(davis, tmp_path, masks, capsys):
    root, _, expected = davis
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    (gt_dir / "meta_expressions.json").write_bytes((root / "meta_expressions.json").read_bytes())
    if masks == "mask_dict.pkl":
        (gt_dir / masks).write_bytes((root / masks).read_bytes())
    else:  # the same masks as JSON (counts as text)
        raw = pickle.loads((root / "mask_dict.pkl").read_bytes())
        as_json = {k: [None if r is None else {"size": list(r["size"]), "counts": r["counts"].decode()} for r in v]
                   for k, v in raw.items()}
        (gt_dir / masks).write_text(json.dumps(as_json))

    report = score_refvos(gt_dir, root / "results.json", VIDEO_PROTOCOLS["refdavis"])
    assert not report.issues
    by_key = {(s.video_id, s.exp_id): s.metrics for s in report.items}
    assert set(by_key) == set(expected)
    for key, (j, f) in expected.items():
        assert by_key[key]["J"] == pytest.approx(100 * j, abs=1e-9), key
        assert by_key[key]["F"] == pytest.approx(100 * f, abs=1e-9), key
    want = _expected_totals(expected)
    for k, v in want.items():
        assert report.totals[k] == pytest.approx(v, abs=1e-9)
    # The numbers mean something: neither perfect nor the empty-ground-truth score.
    assert 20 < want["J&F"] < 90

    out = tmp_path / "out"
    code = main(["score", "--protocol", "refdavis", "--gt", str(gt_dir), "--pred", str(root / "results.json"),
                 "--out", str(out), "--strict"])
    assert code == 0, capsys.readouterr().err
    scores = json.loads((out / "scores.json").read_text())
    assert scores["J&F"] == pytest.approx(want["J&F"], abs=1e-9)


def test_a_video_without_any_mask_cannot_be_sized(davis, tmp_path):
    """No height/width and every GT mask None: refsav says so instead of guessing a size
    (the official script would take it from the prediction)."""
    root, _, _ = davis
    raw = pickle.loads((root / "mask_dict.pkl").read_bytes())
    blank = {k: [None] * len(v) for k, v in raw.items()}
    (tmp_path / "meta_expressions.json").write_bytes((root / "meta_expressions.json").read_bytes())
    (tmp_path / "mask_dict.pkl").write_bytes(pickle.dumps(blank))
    from refsav.schemas import SchemaError

    with pytest.raises(SchemaError, match="cannot tell the frame size") as err:
        score_refvos(tmp_path, root / "results.json", VIDEO_PROTOCOLS["refdavis"])
    assert "mask_dict.pkl" in str(err.value) and "record dogs-jump" in str(err.value)  # the first video of the file


# --------------------------------------------------------------------------- rounding


def _one_frame_gt(root: Path, preds: dict[str, np.ndarray], h: int, w: int) -> None:
    full = np.ones((h, w), bool)
    exps = {exp_id: {"exp": f"e{exp_id}", "obj_id": [0], "anno_id": [0], "type_id": int(exp_id)} for exp_id in preds}
    meta = {"videos": {"v": {"frames": ["00000"], "expressions": exps, "height": h, "width": w}}}
    (root / "meta_expressions_valid.json").write_text(json.dumps(meta))
    (root / "mask_dict.json").write_text(json.dumps({"0": [_rle(full)]}))
    (root / "results.json").write_text(json.dumps(
        {"v": {e: {"prediction_masks": [_rle(p)]} for e, p in preds.items()}}))


def test_per_expression_rounding_is_numpy_float64_rounding(tmp_path):
    """A 50x80 frame, GT the whole frame: a prediction of 1 pixel has J = 1/4000, so
    100 * J = 0.025, which the official `round(np.float64, 2)` makes 0.02 and Python's
    `round(float, 2)` 0.03; 3 pixels give 0.075: 0.08 against 0.07."""
    h, w = 50, 80
    preds = {}
    for exp_id, pixels in (("0", 1), ("1", 3)):
        p = np.zeros((h, w), bool)
        p.flat[:pixels] = True
        preds[exp_id] = p
    _one_frame_gt(tmp_path, preds, h, w)

    official = {}
    for exp_id, p in preds.items():
        j = np.array([p.sum() / (h * w)]).mean()  # a NumPy float64, as db_eval_iou(...).mean() returns
        official[exp_id] = round(100 * j, 2)  # the official expression, literally
        assert official[exp_id] != round(float(100 * j), 2)  # a real boundary: Python's rounding differs
    assert official == {"0": 0.02, "1": 0.08}

    report = score_refvos(tmp_path, tmp_path / "results.json", VIDEO_PROTOCOLS["refsav"])
    got = {s.exp_id: s.metrics for s in report.items}
    assert {e: m["J"] for e, m in got.items()} == official
    assert {e: m["A"] for e, m in got.items()} == official  # accuracy is the same fraction here
    assert report.subsets["long"]["J"] == 0.02 and report.subsets["short"]["J"] == 0.08
