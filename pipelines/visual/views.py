"""All three stages' images for a video's objects: plan, decode once, select, draw, encode."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refsav.schemas.errors import SchemaError
from refsav.schemas.media import decode_frames
from refsav.schemas.sav import SavAnnotation
from refsav.schemas.video import Masklet

from .canvas import Canvas, Scaled, full_view_keys, scale_frames, view_canvases
from .frames import Box, Frames
from .highlight import highlight, pick_colour
from .jpeg import encode_jpeg
from .plan import plan_video
from .selection import DEFAULT_K, NotVisible, ViewSelection, select_views
from .style import HighlightStyle


@dataclass(frozen=True)
class ViewImage:
    """One image for the VLM, with what it shows (for prompts and provenance)."""

    frame: int  # frame index at the video's fps (an annotated frame)
    region: Box  # source pixels shown
    object_box: Box  # the object's box in source pixels
    width: int  # of the JPEG
    height: int
    jpeg: bytes = field(repr=False)


@dataclass(frozen=True)
class ObjectViews:
    video_id: str
    object_id: int
    mode: str  # HighlightStyle.mode
    colour: str  # the PALETTE name used, for the prompt ("outlined in red")
    object_views: tuple[ViewImage, ...]  # stage 1: crops, best first
    scene_view: ViewImage  # stage 2: the full frame
    video_views: tuple[ViewImage, ...]  # stage 3: full frames in time order

    @property
    def frames_used(self) -> tuple[int, ...]:
        views = (*self.object_views, self.scene_view, *self.video_views)
        return tuple(sorted({v.frame for v in views}))


def view_image(canvas: Canvas, image: np.ndarray, quality: int) -> ViewImage:
    """Encode a highlighted (BGR) canvas image."""
    return ViewImage(canvas.frame, canvas.region, canvas.object_box, image.shape[1], image.shape[0], encode_jpeg(image, quality))


def render_views(
    masklet: Masklet,
    frames: Frames,
    style: HighlightStyle = HighlightStyle(),
    *,
    k: int = DEFAULT_K,
    n_video_frames: int = 8,
    selection: ViewSelection | NotVisible | None = None,
    scaled: Scaled | None = None,
) -> ObjectViews | NotVisible:
    """All three stages' images for one object, as JPEG bytes of bounded size."""
    if selection is None:
        selection = select_views(masklet, frames, k, n_video_frames)
    if isinstance(selection, NotVisible):
        return selection
    canvases = view_canvases(masklet, frames, selection, style, scaled)
    colour = pick_colour(canvases.scene_view, style)

    def render(c: Canvas) -> ViewImage:
        return view_image(c, highlight(c, style, colour), style.jpeg_quality)

    return ObjectViews(
        video_id=masklet.video_id,
        object_id=masklet.object_id,
        mode=style.mode,
        colour=colour,
        object_views=tuple(render(c) for c in canvases.object_views),
        scene_view=render(canvases.scene_view),
        video_views=tuple(render(c) for c in canvases.video_views),
    )


def render_video(
    annotation: SavAnnotation,
    frames: Frames,
    style: HighlightStyle = HighlightStyle(),
    *,
    k: int = DEFAULT_K,
    n_video_frames: int = 8,
) -> list[ObjectViews | NotVisible]:
    """Views for every object of a video, from frames decoded once (plan_video's union)."""
    selections = [select_views(m, frames, k, n_video_frames) for m in annotation.masklets]
    keys = set().union(*(full_view_keys(s, style) for s in selections if isinstance(s, ViewSelection)))
    scaled = scale_frames(frames, keys)
    return [render_views(m, frames, style, selection=s, scaled=scaled) for m, s in zip(annotation.masklets, selections)]


def build_video_views(
    annotation: SavAnnotation,
    style: HighlightStyle = HighlightStyle(),
    *,
    k: int = DEFAULT_K,
    n_video_frames: int = 8,
) -> list[ObjectViews | NotVisible]:
    """Plan, decode once, render: the whole visual side of annotating one video.

    Raises SchemaError (naming the video file) when the video cannot be read or does
    not match its annotation; the caller records it and skips the video.
    """
    plan = plan_video(annotation, k, n_video_frames)
    frames = decode_frames(annotation.video.path, plan.frames, yuv=True)
    try:
        return render_video(annotation, frames, style, k=k, n_video_frames=n_video_frames)
    except SchemaError as err:
        raise err.at(file=annotation.video.path) from None
