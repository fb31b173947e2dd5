"""Reference submissions derived from the ground truth: perfect, noisy and empty.

They pin the scorer's ends (perfect = 100, empty = the both-empty frames only)
and give the demo something to rank before a model has run.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from refsav.schemas import rle as rle_ops
from refsav.schemas.io import atomic_write_json

from .inputs import RefVosGroundTruth

KINDS = ("perfect", "noisy", "empty")


def _noisy(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift, then erode or dilate: the kind of error a decent model makes."""
    if not mask.any():
        return mask
    dy, dx = rng.integers(-6, 7, size=2)
    shifted = np.zeros_like(mask)
    h, w = mask.shape
    shifted[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    kernel = np.ones((5, 5), np.uint8)
    op = cv2.erode if rng.random() < 0.5 else cv2.dilate
    return op(shifted.astype(np.uint8), kernel).astype(bool)


def write_baseline(gt: RefVosGroundTruth, out_json: str | os.PathLike, kind: str, seed: int = 0) -> None:
    """Write a Sa2VA-style results.json of the given kind for every GT expression."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    results: dict = {}
    for video in gt.videos:
        for exp in video.expressions:
            masks = gt.expression_mask(video, exp)
            if kind == "empty":
                masks = np.zeros_like(masks)
            elif kind == "noisy":
                masks = np.stack([_noisy(m, rng) for m in masks])
            results.setdefault(video.video_id, {})[exp.exp_id] = {
                "exp": exp.exp,
                "frames": video.frames,
                "prediction_masks": [rle_ops.encode(m).to_json() for m in masks],
            }
    atomic_write_json(out_json, results)
