"""Micro-benchmark: oracle vs production J and F per frame, single core.

Realistic random masks at 1280x720 and 1920x1080: smooth blobs from a few hundred px^2
to ~10% of the frame, predictions derived from the GT (shifted, dilated/eroded, noisy
edges, partly missed, spurious blob), plus frames where one or both masks are empty.

    .venv/bin/python perf/bench_metrics_micro.py [--frames N]

Prints ms per frame for each mask category and for the mix, and the speedup; also
checks that every production value equals the oracle's (|delta| <= 1e-9).
"""

from __future__ import annotations

import os

# Single core for both implementations; must be set before numpy/cv2 load.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refsav.benchmark import metrics, oracle  # noqa: E402

SIZES = [(720, 1280), (1080, 1920)]
# (name, share of the mix, area fraction range of the GT object)
CATEGORIES = [
    ("both empty", 0.15, None),
    ("one empty", 0.10, (0.0005, 0.02)),
    ("small <0.5%", 0.25, (0.0002, 0.005)),
    ("medium 0.5-3%", 0.30, (0.005, 0.03)),
    ("large 3-10%", 0.20, (0.03, 0.10)),
]


def random_blob(h: int, w: int, area_frac: float, rng: np.random.Generator) -> np.ndarray:
    """(h, w) bool: a smooth random star-shaped polygon of about area_frac * h * w px."""
    radius = np.sqrt(area_frac * h * w / np.pi)
    cy = rng.uniform(radius, h - radius) if h > 2 * radius else h / 2
    cx = rng.uniform(radius, w - radius) if w > 2 * radius else w / 2
    angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    wobble = sum(
        rng.uniform(0, 0.25 / k) * np.sin(k * angles + rng.uniform(0, 2 * np.pi)) for k in range(2, 7)
    )
    rad = radius * (1 + wobble) * rng.uniform(0.7, 1.3, 1)
    pts = np.stack([cx + rad * np.cos(angles) * rng.uniform(0.7, 1.4), cy + rad * np.sin(angles)], 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def perturb(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible prediction for gt."""
    kind = rng.integers(0, 5)
    p = gt.copy()
    if kind == 0:  # shifted
        p = np.roll(p, tuple(rng.integers(-8, 9, 2)), axis=(0, 1))
    elif kind == 1:  # dilated or eroded
        k = np.ones((2 * rng.integers(1, 5) + 1,) * 2, np.uint8)
        op = cv2.dilate if rng.random() < 0.5 else cv2.erode
        p = op(p.view(np.uint8), k).astype(bool)
    elif kind == 2:  # ragged edges
        noise = cv2.GaussianBlur(rng.standard_normal(gt.shape).astype(np.float32), (0, 0), 3)
        dist = cv2.distanceTransform(gt.view(np.uint8), cv2.DIST_L2, 3)
        outside = cv2.distanceTransform((~gt).view(np.uint8), cv2.DIST_L2, 3)
        p = (dist - outside + 6 * noise / (noise.std() + 1e-6)) > 0
    elif kind == 3:  # part missed
        ys, xs = np.nonzero(gt)
        if ys.size:
            cut = rng.integers(ys.min(), ys.max() + 1)
            p[cut:] = False
    else:  # plus a spurious blob
        p |= random_blob(*gt.shape, rng.uniform(0.0005, 0.01), rng)
    return p


def make_frames(h: int, w: int, name: str, area, n: int, rng: np.random.Generator):
    preds, gts = [], []
    for _ in range(n):
        if name == "both empty":
            p = g = np.zeros((h, w), bool)
        elif name == "one empty":
            g = random_blob(h, w, rng.uniform(*area), rng)
            p = np.zeros((h, w), bool)
            if rng.random() < 0.5:
                p, g = g, p
        else:
            g = random_blob(h, w, rng.uniform(*area), rng)
            p = perturb(g, rng)
        preds.append(p)
        gts.append(g)
    return np.stack(preds), np.stack(gts)


def per_frame_ms(fn, repeat: int = 2) -> float:
    """Best wall time in seconds of ``repeat`` calls of fn()."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20, help="frames per category and size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    for h, w in SIZES:
        print(f"\n{w}x{h}  (r = {metrics.boundary_radius((h, w)):.0f} px, {args.frames} frames per row)")
        print(f"{'ms per frame':<15} {'F oracle':>9} {'F prod':>8} {'F x':>7}   ", end="")
        print(f"{'J oracle':>9} {'J prod':>8} {'J x':>6}")
        mix = {"fo": 0.0, "fp": 0.0, "jo": 0.0, "jp": 0.0}
        for name, share, area in CATEGORIES:
            pred, gt = make_frames(h, w, name, area, args.frames, rng)
            n = len(pred)
            f_or = np.array([oracle.f_measure(pred[i], gt[i]) for i in range(n)])
            j_or = np.array([oracle.db_eval_iou(pred[i], gt[i]) for i in range(n)])
            assert np.max(np.abs(metrics.f_per_frame(pred, gt) - f_or)) <= 1e-9, name
            assert np.max(np.abs(metrics.j_per_frame(pred, gt) - j_or)) <= 1e-9, name

            # Same protocol for both sides: best of `repeat` passes over the whole stack.
            fo = per_frame_ms(lambda: [oracle.f_measure(pred[i], gt[i]) for i in range(n)]) / n * 1e3
            fp = per_frame_ms(lambda: metrics.f_per_frame(pred, gt)) / n * 1e3
            jo = per_frame_ms(lambda: [oracle.db_eval_iou(pred[i], gt[i]) for i in range(n)]) / n * 1e3
            jp = per_frame_ms(lambda: metrics.j_per_frame(pred, gt)) / n * 1e3
            for key, val in zip(("fo", "fp", "jo", "jp"), (fo, fp, jo, jp)):
                mix[key] += share * val
            print(f"{name:<15} {fo:9.3f} {fp:8.3f} {fo / fp:6.1f}x   {jo:9.3f} {jp:8.3f} {jo / jp:5.1f}x")
        print(
            f"{'mix (weighted)':<15} {mix['fo']:9.3f} {mix['fp']:8.3f} {mix['fo'] / mix['fp']:6.1f}x   "
            f"{mix['jo']:9.3f} {mix['jp']:8.3f} {mix['jo'] / mix['jp']:5.1f}x"
        )
    print("\nall production values equal the oracle's (|delta| <= 1e-9)")


if __name__ == "__main__":
    main()
