"""A mask's box from its RLE, without decoding the whole frame."""
from __future__ import annotations

import cv2
import numpy as np

from refsav.schemas.rle import Rle, run_lengths

from .frames import Box


def rle_box(rle: Rle, box: Box) -> np.ndarray:
    """The mask inside `box` as uint8 0/1, decoding only the box's columns.

    COCO RLE is column-major, so columns x0..x1 are one contiguous stretch of runs;
    the cost follows the box, not the frame (pycocotools decodes all of a 1080p
    frame, ~1.6 ms, for every view).
    """
    height, _ = rle.size
    x0, y0, x1, y1 = box
    runs = np.asarray(run_lengths(rle.counts), dtype=np.int64)
    bounds = np.concatenate(([0], np.cumsum(runs)))
    lo, hi = x0 * height, x1 * height
    lengths = np.diff(np.clip(bounds, lo, hi))
    values = (np.arange(len(runs)) & 1).astype(np.uint8)  # runs alternate 0, 1, 0, ...
    columns = np.repeat(values, lengths).reshape(x1 - x0, height)[:, y0:y1]
    if columns.size == 0:
        return np.zeros((y1 - y0, x1 - x0), np.uint8)
    return cv2.transpose(np.ascontiguousarray(columns))  # ~5x faster than NumPy's strided copy
