"""`Video` and `Masklet`: a video file and one object's masks over its annotated frames."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import pyarrow as pa

from . import rle as rle_ops
from .base import RLE_STRUCT, Record
from .errors import SchemaError
from .rle import Rle

# SA-V annotates every 4th frame of its 24 fps videos (6 fps masklets).
SAV_FPS = 24.0
SAV_STRIDE = 4


@dataclass(frozen=True)
class Video(Record):
    video_id: str
    path: str  # mp4 file or frame folder, as given by the source dataset
    fps: float
    num_frames: int  # decoded frames at `fps`
    height: int
    width: int
    annotation_stride: int = SAV_STRIDE  # frames between annotated frames

    ARROW_SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("video_id", pa.string()),
            ("path", pa.string()),
            ("fps", pa.float64()),
            ("num_frames", pa.int32()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("annotation_stride", pa.int32()),
        ]
    )

    @property
    def annotated_frames(self) -> list[int]:
        return list(range(0, self.num_frames, self.annotation_stride))

    def validate(self) -> None:
        if not self.video_id:
            raise SchemaError("video id is empty", field="video_id")
        if not self.fps > 0:
            raise SchemaError(f"fps must be positive, got {self.fps}", field="fps")
        for name in ("num_frames", "height", "width", "annotation_stride"):
            if getattr(self, name) <= 0:
                raise SchemaError(f"must be positive, got {getattr(self, name)}", field=name)


def size_bucket(mean_area: float) -> str:
    """SA-V's masklet size bucket: small < 32², medium < 96², large otherwise."""
    if mean_area < 32**2:
        return "small"
    if mean_area < 96**2:
        return "medium"
    return "large"


@dataclass(frozen=True)
class Masklet(Record):
    video_id: str
    object_id: int  # SA-V masklet id; also the column in the SA-V `masklet` lists
    frame_indices: list[int]  # frame index (at the video's fps) of each annotated frame
    rles: list[Rle]  # one per annotated frame; an invisible object has an all-zero mask
    first_visible_frame: int | None  # frame index, None if never visible
    last_visible_frame: int | None
    visible_count: int  # annotated frames where the object is visible
    mean_area: float  # pixels, over visible annotated frames (SA-V masklet_size_abs)
    max_area: int
    masklet_type: str = "manual"  # SA-V: "manual" or "auto"

    ARROW_SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("video_id", pa.string()),
            ("object_id", pa.int64()),
            ("frame_indices", pa.list_(pa.int32())),
            ("rles", pa.list_(RLE_STRUCT)),
            ("first_visible_frame", pa.int32()),
            ("last_visible_frame", pa.int32()),
            ("visible_count", pa.int32()),
            ("mean_area", pa.float64()),
            ("max_area", pa.int64()),
            ("masklet_type", pa.string()),
        ]
    )

    @classmethod
    def from_rles(
        cls, video_id: str, object_id: int, frame_indices: Sequence[int], rles: Sequence[Rle], masklet_type: str = "manual"
    ) -> "Masklet":
        """Build a masklet and derive its visibility and area statistics from the RLEs."""
        areas = [rle_ops.area(r) for r in rles]
        visible = [f for f, a in zip(frame_indices, areas) if a > 0]
        vis_areas = [a for a in areas if a > 0]
        return cls(
            video_id=video_id,
            object_id=int(object_id),
            frame_indices=[int(f) for f in frame_indices],
            rles=list(rles),
            first_visible_frame=visible[0] if visible else None,
            last_visible_frame=visible[-1] if visible else None,
            visible_count=len(visible),
            mean_area=float(np.mean(vis_areas)) if vis_areas else 0.0,
            max_area=max(areas, default=0),
            masklet_type=masklet_type,
        )

    @property
    def size_bucket(self) -> str:
        return size_bucket(self.mean_area)

    def masks(self) -> np.ndarray:
        """Bool (T, H, W) masks over the annotated frames."""
        return rle_ops.decode_many(self.rles)

    def validate(self, height: int | None = None, width: int | None = None) -> None:
        if len(self.frame_indices) != len(self.rles):
            raise SchemaError(
                f"{len(self.rles)} RLEs for {len(self.frame_indices)} annotated frames", field="rles"
            )
        if any(b <= a for a, b in zip(self.frame_indices, self.frame_indices[1:])):
            raise SchemaError("frame indices must be strictly increasing", field="frame_indices")
        expected = (height, width) if height is not None and width is not None else None
        for i, r in enumerate(self.rles):
            try:
                Rle.from_json(r, expected_size=expected or tuple(self.rles[0].size))
            except SchemaError as err:
                raise err.within(f"rles[{i}]") from None
        if self.masklet_type not in ("manual", "auto"):
            raise SchemaError(f"must be 'manual' or 'auto', got {self.masklet_type!r}", field="masklet_type")
