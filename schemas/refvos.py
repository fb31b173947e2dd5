"""The "meta_expressions + mask_dict" benchmark layout (MeViS, ReVOS, Ref-SAV eval).

`meta_expressions*.json = {"videos": {video: {frames, expressions: {exp_id: {exp,
obj_id, anno_id, type_id}}, height, width}}}` and `mask_dict.json = {anno_id:
[RLE or null per frame]}`; see docs/formats-benchmarks.md §1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SchemaError
from .io import atomic_write_json, read_json
from .rle import Rle


@dataclass(frozen=True)
class RefExpression:
    exp_id: str
    exp: str
    obj_id: list[int]
    anno_id: list[int]  # keys into mask_dict; the GT is the union of these masks
    type_id: int | None = None  # Ref-SAV: 0 long, 1 short; ReVOS: 0 referring, 1 reasoning


@dataclass(frozen=True)
class RefVideo:
    video_id: str
    frames: list[str]  # frame names without extension, in stored order
    expressions: list[RefExpression]
    height: int | None = None
    width: int | None = None


def read_meta_expressions(path: str | os.PathLike) -> list[RefVideo]:
    obj = read_json(path)
    try:
        return meta_from_json(obj)
    except SchemaError as err:
        raise err.at(file=path) from None


def find_meta(root: Path) -> Path:
    """The meta_expressions file of a ground-truth folder, by the names the benchmarks use."""
    for name in ("meta_expressions_valid.json", "meta_expressions.json", "meta_expressions_valid_.json"):
        if (root / name).exists():
            return root / name
    raise SchemaError("no meta_expressions*.json in the ground-truth folder", file=root)


def meta_from_json(obj: Any) -> list[RefVideo]:
    if not isinstance(obj, dict) or "videos" not in obj:
        raise SchemaError("required key is missing", field="videos")
    if not isinstance(obj["videos"], dict):
        raise SchemaError("expected an object keyed by video id", field="videos")
    videos = []
    for vid, v in obj["videos"].items():
        if not isinstance(v, dict):
            raise SchemaError("expected an object", record=vid)
        for key in ("frames", "expressions"):
            if key not in v:
                raise SchemaError("required key is missing", record=vid, field=key)
        if not isinstance(v["frames"], list) or not all(isinstance(f, str) for f in v["frames"]):
            raise SchemaError("expected a list of frame names", record=vid, field="frames")
        if len(set(v["frames"])) != len(v["frames"]):
            raise SchemaError("duplicate frame name", record=vid, field="frames")
        exps = []
        for exp_id, e in v["expressions"].items():
            where = f"expressions.{exp_id}"
            if not isinstance(e, dict) or "exp" not in e:
                raise SchemaError("required key is missing", record=vid, field=f"{where}.exp")
            obj_id = _int_list(e.get("obj_id", []), vid, f"{where}.obj_id")
            anno_id = _int_list(e.get("anno_id", []), vid, f"{where}.anno_id")
            if len(obj_id) != len(anno_id) and anno_id:
                raise SchemaError(
                    f"{len(anno_id)} anno_ids for {len(obj_id)} obj_ids", record=vid, field=f"{where}.anno_id"
                )
            type_id = e.get("type_id")
            exps.append(RefExpression(str(exp_id), str(e["exp"]), obj_id, anno_id, None if type_id is None else int(type_id)))
        h, w = v.get("height"), v.get("width")
        videos.append(RefVideo(str(vid), list(v["frames"]), exps, None if h is None else int(h), None if w is None else int(w)))
    return videos


def _int_list(value: Any, record: str, field: str) -> list[int]:
    if isinstance(value, (int, str)):  # Ref-YouTube-VOS stores a single string id
        value = [value]
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise SchemaError(f"expected a list of integer ids, got {value!r}", record=record, field=field) from None


def meta_to_json(videos: list[RefVideo]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in videos:
        if v.video_id in out:
            raise SchemaError("duplicate video id", record=v.video_id, field="video_id")
        exps: dict[str, Any] = {}
        for e in v.expressions:
            if e.exp_id in exps:
                raise SchemaError("duplicate expression id", record=v.video_id, field=f"expressions.{e.exp_id}")
            item: dict[str, Any] = {"exp": e.exp, "obj_id": list(e.obj_id), "anno_id": list(e.anno_id)}
            if e.type_id is not None:
                item["type_id"] = e.type_id
            exps[e.exp_id] = item
        entry: dict[str, Any] = {"frames": list(v.frames), "expressions": exps}
        if v.height is not None:
            entry["height"], entry["width"] = v.height, v.width
        out[v.video_id] = entry
    return {"videos": out}


def write_meta_expressions(path: str | os.PathLike, videos: list[RefVideo]) -> None:
    atomic_write_json(path, meta_to_json(videos))


def read_mask_dict(path: str | os.PathLike) -> dict[str, list[Rle | None]]:
    """Load mask_dict.json; every RLE is validated (size and run lengths)."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise SchemaError("expected an object keyed by anno_id", file=path)
    out: dict[str, list[Rle | None]] = {}
    for anno_id, rles in obj.items():
        if not isinstance(rles, list):
            raise SchemaError("expected a list with one RLE or null per frame", file=path, record=anno_id)
        masks: list[Rle | None] = []
        for t, r in enumerate(rles):
            try:
                masks.append(None if r is None else Rle.from_json(r))
            except SchemaError as err:
                raise err.within(f"[{t}]", file=path, record=anno_id) from None
        out[str(anno_id)] = masks
    return out


def write_mask_dict(path: str | os.PathLike, masks: dict[str, list[Rle | None]]) -> None:
    atomic_write_json(path, {k: [None if r is None else r.to_json() for r in v] for k, v in masks.items()})
