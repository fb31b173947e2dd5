"""Decoded frames as the renderer reads them: regions in BGR or grey, cheaply downscaled."""
from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np

from refsav.schemas.errors import SchemaError
from refsav.schemas.media import Frame
from refsav.schemas.rle import Rle

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive
Frames = Mapping[int, Frame]  # frame index -> decoded frame


def frame_view_bgr(frame: Frame, region: Box | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """`region` of the frame (default: all of it) at `size` (w, h, no larger than the
    region; default: unscaled), in OpenCV's BGR order.

    A YuvFrame is converted only there, at that size: the same pixels as converting the
    whole frame and cropping, since OpenCV's I420 conversion works per 2x2 block.
    """
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = region or (0, 0, w, h)
    size = size or (x1 - x0, y1 - y0)
    if isinstance(frame, np.ndarray):
        return cv2.cvtColor(np.ascontiguousarray(downscale(frame[y0:y1, x0:x1], size)), cv2.COLOR_RGB2BGR)
    # I420 works on 2x2 blocks: take the enclosing even-aligned block (crop_box already
    # gives even edges), scale its planes, and convert only then, at the output size.
    ax0, ay0, ax1, ay1 = x0 & ~1, y0 & ~1, x1 + (x1 & 1), y1 + (y1 & 1)
    yp, up, vp = (p[ay0 // s : ay1 // s, ax0 // s : ax1 // s] for p, s in zip(frame.planes(), (1, 2, 2)))
    exact = size == (x1 - x0, y1 - y0)
    ew, eh = (ax1 - ax0, ay1 - ay0) if exact else (size[0] + (size[0] & 1), size[1] + (size[1] & 1))
    if not exact:
        yp, up, vp = downscale(yp, (ew, eh)), downscale(up, (ew // 2, eh // 2)), downscale(vp, (ew // 2, eh // 2))
    block = np.concatenate((yp.ravel(), up.ravel(), vp.ravel())).reshape(-1, ew)
    bgr = cv2.cvtColor(block, cv2.COLOR_YUV2BGR_I420)
    if exact:
        return np.ascontiguousarray(bgr[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0])
    return bgr if (ew, eh) == size else cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)


def frame_grey(frame: Frame, region: Box) -> np.ndarray:
    """Luma of `region` (for YuvFrames the Y plane itself, in limited range)."""
    x0, y0, x1, y1 = region
    if isinstance(frame, np.ndarray):
        return cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return frame.planes()[0][y0:y1, x0:x1]


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def downscale(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (w, h) <= the image's size, antialiased but cheap.

    OpenCV's INTER_AREA is ~5x slower for fractional factors than for exact halving;
    halving while the result stays >= the target, then a mild (> 0.5x) bilinear step,
    gives nearly the same pixels (mean |diff| 0.3/255 at 1080p -> 768) far faster.
    """
    w, h = size
    while image.shape[1] >= 2 * w and image.shape[0] >= 2 * h:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if image.shape[1] == w and image.shape[0] == h:
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def checked_frame(frames: Frames, frame: int, rle: Rle) -> Frame:
    """frames[frame], which must be there and match the size of the masks."""
    if frame not in frames:
        raise ValueError(f"frame {frame} was not decoded (plan_video lists the frames to decode)")
    image = frames[frame]
    if image.shape[:2] != tuple(rle.size):
        raise SchemaError(
            f"decoded frame {frame} is {image.shape[1]}x{image.shape[0]} but the masks are {rle.size[1]}x{rle.size[0]}",
            field="video_height",
        )
    return image
