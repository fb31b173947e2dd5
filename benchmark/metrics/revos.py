"""ReVOS pixel accuracy A and robustness R per frame, on dense masks."""

from __future__ import annotations

import cv2
import numpy as np

from .masks import as_bool, check_shapes, stack


def revos_accuracy(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """ReVOS pixel accuracy per frame, mean(gt == pred) on masks binarised to {0, 1}.

    pred, gt: (T, H, W) or (H, W).  Returns float64 (T,).  This matches Sa2VA's RLE
    scorer (0/1 predictions) wherever GT instances do not overlap.  Divergences: VISA's
    PNG scorer compares raw uint8 values, so a 0/255 PNG prediction gets every true
    positive counted as an error; and both official scorers build the GT by summing
    instance masks, so a pixel covered by two referred instances (value 2) never equals
    the prediction there, whereas here it is plain foreground.
    """
    p, g = stack(pred), stack(gt)
    check_shapes(p, g)
    p, g = as_bool(p), as_bool(g)
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
    p, g, fg = stack(pred), stack(gt), stack(foreground)
    check_shapes(p, g)
    check_shapes(p, fg)
    p, g, fg = as_bool(p), as_bool(g), as_bool(fg)
    out = np.empty(p.shape[0], dtype=np.float64)
    for i in range(p.shape[0]):
        pi, gi = p[i].view(np.uint8), g[i].view(np.uint8)
        n_p = cv2.countNonZero(pi)
        false_pos = n_p - cv2.countNonZero(cv2.bitwise_and(pi, gi)) if n_p else 0
        pos = cv2.countNonZero(fg[i].view(np.uint8))
        out[i] = max(1 - false_pos / (pos + 1e-6), 0.0)
    return out
