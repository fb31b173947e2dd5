"""Ref-SAV training JSON, the file Sa2VA's `refsav` loader reads.

`{video_id: {video_path, anno_path, objects: {"<index>": {formated, short_caps}}}}`
where `<index>` is the column of the object in the SA-V masklet lists and the
paths are relative to the SA-V root (docs/formats-sav.md §5).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import SchemaError
from .io import atomic_write_json, read_json


@dataclass(frozen=True)
class RefSavObject:
    index: int  # column in the SA-V masklet lists
    formated: str
    short_caps: list[str]


@dataclass(frozen=True)
class RefSavVideo:
    video_id: str
    video_path: str
    anno_path: str
    objects: list[RefSavObject]


def read_refsav_json(path: str | os.PathLike) -> list[RefSavVideo]:
    obj = read_json(path)
    try:
        return refsav_from_json(obj)
    except SchemaError as err:
        raise err.at(file=path) from None


def refsav_from_json(obj: Any) -> list[RefSavVideo]:
    if not isinstance(obj, dict):
        raise SchemaError(f"expected a JSON object keyed by video id, got {type(obj).__name__}")
    videos = []
    for video_id, entry in obj.items():
        if not isinstance(entry, dict):
            raise SchemaError("expected an object", record=video_id)
        for key in ("video_path", "anno_path", "objects"):
            if key not in entry:
                raise SchemaError("required key is missing", record=video_id, field=key)
        if not isinstance(entry["objects"], dict):
            raise SchemaError("expected an object keyed by masklet index", record=video_id, field="objects")
        objects = []
        for key, o in entry["objects"].items():
            where = f"objects.{key}"
            if not str(key).lstrip("-").isdigit() or int(key) < 0:
                raise SchemaError("object keys must be masklet indices (0, 1, ...)", record=video_id, field=where)
            if not isinstance(o, dict) or "formated" not in o:
                raise SchemaError("required key is missing", record=video_id, field=f"{where}.formated")
            caps = o.get("short_caps", [])
            if not isinstance(o["formated"], str) or not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise SchemaError("expected text and a list of texts", record=video_id, field=where)
            objects.append(RefSavObject(int(key), o["formated"], list(caps)))
        videos.append(RefSavVideo(str(video_id), str(entry["video_path"]), str(entry["anno_path"]), objects))
    return videos


def refsav_to_json(videos: list[RefSavVideo]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in videos:
        if v.video_id in out:
            raise SchemaError("duplicate video id", record=v.video_id, field="video_id")
        objects: dict[str, Any] = {}
        for o in v.objects:
            if str(o.index) in objects:
                raise SchemaError("duplicate object index", record=v.video_id, field=f"objects.{o.index}")
            objects[str(o.index)] = {"formated": o.formated, "short_caps": list(o.short_caps)}
        out[v.video_id] = {"video_path": v.video_path, "anno_path": v.anno_path, "objects": objects}
    return out


def write_refsav_json(path: str | os.PathLike, videos: list[RefSavVideo]) -> None:
    atomic_write_json(path, refsav_to_json(videos))
