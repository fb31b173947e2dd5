"""Parity of refsav.benchmark.metrics with the oracle, plus hand-checked values.

The oracle (benchmark/oracle.py) is a literal per-frame transcription of the official
definitions; every production number must equal it (|delta| <= 1e-9, in practice 0).
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
from skimage.morphology import disk as sk_disk

from refsav.benchmark import metrics, oracle
from refsav.benchmark.metrics import boundary, run_masks
from refsav.schemas import SchemaError
from refsav.schemas import rle as rle_ops

TOL = 1e-9


# ----------------------------------------------------------------------------- helpers


def seg2bmap_by_rules(mask: np.ndarray) -> np.ndarray:
    """Third, loop-based reading of the seg2bmap rules (only for tiny masks)."""
    s = np.asarray(mask).astype(bool)
    h, w = s.shape

    def at(y, x):
        return bool(s[y, x]) if y < h and x < w else False

    b = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                b[y, x] = False
            elif x == w - 1:
                b[y, x] = at(y, x) != at(y + 1, x)
            elif y == h - 1:
                b[y, x] = at(y, x) != at(y, x + 1)
            else:
                b[y, x] = at(y, x) != at(y, x + 1) or at(y, x) != at(y + 1, x) or at(y, x) != at(y + 1, x + 1)
    return b


def blob(h: int, w: int, rng: np.random.Generator, cy=None, cx=None, rad=None) -> np.ndarray:
    """Random smooth polygon blob, possibly cut by the image border."""
    cy = rng.uniform(-0.1, 1.1) * h if cy is None else cy
    cx = rng.uniform(-0.1, 1.1) * w if cx is None else cx
    rad = rng.uniform(0.05, 0.5) * min(h, w) + 1 if rad is None else rad
    ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    rr = rad * (1 + 0.3 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.1 * rng.standard_normal(40))
    pts = np.stack([cx + rr * np.cos(ang), cy + rr * np.sin(ang)], 1)
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def variant(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A prediction derived from gt: shifted, dilated/eroded, noisy or unrelated."""
    kind = rng.integers(0, 6)
    if kind == 0:
        return np.roll(gt, tuple(rng.integers(-6, 7, 2)), axis=(0, 1))
    if kind == 1:
        k = np.ones((2 * rng.integers(1, 4) + 1,) * 2, np.uint8)
        op = cv2.dilate if rng.random() < 0.5 else cv2.erode
        return op(gt.astype(np.uint8), k).astype(bool)
    if kind == 2:
        return gt ^ (rng.random(gt.shape) < 0.05)
    if kind == 3:
        return rng.random(gt.shape) < rng.uniform(0.01, 0.9)
    if kind == 4:
        return blob(*gt.shape, rng)
    return gt.copy()


def random_pairs(rng: np.random.Generator, n: int, max_side: int = 70):
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(1, max_side, 2))
        gt = blob(h, w, rng) if rng.random() < 0.7 else rng.random((h, w)) < rng.uniform(0, 1)
        yield variant(gt, rng), gt


def assert_f_parity(pred, gt, bound_th=0.008, void=None):
    got = metrics.f_per_frame(pred, gt, void=void, bound_th=bound_th)
    want = [oracle.f_measure(pred, gt, void=void, bound_th=bound_th)]
    assert got.shape == (1,)
    assert abs(got[0] - want[0]) <= TOL, (got, want, pred.shape, bound_th)


# ------------------------------------------------------------------------- seg2bmap


SQUARE_5x5 = np.zeros((5, 5), bool)
SQUARE_5x5[1:4, 1:4] = True
SQUARE_5x5_BMAP = np.array(
    [
        [1, 1, 1, 1, 0],
        [1, 0, 0, 1, 0],
        [1, 0, 0, 1, 0],
        [1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0],
    ],
    bool,
)
CORNER_5x5 = np.zeros((5, 5), bool)
CORNER_5x5[2:, 2:] = True  # touches the bottom and right borders
CORNER_5x5_BMAP = np.array(
    [
        [0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1],
        [0, 1, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 1, 0, 0, 0],
    ],
    bool,
)


@pytest.mark.parametrize(
    "mask, expected",
    [(SQUARE_5x5, SQUARE_5x5_BMAP), (CORNER_5x5, CORNER_5x5_BMAP)],
    ids=["square-inside", "square-bottom-right"],
)
def test_seg2bmap_hand_checked(mask, expected):
    for impl in (oracle.seg2bmap, metrics.seg2bmap, seg2bmap_by_rules):
        np.testing.assert_array_equal(impl(mask), expected)


def test_seg2bmap_single_pixels_and_full():
    def one(h, w, y, x):
        m = np.zeros((h, w), bool)
        m[y, x] = True
        return m

    assert metrics.seg2bmap(one(5, 5, 2, 2)).sum() == 4  # 2x2 block up-left of it
    assert metrics.seg2bmap(one(5, 5, 0, 0)).sum() == 1  # nothing above/left exists
    assert metrics.seg2bmap(one(5, 5, 4, 4)).sum() == 3  # corner pixel never counts
    assert metrics.seg2bmap(np.ones((6, 9), bool)).sum() == 0  # image border is not background
    assert metrics.seg2bmap(np.zeros((6, 9), bool)).sum() == 0


def test_seg2bmap_random_equals_rules():
    rng = np.random.default_rng(0)
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(1, 12, 2))
        m = rng.random((h, w)) < rng.uniform(0, 1)
        want = seg2bmap_by_rules(m)
        np.testing.assert_array_equal(oracle.seg2bmap(m), want)
        np.testing.assert_array_equal(metrics.seg2bmap(m), want)


# --------------------------------------------------------------------- footprint, radius


@pytest.mark.parametrize("r", [0, 1, 2, 3, 5, 8, 12, 18, 25, 1.5, 2.7, 3.2, 8.0])
def test_disk_footprint_equals_skimage(r):
    np.testing.assert_array_equal(metrics.disk_footprint(r), sk_disk(r).astype(np.uint8))


def test_disk_rectangles_cover_exactly_the_disk():
    for r in range(0, 41):
        cover = np.zeros((2 * r + 1, 2 * r + 1), bool)
        for a, b in boundary._disk_rectangles(r):
            cover[r - a : r + a + 1, r - b : r + b + 1] = True
        np.testing.assert_array_equal(cover, sk_disk(r).astype(bool))


def test_boundary_radius():
    assert metrics.boundary_radius((480, 854)) == 8  # ceil(7.84)
    assert metrics.boundary_radius((720, 1280)) == 12
    assert metrics.boundary_radius((1080, 1920)) == 18
    assert metrics.boundary_radius((480, 854), bound_th=3) == 3
    assert metrics.boundary_radius((480, 854), bound_th=2.5) == 2.5
    for shape in [(1, 1), (7, 13), (1, 500), (333, 1), (1080, 1920)]:
        for th in (0.008, 0.02, 0.1, 1, 4):
            assert metrics.boundary_radius(shape, th) == oracle.boundary_radius(shape, th)
    with pytest.raises(ValueError):
        metrics.boundary_radius((10, 10), -0.1)


# ------------------------------------------------------------------- F: hand-checked


def test_f_one_row_hand_checked():
    # Boundaries: pred at x = 0 and 2, gt at x = 4 and 6 (last-row rule: east only).
    pred = np.array([[0, 1, 1, 0, 0, 0, 0, 0]], bool)
    gt = np.array([[0, 0, 0, 0, 0, 1, 1, 0]], bool)
    assert metrics.f_per_frame(pred, gt, bound_th=1)[0] == 0.0  # nothing within 1 px
    assert metrics.f_per_frame(pred, gt, bound_th=2)[0] == 0.5  # P = R = 1/2
    assert metrics.f_per_frame(pred, gt, bound_th=4)[0] == 1.0
    assert metrics.f_per_frame(pred, gt)[0] == 0.0  # r = ceil(0.008 * sqrt(65)) = 1
    for th in (1, 2, 3, 4):
        assert_f_parity(pred, gt, bound_th=th)


def test_f_disk_excludes_diagonal_at_radius_one():
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), bool)
    pred[1, 1] = True  # boundary {(0,0), (0,1), (1,0), (1,1)}
    gt[2, 2] = True  # boundary {(1,1), (1,2), (2,1), (2,2)}
    # disk(1) is a plus: (0,0) and (2,2) have no partner -> P = R = 3/4.
    assert metrics.boundary_counts(pred, gt, 1) == (4, 4, 3, 3)
    assert metrics.f_per_frame(pred, gt, bound_th=1)[0] == 0.75
    assert metrics.f_per_frame(pred, gt, bound_th=2)[0] == 1.0


def test_f_special_cases():
    z = np.zeros((9, 11), bool)
    o = np.ones((9, 11), bool)
    sq = z.copy()
    sq[2:5, 3:7] = True
    cases = [
        (z, z, 1.0),  # both empty
        (z, sq, 0.0),  # empty prediction
        (sq, z, 0.0),  # prediction on empty GT
        (o, o, 1.0),
        (z, o, 1.0),  # a full mask has no boundary either: both boundaries empty
        (o, sq, 0.0),
        (sq, sq, 1.0),
    ]
    for pred, gt, want in cases:
        assert metrics.f_per_frame(pred, gt)[0] == want
        assert oracle.f_measure(pred, gt) == want


def test_j_special_cases_and_hand_values():
    z = np.zeros((4, 5), bool)
    o = np.ones((4, 5), bool)
    a = z.copy()
    a[:2] = True  # 10 px
    b = z.copy()
    b[1:3] = True  # 10 px, overlap 5
    assert metrics.j_per_frame(z, z)[0] == 1.0
    assert metrics.j_per_frame(z, o)[0] == 0.0
    assert metrics.j_per_frame(o, o)[0] == 1.0
    assert metrics.j_per_frame(a, b)[0] == 5 / 15
    void = z.copy()
    void[0] = True  # removes 5 px of a only
    assert metrics.j_per_frame(a, b, void=void)[0] == 5 / 10
    assert metrics.j_per_frame(a, a, void=a)[0] == 1.0  # union fully void


# ------------------------------------------------------------------ F/J: oracle parity


@pytest.mark.parametrize("bound_th", [0.008, 0.03, 0, 1, 2, 3, 1.5, 2.5])
def test_f_parity_random_small(bound_th):
    rng = np.random.default_rng(int(bound_th * 1000) + 1)
    for pred, gt in random_pairs(rng, 120):
        assert_f_parity(pred, gt, bound_th)


def test_f_integral_and_dilate_paths_agree():
    rng = np.random.default_rng(7)
    for pred, gt in random_pairs(rng, 150, max_side=90):
        for r in (0, 1, 2, 5, 9):
            a = metrics.boundary_counts(pred, gt, r, method="integral")
            b = metrics.boundary_counts(pred, gt, r, method="dilate")
            assert a == b


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1), (1, 37), (41, 1), (7, 13), (13, 7), (2, 2)])
def test_f_j_parity_odd_shapes(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(40):
        pred = rng.random(shape) < rng.uniform(0, 1)
        gt = rng.random(shape) < rng.uniform(0, 1)
        for th in (0.008, 1, 2):
            assert_f_parity(pred, gt, th)
        assert abs(metrics.j_per_frame(pred, gt)[0] - oracle.db_eval_iou(pred, gt)) <= TOL


def test_f_parity_objects_touching_borders_and_corners():
    rng = np.random.default_rng(3)
    h, w = 48, 64
    corners = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
    centres = corners + [(0, w / 2), (h - 1, w / 2), (h / 2, 0), (h / 2, w - 1)]
    for cy, cx in centres:
        for _ in range(4):
            gt = blob(h, w, rng, cy=cy, cx=cx)
            for pred in (variant(gt, rng), np.roll(gt, 1, axis=0), np.roll(gt, -1, axis=1), gt):
                for th in (0.008, 1, 3):
                    assert_f_parity(pred, gt, th)
    # Full rows / columns along each border.
    for sl in (np.s_[:1, :], np.s_[-1:, :], np.s_[:, :1], np.s_[:, -1:], np.s_[:3, :], np.s_[:, -2:]):
        gt = np.zeros((h, w), bool)
        gt[sl] = True
        for pred in (gt, ~gt, np.roll(gt, 2, axis=0), np.roll(gt, 2, axis=1)):
            assert_f_parity(pred, gt)


@pytest.mark.parametrize("bound_th", [2, 3, 5, 2.5])
def test_f_parity_separated_parts(bound_th):
    """Far-apart parts are scored on separate crops: check gaps around the radius."""
    r = math.ceil(bound_th)
    for gap in range(max(r - 2, 0), r + 4):
        for axis in (0, 1):
            top = np.zeros((40, 50), bool)
            bottom = np.zeros((40, 50), bool)
            top[4:9, 6:12] = True
            bottom[9 + gap : 14 + gap, 8:15] = True  # `gap` empty rows below `top`
            if axis == 1:
                top, bottom = top.T.copy(), bottom.T.copy()
            both = top | bottom
            shifted = np.roll(both, 1, axis=1 - axis)
            for pred, gt in [(top, bottom), (both, bottom), (top, both), (both, shifted)]:
                assert_f_parity(pred, gt, bound_th)
    # Parts side by side in one row band, with different heights (column split, then
    # each part's rows are tightened), plus a far false positive.
    rng = np.random.default_rng(8)
    for _ in range(30):
        gt = np.zeros((60, 90), bool)
        gt[rng.integers(0, 20) : rng.integers(25, 40), 2:20] = True
        gt[rng.integers(10, 30) : rng.integers(35, 60), 20 + r + rng.integers(0, 4) : 60] = True
        pred = variant(gt, rng)
        pred[rng.integers(0, 55) :, 85:] = rng.random() < 0.5
        assert_f_parity(pred, gt, bound_th)


def test_f_parity_one_pixel_objects():
    for shape in [(5, 5), (9, 16), (1, 8), (8, 1)]:
        h, w = shape
        for y in {0, h // 2, h - 1}:
            for x in {0, w // 2, w - 1}:
                gt = np.zeros(shape, bool)
                gt[y, x] = True
                for dy, dx in [(0, 0), (0, 1), (1, 1), (2, 0), (0, 3)]:
                    pred = np.zeros(shape, bool)
                    pred[min(y + dy, h - 1), min(x + dx, w - 1)] = True
                    for th in (0.008, 1, 2):
                        assert_f_parity(pred, gt, th)


def test_f_j_parity_with_void():
    rng = np.random.default_rng(11)
    for pred, gt in random_pairs(rng, 60, max_side=50):
        void = blob(*gt.shape, rng) if rng.random() < 0.5 else rng.random(gt.shape) < 0.1
        assert_f_parity(pred, gt, 0.008, void=void)
        j = metrics.j_per_frame(pred, gt, void=void)[0]
        assert abs(j - oracle.db_eval_iou(pred, gt, void=void)) <= TOL


def test_f_j_parity_realistic_frames_stack():
    """(T, H, W) stacks at real resolutions, with empty frames mixed in."""
    rng = np.random.default_rng(5)
    for h, w in [(480, 854), (720, 1280), (1080, 1920)]:
        frames_p, frames_g = [], []
        for t in range(4):
            gt = blob(h, w, rng, rad=rng.uniform(8, 0.25 * h))
            pred = variant(gt, rng) if t else np.zeros_like(gt)
            frames_p.append(pred)
            frames_g.append(gt)
        frames_p.append(np.zeros((h, w), bool))
        frames_g.append(np.zeros((h, w), bool))
        pred, gt = np.stack(frames_p), np.stack(frames_g)
        f = metrics.f_per_frame(pred, gt)
        j = metrics.j_per_frame(pred, gt)
        assert f.shape == j.shape == (5,)
        for t in range(5):
            assert abs(f[t] - oracle.f_measure(pred[t], gt[t])) <= TOL
            assert abs(j[t] - oracle.db_eval_iou(pred[t], gt[t])) <= TOL
        assert f[0] == 0.0 and f[4] == 1.0 and j[4] == 1.0


def test_input_dtypes_and_shapes():
    rng = np.random.default_rng(2)
    gt = blob(40, 60, rng)
    pred = variant(gt, rng)
    want_f = metrics.f_per_frame(pred, gt)
    want_j = metrics.j_per_frame(pred, gt)
    conversions = (
        lambda m: m.astype(np.uint8) * 255,  # PNG-style 0/255
        lambda m: m.astype(np.int32) * 2,  # summed overlapping instances
        lambda m: m.astype(np.float32),
    )
    for conv in conversions:
        np.testing.assert_array_equal(metrics.f_per_frame(conv(pred), conv(gt)), want_f)
        np.testing.assert_array_equal(metrics.j_per_frame(conv(pred), conv(gt)), want_j)
    # Non-contiguous views.
    np.testing.assert_array_equal(metrics.f_per_frame(pred.T, gt.T), [oracle.f_measure(pred.T, gt.T)])
    np.testing.assert_array_equal(metrics.j_per_frame(pred.T, gt.T), [oracle.db_eval_iou(pred.T, gt.T)])
    with pytest.raises(ValueError):
        metrics.f_per_frame(pred, gt[:-1])
    with pytest.raises(ValueError):
        metrics.j_per_frame(pred[None, None], gt[None, None])


# --------------------------------------------------------------------------- DAVIS stats


def official_style_decay(v: np.ndarray) -> float:
    """The official expression with this NumPy's uint8 semantics (for parity only)."""
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bins = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]
        return float(np.nanmean(bins[0]) - np.nanmean(bins[3]))


def test_decay_100_frames_hand_checked():
    v = np.arange(100) / 100.0  # bins [0..25] and [74..99]
    want = np.mean(v[0:26]) - np.mean(v[74:100])
    assert want == pytest.approx(0.125 - 0.865)
    for replicate in (False, True):
        s = metrics.db_statistics(v, replicate_uint8_wrap=replicate)
        assert s.decay == want
        assert s.mean == np.mean(v)
        assert s.recall == 0.49  # v > 0.5 for 0.51..0.99


def test_decay_300_frames_uint8_wrap():
    v = np.linspace(1.0, 0.0, 300)
    assert math.isnan(metrics.decay(v, replicate_uint8_wrap=True))  # edges 0,75,150,224,43
    d = metrics.decay(v)
    assert d == np.mean(v[0:76]) - np.mean(v[224:300])
    assert d > 0.7


def test_decay_replicate_matches_official_expression_and_oracle():
    rng = np.random.default_rng(9)
    for n in list(range(1, 40)) + [99, 100, 200, 255, 256, 257, 300, 341, 512, 600]:
        v = rng.random(n)
        v[rng.random(n) < 0.1] = np.nan
        want = official_style_decay(v)
        got = metrics.decay(v, replicate_uint8_wrap=True)
        assert (math.isnan(want) and math.isnan(got)) or got == want, n
        for replicate in (False, True):
            o = oracle.db_statistics(v, replicate_uint8_wrap=replicate)
            s = metrics.db_statistics(v, replicate_uint8_wrap=replicate)
            for a, b in ((o["M"], s.mean), (o["R"], s.recall), (o["D"], s.decay)):
                assert (math.isnan(a) and math.isnan(b)) or a == b, (n, replicate)
        if n < 256:
            assert metrics.decay(v) == got or (math.isnan(got) and math.isnan(metrics.decay(v)))


def test_db_statistics_nan_frames_and_empty():
    s = metrics.db_statistics([1.0, np.nan, 0.2, 0.9])
    assert s.mean == pytest.approx((1.0 + 0.2 + 0.9) / 3)
    assert s.recall == 0.5  # NaN counts as a miss: 2 of 4
    m, r, d = s  # unpacks like the official (M, O, D) tuple
    assert (m, r, d) == (s.mean, s.recall, s.decay)
    e = metrics.db_statistics([])
    assert math.isnan(e.mean) and math.isnan(e.decay)


# ------------------------------------------------------------------------------- ReVOS


def test_revos_hand_checked():
    gt = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], np.uint8)
    pred = np.array([[255, 0, 255, 0], [0, 0, 0, 0]], np.uint8)  # 0/255 PNG-style
    fg = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.uint8)
    assert metrics.revos_accuracy(pred, gt)[0] == 6 / 8  # binarised: 2 pixels differ
    # FP = 1 (pixel (0,2)); |fg| = 4 -> 1 - 1 / (4 + 1e-6)
    assert metrics.revos_robustness(pred, gt, fg)[0] == 1 - 1 / (4 + 1e-6)
    # Many false positives clamp at 0.
    assert metrics.revos_robustness(np.ones_like(gt), gt, fg)[0] == 0.0
    assert metrics.revos_robustness(gt, gt, np.zeros_like(gt))[0] == 1.0


def test_revos_parity_random():
    rng = np.random.default_rng(4)
    for pred, gt in random_pairs(rng, 60, max_side=40):
        fg = gt | (rng.random(gt.shape) < 0.2)
        pred8 = pred.astype(np.uint8) * 255
        gt8 = gt.astype(np.uint8) * 2  # overlapping instances summed: still foreground
        assert metrics.revos_accuracy(pred8, gt8)[0] == oracle.revos_accuracy(pred, gt)
        assert metrics.revos_robustness(pred8, gt8, fg)[0] == oracle.revos_robustness(pred, gt, fg)
    stack_p = rng.random((3, 10, 12)) < 0.3
    stack_g = rng.random((3, 10, 12)) < 0.3
    acc = metrics.revos_accuracy(stack_p, stack_g)
    assert acc.shape == (3,)
    assert all(acc[t] == oracle.revos_accuracy(stack_p[t], stack_g[t]) for t in range(3))


# ------------------------------------------------------------ scoring straight from RLE


def counts_of(mask: np.ndarray) -> str:
    return rle_ops.encode(mask).counts


def coco_counts(runs: list[int]) -> str:
    """Compressed COCO counts of a run list, per the format (independent of pycocotools)."""
    out = []
    for i, x in enumerate(runs):
        v = x - runs[i - 2] if i > 2 else x
        more = True
        while more:
            c = v & 0x1F
            v >>= 5
            more = not ((c & 0x10) == 0 and v == 0 or (c & 0x10) != 0 and v == -1)
            out.append(chr(c + 48 + (0x20 if more else 0)))
    return "".join(out)


def test_parse_counts_matches_the_reference_decoder():
    rng = np.random.default_rng(21)
    strings = []
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        strings.append(counts_of(rng.random((h, w)) < rng.uniform(0, 1)))
    # Long runs (multi-character values), negative deltas (sign extension), a full mask.
    strings += [coco_counts([0, 2_000_000, 5, 1_000_000, 3]), coco_counts([7, 1, 900, 2, 3, 40_000]),
                counts_of(np.ones((37, 41), bool)), counts_of(np.zeros((1080, 1920), bool)), ""]
    runs, offsets, ok = rle_ops.parse_counts(strings)
    assert ok.all() and len(offsets) == len(strings) + 1
    for i, s in enumerate(strings):
        assert runs[offsets[i] : offsets[i + 1]].tolist() == rle_ops.run_lengths(s), s
    # What the fast decoder will not vouch for is flagged, not silently mis-read, and
    # does not disturb its neighbours.
    bad = ["0" + chr(0x2F), "1P", "1" + "o" * 12 + "0", "1é2", "\x7f"]
    runs, offsets, ok = rle_ops.parse_counts([strings[0]] + bad + [strings[1]])
    assert ok.tolist() == [True] + [False] * len(bad) + [True]
    assert runs[offsets[0] : offsets[1]].tolist() == rle_ops.run_lengths(strings[0])
    assert runs[offsets[-2] : offsets[-1]].tolist() == rle_ops.run_lengths(strings[1])


def test_run_lengths_reads_any_value_exactly_and_names_the_first_fault():
    rng = np.random.default_rng(23)
    for _ in range(200):
        runs = [int(v) for v in rng.integers(0, 5000, rng.integers(0, 12))]
        assert rle_ops.run_lengths(coco_counts(runs)) == runs
    # Values int64 cannot hold (corrupt data) are still read exactly.
    for runs in ([3, 1 << 70, 2], [0, 5, -(1 << 65), 7, 1 << 100], [1 << 41]):
        assert rle_ops.run_lengths(coco_counts(runs)) == runs
    with pytest.raises(SchemaError, match="invalid character ' '"):
        rle_ops.run_lengths("1" + "o" * 12 + " 0")  # the first fault wins over a later truncation
    with pytest.raises(SchemaError, match="invalid character 'é'"):
        rle_ops.run_lengths("12é")
    with pytest.raises(SchemaError, match="ends in the middle of a value"):
        rle_ops.run_lengths("1P")


def test_runmasks_round_trips_and_set_operations():
    rng = np.random.default_rng(22)
    for _ in range(150):
        t, h, w = (int(v) for v in rng.integers(1, 9, 3)) if rng.random() < 0.5 else (2, 1, int(rng.integers(1, 40)))
        a = rng.random((t, h, w)) < rng.uniform(0, 1, (t, 1, 1))
        b = rng.random((t, h, w)) < rng.uniform(0, 1, (t, 1, 1))
        a[rng.random(t) < 0.3] = False
        b[rng.random(t) < 0.2] = True
        ra = metrics.RunMasks.from_dense(a)
        rb = metrics.RunMasks.from_counts([None if not m.any() and rng.random() < 0.5 else counts_of(m) for m in b], h, w)
        np.testing.assert_array_equal(ra.to_dense(), a)
        np.testing.assert_array_equal(rb.to_dense(), b)
        assert ra.shape == (t, h, w)
        np.testing.assert_array_equal(ra.areas(), a.sum(axis=(1, 2)))
        np.testing.assert_array_equal(ra.intersection_areas(rb), (a & b).sum(axis=(1, 2)))
        np.testing.assert_array_equal(ra.union(rb).to_dense(), a | b)
        boxes = ra.boxes()
        for k in range(t):
            ys, xs = np.nonzero(a[k])
            want = (ys.min(), ys.max(), xs.min(), xs.max()) if ys.size else (h, -1, w, -1)
            assert tuple(boxes[k]) == want
            if ys.size:
                box = (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max()))
                np.testing.assert_array_equal(ra.crop_transposed(k, box), a[k, box[0] : box[1] + 1, box[2] : box[3] + 1].T)
    with pytest.raises(ValueError):
        ra.intersection_areas(metrics.RunMasks.empty(t + 1, h, w))


def test_runmasks_rejects_corrupt_counts():
    good = counts_of(np.eye(4, dtype=bool))
    with pytest.raises(SchemaError, match="cover 15 pixels"):
        metrics.RunMasks.from_counts([good, coco_counts([15])], 4, 4)
    with pytest.raises(SchemaError, match="negative run"):
        metrics.RunMasks.from_counts([coco_counts([4, -2, 14])], 4, 4)
    with pytest.raises(SchemaError, match="invalid character"):
        metrics.RunMasks.from_counts(["1" + chr(0x7F)], 4, 4)
    with pytest.raises(SchemaError, match="middle of a value"):
        metrics.RunMasks.from_counts(["0P"], 4, 4)


def assert_frame_scores_parity(pred: np.ndarray, gt: np.ndarray, bound_th=0.008, via="dense"):
    """frame_scores on RunMasks == oracle J, F, A on every frame (exactly)."""
    if via == "dense":
        rp, rg = metrics.RunMasks.from_dense(pred), metrics.RunMasks.from_dense(gt)
    else:
        h, w = pred.shape[1:]
        rp = metrics.RunMasks.from_counts([counts_of(m) for m in pred], h, w)
        rg = metrics.RunMasks.from_counts([counts_of(m) if m.any() else None for m in gt], h, w)
    s = metrics.frame_scores(rp, rg, bound_th=bound_th)
    for t in range(len(pred)):
        want = (oracle.db_eval_iou(pred[t], gt[t]), oracle.f_measure(pred[t], gt[t], bound_th=bound_th),
                oracle.revos_accuracy(pred[t], gt[t]))
        got = (s.j[t], s.f[t], s.accuracy[t])
        assert all(abs(g - w_) <= TOL for g, w_ in zip(got, want)), (t, got, want, pred.shape, bound_th)
    fg = gt | np.roll(gt, 3, axis=2)
    r = s.robustness(fg.sum(axis=(1, 2)))
    for t in range(len(pred)):
        assert abs(r[t] - oracle.revos_robustness(pred[t], gt[t], fg[t])) <= TOL
    return s


def test_frame_scores_special_cases():
    h, w = 9, 11
    z, o = np.zeros((h, w), bool), np.ones((h, w), bool)
    sq = z.copy()
    sq[2:5, 3:7] = True
    dot = z.copy()
    dot[4, 5] = True
    pairs = [(z, z), (z, o), (o, z), (o, o), (z, sq), (sq, z), (o, sq), (sq, o), (sq, sq), (dot, sq), (dot, dot)]
    pred = np.stack([p for p, _ in pairs])
    gt = np.stack([g for _, g in pairs])
    for th in (0.008, 1, 2, 0, 2.5):
        s = assert_frame_scores_parity(pred, gt, th)
    assert s.j[0] == s.f[0] == s.accuracy[0] == 1.0  # both empty: perfect
    assert s.f[1] == s.f[2] == 1.0 and s.j[1] == 0.0  # empty vs full: no boundary on either side
    assert s.f[4] == s.f[5] == 0.0


@pytest.mark.parametrize("bound_th", [0.008, 0.03, 0, 1, 2, 3, 1.5, 2.5])
def test_frame_scores_parity_random_small(bound_th):
    rng = np.random.default_rng(int(bound_th * 1000) + 31)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        gts = [blob(h, w, rng) if rng.random() < 0.7 else rng.random((h, w)) < rng.uniform(0, 1) for _ in range(8)]
        preds = [variant(g, rng) for g in gts]
        gts[0] = np.zeros((h, w), bool)
        assert_frame_scores_parity(np.stack(preds), np.stack(gts), bound_th, via="counts" if h % 2 else "dense")


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1), (1, 37), (41, 1), (7, 13), (13, 7), (2, 2)])
def test_frame_scores_parity_odd_shapes(shape):
    rng = np.random.default_rng(sum(shape) + 5)
    pred = rng.random((30, *shape)) < rng.uniform(0, 1, (30, 1, 1))
    gt = rng.random((30, *shape)) < rng.uniform(0, 1, (30, 1, 1))
    for th in (0.008, 1, 2):
        assert_frame_scores_parity(pred, gt, th)


def test_frame_scores_parity_borders_corners_and_single_pixels():
    rng = np.random.default_rng(33)
    h, w = 48, 64
    centres = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (0, w / 2), (h - 1, w / 2), (h / 2, 0), (h / 2, w - 1)]
    preds, gts = [], []
    for cy, cx in centres:
        for _ in range(3):
            gt = blob(h, w, rng, cy=cy, cx=cx)
            for pred in (variant(gt, rng), np.roll(gt, 1, axis=0), np.roll(gt, -1, axis=1), gt):
                preds.append(pred)
                gts.append(gt)
    for sl in (np.s_[:1, :], np.s_[-1:, :], np.s_[:, :1], np.s_[:, -1:], np.s_[:3, :], np.s_[:, -2:]):
        gt = np.zeros((h, w), bool)
        gt[sl] = True
        for pred in (gt, ~gt, np.roll(gt, 2, axis=0), np.roll(gt, 2, axis=1)):
            preds.append(pred)
            gts.append(gt)
    for y in (0, h // 2, h - 1):
        for x in (0, w // 2, w - 1):
            gt = np.zeros((h, w), bool)
            gt[y, x] = True
            for dy, dx in [(0, 0), (0, 1), (1, 1), (2, 0), (0, 3), (30, 40)]:
                pred = np.zeros((h, w), bool)
                pred[(y + dy) % h, (x + dx) % w] = True
                preds.append(pred)
                gts.append(gt)
    for th in (0.008, 1, 3):
        assert_frame_scores_parity(np.stack(preds), np.stack(gts), th, via="counts")


def test_frame_scores_parity_realistic_stacks_and_far_apart_masks():
    """Real resolutions, objects of all sizes, a prediction on the wrong object."""
    rng = np.random.default_rng(34)
    for h, w in [(720, 1280), (1080, 1920)]:
        preds, gts = [], []
        for t in range(5):
            gt = blob(h, w, rng, rad=rng.uniform(3, 0.2 * h))
            pred = variant(gt, rng) if t % 4 else blob(h, w, rng, rad=rng.uniform(10, 60))
            preds.append(pred)
            gts.append(gt)
        preds.append(np.zeros((h, w), bool))
        gts.append(preds[0])
        assert_frame_scores_parity(np.stack(preds), np.stack(gts), via="counts")


def test_stacked_boundary_counts_equal_boundary_counts(monkeypatch):
    """The batched F path against the per-frame one, on frames frame_scores would send
    either way (far-apart masks included), across batch boundaries."""
    monkeypatch.setattr(run_masks, "_BATCH_PIXELS", 3000)  # many small batches
    rng = np.random.default_rng(35)
    h, w = 50, 70
    preds, gts = [], []
    for _ in range(40):
        gt = blob(h, w, rng, rad=rng.uniform(1, 20)) if rng.random() < 0.8 else rng.random((h, w)) < 0.5
        pred = variant(gt, rng) if rng.random() < 0.7 else blob(h, w, rng, rad=rng.uniform(1, 8))
        if not pred.any() or not gt.any():
            continue
        preds.append(pred)
        gts.append(gt)
    pred, gt = np.stack(preds), np.stack(gts)
    rp, rg = metrics.RunMasks.from_dense(pred), metrics.RunMasks.from_dense(gt)
    bp, bg = rp.boxes(), rg.boxes()
    boxes = np.stack([np.maximum(np.minimum(bp[:, 0], bg[:, 0]) - 1, 0), np.minimum(np.maximum(bp[:, 1], bg[:, 1]) + 1, h - 1),
                      np.maximum(np.minimum(bp[:, 2], bg[:, 2]) - 1, 0), np.minimum(np.maximum(bp[:, 3], bg[:, 3]) + 1, w - 1)], 1)
    frames = np.arange(len(pred))
    for r in (0, 1, 2, 5, 9):
        got = run_masks._stacked_boundary_counts(rp, rg, frames, boxes, r)
        for t in frames:
            assert tuple(got[t]) == metrics.boundary_counts(pred[t], gt[t], r), (t, r)


# ----------------------------------------------------------------------- image metrics


def test_mask_counts():
    p = np.zeros((3, 4), bool)
    g = np.zeros((3, 4), bool)
    p[0, :3] = True
    g[0, 1:] = True
    g[1, 0] = True
    assert metrics.mask_counts(p, g) == metrics.MaskCounts(intersection=2, union=5, pred_area=3, gt_area=4)


def test_ciou_giou_hand_checked():
    inter, union = [80, 0, 0], [120, 0, 100]
    assert metrics.giou(inter, union) == pytest.approx((2 / 3 + 1 + 0) / 3, abs=1e-15)
    assert metrics.giou(inter, union, empty_union="zero") == pytest.approx((2 / 3) / 3, abs=1e-15)
    assert metrics.ciou(inter, union) == 80 / 220
    lisa = metrics.sample_iou(inter, union, eps=metrics.LISA_IOU_EPS)
    assert lisa[0] == 80 / (120 + 1e-5) and lisa[1] == 1.0 and lisa[2] == 0.0
    assert metrics.sample_iou([50], [50], eps=metrics.LISA_IOU_EPS)[0] < 1.0
    assert metrics.ciou(inter, union, eps=metrics.LISA_CIOU_EPS) == 80 / (220 + 1e-10)
    assert math.isnan(metrics.ciou([0], [0]))
    with pytest.raises(ValueError):
        metrics.sample_iou([1], [1], empty_union="nan")


def test_precision_at_hand_checked():
    pr = metrics.precision_at([0.5, 0.75, 0.95, 0.6])
    assert pr == {0.5: 1.0, 0.6: 0.75, 0.7: 0.5, 0.8: 0.25, 0.9: 0.25}
    assert metrics.precision_at([0.69999, 0.7], thresholds=(0.7,)) == {0.7: 0.5}


def test_grefcoco_hand_checked():
    mc = metrics.MaskCounts
    samples = [
        mc(intersection=0, union=0, pred_area=0, gt_area=0),  # no-target, predicted none: TP
        mc(intersection=0, union=50, pred_area=50, gt_area=0),  # no-target, predicted mask: FN
        mc(intersection=80, union=120, pred_area=100, gt_area=100),  # TN, IoU 2/3
        mc(intersection=0, union=100, pred_area=0, gt_area=100),  # target, predicted none: FP
        mc(intersection=180, union=210, pred_area=190, gt_area=200),  # TN, IoU 6/7
    ]
    s = metrics.grefcoco_scores(samples)
    assert s.giou == pytest.approx(100 * (1 + 0 + 2 / 3 + 0 + 6 / 7) / 5, abs=1e-12)
    assert s.ciou == pytest.approx(100 * 260 / 480, abs=1e-12)
    assert s.n_acc == 50.0
    assert s.t_acc == pytest.approx(200 / 3, abs=1e-12)
    assert s.precision[0.7] == pytest.approx(100 / 3, abs=1e-12)
    assert s.precision[0.8] == pytest.approx(100 / 3, abs=1e-12)
    assert s.precision[0.9] == 0.0
    assert (s.n_samples, s.n_no_target) == (5, 2)

    # An explicit no-target head overrides "empty mask => no target": sample 4 now
    # predicts a target with an empty mask (TN, IoU 0) and sample 2 says "no target"
    # although its mask is non-empty (TP, adds nothing).
    s2 = metrics.grefcoco_scores(samples, pred_no_target=[True, True, False, False, False])
    assert s2.n_acc == 100.0 and s2.t_acc == 100.0
    assert s2.ciou == pytest.approx(100 * 260 / 430, abs=1e-12)
    # A "no target" answer on a targeted sample is a FP and its intersection is dropped.
    s4 = metrics.grefcoco_scores(samples, pred_no_target=[True, False, True, True, False])
    assert s4.ciou == 100 * 180 / 480
    assert s4.giou == pytest.approx(100 * (1 + 6 / 7) / 5, abs=1e-12)
    assert s4.t_acc == pytest.approx(100 / 3, abs=1e-12) and s4.n_acc == 50.0
    # ReLA convention: no no-target samples -> N-acc = T-acc = 0.
    s3 = metrics.grefcoco_scores(samples[2:])
    assert s3.n_acc == 0.0 and s3.t_acc == 0.0
    with pytest.raises(ValueError):
        metrics.grefcoco_scores(samples, pred_no_target=[True])


def test_grefcoco_from_masks_matches_hand_counts():
    rng = np.random.default_rng(12)
    samples = []
    for _ in range(30):
        g = blob(20, 30, rng) if rng.random() < 0.7 else np.zeros((20, 30), bool)
        p = variant(g, rng) if rng.random() < 0.8 else np.zeros_like(g)
        samples.append(metrics.mask_counts(p, g))
    s = metrics.grefcoco_scores(samples)
    targeted = [c for c in samples if c.gt_area > 0]
    ious = [0.0 if c.pred_area == 0 else c.intersection / c.union for c in targeted]
    n_tp = sum(c.gt_area == 0 and c.pred_area == 0 for c in samples)
    assert s.giou == pytest.approx(100 * (sum(ious) + n_tp) / len(samples), abs=1e-9)
    assert s.precision[0.8] == pytest.approx(100 * np.mean(np.array(ious) >= 0.8), abs=1e-9)
