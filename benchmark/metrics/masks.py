"""Mask-array conventions shared by the dense metrics: any dtype, any non-zero value is
foreground; video functions take a (T, H, W) stack or a single (H, W) frame."""

from __future__ import annotations

import numpy as np


def stack(x: np.ndarray) -> np.ndarray:
    """(H, W) or (T, H, W) -> (T, H, W) view."""
    a = np.asarray(x)
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise ValueError(f"expected a (H, W) or (T, H, W) mask, got shape {a.shape}")
    return a


def as_bool(a: np.ndarray) -> np.ndarray:
    """Any dtype -> bool, contiguous (a no-op for contiguous bool input)."""
    if a.dtype == np.bool_:
        return np.ascontiguousarray(a)
    return np.not_equal(a, 0)


def check_shapes(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")


def apply_void(p: np.ndarray, g: np.ndarray, void: np.ndarray | None):
    """Remove void pixels from both (T, H, W) stacks; void is (H, W) or (T, H, W)."""
    if void is None:
        return p, g
    keep = ~as_bool(np.asarray(void))
    keep = np.broadcast_to(keep, p.shape)
    return as_bool(p) & keep, as_bool(g) & keep
