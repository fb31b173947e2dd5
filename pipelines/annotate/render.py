"""From one video's SA-V annotation(s) to the objects ready for the VLM.

The video is decoded once for all its objects (refsav.pipelines.visual plans the frames); an
object that cannot be shown becomes a recorded drop, not an error.
"""
from __future__ import annotations

from refsav.schemas.expression import FileHash
from refsav.schemas.sav import SavAnnotation
from refsav.schemas.video import Masklet

from ..visual.selection import NotVisible
from ..visual.style import HighlightStyle
from ..visual.views import build_video_views
from .config import AnnotateConfig
from .records import DroppedObject
from .stage import ObjectContext


def render_video(
    video_id: str, annotations: list[SavAnnotation], inputs: tuple[FileHash, ...], config: AnnotateConfig
) -> tuple[list[ObjectContext], list[DroppedObject]]:
    style = HighlightStyle(mode=config.highlight)
    ready: list[ObjectContext] = []
    dropped: list[DroppedObject] = []
    seen: set[int] = set()
    # Each object's `others`: every masklet of the video but its own, first file winning a
    # clashing id as below.
    masklets: dict[int, Masklet] = {}
    for annotation in annotations:
        for m in annotation.masklets:
            masklets.setdefault(m.object_id, m)
    for annotation in annotations:  # manual first, then auto (sorted paths), when --masklets both
        views = build_video_views(annotation, style, k=config.object_frames, n_video_frames=config.video_frames)
        for masklet, view in zip(annotation.masklets, views):
            if masklet.object_id in seen:
                # Manual and auto files number their masklets independently; Ref-SAV keys objects
                # by masklet id, so a clash cannot be represented and the first file wins.
                dropped.append(DroppedObject(video_id, masklet.object_id, "duplicate_object_id", annotation.video.path))
                continue
            seen.add(masklet.object_id)
            if isinstance(view, NotVisible):
                dropped.append(DroppedObject(video_id, masklet.object_id, "not_visible", view.reason))
            else:
                others = tuple(m for oid, m in masklets.items() if oid != masklet.object_id)
                ready.append(ObjectContext(video_id, annotation.video, masklet, view, inputs, others))
    return ready, dropped
