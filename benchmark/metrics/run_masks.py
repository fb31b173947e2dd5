"""Scoring straight from RLE: J, F and ReVOS A per frame of masks kept as COCO runs.

The video scorers receive COCO RLEs.  Decoding every (prediction, GT) frame pair to two
full (H, W) arrays costs more than all the metrics together, and J, A and R need only
four integers per frame.  ``RunMasks`` keeps a stack of masks as its foreground runs
(the RLE's own column-major order, never decoded to full frames); ``frame_scores`` gets
J, A and R from run arithmetic, frames where both masks are empty cost nothing, and F
paints only the crop around both masks, transposed, for many frames at once into one
canvas with one integral image (``_stacked_batch``).  Column-major order is the
transposed image in row-major order, and J, F and A are all invariant under transposing
both masks (seg2bmap's rules are symmetric in rows and columns, and so is the disk).
Same numbers as the dense functions of the other modules, which stay for callers that
hold decoded masks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from refsav.schemas import rle as rle_ops

from .boundary import boundary_counts, boundary_radius, f_from_counts, matched_in_disk
from .masks import as_bool, stack


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
        frame_of = np.array([t for t, c in enumerate(counts) if c is not None], dtype=np.int64)
        strings = [c for c in counts if c is not None]
        runs, offsets = rle_ops.checked_run_lengths(strings, height, width)
        n_pix = height * width
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
        m = as_bool(stack(masks))
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
    matched = matched_in_disk(ii, other, wi, r)
    is_p = pl == 0
    out = np.empty((k, 4), np.int64)
    out[:, 0] = np.bincount(i[is_p], minlength=k)
    out[:, 1] = np.bincount(i[~is_p], minlength=k)
    out[:, 2] = np.bincount(i[is_p & matched], minlength=k)
    out[:, 3] = np.bincount(i[~is_p & matched], minlength=k)
    return out


def _f_from_count_arrays(n_p, n_g, m_p, m_g) -> np.ndarray:
    """``f_from_counts`` over arrays, with the same float operations."""
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
                f[i] = f_from_counts(*boundary_counts(crops[0], crops[1], radius))
    return FrameScores(j, f, accuracy, inter, n_p, n_g)
