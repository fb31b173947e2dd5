"""Reference oracle for the segmentation metrics: plain, per-frame, slow.

Written from the definitions in ``docs/metrics.md`` (davis2017-evaluation
``db_eval_iou`` / ``f_measure`` / ``db_statistics``, VISA ReVOS accuracy/robustness).
Every function works on a single frame (H, W) except ``db_statistics`` (a per-frame
vector).  It uses the same helper libraries as the official code (``skimage`` ``disk``
and ``cv2.dilate`` on full frames), so it is the thing ``refsav.benchmark.metrics`` is tested
against.  Do not optimise this file: its value is that it is easy to check line by line
against the definitions.

``score_refvos`` is a plain scorer built on these functions, the way the official
Ref-SAV / MeViS scripts work: decode every frame of every expression with pycocotools
and call the per-frame metrics.  It is the "(a)" of ``perf/bench_scoring.py``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
from skimage.morphology import disk

from refsav.schemas import rle as rle_ops


def _fg(mask: np.ndarray) -> np.ndarray:
    """(H, W) any dtype -> (H, W) bool, any non-zero is foreground."""
    return np.asarray(mask).astype(bool)


def db_eval_iou(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """Region similarity J of one (H, W) frame; 1.0 when the (non-void) union is empty."""
    p, g = _fg(pred), _fg(gt)
    keep = np.ones_like(p) if void is None else ~_fg(void)
    inter = np.sum(p & g & keep)
    union = np.sum((p | g) & keep)
    if np.isclose(union, 0):
        return 1.0
    return float(inter / union)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """(H, W) mask -> (H, W) bool one-pixel boundary map, davis2017 rules.

    A pixel is a boundary pixel when it differs from its east, south or south-east
    neighbour (neighbours outside the image count as background), except:
    last row -> compare with east only; last column (applied after the row rule)
    -> compare with south only; bottom-right pixel -> never a boundary.
    """
    s = _fg(seg)
    h, w = s.shape
    east = np.zeros_like(s)
    south = np.zeros_like(s)
    south_east = np.zeros_like(s)
    east[:, :-1] = s[:, 1:]
    south[:-1, :] = s[1:, :]
    south_east[:-1, :-1] = s[1:, 1:]

    b = (s != east) | (s != south) | (s != south_east)
    b[h - 1, :] = s[h - 1, :] != east[h - 1, :]
    b[:, w - 1] = s[:, w - 1] != south[:, w - 1]
    b[h - 1, w - 1] = False
    return b


def boundary_radius(shape: tuple[int, int], bound_th: float = 0.008) -> float:
    """Dilation radius in pixels: bound_th itself if >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return bound_th
    # np.linalg.norm on the shape, as the official code does: the same float rounding.
    return float(np.ceil(bound_th * np.linalg.norm(shape)))


def f_measure(
    pred: np.ndarray,
    gt: np.ndarray,
    void: np.ndarray | None = None,
    bound_th: float = 0.008,
) -> float:
    """Boundary F of one (H, W) frame (davis2017 ``f_measure``)."""
    p, g = _fg(pred), _fg(gt)
    keep = np.ones_like(p) if void is None else ~_fg(void)
    r = boundary_radius(p.shape, bound_th)

    bp = seg2bmap(p & keep)
    bg = seg2bmap(g & keep)
    footprint = disk(r).astype(np.uint8)
    dil_p = cv2.dilate(bp.astype(np.uint8), footprint)
    dil_g = cv2.dilate(bg.astype(np.uint8), footprint)

    n_p = int(np.sum(bp))
    n_g = int(np.sum(bg))
    match_p = int(np.sum(bp * dil_g))
    match_g = int(np.sum(bg * dil_p))

    if n_p == 0 and n_g > 0:
        precision, recall = 1.0, 0.0
    elif n_p > 0 and n_g == 0:
        precision, recall = 0.0, 1.0
    elif n_p == 0 and n_g == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = match_p / float(n_p)
        recall = match_g / float(n_g)

    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def db_statistics(per_frame: np.ndarray, replicate_uint8_wrap: bool = False) -> dict[str, float]:
    """davis2017 statistics of a per-frame vector: {"M": mean, "R": recall, "D": decay}.

    Bins are the 4 inclusive index ranges between ``round(linspace(1, n, 5) + 1e-10) - 1``.
    The official code casts those indices to uint8 (wrapping for n >= 257, and for
    n = 256 too under NumPy >= 2 where ``uint8(255) + 1`` is 0); that is reproduced only
    with ``replicate_uint8_wrap=True``.
    """
    v = np.asarray(per_frame, dtype=np.float64)
    n = len(v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > 0.5))
        edges = [int(round(x + 1e-10)) - 1 for x in np.linspace(1, n, 5)]
        if replicate_uint8_wrap:
            # uint8 edges, and uint8 "edge + 1" (wraps 255 + 1 -> 0 under NumPy >= 2)
            bins = [v[edges[i] % 256 : (edges[i + 1] % 256 + 1) % 256] for i in range(4)]
        else:
            bins = [v[edges[i] : edges[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3])) if n else float("nan")
    return {"M": mean, "R": recall, "D": decay}


def revos_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    """Pixel accuracy of one (H, W) frame on masks binarised to {0, 1}."""
    p, g = _fg(pred), _fg(gt)
    return float(np.mean(g == p))


def revos_robustness(pred: np.ndarray, gt: np.ndarray, foreground: np.ndarray) -> float:
    """ReVOS robustness of one (H, W) frame: max(1 - FP / (|foreground| + 1e-6), 0)."""
    p = _fg(pred).astype(np.int64)
    g = _fg(gt).astype(np.int64)
    fg = _fg(foreground).astype(np.int64)
    false_pos = np.sum((1 - g) * p)
    return float(max(1 - false_pos / (np.sum(fg) + 1e-6), 0))


def decode_rle(rle: dict | None, size: tuple[int, int]) -> np.ndarray:
    """A JSON COCO RLE {"size", "counts"} (or None: empty) -> (H, W) bool."""
    if rle is None:
        return np.zeros(size, dtype=bool)
    return rle_ops.decode(rle_ops.Rle((int(rle["size"][0]), int(rle["size"][1])), rle["counts"]))


def score_refvos(
    gt_dir: str | Path,
    results_json: str | Path,
    metrics: tuple[str, ...] = ("J", "F", "A"),
    steps: dict[str, float] | None = None,
) -> dict[tuple[str, str], dict[str, float]]:
    """Per-expression means over frames of J, F and/or A (fractions, not x100).

    gt_dir: meta_expressions_valid.json (or meta_expressions.json) + mask_dict.json;
    results_json: Sa2VA-style {video: {exp_id: {"prediction_masks": [RLE per frame]}}},
    complete and valid (this is a reference, not a validator).  The GT of an expression
    is the union of its anno_ids' masks.  ``steps``: if given, seconds spent per step
    ("load", "decode", and each metric) are added to it.
    """
    gt_dir = Path(gt_dir)
    clock = time.perf_counter
    t0 = clock()
    meta_path = gt_dir / "meta_expressions_valid.json"
    if not meta_path.exists():
        meta_path = gt_dir / "meta_expressions.json"
    videos = json.loads(meta_path.read_text())["videos"]
    mask_dict = json.loads((gt_dir / "mask_dict.json").read_text())
    results = json.loads(Path(results_json).read_text())
    spent = {"load": clock() - t0, "decode": 0.0} | {m: 0.0 for m in metrics}
    per_frame = {"J": db_eval_iou, "F": f_measure, "A": revos_accuracy}

    out: dict[tuple[str, str], dict[str, float]] = {}
    for video_id, video in videos.items():
        for exp_id, exp in video["expressions"].items():
            preds = results[video_id][exp_id]["prediction_masks"]
            values: dict[str, list[float]] = {m: [] for m in metrics}
            for t in range(len(video["frames"])):
                t0 = clock()
                size = tuple(preds[t]["size"])
                pred = decode_rle(preds[t], size)
                gt = np.zeros(size, dtype=bool)
                for anno_id in exp["anno_id"]:
                    gt |= decode_rle(mask_dict[str(anno_id)][t], size)
                spent["decode"] += clock() - t0
                for m in metrics:
                    t0 = clock()
                    values[m].append(per_frame[m](pred, gt))
                    spent[m] += clock() - t0
            out[(video_id, exp_id)] = {m: float(np.mean(v)) for m, v in values.items()}
    if steps is not None:
        for k, v in spent.items():
            steps[k] = steps.get(k, 0.0) + v
    return out
