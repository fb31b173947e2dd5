"""SA-V per-video annotation JSON (`<id>_manual.json` / `<id>_auto.json`).

The exact layout is in docs/formats-sav.md §2. SA-V stores several
integer fields as floats (`video_frame_count: 483.0`); we accept both and write
what SA-V writes so that its own tools read our files.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from .base import check_unique
from .errors import SchemaError
from .io import atomic_write_json, read_json
from .rle import Rle, area
from .video import SAV_FPS, SAV_STRIDE, Masklet, Video, size_bucket

REQUIRED_KEYS = (
    "video_id",
    "video_frame_count",
    "video_height",
    "video_width",
    "masklet",
    "masklet_id",
)


@dataclass(frozen=True)
class SavAnnotation:
    video: Video
    masklets: list[Masklet]
    environment: str = ""
    split: str = "train"

    def masklet(self, object_id: int) -> Masklet:
        for m in self.masklets:
            if m.object_id == object_id:
                return m
        raise KeyError(object_id)


def read_sav_json(path: str | os.PathLike, video_path: str | None = None) -> SavAnnotation:
    """Parse and validate one SA-V annotation file."""
    path = str(path)
    obj = read_json(path)
    try:
        return sav_from_json(obj, video_path=video_path or _default_video_path(path))
    except SchemaError as err:
        raise err.at(file=path) from None


def _default_video_path(json_path: str) -> str:
    stem = os.path.basename(json_path)
    for suffix in ("_manual.json", "_auto.json"):
        if stem.endswith(suffix):
            return os.path.join(os.path.dirname(json_path), stem[: -len(suffix)] + ".mp4")
    return os.path.splitext(json_path)[0] + ".mp4"


def sav_from_json(obj: Any, video_path: str = "") -> SavAnnotation:
    if not isinstance(obj, dict):
        raise SchemaError(f"expected a JSON object, got {type(obj).__name__}")
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise SchemaError("required key is missing", field=key)
    video_id = obj["video_id"]
    if not isinstance(video_id, str) or not video_id:
        raise SchemaError("must be a non-empty string", field="video_id")
    num_frames = _int(obj, "video_frame_count")
    height, width = _int(obj, "video_height"), _int(obj, "video_width")
    ids = obj["masklet_id"]
    if not isinstance(ids, list):
        raise SchemaError("must be a list", field="masklet_id")
    ids = [_as_int(v, f"masklet_id[{i}]") for i, v in enumerate(ids)]
    check_unique(ids, key=lambda v: v, field="masklet_id")
    frames = obj["masklet"]
    if not isinstance(frames, list):
        raise SchemaError("must be a list of annotated frames", field="masklet")
    expected = math.ceil(num_frames / SAV_STRIDE)
    if len(frames) != expected:
        raise SchemaError(
            f"{len(frames)} annotated frames, but video_frame_count {num_frames} at stride {SAV_STRIDE} "
            f"gives {expected} (frame-count mismatch)",
            field="masklet",
        )
    num = obj.get("masklet_num", len(ids))
    if _as_int(num, "masklet_num") != len(ids):
        raise SchemaError(f"masklet_num {num} != {len(ids)} masklet ids", field="masklet_num")

    columns: list[list[Rle]] = [[] for _ in ids]
    for t, row in enumerate(frames):
        if not isinstance(row, list) or len(row) != len(ids):
            got = len(row) if isinstance(row, list) else type(row).__name__
            raise SchemaError(f"frame has {got} entries for {len(ids)} objects", field=f"masklet[{t}]")
        for j, entry in enumerate(row):
            try:
                columns[j].append(Rle.from_json(entry, expected_size=(height, width)))
            except SchemaError as err:
                raise err.within(f"masklet[{t}][{j}]") from None

    types = obj.get("masklet_type") or ["manual"] * len(ids)
    frame_indices = [t * SAV_STRIDE for t in range(len(frames))]
    masklets = [
        Masklet.from_rles(video_id, oid, frame_indices, columns[j], masklet_type=str(types[j]))
        for j, oid in enumerate(ids)
    ]
    video = Video(
        video_id=video_id,
        path=video_path,
        fps=SAV_FPS,
        num_frames=num_frames,
        height=height,
        width=width,
        annotation_stride=SAV_STRIDE,
    )
    return SavAnnotation(
        video=video,
        masklets=masklets,
        environment=str(obj.get("video_environment", "")),
        split=str(obj.get("video_split", "train")),
    )


def _int(obj: dict, key: str) -> int:
    value = _as_int(obj[key], key)
    if value <= 0:
        raise SchemaError(f"must be positive, got {obj[key]!r}", field=key)
    return value


def _as_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise SchemaError(f"expected an integer, got {value!r}", field=field)
    return int(value)


def sav_to_json(ann: SavAnnotation) -> dict[str, Any]:
    """The SA-V dict for an annotation, field by field as SA-V writes it."""
    v = ann.video
    masklets = ann.masklets
    n_frames = math.ceil(v.num_frames / SAV_STRIDE)
    for m in masklets:
        if len(m.rles) != n_frames:
            raise SchemaError(
                f"masklet {m.object_id} has {len(m.rles)} annotated frames, the video needs {n_frames}", field="masklet"
            )
    return {
        "video_id": v.video_id,
        "video_duration": v.num_frames / v.fps,
        "video_frame_count": float(v.num_frames),
        "video_height": float(v.height),
        "video_width": float(v.width),
        "video_resolution": float(v.height * v.width),
        "video_environment": ann.environment,
        "video_split": ann.split,
        "masklet": [[m.rles[t].to_json() for m in masklets] for t in range(n_frames)],
        "masklet_id": [m.object_id for m in masklets],
        "masklet_size_rel": [m.mean_area / (v.height * v.width) for m in masklets],
        "masklet_size_abs": [m.mean_area for m in masklets],
        "masklet_size_bucket": [size_bucket(m.mean_area) for m in masklets],
        "masklet_visibility_changes": [_visibility_changes(m) for m in masklets],
        "masklet_first_appeared_frame": [
            float((m.first_visible_frame or 0) // SAV_STRIDE) for m in masklets
        ],
        "masklet_frame_count": [len(m.rles) for m in masklets],
        "masklet_edited_frame_count": [0 for _ in masklets],
        "masklet_type": [m.masklet_type for m in masklets],
        "masklet_stability_score": [None for _ in masklets],
        "masklet_num": len(masklets),
    }


def _visibility_changes(m: Masklet) -> int:
    # SA-V counts visible<->invisible toggles after the first appearance.
    visible = [area(r) > 0 for r in m.rles]
    if True not in visible:
        return 0
    start = visible.index(True)
    return sum(a != b for a, b in zip(visible[start:], visible[start + 1 :]))


def write_sav_json(path: str | os.PathLike, ann: SavAnnotation) -> None:
    atomic_write_json(path, sav_to_json(ann))
