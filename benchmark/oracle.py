"""Reference oracle for the segmentation metrics: plain, per-frame, slow.

Written from the definitions in ``shared/reference/metrics.md`` (davis2017-evaluation
``db_eval_iou`` / ``f_measure`` / ``db_statistics``, VISA ReVOS accuracy/robustness).
Every function works on a single frame (H, W) except ``db_statistics`` (a per-frame
vector).  It uses the same helper libraries as the official code (``skimage`` ``disk``
and ``cv2.dilate`` on full frames), so it is the thing ``benchmark.metrics`` is tested
against.  Do not optimise this file: its value is that it is easy to check line by line
against the definitions.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from skimage.morphology import disk


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
