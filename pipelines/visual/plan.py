"""Which frames a video's objects need, from the RLEs alone: the decode-once plan."""
from __future__ import annotations

from dataclasses import dataclass

from refsav.schemas.sav import SavAnnotation

from .selection import DEFAULT_K, candidate_frames, default_candidates, uniform_visible_frames


@dataclass(frozen=True)
class ObjectPlan:
    object_id: int
    visible: bool
    candidates: tuple[int, ...]  # stage-1/2 candidates, judged for sharpness once decoded
    video_frames: tuple[int, ...]  # stage 3

    @property
    def frames(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.candidates) | set(self.video_frames)))


@dataclass(frozen=True)
class VideoPlan:
    video_id: str
    video_path: str
    height: int
    width: int
    objects: tuple[ObjectPlan, ...]
    frames: tuple[int, ...]  # union over objects, sorted: decode these once


def plan_video(annotation: SavAnnotation, k: int = DEFAULT_K, n_video_frames: int = 8, *, candidates: int | None = None) -> VideoPlan:
    """Which frames each object needs, from the RLEs alone (no pixels)."""
    count = candidates or default_candidates(k)
    objects = []
    for m in annotation.masklets:
        visible = m.visible_count > 0
        objects.append(
            ObjectPlan(
                object_id=m.object_id,
                visible=visible,
                candidates=tuple(candidate_frames(m, count)) if visible else (),
                video_frames=tuple(uniform_visible_frames(m, n_video_frames)) if visible else (),
            )
        )
    union = sorted(set().union(*(o.frames for o in objects))) if objects else []
    v = annotation.video
    return VideoPlan(v.video_id, v.path, v.height, v.width, tuple(objects), tuple(union))
