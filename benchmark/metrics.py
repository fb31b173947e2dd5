"""Segmentation metrics of the referring video/image benchmarks, fast and exact.

Definitions: ``shared/reference/metrics.md``.  The functions return the same numbers as
the official scripts (davis2017-evaluation, MeViS, ReVOS/VISA, Ref-SAV, LISA/LAVT,
ReLA) except for a few deliberate, documented divergences: int64 decay bins (``decay``),
binarised ReVOS A/R (``revos_accuracy``), float64 instead of LISA's float32 (``giou``),
NaN instead of ZeroDivisionError (``grefcoco_scores``).  ``benchmark/oracle.py`` holds a
plain per-frame transcription of the video definitions and ``tests/test_metrics.py``
checks this module against it.

Masks are numpy arrays of any dtype; any non-zero value is foreground.  Video functions
take a (T, H, W) stack or a single (H, W) frame and always return a length-T vector
(T = 1 for a single frame); scorers average those vectors themselves.

Fast boundary F
---------------
The official ``f_measure`` dilates both full-frame boundary maps with a disk of radius
``r`` (r = 12 at 1280x720, 18 at 1920x1080), which costs O(H*W*r^2).  ``f_per_frame``
computes the same four integers (boundary sizes n_p, n_g and matched counts m_p, m_g)
from a crop and an integral image:

* ``seg2bmap`` marks the top-left pixel of every 2x2 block that is not constant, on the
  mask extended by copying its last row and last column (that extension *is* the
  official last-row / last-column / corner rule).  Boundary pixels therefore lie in the
  union bounding box of both masks grown by one pixel up and left, so both maps are
  computed on that crop only (with the copy-extension applied only where the crop
  touches the image's bottom or right border).
* A pixel q of one boundary is matched iff the other boundary has a pixel in the disk
  around q.  The discrete disk {dy^2 + dx^2 <= r^2} is the union of a few centred
  rectangles [-a, a] x [-isqrt(r^2 - a^2), +...], so "some pixel in the disk" is "some
  rectangle has a non-zero sum", read from an integral image of the other boundary
  (four look-ups per rectangle).  Pixels outside the image contribute nothing, as in
  ``cv2.dilate`` with its default border.
* Boundary maps are computed bit-packed (64 pixels per uint64 word) to keep the number
  of full-crop passes small.

Non-integer radii (only possible with ``bound_th >= 1`` given as a non-integer) make
skimage's ``disk`` an even-sized, off-centre footprint; those fall back to ``cv2.dilate``
on the crop with the same footprint, which is still exact.

Scoring straight from RLE
-------------------------
The video scorers use ``frame_scores`` on ``RunMasks`` (masks kept as COCO runs, never
decoded to full frames): J, A and R come from run arithmetic, frames where both masks
are empty cost nothing, and F paints only the crop around both masks, transposed, for
many frames at once into one canvas with one integral image (``_stacked_batch``).  Same
numbers as the dense functions above, which stay for callers that hold decoded masks.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import cv2
import numpy as np

__all__ = [
    "j_per_frame",
    "f_per_frame",
    "boundary_radius",
    "disk_footprint",
    "seg2bmap",
    "boundary_counts",
    "decay",
    "db_statistics",
    "DavisStats",
    "revos_accuracy",
    "revos_robustness",
    "parse_counts",
    "counts_cover",
    "RunMasks",
    "FrameScores",
    "frame_scores",
    "MaskCounts",
    "mask_counts",
    "sample_iou",
    "ciou",
    "giou",
    "precision_at",
    "GRefCocoScores",
    "grefcoco_scores",
    "LISA_IOU_EPS",
    "LISA_CIOU_EPS",
]


# --------------------------------------------------------------------------- helpers


def _stack(x: np.ndarray) -> np.ndarray:
    """(H, W) or (T, H, W) -> (T, H, W) view."""
    a = np.asarray(x)
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise ValueError(f"expected a (H, W) or (T, H, W) mask, got shape {a.shape}")
    return a


def _as_bool(a: np.ndarray) -> np.ndarray:
    """Any dtype -> bool, contiguous (a no-op for contiguous bool input)."""
    if a.dtype == np.bool_:
        return np.ascontiguousarray(a)
    return np.not_equal(a, 0)


def _check_shapes(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")


def _apply_void(p: np.ndarray, g: np.ndarray, void: np.ndarray | None):
    """Remove void pixels from both (T, H, W) stacks; void is (H, W) or (T, H, W)."""
    if void is None:
        return p, g
    keep = ~_as_bool(np.asarray(void))
    keep = np.broadcast_to(keep, p.shape)
    return _as_bool(p) & keep, _as_bool(g) & keep


# ------------------------------------------------------------------- region similarity J


def j_per_frame(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """Region similarity J per frame (davis2017 ``db_eval_iou``).

    pred, gt: (T, H, W) or (H, W); void: optional, same shape or (H, W), excluded from
    both intersection and union.  Returns float64 (T,): |p & g| / |p | g|, and 1.0 where
    the union is empty (both masks empty counts as perfect).
    """
    p, g = _stack(pred), _stack(gt)
    _check_shapes(p, g)
    p, g = _apply_void(p, g, void)
    p, g = _as_bool(p), _as_bool(g)
    t = p.shape[0]
    inter = np.zeros(t, dtype=np.int64)
    union = np.zeros(t, dtype=np.int64)
    # One full pass per mask finds the occupied rows; counting is then restricted to
    # them (cv2.countNonZero is several times faster than numpy reductions).
    rows_p, rows_g = p.any(axis=2), g.any(axis=2)
    for i in range(t):
        yp, yg = rows_p[i].nonzero()[0], rows_g[i].nonzero()[0]
        n_p = cv2.countNonZero(p[i, yp[0] : yp[-1] + 1].view(np.uint8)) if yp.size else 0
        n_g = cv2.countNonZero(g[i, yg[0] : yg[-1] + 1].view(np.uint8)) if yg.size else 0
        n_i = 0
        if n_p and n_g:
            y0, y1 = max(yp[0], yg[0]), min(yp[-1], yg[-1])
            if y0 <= y1:
                both = cv2.bitwise_and(p[i, y0 : y1 + 1].view(np.uint8), g[i, y0 : y1 + 1].view(np.uint8))
                n_i = cv2.countNonZero(both)
        inter[i], union[i] = n_i, n_p + n_g - n_i
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union
    j[union == 0] = 1.0
    return j


# --------------------------------------------------------------------------- boundary F


def boundary_radius(shape: tuple[int, int], bound_th: float = 0.008) -> float:
    """Dilation radius of ``f_measure`` for a frame of ``shape`` = (H, W).

    ``bound_th`` itself if >= 1, else ceil(bound_th * sqrt(H^2 + W^2)), evaluated with
    ``np.linalg.norm`` exactly as the official code (so the float rounding is the same).
    """
    if bound_th < 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    if bound_th >= 1:
        return float(bound_th)
    return float(np.ceil(bound_th * np.linalg.norm(tuple(shape))))


def disk_footprint(radius: float) -> np.ndarray:
    """skimage ``disk(radius)`` (strict_radius=True) as uint8, re-derived here.

    (n, n) with n = len(arange(-radius, radius + 1)); element (i, j) is 1 iff
    L[i]^2 + L[j]^2 <= radius^2 with L = arange(-radius, radius + 1).
    For integer radius r: (2r+1, 2r+1), 1 iff dy^2 + dx^2 <= r^2.
    """
    axis = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(axis, axis)
    return ((xx**2 + yy**2) <= radius**2).astype(np.uint8)


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """(H, W) mask -> (H, W) bool boundary map, identical to davis2017 ``_seg2bmap``.

    Implemented as "2x2 block starting here is not constant" on the mask extended by a
    copy of its last row and column (see the module docstring).
    """
    s = _as_bool(np.asarray(mask))
    if s.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {s.shape}")
    e = np.pad(s, ((0, 1), (0, 1)), mode="edge")
    a = e[:-1, :-1]
    return (a != e[:-1, 1:]) | (a != e[1:, :-1]) | (a != e[1:, 1:])


def _packed_bmaps(pred: np.ndarray, gt: np.ndarray, box, pad: int, last_row: bool, last_col: bool):
    """Bit-packed boundary maps of pred and gt on a padded crop.

    box = (y0, y1, x0, x1), inclusive, holds every boundary pixel of both masks (and the
    masks' foreground).  The crop is placed at offset (pad, pad) in a zero canvas of
    (hp, 64 * nw) pixels, hp = h + 2 * pad, so that windows of half-size <= pad around
    any boundary pixel stay inside the canvas.  ``last_row``/``last_col``: the crop's
    bottom row / right column is the image's.
    Returns bits (2, hp, nw) uint64 (bit j of word i = canvas column 64 * i + j) and the
    boundary sizes (n_p, n_g).
    """
    y0, y1, x0, x1 = box
    h, w = y1 - y0 + 1, x1 - x0 + 1
    hp = h + 2 * pad
    nw = (w + 2 * pad + 1 + 63) // 64
    ext = np.zeros((2, hp + 1, nw * 64), dtype=bool)
    ext[0, pad : pad + h, pad : pad + w] = pred[y0 : y1 + 1, x0 : x1 + 1]
    ext[1, pad : pad + h, pad : pad + w] = gt[y0 : y1 + 1, x0 : x1 + 1]
    # Beyond the image the official rules compare with the last row/column itself.
    if last_row:
        ext[:, pad + h, pad : pad + w] = ext[:, pad + h - 1, pad : pad + w]
    if last_col:
        ext[:, pad : pad + h + 1, pad + w] = ext[:, pad : pad + h + 1, pad + w - 1]
    words = np.packbits(ext, axis=2, bitorder="little").view(np.uint64)

    # Block (y, x) is mixed iff S(y,x) != S(y,x+1) or S(y+1,x) != S(y+1,x+1) or
    # S(y,x) != S(y+1,x): two horizontal and one vertical comparison.
    east = words >> np.uint64(1)
    east[:, :, :-1] |= words[:, :, 1:] << np.uint64(63)
    horizontal = words ^ east
    bits = horizontal[:, :-1] | horizontal[:, 1:]
    bits |= words[:, :-1] ^ words[:, 1:]
    # Blocks reaching into the padding or the extension are not boundary pixels.
    bits[:, :pad] = 0
    bits[:, pad + h :] = 0
    bits &= _column_mask(nw, pad, pad + w)
    n = np.bitwise_count(bits).sum(axis=(1, 2), dtype=np.int64)
    return bits, n


@functools.lru_cache(maxsize=256)
def _column_mask(nw: int, lo: int, hi: int) -> np.ndarray:
    """(nw,) uint64 words with the bits of columns lo <= c < hi set (read-only)."""
    cols = np.zeros(nw * 64, dtype=bool)
    cols[lo:hi] = True
    mask = np.packbits(cols, bitorder="little").view(np.uint64)
    mask.flags.writeable = False
    return mask


def _bit_positions(bits: np.ndarray) -> np.ndarray:
    """Packed (..., nw) uint64 map -> sorted int64 linear pixel indices of its set bits."""
    flat = bits.view(np.uint8).reshape(-1)
    nz = (flat != 0).nonzero()[0]  # nonzero() is much faster on bool than on uint8
    k = np.unpackbits(flat[nz], bitorder="little").view(bool).nonzero()[0]
    return nz[k >> 3] * 8 + (k & 7)


@functools.lru_cache(maxsize=64)
def _disk_rectangles(r: int) -> tuple[tuple[int, int], ...]:
    """Half-sizes (a, b) of centred rectangles [-a, a] x [-b, b] whose union is the disk.

    b(a) = isqrt(r^2 - a^2) is non-increasing in a; only the last a of each run of equal
    b is kept (the others are contained in it).  Sorted by decreasing area.
    """
    rects = []
    for a in range(r + 1):
        b = math.isqrt(r * r - a * a)
        if a == r or math.isqrt(r * r - (a + 1) * (a + 1)) < b:
            rects.append((a, b))
    return tuple(sorted(rects, key=lambda ab: -(2 * ab[0] + 1) * (2 * ab[1] + 1)))


@functools.lru_cache(maxsize=256)
def _corner_offsets(rects: tuple[tuple[int, int], ...], wi: int) -> np.ndarray:
    """(4 * len(rects),) flat offsets of the integral-image corners of each rectangle."""
    offs = []
    for a, b in rects:
        top, bot = -a * wi, (a + 1) * wi
        offs += [bot + b + 1, top + b + 1, bot - b, top - b]
    out = np.asarray(offs, dtype=np.int64)
    out.flags.writeable = False
    return out


def _any_in_windows(ii: np.ndarray, base: np.ndarray, wi: int, rects) -> np.ndarray:
    """(n, len(rects)) bool: sum over [y-a, y+a] x [x-b, x+b] > 0 for each rectangle.

    ii: flattened integral image with rows of length wi; base: flat index y * wi + x.
    """
    c = ii[base[:, None] + _corner_offsets(rects, wi)].reshape(len(base), len(rects), 4)
    return (c[..., 0] - c[..., 1]) - (c[..., 2] - c[..., 3]) > 0


def _match_counts_integral(bits: np.ndarray, r: int) -> tuple[int, int]:
    """Matched boundary pixels (m_p, m_g) for an integer radius r, via an integral image.

    bits: (2, hp, nw) from ``_packed_bmaps`` with pad = r (plane 0 pred, plane 1 gt).
    A pixel matches iff the other plane has a boundary pixel in its disk, i.e. iff one of
    the disk's rectangles has a non-zero sum there.
    """
    _, hp, nw = bits.shape
    wc = nw * 64
    canvas = np.unpackbits(bits.view(np.uint8), axis=2, bitorder="little")
    ii = cv2.integral(canvas.reshape(2 * hp, wc)).reshape(-1)
    wi = wc + 1

    pix = _bit_positions(bits)  # flat canvas index (plane * hp + y) * wc + x, sorted
    k = int(np.searchsorted(pix, hp * wc))  # pix[:k] are pred's, pix[k:] gt's
    base = pix + pix // wc  # integral index (plane * hp + y) * wi + x
    # Look each pixel up in the *other* plane.
    base[:k] += hp * wi
    base[k:] -= hp * wi

    matched = _matched_in_disk(ii, base, wi, r)
    return int(np.count_nonzero(matched[:k])), int(np.count_nonzero(matched[k:]))


def _matched_in_disk(ii: np.ndarray, base: np.ndarray, wi: int, r: int) -> np.ndarray:
    """(n,) bool: the integral image ii (rows of length wi) has a non-zero pixel in the
    disk of radius r around each flat index ``base`` (= y * wi + x)."""
    # Cascade: the largest rectangle accepts most near pixels; of the others, the
    # bounding square rejects far ones (nothing in it -> no match), and what is left
    # tries the remaining rectangles.
    rects = _disk_rectangles(r)
    matched = _any_in_windows(ii, base, wi, rects[:1])[:, 0]
    rest = (~matched).nonzero()[0]
    if rest.size and len(rects) > 1:
        rest = rest[_any_in_windows(ii, base[rest], wi, ((r, r),))[:, 0]]
        if rest.size:
            matched[rest] = _any_in_windows(ii, base[rest], wi, rects[1:]).any(axis=1)
    return matched


def _match_counts_dilate(bits: np.ndarray, footprint: np.ndarray) -> tuple[int, int]:
    """Same as ``_match_counts_integral`` for any footprint, with cv2.dilate on the crop.

    Dilating the padded crop instead of the frame is exact: all boundary pixels lie in
    the crop and cv2.dilate's default border contributes nothing.
    """
    maps = np.unpackbits(bits.view(np.uint8), axis=2, bitorder="little")
    dil_p = cv2.dilate(np.ascontiguousarray(maps[0]), footprint)
    dil_g = cv2.dilate(np.ascontiguousarray(maps[1]), footprint)
    return int(np.count_nonzero(maps[0] & dil_g)), int(np.count_nonzero(maps[1] & dil_p))


def _f_from_counts(n_p: int, n_g: int, m_p: int, m_g: int) -> float:
    """Precision/recall special cases and F, same float operations as davis2017."""
    if n_p == 0 and n_g > 0:
        precision, recall = 1.0, 0.0
    elif n_p > 0 and n_g == 0:
        precision, recall = 0.0, 1.0
    elif n_p == 0 and n_g == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = m_p / float(n_p)
        recall = m_g / float(n_g)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _runs(occupied: np.ndarray, min_gap: int) -> list[tuple[int, int]]:
    """Inclusive (start, end) runs of True in a 1-D bool array, merging runs whose
    occupied indices are less than ``min_gap`` apart."""
    idx = occupied.nonzero()[0]
    if idx.size == 0:
        return []
    if idx[-1] - idx[0] < min_gap or idx[-1] - idx[0] + 1 == idx.size:  # common: no gap
        return [(int(idx[0]), int(idx[-1]))]
    cuts = ((idx[1:] - idx[:-1]) >= min_gap).nonzero()[0]
    starts = [int(idx[0])] + [int(v) for v in idx[cuts + 1]]
    ends = [int(v) for v in idx[cuts]] + [int(idx[-1])]
    return list(zip(starts, ends))


def _pieces(pred: np.ndarray, gt: np.ndarray, rows: np.ndarray, reach: int):
    """Inclusive foreground boxes (y0, y1, x0, x1) of independent parts of the frame.

    Parts are split where at least ``reach + 1`` rows (then columns) are empty in both
    masks: boundary pixels of different parts are then more than ``reach`` apart and can
    never match each other, so each part can be scored on its own small crop.  This
    keeps a far-away false positive from blowing up the crop to most of the frame.
    """
    min_gap = reach + 2  # occupied indices a < b with b - a >= reach + 2
    boxes = []
    for y0, y1 in _runs(rows, min_gap):
        cols = pred[y0 : y1 + 1].any(axis=0) | gt[y0 : y1 + 1].any(axis=0)
        col_runs = _runs(cols, min_gap)
        if len(col_runs) == 1:
            boxes.append((y0, y1, *col_runs[0]))
            continue
        for x0, x1 in col_runs:
            sub = pred[y0 : y1 + 1, x0 : x1 + 1].any(axis=1) | gt[y0 : y1 + 1, x0 : x1 + 1].any(axis=1)
            ys = sub.nonzero()[0]
            boxes.append((y0 + int(ys[0]), y0 + int(ys[-1]), x0, x1))
    return boxes


def boundary_counts(
    pred: np.ndarray,
    gt: np.ndarray,
    radius: float,
    *,
    method: Literal["auto", "integral", "dilate"] = "auto",
    rows: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[int, int, int, int]:
    """(n_p, n_g, m_p, m_g) of one (H, W) frame: boundary sizes and matched pixels.

    n_p = |B_p|, m_p = |B_p & dilate(B_g, disk(radius))|, likewise for gt.
    ``method``: "auto" (integral image for integer radii, dilation otherwise),
    "integral" or "dilate" (both exposed for cross-checking).  ``rows``: optional
    precomputed ``pred.any(axis=1)``, ``gt.any(axis=1)``.
    """
    h_img, w_img = pred.shape
    rows_p, rows_g = (pred.any(axis=1), gt.any(axis=1)) if rows is None else rows
    if method == "auto":
        method = "integral" if float(radius).is_integer() else "dilate"
    if method == "integral":
        footprint = None
        reach = pad = int(radius)
    elif method == "dilate":
        footprint = disk_footprint(radius)
        reach, pad = len(footprint) // 2, 0  # cv2 anchors the footprint at its centre
    else:
        raise ValueError(f"unknown method {method!r}")

    totals = [0, 0, 0, 0]
    for y0, y1, x0, x1 in _pieces(pred, gt, rows_p | rows_g, reach):
        # Boundary pixels can sit one pixel up/left of the foreground, never down/right.
        box = (max(y0 - 1, 0), y1, max(x0 - 1, 0), x1)
        bits, n = _packed_bmaps(pred, gt, box, pad, y1 == h_img - 1, x1 == w_img - 1)
        n_p, n_g = int(n[0]), int(n[1])
        if n_p == 0 or n_g == 0:
            m_p = m_g = 0  # nothing to match against in this part
        elif (bits[0] == bits[1]).all():
            m_p, m_g = n_p, n_g
        elif footprint is None:
            m_p, m_g = _match_counts_integral(bits, pad)
        else:
            m_p, m_g = _match_counts_dilate(bits, footprint)
        for j, v in enumerate((n_p, n_g, m_p, m_g)):
            totals[j] += v
    return totals[0], totals[1], totals[2], totals[3]


def f_per_frame(
    pred: np.ndarray,
    gt: np.ndarray,
    void: np.ndarray | None = None,
    bound_th: float = 0.008,
) -> np.ndarray:
    """Boundary F per frame (davis2017 ``f_measure``), bit-identical to the official code.

    pred, gt: (T, H, W) or (H, W); void: optional, same shape or (H, W), removed from
    both masks before their boundaries are taken.  ``bound_th``: radius as a fraction of
    the frame diagonal (ceil), or in pixels if >= 1.  Returns float64 (T,).
    Special cases: both boundaries empty -> 1; exactly one empty -> 0.
    """
    p, g = _stack(pred), _stack(gt)
    _check_shapes(p, g)
    p, g = _apply_void(p, g, void)
    radius = boundary_radius(p.shape[1:], bound_th)
    rows_p, rows_g = p.any(axis=2), g.any(axis=2)  # (T, H): one pass per stack
    has_p, has_g = rows_p.any(axis=1), rows_g.any(axis=1)
    out = np.empty(p.shape[0], dtype=np.float64)
    for i in range(p.shape[0]):
        if has_p[i] and has_g[i]:
            counts = boundary_counts(p[i], g[i], radius, rows=(rows_p[i], rows_g[i]))
            out[i] = _f_from_counts(*counts)
        elif has_p[i] or has_g[i]:
            # One mask empty: F is 0 unless the other is full (no boundary either).
            other, rows = (p[i], rows_p[i]) if has_p[i] else (g[i], rows_g[i])
            out[i] = 1.0 if rows.all() and other.all() else 0.0
        else:
            out[i] = 1.0
    return out


# ------------------------------------------------------------------- DAVIS statistics


@dataclass(frozen=True)
class DavisStats:
    """davis2017 ``db_statistics`` of one per-frame vector."""

    mean: float  # M = nanmean(v)
    recall: float  # R ("O") = mean(v > 0.5); NaN frames count as misses
    decay: float  # D = nanmean(first quarter) - nanmean(last quarter)

    def __iter__(self):
        """``M, R, D = db_statistics(v)``, like the official tuple."""
        return iter((self.mean, self.recall, self.decay))


def _decay_bins(n: int, replicate_uint8_wrap: bool) -> list[tuple[int, int]]:
    """[start, stop) slices of the 4 decay bins (adjacent bins share an endpoint)."""
    edges = np.round(np.linspace(1, n, 5) + 1e-10) - 1
    if not replicate_uint8_wrap:
        ids = [int(e) for e in edges]
        return [(ids[i], ids[i + 1] + 1) for i in range(4)]
    # Official code: ids.astype(np.uint8) (wraps mod 256), then ids[i+1] + 1 in uint8
    # arithmetic (NumPy >= 2 wraps 255 + 1 to 0 as well).
    ids = [int(e) % 256 for e in edges]
    return [(ids[i], (ids[i + 1] + 1) % 256) for i in range(4)]


def decay(per_frame: np.ndarray, replicate_uint8_wrap: bool = False) -> float:
    """davis2017 decay D = nanmean(bin_0) - nanmean(bin_3) of a (n,) per-frame vector.

    Bin edges ``round(linspace(1, n, 5) + 1e-10) - 1``, bins inclusive of both edges.
    Divergence from the official code: it casts the edges to uint8, so for n >= 257 (and
    n = 256 under NumPy >= 2, where ``255 + 1`` wraps too) the bins are wrong, e.g.
    n = 300 -> edges 0, 75, 150, 224, 43 -> empty last bin -> NaN.  Here the edges are
    plain (int64-range) integers.  ``replicate_uint8_wrap=True`` reproduces the official numbers.
    """
    v = np.asarray(per_frame, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return float("nan")
    bins = _decay_bins(v.size, replicate_uint8_wrap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(np.nanmean(v[slice(*bins[0])]) - np.nanmean(v[slice(*bins[3])]))


def db_statistics(per_frame: np.ndarray, replicate_uint8_wrap: bool = False) -> DavisStats:
    """M, R (recall, "O"), D of a (n,) per-frame J or F vector (davis2017 ``db_statistics``).

    See ``decay`` for the uint8 bin-index divergence and ``replicate_uint8_wrap``.
    """
    v = np.asarray(per_frame, dtype=np.float64).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > 0.5))
    return DavisStats(mean=mean, recall=recall, decay=decay(v, replicate_uint8_wrap))


# ------------------------------------------------------------------------ ReVOS A and R


def revos_accuracy(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """ReVOS pixel accuracy per frame, mean(gt == pred) on masks binarised to {0, 1}.

    pred, gt: (T, H, W) or (H, W).  Returns float64 (T,).  This matches Sa2VA's RLE
    scorer (0/1 predictions) wherever GT instances do not overlap.  Divergences: VISA's
    PNG scorer compares raw uint8 values, so a 0/255 PNG prediction gets every true
    positive counted as an error; and both official scorers build the GT by summing
    instance masks, so a pixel covered by two referred instances (value 2) never equals
    the prediction there, whereas here it is plain foreground.
    """
    p, g = _stack(pred), _stack(gt)
    _check_shapes(p, g)
    p, g = _as_bool(p), _as_bool(g)
    n_pix = p.shape[1] * p.shape[2]
    out = np.empty(p.shape[0], dtype=np.float64)
    for i in range(p.shape[0]):
        differ = cv2.countNonZero(cv2.bitwise_xor(p[i].view(np.uint8), g[i].view(np.uint8)))
        out[i] = (n_pix - differ) / n_pix
    return out


def revos_robustness(pred: np.ndarray, gt: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """ReVOS robustness per frame, max(1 - FP / (|foreground| + 1e-6), 0).

    FP = |pred & ~gt| on binarised masks; ``foreground`` is the video's foreground mask
    for that frame (union of all annotated objects of the video).  All (T, H, W) or
    (H, W).  Returns float64 (T,).  Matches Sa2VA's RLE scorer wherever GT instances do
    not overlap; VISA's PNG scorer counts 255 per false-positive pixel of a 0/255 PNG,
    and both official scorers' uint8 ``(1 - gt) * pred`` turns GT overlaps (gt = 2) into
    255 "false positives" per predicted pixel.
    """
    p, g, fg = _stack(pred), _stack(gt), _stack(foreground)
    _check_shapes(p, g)
    _check_shapes(p, fg)
    p, g, fg = _as_bool(p), _as_bool(g), _as_bool(fg)
    out = np.empty(p.shape[0], dtype=np.float64)
    for i in range(p.shape[0]):
        pi, gi = p[i].view(np.uint8), g[i].view(np.uint8)
        n_p = cv2.countNonZero(pi)
        false_pos = n_p - cv2.countNonZero(cv2.bitwise_and(pi, gi)) if n_p else 0
        pos = cv2.countNonZero(fg[i].view(np.uint8))
        out[i] = max(1 - false_pos / (pos + 1e-6), 0.0)
    return out


# ------------------------------------------------------------- scoring straight from RLE
#
# The video scorers receive COCO RLEs.  Decoding every (prediction, GT) frame pair to two
# full (H, W) arrays costs more than all the metrics together, and J, A and R need only
# four integers per frame.  ``RunMasks`` keeps a stack of masks as its foreground runs
# (the RLE's own column-major order); areas and intersections come from the runs, and F
# decodes only the small crop around both masks, transposed (column-major order is the
# transposed image in row-major order, and J, F and A are all invariant under transposing
# both masks: seg2bmap's rules are symmetric in rows and columns, and so is the disk).

#: A value of a counts string longer than this many characters is left to the exact
#: (slow) decoder: 11 characters carry 55 bits, far more than any run length needs.
_MAX_VALUE_CHARS = 11
_MAX_VALUE = 1 << 40  # |value| above this cannot be a run (or a delta) of a real mask


def parse_counts(counts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run lengths of many COCO compressed ``counts`` strings, decoded together.

    Same arithmetic as pycocotools ``rleFrString`` and ``refsav.schemas.rle.run_lengths``
    (little-endian base-32 values offset by 48; 0x20 continues, 0x10 on the last char
    sign-extends; from the fourth value on, each value is a delta to the run two places
    back), vectorised over all characters of all strings.
    Returns (runs int64, offsets (n + 1,), ok (n,) bool): the runs of string i are
    ``runs[offsets[i]:offsets[i + 1]]``.  ``ok[i]`` is False where this decoder cannot
    vouch for string i (a character outside '0'..'o', a truncated last value, an
    over-long or huge value, non-ASCII text): its runs are then meaningless and the
    caller must use ``refsav.schemas.rle.run_lengths``.  Runs are not checked against a size.
    """
    n = len(counts)
    ok = np.ones(n, dtype=bool)
    strings = list(counts)
    for i, s in enumerate(strings):
        if not s.isascii():
            ok[i], strings[i] = False, ""
    char_offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(s) for s in strings], out=char_offsets[1:])
    d = np.frombuffer("".join(strings).encode("ascii"), dtype=np.uint8) - np.uint8(48)  # wraps below '0'
    if d.size == 0:
        return np.zeros(0, np.int64), np.zeros(n + 1, np.int64), ok

    def flag(char_positions: np.ndarray) -> None:
        ok[np.searchsorted(char_offsets, char_positions, side="right") - 1] = False

    flag(np.flatnonzero(d > 63))
    more = d >= 32  # the continuation bit, for valid characters
    last_char = char_offsets[1:][char_offsets[1:] > char_offsets[:-1]] - 1
    flag(last_char[more[last_char]])  # the string ends inside a value
    # A value ends at a character without the continuation bit, or at its string's end
    # (so a truncated value never runs into the next string).
    more[last_char] = False
    ends = np.flatnonzero(~more)
    nchars = np.diff(ends, prepend=-1)
    flag(ends[nchars > _MAX_VALUE_CHARS])
    # Horner from the most significant (last) character, which carries the sign.
    top = (d[ends] & 0x1F).astype(np.int64)
    v = top - ((top & 0x10) << 1)
    for j in range(1, min(int(nchars.max()), _MAX_VALUE_CHARS)):
        sel = np.flatnonzero(nchars > j)
        v[sel] = (v[sel] << 5) | (d[ends[sel] - j] & 0x1F)
    flag(ends[np.abs(v) > _MAX_VALUE])

    offsets = np.searchsorted(ends, char_offsets)  # values ending before each string
    nvals = np.diff(offsets)
    first = np.repeat(offsets[:-1], nvals)  # index of the first value of each value's string
    if not ok.all():
        v[~ok[np.repeat(np.arange(n), nvals)]] = 0  # keep rejected strings out of the sums below
    # runs[m] = v[m] + runs[m - 2] for m >= 3 (m: index within the string): running sums
    # over every other value, restarted at every string.  With value 0 of each string
    # zeroed, runs[g] = sums[g] - sums[the last index before the string of g's parity].
    starts = offsets[:-1][nvals > 0]
    w = v.copy()
    w[starts] = 0
    sums = np.empty_like(w)
    np.cumsum(w[0::2], out=sums[0::2])
    np.cumsum(w[1::2], out=sums[1::2])
    before = first - 2 + ((np.arange(v.size) - first) & 1)
    runs = sums - np.where(before >= 0, sums[np.maximum(before, 0)], 0)
    runs[starts] = v[starts]
    return runs, offsets, ok


def _coverage(runs: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per string of ``parse_counts`` output: pixels covered (sum of runs), any negative run."""
    total = np.concatenate(([0], np.cumsum(runs)))
    which = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    negative = np.bincount(which[runs < 0], minlength=len(offsets) - 1) > 0
    return total[offsets[1:]] - total[offsets[:-1]], negative


def counts_cover(counts: Sequence[str], pixels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Bool per string: it decodes (fast path of ``parse_counts``) to non-negative runs
    covering exactly ``pixels[i]`` = H*W pixels, i.e. ``refsav.schemas.rle.Rle.check`` passes.

    False means "not vouched for", not necessarily invalid: ask ``Rle.check`` then.
    """
    runs, offsets, ok = parse_counts(counts)
    covered, negative = _coverage(runs, offsets)
    return ok & (covered == np.asarray(pixels, dtype=np.int64)) & ~negative


@dataclass(frozen=True, eq=False)
class RunMasks:
    """A stack of T binary (H, W) masks stored as foreground runs, in COCO RLE order.

    Pixel (y, x) of frame t has the index ``t * H * W + x * H + y``; ``starts`` and
    ``ends`` (int64, sorted) delimit the half-open runs of foreground indices.  A run
    never crosses a frame and is never empty; runs may touch.  The runs of frame t are
    ``starts[bounds[t]:bounds[t + 1]]``.
    """

    height: int
    width: int
    starts: np.ndarray
    ends: np.ndarray
    bounds: np.ndarray  # (T + 1,)

    @property
    def frames(self) -> int:
        return len(self.bounds) - 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.frames, self.height, self.width

    @classmethod
    def _from_sorted(cls, height: int, width: int, frames: int, starts, ends) -> "RunMasks":
        keep = ends > starts
        starts, ends = starts[keep], ends[keep]
        bounds = np.searchsorted(starts, np.arange(frames + 1, dtype=np.int64) * (height * width))
        return cls(height, width, starts, ends, bounds)

    @classmethod
    def empty(cls, frames: int, height: int, width: int) -> "RunMasks":
        none = np.zeros(0, np.int64)
        return cls(height, width, none, none, np.zeros(frames + 1, np.int64))

    @classmethod
    def from_counts(cls, counts: Sequence[str | None], height: int, width: int) -> "RunMasks":
        """Masks from COCO compressed counts strings of (height, width) frames; None is empty.

        Raises SchemaError for a string whose runs do not cover exactly H*W pixels or are
        otherwise corrupt (the message of ``refsav.schemas.rle.Rle.check``).
        """
        from refsav.schemas.errors import SchemaError
        from refsav.schemas.rle import run_lengths

        frame_of = np.array([t for t, c in enumerate(counts) if c is not None], dtype=np.int64)
        strings = [c for c in counts if c is not None]
        runs, offsets, ok = parse_counts(strings)
        if not ok.all():  # rare: let the exact decoder read (or reject) those strings
            parts = [runs[offsets[i] : offsets[i + 1]] if ok[i] else np.asarray(run_lengths(s), np.int64)
                     for i, s in enumerate(strings)]
            runs = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            offsets = np.concatenate(([0], np.cumsum([len(p) for p in parts]))).astype(np.int64)
        n_pix = height * width
        covered, negative = _coverage(runs, offsets)
        bad = np.flatnonzero((covered != n_pix) | negative)
        if bad.size:
            i = int(bad[0])
            if negative[i]:
                raise SchemaError("RLE counts contain a negative run (corrupt string)", field="counts")
            raise SchemaError(f"RLE counts cover {covered[i]} pixels but size [{height}, {width}] has {n_pix}",
                              field="counts")
        which = np.repeat(np.arange(len(strings)), np.diff(offsets))
        total = np.concatenate(([0], np.cumsum(runs)))
        # Runs alternate background / foreground, starting with background.
        run_end = total[1:] - total[offsets[which]]  # end of each run within its frame
        fg = ((np.arange(runs.size) - offsets[which]) & 1) == 1
        base = frame_of[which[fg]] * n_pix
        ends = base + run_end[fg]
        return cls._from_sorted(height, width, len(counts), ends - runs[fg], ends)

    @classmethod
    def from_rles(cls, rles: Sequence, height: int, width: int) -> "RunMasks":
        """Masks from ``refsav.schemas.rle.Rle`` objects (None: empty frame) of size (height, width)."""
        return cls.from_counts([None if r is None else r.counts for r in rles], height, width)

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> "RunMasks":
        """Masks from a (T, H, W) or (H, W) array; any non-zero value is foreground."""
        m = _as_bool(_stack(masks))
        t, h, w = m.shape
        n_pix = h * w
        flat = np.zeros((t, n_pix + 2), dtype=np.int8)
        flat[:, 1:-1] = m.transpose(0, 2, 1).reshape(t, n_pix)
        edges = np.diff(flat.reshape(-1))
        # Every frame is padded with a 0 on both sides, so rises and falls pair up in it.
        rises, falls = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        frame = rises // (n_pix + 2)
        starts = rises - frame * (n_pix + 2) + frame * n_pix
        ends = falls - frame * (n_pix + 2) + frame * n_pix
        return cls._from_sorted(h, w, t, starts, ends)

    def to_dense(self) -> np.ndarray:
        """Bool (T, H, W); for tests and small stacks."""
        t, h, w = self.shape
        flat = np.zeros(t * h * w + 1, dtype=np.int8)
        np.add.at(flat, self.starts, 1)
        np.add.at(flat, self.ends, -1)
        cols = np.cumsum(flat[:-1]).astype(bool)
        return cols.reshape(t, w, h).transpose(0, 2, 1).copy()

    def _check_same_shape(self, other: "RunMasks") -> None:
        if self.shape != other.shape:
            raise ValueError(f"masks {self.shape} and {other.shape} differ in shape")

    def areas(self) -> np.ndarray:
        """Foreground pixels per frame, int64 (T,)."""
        total = np.concatenate(([0], np.cumsum(self.ends - self.starts)))
        return total[self.bounds[1:]] - total[self.bounds[:-1]]

    def union(self, other: "RunMasks") -> "RunMasks":
        """Pixel-wise OR, frame by frame."""
        self._check_same_shape(other)
        starts = np.concatenate((self.starts, other.starts))
        ends = np.concatenate((self.ends, other.ends))
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
        if starts.size == 0:
            return self
        reach = np.maximum.accumulate(ends)
        # A run starts a new merged run unless it overlaps the ones before it; touching
        # runs stay apart, so a run ending at a frame's end never joins the next frame.
        new = np.ones(starts.size, dtype=bool)
        new[1:] = starts[1:] >= reach[:-1]
        first = np.flatnonzero(new)
        return RunMasks._from_sorted(self.height, self.width, self.frames, starts[first],
                                     np.maximum.reduceat(ends, first))

    def _covered_before(self, x: np.ndarray) -> np.ndarray:
        """Foreground pixels with index < x, for each x."""
        total = np.concatenate(([0], np.cumsum(self.ends - self.starts)))
        j = np.searchsorted(self.starts, x)  # runs starting before x
        overshoot = np.where(j > 0, self.ends[np.maximum(j - 1, 0)] - x, 0) if self.starts.size else 0
        return total[j] - np.maximum(overshoot, 0)

    def intersection_areas(self, other: "RunMasks") -> np.ndarray:
        """Pixels set in both, per frame, int64 (T,)."""
        self._check_same_shape(other)
        if self.starts.size == 0 or other.starts.size == 0:
            return np.zeros(self.frames, np.int64)
        per_run = self._covered_before(other.ends) - self._covered_before(other.starts)
        total = np.concatenate(([0], np.cumsum(per_run)))
        return total[other.bounds[1:]] - total[other.bounds[:-1]]

    def boxes(self) -> np.ndarray:
        """(T, 4) int64 inclusive boxes (y0, y1, x0, x1) of the frames' foreground.

        Rows of empty frames are (H, -1, W, -1), so that the min/max of two boxes is
        their union.
        """
        t, h, w = self.shape
        out = np.empty((t, 4), np.int64)
        out[:] = (h, -1, w, -1)
        if self.starts.size == 0:
            return out
        frame = np.repeat(np.arange(t), np.diff(self.bounds))
        first = self.starts - frame * (h * w)
        last = self.ends - 1 - frame * (h * w)
        col0, col1 = first // h, last // h
        one_col = col0 == col1  # a run over several columns covers row H-1, then row 0
        row0 = np.where(one_col, first - col0 * h, 0)
        row1 = np.where(one_col, last - col1 * h, h - 1)
        filled = np.flatnonzero(np.diff(self.bounds) > 0)
        at = self.bounds[filled]
        out[filled, 0] = np.minimum.reduceat(row0, at)
        out[filled, 1] = np.maximum.reduceat(row1, at)
        out[filled, 2] = col0[at]
        out[filled, 3] = col1[self.bounds[filled + 1] - 1]
        return out

    def crop_transposed(self, t: int, box: tuple[int, int, int, int]) -> np.ndarray:
        """Frame t inside box (y0, y1, x0, x1), inclusive, transposed: bool (x1-x0+1, y1-y0+1)."""
        return _crops_transposed([self], t, box)[0]


def _crops_transposed(masks: Sequence["RunMasks"], t: int, box) -> np.ndarray:
    """(len(masks), x1-x0+1, y1-y0+1) bool: ``crop_transposed`` of each, painted at once.

    A run of column-major indices is, transposed, a horizontal segment of row x (one
    per column it spans), so the crops are painted by one ``np.repeat`` of alternating
    background / foreground lengths.
    """
    y0, y1, x0, x1 = box
    hh, ww = y1 - y0 + 1, x1 - x0 + 1
    size = hh * ww
    starts, stops = [], []
    for p, m in enumerate(masks):
        _, col, first, last = _frame_run_pieces(m, np.array([t]))
        row_a, row_b = np.maximum(first, y0), np.minimum(last, y1) + 1
        keep = (col >= x0) & (col <= x1) & (row_b > row_a)
        at = p * size + (col[keep] - x0) * hh - y0
        starts.append(at + row_a[keep])
        stops.append(at + row_b[keep])
    return _fill(np.concatenate(starts), np.concatenate(stops), len(masks) * size).reshape(len(masks), ww, hh)


def _fill(a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    """Bool (size,), True on the sorted, disjoint half-open ranges [a[k], b[k])."""
    lengths = np.empty(2 * a.size + 1, np.int64)
    lengths[1::2] = b - a
    lengths[0] = a[0] if a.size else size
    lengths[2:-1:2] = a[1:] - b[:-1]
    if a.size:
        lengths[-1] = size - b[-1]
    return np.repeat(_alternating(lengths.size), lengths)


@functools.lru_cache(maxsize=8)
def _alternating_cached(n: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[1::2] = True
    out.flags.writeable = False
    return out


def _alternating(n: int) -> np.ndarray:
    """[False, True, False, ...] of length n."""
    size = 1 << max(n - 1, 0).bit_length()  # few distinct cached sizes
    return _alternating_cached(size)[:n]


#: Frames are scored in batches of about this many canvas pixels per mask, small
#: enough for the batch to stay in cache, large enough to amortise numpy's per-call cost.
_BATCH_PIXELS = 1 << 18


def _frame_run_pieces(m: RunMasks, frames: np.ndarray):
    """Runs of the given frames, split at column ends: (k, column, first row, last row).

    k indexes ``frames``; rows are inclusive; pieces are sorted by (k, column, row).
    """
    h = m.height
    lo, hi = m.bounds[frames], m.bounds[frames + 1]
    n = hi - lo
    k = np.repeat(np.arange(len(frames)), n)
    idx = np.arange(int(n.sum())) + np.repeat(lo - (np.cumsum(n) - n), n)
    base = frames[k] * (h * m.width)
    col, first = np.divmod(m.starts[idx] - base, h)
    last_col, last = np.divmod(m.ends[idx] - 1 - base, h)
    if (last_col != col).any():  # rare: a run over several columns (full-height ones)
        pieces = last_col - col + 1
        run = np.repeat(np.arange(col.size), pieces)
        step = np.arange(run.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        k, col = k[run], col[run] + step
        first = np.where(step == 0, first[run], 0)
        last = np.where(col == last_col[run], last[run], h - 1)
    return k, col, first, last


def _stacked_boundary_counts(pred: RunMasks, gt: RunMasks, frames: np.ndarray, boxes: np.ndarray, r: int) -> np.ndarray:
    """(len(frames), 4) int64: ``boundary_counts`` (n_p, n_g, m_p, m_g) of many frames.

    boxes: (y0, y1, x0, x1) per frame, inclusive, holding all foreground of both masks
    grown by one pixel where the frame allows (see ``frame_scores``); r: integer radius.
    Frames are sorted by crop width and scored in batches (``_stacked_batch``).
    """
    pad = max(r, 1)
    rows = boxes[:, 3] - boxes[:, 2] + 1 + 2 * pad + 1
    cols = boxes[:, 1] - boxes[:, 0] + 1 + 2 * pad + 1
    order = np.argsort(cols, kind="stable")
    out = np.zeros((len(frames), 4), np.int64)
    start, height = 0, 0
    for j, i in enumerate(order.tolist()):
        # Widths only grow along `order`, so this frame's width is the batch's.
        if j > start and (height + rows[i]) * cols[i] > _BATCH_PIXELS:
            sel = order[start:j]
            out[sel] = _stacked_batch(pred, gt, frames[sel], boxes[sel], r, pad)
            start, height = j, 0
        height += rows[i]
    sel = order[start:]
    out[sel] = _stacked_batch(pred, gt, frames[sel], boxes[sel], r, pad)
    return out


def _stacked_batch(pred: RunMasks, gt: RunMasks, frames, boxes, r: int, pad: int) -> np.ndarray:
    """``_stacked_boundary_counts`` of one batch, all frames at once.

    Each frame's transposed crop is painted into its own block of a tall canvas (one per
    mask): ``pad`` empty rows, the crop rows at columns [pad, pad + width), an extension
    row, ``pad`` more rows; the canvas is wide enough for the widest crop plus an
    extension column and ``pad`` on both sides.  Blocks never interact: boundary blocks
    are 2x2 and disk windows reach at most r <= pad pixels.  The extension row / column
    copy the crop's last row / column, which is the official rule where the crop ends at
    the frame's border, and copies empty margin pixels otherwise.  Boundary maps are
    then computed for the whole canvas, pixels outside the crops (from the extension and
    from crops touching the frame's top / left border) are dropped, and matches are
    counted with one integral image, as in ``_match_counts_integral``.
    """
    k = len(frames)
    y0, y1, x0, x1 = (boxes[:, j] for j in range(4))
    rows, cols = x1 - x0 + 1, y1 - y0 + 1
    wc = int(cols.max()) + 2 * pad + 1
    block = rows + 2 * pad + 1
    top = np.cumsum(block) - block
    rtot = int(block.sum())
    plane = rtot * wc

    starts, stops = [], []
    for p, m in enumerate((pred, gt)):
        i, col, first, last = _frame_run_pieces(m, frames)
        at = p * plane + (top[i] + pad + col - x0[i]) * wc + pad - y0[i]
        starts.append(at + first)
        stops.append(at + last + 1)
    canvas = _fill(np.concatenate(starts), np.concatenate(stops), 2 * plane)
    grid = canvas.reshape(2, rtot, wc)
    last_row = top + pad + rows - 1
    grid[:, last_row + 1] = grid[:, last_row]
    ext_rows = np.repeat(top + pad - np.cumsum(rows + 1) + rows + 1, rows + 1) + np.arange(int((rows + 1).sum()))
    ext_col = np.repeat(pad + cols, rows + 1)
    grid[:, ext_rows, ext_col] = grid[:, ext_rows, ext_col - 1]

    # Block (y, x) is mixed iff S(y,x) != S(y,x+1) or S(y+1,x) != S(y+1,x+1) or
    # S(y,x) != S(y+1,x); on the flat canvas, x+1 is +1 and y+1 is +wc (the wrap-around
    # at row ends only ever compares padding).
    n = canvas.size - wc - 1
    horizontal = canvas[:-1] ^ canvas[1:]
    bmap = np.zeros(canvas.size, dtype=bool)
    np.bitwise_or(horizontal[:n], horizontal[wc : wc + n], out=bmap[:n])
    bmap[:n] |= canvas[:n] ^ canvas[wc : wc + n]

    pos = np.flatnonzero(bmap)
    pl, rem = np.divmod(pos, plane)
    row, col = np.divmod(rem, wc)
    i = np.repeat(np.arange(k), block)[row]
    local = row - top[i] - pad
    inside = (local >= 0) & (local < rows[i]) & (col >= pad) & (col < pad + cols[i])
    if not inside.all():
        bmap[pos[~inside]] = False
        pos, pl, row, col, i = pos[inside], pl[inside], row[inside], col[inside], i[inside]

    wi = wc + 1
    ii = cv2.integral(bmap.view(np.uint8).reshape(2 * rtot, wc)).reshape(-1)
    other = (pl * rtot + row) * wi + col + np.where(pl == 0, rtot * wi, -rtot * wi)
    matched = _matched_in_disk(ii, other, wi, r)
    is_p = pl == 0
    out = np.empty((k, 4), np.int64)
    out[:, 0] = np.bincount(i[is_p], minlength=k)
    out[:, 1] = np.bincount(i[~is_p], minlength=k)
    out[:, 2] = np.bincount(i[is_p & matched], minlength=k)
    out[:, 3] = np.bincount(i[~is_p & matched], minlength=k)
    return out


def _f_from_count_arrays(n_p, n_g, m_p, m_g) -> np.ndarray:
    """``_f_from_counts`` over arrays, with the same float operations."""
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_p == 0, 1.0, m_p / n_p)
        recall = np.where(n_g == 0, 1.0, m_g / n_g)
        # n_p > 0 = n_g: m_p is 0, so P = 0 and R = 1 as in the official special case.
        total = precision + recall
        return np.where(total == 0, 0.0, 2 * precision * recall / total)


@dataclass(frozen=True, eq=False)
class FrameScores:
    """Per-frame J, F, ReVOS A and the pixel counts behind them, from ``frame_scores``."""

    j: np.ndarray  # (T,) float64, as ``j_per_frame``
    f: np.ndarray  # (T,) float64, as ``f_per_frame`` (NaN where not computed)
    accuracy: np.ndarray  # (T,) float64, as ``revos_accuracy``
    intersection: np.ndarray  # (T,) int64
    pred_area: np.ndarray  # (T,) int64
    gt_area: np.ndarray  # (T,) int64

    def robustness(self, foreground_area: np.ndarray) -> np.ndarray:
        """ReVOS R per frame (as ``revos_robustness``) given |foreground| per frame."""
        false_pos = self.pred_area - self.intersection
        return np.maximum(1 - false_pos / (np.asarray(foreground_area) + 1e-6), 0.0)


def frame_scores(pred: RunMasks, gt: RunMasks, bound_th: float = 0.008, with_f: bool = True) -> FrameScores:
    """J, F and ReVOS A per frame of two RunMasks stacks, equal to the dense functions.

    Frames where both masks are empty are not looked at (J = F = A = 1); frames where
    one is empty need only the areas; the others decode both masks inside the union of
    their boxes grown by one pixel (the frame's border rules then see the same pixels
    as on the full frame) and count boundary matches there.
    """
    pred._check_same_shape(gt)
    t, h, w = pred.shape
    n_p, n_g = pred.areas(), gt.areas()
    inter = pred.intersection_areas(gt)
    union = n_p + n_g - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union
    j[union == 0] = 1.0
    n_pix = h * w
    accuracy = (n_pix - (union - inter)) / n_pix
    f = np.full(t, np.nan)
    if with_f:
        # One empty mask: F is 0 unless the other one is full (it has no boundary either).
        f[:] = np.where((n_p == 0) & (n_g == 0), 1.0, np.where((n_p == n_pix) | (n_g == n_pix), 1.0, 0.0))
        both = np.flatnonzero((n_p > 0) & (n_g > 0))
        if both.size:
            radius = boundary_radius((h, w), bound_th)
            bp, bg = pred.boxes()[both], gt.boxes()[both]
            y0 = np.maximum(np.minimum(bp[:, 0], bg[:, 0]) - 1, 0)
            y1 = np.minimum(np.maximum(bp[:, 1], bg[:, 1]) + 1, h - 1)
            x0 = np.maximum(np.minimum(bp[:, 2], bg[:, 2]) - 1, 0)
            x1 = np.minimum(np.maximum(bp[:, 3], bg[:, 3]) + 1, w - 1)
            boxes = np.stack([y0, y1, x0, x1], axis=1)
            # Masks far apart (a prediction on another object) make a large, mostly empty
            # union box: those frames go to boundary_counts, which splits them into parts,
            # as do non-integer radii (an off-centre footprint).
            own = ((bp[:, 1] - bp[:, 0] + 3) * (bp[:, 3] - bp[:, 2] + 3)
                   + (bg[:, 1] - bg[:, 0] + 3) * (bg[:, 3] - bg[:, 2] + 3))
            near = (y1 - y0 + 1) * (x1 - x0 + 1) <= 3 * own
            if not float(radius).is_integer():
                near[:] = False
            if near.any():
                counts = _stacked_boundary_counts(pred, gt, both[near], boxes[near], int(radius))
                f[both[near]] = _f_from_count_arrays(*counts.T)
            for k in np.flatnonzero(~near).tolist():
                i = int(both[k])
                box = (int(y0[k]), int(y1[k]), int(x0[k]), int(x1[k]))
                crops = _crops_transposed([pred, gt], i, box)
                f[i] = _f_from_counts(*boundary_counts(crops[0], crops[1], radius))
    return FrameScores(j, f, accuracy, inter, n_p, n_g)


# ------------------------------------------------------------------ image segmentation

#: LISA (and Sa2VA ``RES.py``) per-sample IoU is I / (U + 1e-5) ...
LISA_IOU_EPS = 1e-5
#: ... and its cIoU is sum(I) / (sum(U) + 1e-10).
LISA_CIOU_EPS = 1e-10


@dataclass(frozen=True)
class MaskCounts:
    """Pixel counts of one (prediction, ground truth) pair of binary masks."""

    intersection: int
    union: int
    pred_area: int
    gt_area: int


def mask_counts(pred: np.ndarray, gt: np.ndarray) -> MaskCounts:
    """(H, W) prediction and ground truth -> MaskCounts (any non-zero is foreground)."""
    p, g = _as_bool(np.asarray(pred)), _as_bool(np.asarray(gt))
    _check_shapes(p, g)
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    inter = int(np.count_nonzero(p & g))
    return MaskCounts(intersection=inter, union=n_p + n_g - inter, pred_area=n_p, gt_area=n_g)


def sample_iou(
    intersections: Sequence[float] | np.ndarray,
    unions: Sequence[float] | np.ndarray,
    empty_union: Literal["one", "zero"] = "one",
    eps: float = 0.0,
) -> np.ndarray:
    """Per-sample IoU I / (U + eps); samples with U = 0 score 1 ("one") or 0 ("zero").

    "one" + eps=LISA_IOU_EPS is LISA/Sa2VA (an empty prediction on an empty target is
    perfect; a perfect non-empty mask scores slightly below 1); "zero" + eps=0 is LAVT.
    """
    i = np.asarray(intersections, dtype=np.float64)
    u = np.asarray(unions, dtype=np.float64)
    if empty_union not in ("one", "zero"):
        raise ValueError(f"empty_union must be 'one' or 'zero', got {empty_union!r}")
    empty = u == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = i / (u + eps)
    iou[empty] = 1.0 if empty_union == "one" else 0.0
    return iou


def giou(
    intersections: Sequence[float] | np.ndarray,
    unions: Sequence[float] | np.ndarray,
    empty_union: Literal["one", "zero"] = "one",
    eps: float = 0.0,
) -> float:
    """gIoU / mIoU: mean of ``sample_iou`` over samples (a fraction in [0, 1]).

    LISA computes this in float32 on the GPU and averages per-image batch means; its
    printed value agrees with this float64 mean to ~1e-6.
    """
    iou = sample_iou(intersections, unions, empty_union, eps)
    return float(np.mean(iou)) if iou.size else float("nan")


def ciou(
    intersections: Sequence[float] | np.ndarray,
    unions: Sequence[float] | np.ndarray,
    eps: float = 0.0,
) -> float:
    """cIoU / overall IoU: sum(I) / (sum(U) + eps) (a fraction); NaN if the denominator is 0.

    eps=0 is LAVT/ReLA, eps=LISA_CIOU_EPS is LISA/Sa2VA (which sums in float32, so its
    printed value agrees with this float64 one to ~1e-7 relative).
    """
    i = float(np.sum(np.asarray(intersections, dtype=np.float64)))
    u = float(np.sum(np.asarray(unions, dtype=np.float64))) + eps
    return i / u if u != 0 else float("nan")


def precision_at(
    ious: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
) -> dict[float, float]:
    """Pr@k (LAVT): fraction of samples with IoU >= k, for each threshold k (fractions)."""
    v = np.asarray(ious, dtype=np.float64)
    if v.size == 0:
        return {float(k): float("nan") for k in thresholds}
    return {float(k): float(np.count_nonzero(v >= k)) / v.size for k in thresholds}


@dataclass(frozen=True)
class GRefCocoScores:
    """gRefCOCO scores (ReLA ``ReferEvaluator``), all in percent.

    ReLA prints T_acc / N_acc as fractions; here they are x100 like its gIoU/cIoU/Pr.
    """

    giou: float  # 100 * sum(sample IoU) / #samples
    ciou: float  # 100 * sum(I) / sum(U)
    n_acc: float  # no-target recall, 100 * TP / (TP + FN)
    t_acc: float  # target recall, 100 * TN / (TN + FP)
    precision: dict[float, float] = field(default_factory=dict)  # Pr@k over targeted samples
    n_samples: int = 0
    n_no_target: int = 0


def grefcoco_scores(
    samples: Sequence[MaskCounts],
    pred_no_target: Sequence[bool] | None = None,
    gt_no_target: Sequence[bool] | None = None,
    thresholds: Sequence[float] = (0.7, 0.8, 0.9),
) -> GRefCocoScores:
    """gRefCOCO gIoU, cIoU, N-acc, T-acc and Pr@k with ReLA's bookkeeping.

    samples: one MaskCounts per sentence.  pred_no_target: the model's no-target flag per
    sample; default (mask-only models) "empty predicted mask => no target".
    gt_no_target: default "empty GT mask" (ReLA reads the dataset's ``empty`` flag).
    No-target GT: predicted no-target -> TP, IoU 1, adds I = U = 0; otherwise FN, IoU 0,
    adds U.  Targeted GT: predicted no-target -> FP and I := 0; otherwise TN; IoU = I/U
    (0 if U = 0), adds I and U, counts for Pr@k whose denominator is the targeted
    samples only.  Sums are sequential in sample order, as in ReLA.  Divergences: ReLA
    reports N-acc = T-acc = 0 when there is no no-target sample (kept), and raises on a
    zero denominator where this returns NaN.
    """
    n = len(samples)
    pred_nt = [s.pred_area == 0 for s in samples] if pred_no_target is None else list(pred_no_target)
    gt_nt = [s.gt_area == 0 for s in samples] if gt_no_target is None else list(gt_no_target)
    if len(pred_nt) != n or len(gt_nt) != n:
        raise ValueError("pred_no_target / gt_no_target must have one entry per sample")
    thresholds = [float(k) for k in thresholds]

    acc_i = acc_u = acc_iou = 0.0
    tp = tn = fp = fn = 0
    hits = {k: 0 for k in thresholds}
    n_targeted = 0
    for s, p_nt, g_nt in zip(samples, pred_nt, gt_nt):
        inter, union = s.intersection, s.union
        if g_nt:
            if p_nt:
                tp += 1
                acc_iou += 1
            else:
                fn += 1
                acc_u += union
            continue
        if p_nt:
            fp += 1
            inter = 0
        else:
            tn += 1
        this_iou = 0.0 if union == 0 else float(inter) / float(union)
        acc_iou += this_iou
        acc_i += inter
        acc_u += union
        n_targeted += 1
        for k in thresholds:
            if this_iou >= k:
                hits[k] += 1

    def ratio(num: float, den: float) -> float:
        return num / den if den else float("nan")

    n_nt = tp + fn
    if n_nt > 0:
        t_acc = 100.0 * ratio(tn, tn + fp)
        n_acc = 100.0 * ratio(tp, tp + fn)
    else:
        t_acc = n_acc = 0.0
    return GRefCocoScores(
        giou=100.0 * ratio(acc_iou, n),
        ciou=ratio(acc_i * 100.0, acc_u),
        n_acc=n_acc,
        t_acc=t_acc,
        precision={k: ratio(hits[k] * 100.0, n_targeted) for k in thresholds},
        n_samples=n,
        n_no_target=n_nt,
    )
