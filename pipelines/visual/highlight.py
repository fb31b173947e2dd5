"""Marking the object on a canvas: the colour that stands out, and the contour, tint, box or crop."""
from __future__ import annotations

import cv2
import numpy as np

from .canvas import Canvas
from .style import PALETTE, HighlightStyle


def _bgr(colour: str) -> tuple[int, int, int]:
    r, g, b = PALETTE[colour]
    return (b, g, r)


def pick_colour(canvas: Canvas, style: HighlightStyle) -> str:
    """style.colour, or for "auto" the palette colour farthest from both the object's
    mean colour and that of its surroundings (the line lies on the surroundings)."""
    if style.colour != "auto":
        return style.colour
    x0, y0, x1, y1 = canvas.mask_box
    ih, iw = canvas.image.shape[:2]
    pad = max(2, (x1 - x0 + y1 - y0) // 8)
    rx0, ry0, rx1, ry1 = max(0, x0 - pad), max(0, y0 - pad), min(iw, x1 + pad), min(ih, y1 + pad)
    roi = np.ascontiguousarray(canvas.image[ry0:ry1, rx0:rx1])
    inside = np.zeros(roi.shape[:2], np.uint8)
    inside[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] = canvas.mask
    obj = np.array(cv2.mean(roi, inside)[:3])
    around = np.array(cv2.mean(roi, 1 - inside)[:3]) if (inside == 0).any() else obj

    def contrast(name: str) -> float:
        c = np.array(_bgr(name), dtype=float)
        return min(float(np.linalg.norm(c - obj)), float(np.linalg.norm(c - around)))

    return max(PALETTE, key=lambda name: (contrast(name), -list(PALETTE).index(name)))


def highlight(canvas: Canvas, style: HighlightStyle, colour: str) -> np.ndarray:
    """A new BGR image with the object marked per style.mode; the canvas is untouched."""
    base = canvas.image
    ih, iw = base.shape[:2]
    bgr = _bgr(colour)
    t = style.line_px(iw, ih)
    x0, y0, x1, y1 = canvas.mask_box
    if style.mode == "crop":
        # Darken everything, then put the object's own pixels back.
        image = cv2.convertScaleAbs(base, alpha=1.0 - style.alpha)
        roi = np.ascontiguousarray(image[y0:y1, x0:x1])
        cv2.copyTo(np.ascontiguousarray(base[y0:y1, x0:x1]), canvas.mask, roi)
        image[y0:y1, x0:x1] = roi
        return image
    image = base.copy()
    if style.mode == "box":
        # Four strips t wide, one pixel clear of the box, clipped to the image.
        ix0, iy0, ix1, iy1 = x0 - 1, y0 - 1, x1 + 1, y1 + 1
        ox0, oy0, ox1, oy1 = max(0, ix0 - t), max(0, iy0 - t), min(iw, ix1 + t), min(ih, iy1 + t)
        image[oy0 : max(oy0, iy0), ox0:ox1] = bgr
        image[min(oy1, iy1) : oy1, ox0:ox1] = bgr
        image[oy0:oy1, ox0 : max(ox0, ix0)] = bgr
        image[oy0:oy1, min(ox1, ix1) : ox1] = bgr
        return image
    if style.mode == "tint":
        roi = np.ascontiguousarray(image[y0:y1, x0:x1])
        tinted = cv2.addWeighted(roi, 1.0 - style.alpha, np.full_like(roi, bgr), style.alpha, 0.0)
        cv2.copyTo(tinted, canvas.mask, roi)
        image[y0:y1, x0:x1] = roi
        return image
    # contour: a line 2t wide centred on the boundary, then the object's pixels restored,
    # which leaves a t-wide line outside the object and the object unpainted.
    pad = 2 * t + 2
    rx0, ry0, rx1, ry1 = max(0, x0 - pad), max(0, y0 - pad), min(iw, x1 + pad), min(ih, y1 + pad)
    inside = np.zeros((ry1 - ry0, rx1 - rx0), np.uint8)
    inside[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] = canvas.mask
    contours, _ = cv2.findContours(inside, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    roi = np.ascontiguousarray(image[ry0:ry1, rx0:rx1])
    cv2.drawContours(roi, contours, -1, bgr, 2 * t, cv2.LINE_AA)
    cv2.copyTo(np.ascontiguousarray(base[ry0:ry1, rx0:rx1]), inside, roi)
    image[ry0:ry1, rx0:rx1] = roi
    return image
