"""Boundary F (davis2017 ``f_measure``) on dense masks, bit-identical to the official code.

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
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import cv2
import numpy as np

from .masks import apply_void, as_bool, check_shapes, stack


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
    s = as_bool(np.asarray(mask))
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

    matched = matched_in_disk(ii, base, wi, r)
    return int(np.count_nonzero(matched[:k])), int(np.count_nonzero(matched[k:]))


def matched_in_disk(ii: np.ndarray, base: np.ndarray, wi: int, r: int) -> np.ndarray:
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


def f_from_counts(n_p: int, n_g: int, m_p: int, m_g: int) -> float:
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
    p, g = stack(pred), stack(gt)
    check_shapes(p, g)
    p, g = apply_void(p, g, void)
    radius = boundary_radius(p.shape[1:], bound_th)
    rows_p, rows_g = p.any(axis=2), g.any(axis=2)  # (T, H): one pass per stack
    has_p, has_g = rows_p.any(axis=1), rows_g.any(axis=1)
    out = np.empty(p.shape[0], dtype=np.float64)
    for i in range(p.shape[0]):
        if has_p[i] and has_g[i]:
            counts = boundary_counts(p[i], g[i], radius, rows=(rows_p[i], rows_g[i]))
            out[i] = f_from_counts(*counts)
        elif has_p[i] or has_g[i]:
            # One mask empty: F is 0 unless the other is full (no boundary either).
            other, rows = (p[i], rows_p[i]) if has_p[i] else (g[i], rows_g[i])
            out[i] = 1.0 if rows.all() and other.all() else 0.0
        else:
            out[i] = 1.0
    return out
