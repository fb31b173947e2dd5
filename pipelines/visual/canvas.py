"""Each view before highlighting: the crop or whole frame as sent, and the object's mask on it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from refsav.schemas.rle import Rle
from refsav.schemas import rle as rle_ops
from refsav.schemas.video import Masklet

from .frames import Box, Frames, checked_frame, downscale, frame_view_bgr, output_size
from .masks import rle_box
from .selection import ViewSelection
from .style import HighlightStyle


def crop_box(box: Box, frame_size: tuple[int, int], margin: float, min_side: int) -> Box:
    """The stage-1 crop: the box plus `margin` of its size on every side, at least
    `min_side` wide and high, shifted (not cut) to stay inside the (H, W) frame, and
    widened to even edges (4:2:0 video converts to RGB in 2x2 blocks)."""
    height, width = frame_size

    def span(a: int, b: int, limit: int) -> tuple[int, int]:
        size = b - a
        want = min(max(size + 2 * math.ceil(margin * size), min_side), limit)
        start = a - (want - size) // 2
        start = min(max(start, 0), limit - want)
        return start & ~1, min(limit, start + want + ((start + want) & 1))

    x0, x1 = span(box[0], box[2], width)
    y0, y1 = span(box[1], box[3], height)
    return (x0, y0, x1, y1)


Scaled = Mapping[tuple[int, int], np.ndarray]  # (frame, max_side) -> whole frame, BGR


def scale_frames(frames: Frames, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
    """Whole frames downscaled for full-frame views, keyed (frame, max_side); computed
    once per video and shared by all its objects."""
    out = {}
    for frame, max_side in sorted(set(wanted)):
        h, w = frames[frame].shape[:2]
        out[(frame, max_side)] = frame_view_bgr(frames[frame], None, output_size(w, h, max_side))
    return out


@dataclass(frozen=True)
class Canvas:
    """One view before highlighting: the image as it will be sent, and the object's mask on it."""

    frame: int
    region: Box  # the part of the source frame shown (the whole frame for stages 2-3)
    object_box: Box  # the object's box in source pixels
    image: np.ndarray = field(repr=False)  # (h, w, 3) uint8 BGR (OpenCV's order); may be shared, never modified
    mask: np.ndarray = field(repr=False)  # uint8 0/1 over mask_box
    mask_box: Box  # where `mask` lies in image coordinates


@dataclass(frozen=True)
class ObjectCanvases:
    object_views: tuple[Canvas, ...]
    scene_view: Canvas
    video_views: tuple[Canvas, ...]


def _frame_box(masklet: Masklet, frame: int) -> tuple[Rle, Box]:
    try:
        t = masklet.frame_indices.index(frame)
    except ValueError:
        raise ValueError(f"frame {frame} is not an annotated frame of object {masklet.object_id}") from None
    rle = masklet.rles[t]
    x, y, w, h = rle_ops.areas_and_boxes([rle])[1][0]
    if w <= 0 or h <= 0:
        raise ValueError(f"object {masklet.object_id} is not visible on frame {frame}")
    return rle, (int(x), int(y), int(x + w), int(y + h))


def crop_canvas(masklet: Masklet, frames: Frames, frame: int, style: HighlightStyle) -> Canvas:
    """A stage-1 view: the object's context crop, downscaled to style.max_side."""
    rle, box = _frame_box(masklet, frame)
    image = checked_frame(frames, frame, rle)
    region = crop_box(box, image.shape[:2], style.context_margin, style.min_crop_px)
    size = output_size(region[2] - region[0], region[3] - region[1], style.max_side)
    crop = frame_view_bgr(image, region, size)
    mask, mask_box = _mask_on_output(rle, box, region, size)
    return Canvas(frame, region, box, crop, mask, mask_box)


def full_canvas(masklet: Masklet, frames: Frames, frame: int, max_side: int, scaled: Scaled | None = None) -> Canvas:
    """A stage-2/3 view: the whole frame, downscaled to max_side."""
    rle, box = _frame_box(masklet, frame)
    image = checked_frame(frames, frame, rle)
    height, width = image.shape[:2]
    size = output_size(width, height, max_side)
    key = (frame, max_side)
    small = scaled[key] if scaled is not None and key in scaled else frame_view_bgr(image, None, size)
    region = (0, 0, width, height)
    mask, mask_box = _mask_on_output(rle, box, region, size)
    return Canvas(frame, region, box, small, mask, mask_box)


def _mask_on_output(rle: Rle, box: Box, region: Box, size: tuple[int, int]) -> tuple[np.ndarray, Box]:
    """The object's mask where `region` of the source is shown at `size` (w, h): only
    around the object's box, from only the source pixels that land there."""
    rx0, ry0, rx1, ry1 = region
    ow, oh = size
    sx, sy = ow / (rx1 - rx0), oh / (ry1 - ry0)
    ox0, oy0 = int((box[0] - rx0) * sx), int((box[1] - ry0) * sy)
    ox1, oy1 = min(ow, math.ceil((box[2] - rx0) * sx)), min(oh, math.ceil((box[3] - ry0) * sy))
    if (sx, sy) == (1.0, 1.0):
        return rle_box(rle, box), (ox0, oy0, ox1, oy1)
    sx0, sy0 = rx0 + int(ox0 / sx), ry0 + int(oy0 / sy)
    sx1, sy1 = min(rx1, rx0 + math.ceil(ox1 / sx)), min(ry1, ry0 + math.ceil(oy1 / sy))
    src = rle_box(rle, (sx0, sy0, sx1, sy1))
    resized = downscale(src * 255, (ox1 - ox0, oy1 - oy0))
    mask = (resized >= 128).astype(np.uint8)
    if not mask.any():
        # A sliver thinner than an output pixel: keep whatever it touches, or at
        # least the box's centre, so a tiny object is still marked.
        mask = (resized > 0).astype(np.uint8)
        if not mask.any():
            mask[mask.shape[0] // 2, mask.shape[1] // 2] = 1
    return mask, (ox0, oy0, ox1, oy1)


def full_view_keys(selection: ViewSelection, style: HighlightStyle) -> set[tuple[int, int]]:
    """The (frame, max_side) downscaled frames this object's full-frame views use."""
    return {(selection.scene_frame, style.max_side)} | {(f, style.video_max_side) for f in selection.video_frames}


def view_canvases(
    masklet: Masklet, frames: Frames, selection: ViewSelection, style: HighlightStyle, scaled: Scaled | None = None
) -> ObjectCanvases:
    return ObjectCanvases(
        object_views=tuple(crop_canvas(masklet, frames, f, style) for f in selection.object_frames),
        scene_view=full_canvas(masklet, frames, selection.scene_frame, style.max_side, scaled),
        video_views=tuple(full_canvas(masklet, frames, f, style.video_max_side, scaled) for f in selection.video_frames),
    )
