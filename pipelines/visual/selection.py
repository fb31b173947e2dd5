"""Which annotated frames each stage shows: cheap scores from the RLEs, then sharpness."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from refsav.schemas import rle as rle_ops
from refsav.schemas.video import Masklet

from .frames import Box, Frame, Frames, checked_frame, downscale, frame_grey

# A frame's cheap score is multiplied by this for every frame side the mask's box
# touches: a half-visible object cut by the border is a poor portrait even when large.
BORDER_PENALTY = 0.4
# Sharpness is measured on the object's box resized to this long side, so boxes of
# different sizes are compared at the same scale (small boxes get upsampled, which
# also blurs them: a mild extra preference for large views).
SHARPNESS_SIDE = 128


@dataclass(frozen=True)
class FrameStats:
    """One annotated frame of a masklet, measured on its RLE without decoding it."""

    frame: int
    area: int
    box: Box | None  # None where the object is not visible
    border_sides: int  # frame sides the box touches (0-4)
    score: float  # visible area relative to the masklet's largest, penalised at the border


def frame_stats(masklet: Masklet) -> list[FrameStats]:
    if not masklet.rles:
        return []
    height, width = masklet.rles[0].size
    areas, boxes = rle_ops.areas_and_boxes(masklet.rles)
    largest = max(int(a) for a in areas)
    stats = []
    for frame, a, (x, y, w, h) in zip(masklet.frame_indices, areas, boxes):
        a = int(a)
        if a == 0:
            stats.append(FrameStats(int(frame), 0, None, 0, 0.0))
            continue
        box = (int(x), int(y), int(x) + int(w), int(y) + int(h))
        sides = (box[0] <= 0) + (box[1] <= 0) + (box[2] >= width) + (box[3] >= height)
        stats.append(FrameStats(int(frame), a, box, int(sides), a / largest * BORDER_PENALTY**sides))
    return stats


DEFAULT_K = 3  # stage-1 crops per object


def default_candidates(k: int) -> int:
    """How many frames to decode and judge for sharpness when picking k."""
    return max(2 * k, 4)


def candidate_frames(masklet: Masklet, count: int) -> list[int]:
    """The `count` visible annotated frames with the best cheap score, best first."""
    visible = [s for s in frame_stats(masklet) if s.area > 0]
    visible.sort(key=lambda s: (-s.score, s.frame))
    return [s.frame for s in visible[:count]]


def sharpness(frame: Frame, box: Box) -> float:
    """Variance of the Laplacian of the grey box, resized to SHARPNESS_SIDE."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return 0.0
    h, w = y1 - y0, x1 - x0
    scale = SHARPNESS_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = frame_grey(frame, box)
    grey = downscale(grey, size) if scale < 1 else cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def select_object_frames(masklet: Masklet, frames: Frames, k: int = DEFAULT_K, *, candidates: int | None = None) -> list[int]:
    """The best k annotated frames for stage 1, best first; [] if never visible.

    The candidates (best cheap scores) that are present in `frames` are re-ranked by
    sharpness inside the object's box; the picks are then spread over the visible span
    so that k > 1 views do not show one moment three times.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    stats = {s.frame: s for s in frame_stats(masklet)}
    pool = candidate_frames(masklet, candidates or default_candidates(k))
    if not pool:
        return []
    index = {f: t for t, f in enumerate(masklet.frame_indices)}
    sharp = {
        f: sharpness(checked_frame(frames, f, masklet.rles[index[f]]), stats[f].box)  # type: ignore[arg-type]
        for f in pool
        if f in frames
    }
    best = max(sharp.values(), default=0.0)

    def final(f: int) -> float:
        if not sharp:
            return stats[f].score
        # Undecoded candidates rank as if blurry: nothing is known of their pixels.
        factor = 0.5 + 0.5 * (sharp[f] / best if best > 0 else 1.0) if f in sharp else 0.5
        return stats[f].score * factor

    ranked = sorted(pool, key=lambda f: (-final(f), f))
    span = (masklet.last_visible_frame or 0) - (masklet.first_visible_frame or 0)
    gap = span / (2 * k) if k > 1 else 0.0
    chosen: list[int] = []
    for f in ranked:
        if len(chosen) < k and all(abs(f - c) >= gap for c in chosen):
            chosen.append(f)
    for f in ranked:  # not enough spread-out candidates: fill with the next best
        if len(chosen) < k and f not in chosen:
            chosen.append(f)
    return chosen


def scene_frame(masklet: Masklet, frames: Frames, *, candidates: int | None = None) -> int | None:
    """Stage 2's frame: the single best one (the first stage-1 pick from the same
    candidates), None if the object is never visible."""
    best = select_object_frames(masklet, frames, 1, candidates=candidates or default_candidates(DEFAULT_K))
    return best[0] if best else None


def uniform_visible_frames(masklet: Masklet, n: int = 8) -> list[int]:
    """n annotated frames where the object is visible, spread uniformly in time from its
    first to its last visible frame (both included); all of them if there are fewer."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    visible = [s.frame for s in frame_stats(masklet) if s.area > 0]
    if len(visible) <= n:
        return visible
    if n == 1:
        return [visible[len(visible) // 2]]
    chosen = {visible[0], visible[-1]}
    pool = np.array(visible)
    for target in np.linspace(visible[0], visible[-1], n)[1:-1]:
        free = np.array([f not in chosen for f in visible])
        dist = np.where(free, np.abs(pool - target), np.inf)
        chosen.add(int(pool[int(np.argmin(dist))]))  # argmin: ties go to the earlier frame
    return sorted(chosen)


@dataclass(frozen=True)
class ViewSelection:
    object_frames: tuple[int, ...]  # stage 1, best first
    scene_frame: int  # stage 2
    video_frames: tuple[int, ...]  # stage 3, in time order


@dataclass(frozen=True)
class NotVisible:
    """An object that cannot be shown: the pipeline records it and moves on."""

    video_id: str
    object_id: int
    reason: str


def select_views(masklet: Masklet, frames: Frames, k: int = DEFAULT_K, n_video_frames: int = 8) -> ViewSelection | NotVisible:
    if masklet.visible_count == 0 or masklet.first_visible_frame is None:
        return NotVisible(masklet.video_id, masklet.object_id, "not visible in any annotated frame")
    picks = select_object_frames(masklet, frames, k)
    return ViewSelection(tuple(picks), picks[0], tuple(uniform_visible_frames(masklet, n_video_frames)))
