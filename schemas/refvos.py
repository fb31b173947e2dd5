"""The "meta_expressions + mask_dict" benchmark layout (MeViS, ReVOS, Ref-SAV eval).

`meta_expressions*.json = {"videos": {video: {frames, expressions: {exp_id: {exp,
obj_id, anno_id, type_id}}, height, width}}}` and `mask_dict.json = {anno_id:
[RLE or null per frame]}`; see docs/formats-benchmarks.md §1.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import SchemaError
from .io import atomic_write_json, read_bytes, read_json
from .limits import check_frame_size
from .pickles import load_plain_pickle
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
    """Videos of a meta_expressions object, every field checked (errors name record and field).

    A file none of whose expressions has an ``anno_id`` (Ref-DAVIS17 and Ref-YouTube-VOS as
    ReferFormer converts them) gets the ids the VISA and Sa2VA scorers give it: a counter
    over the videos in sorted order and, within each, over the expression ids sorted as
    strings ("10" before "2"), one id per expression.
    """
    if not isinstance(obj, dict) or "videos" not in obj:
        raise SchemaError("required key is missing", field="videos")
    if not isinstance(obj["videos"], dict):
        raise SchemaError(f"expected an object keyed by video id, got {_kind(obj['videos'])}", field="videos")
    videos = []
    unnumbered: list[tuple[str, str]] = []  # (video, exp_id) of expressions without an anno_id
    numbered = 0
    for vid, v in obj["videos"].items():
        vid = str(vid)
        if not isinstance(v, dict):
            raise SchemaError(f"expected an object, got {_kind(v)}", record=vid)
        for key in ("frames", "expressions"):
            if key not in v:
                raise SchemaError("required key is missing", record=vid, field=key)
        if not isinstance(v["frames"], list) or not all(isinstance(f, str) for f in v["frames"]):
            raise SchemaError("expected a list of frame names", record=vid, field="frames")
        if not v["frames"]:
            raise SchemaError("a video needs at least one frame", record=vid, field="frames")
        if len(set(v["frames"])) != len(v["frames"]):
            raise SchemaError("duplicate frame name", record=vid, field="frames")
        if not isinstance(v["expressions"], dict):
            raise SchemaError(f"expected an object keyed by expression id, got {_kind(v['expressions'])}",
                              record=vid, field="expressions")
        exps = []
        for exp_id, e in v["expressions"].items():
            where = f"expressions.{exp_id}"
            if not isinstance(e, dict):
                raise SchemaError(f"expected an object, got {_kind(e)}", record=vid, field=where)
            if "exp" not in e:
                raise SchemaError("required key is missing", record=vid, field=f"{where}.exp")
            if not isinstance(e["exp"], str):
                raise SchemaError(f"expected a string, got {_kind(e['exp'])}", record=vid, field=f"{where}.exp")
            obj_id = _int_list(e.get("obj_id", []), vid, f"{where}.obj_id")
            if "anno_id" in e:
                anno_id = _int_list(e["anno_id"], vid, f"{where}.anno_id")
                numbered += 1
            else:
                anno_id = []
                unnumbered.append((vid, str(exp_id)))
            if len(obj_id) != len(anno_id) and anno_id:
                raise SchemaError(
                    f"{len(anno_id)} anno_ids for {len(obj_id)} obj_ids", record=vid, field=f"{where}.anno_id"
                )
            type_id = e.get("type_id")
            if type_id is not None:
                type_id = _int(type_id, vid, f"{where}.type_id")
            exps.append(RefExpression(str(exp_id), e["exp"], obj_id, anno_id, type_id))
        h, w = v.get("height"), v.get("width")
        if h is None and w is None:
            size: tuple[int | None, int | None] = (None, None)
        else:
            for key, value in (("height", h), ("width", w)):
                if value is None:
                    raise SchemaError("required key is missing (height and width come together)", record=vid, field=key)
            size = check_frame_size(_int(h, vid, "height"), _int(w, vid, "width"), record=vid, field="height")
        videos.append(RefVideo(vid, list(v["frames"]), exps, *size))
    if unnumbered and numbered:
        vid, exp_id = unnumbered[0]
        raise SchemaError("no anno_id, while other expressions of the file have one", record=vid,
                          field=f"expressions.{exp_id}.anno_id")
    return _count_anno_ids(videos) if unnumbered else videos


def _count_anno_ids(videos: list[RefVideo]) -> list[RefVideo]:
    """The official numbering of a file without anno ids (see ``meta_from_json``)."""
    counted: dict[tuple[str, str], int] = {}
    for video in sorted(videos, key=lambda v: v.video_id):
        for exp_id in sorted(e.exp_id for e in video.expressions):
            counted[(video.video_id, exp_id)] = len(counted)
    return [
        replace(v, expressions=[replace(e, anno_id=[counted[(v.video_id, e.exp_id)]]) for e in v.expressions])
        for v in videos
    ]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: Any, record: str, field: str, *, text: bool = False) -> int:
    """An integer field: a JSON integer (or a float with no fraction); with ``text``, also a
    string of digits.  1.5, NaN, true, lists and (without ``text``) "1" are refused rather
    than truncated or compared as something else."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        return value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    elif text and isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise SchemaError(f"expected an integer, got {_show(value)}", record=record, field=field)


_DIGITS = re.compile(r"-?[0-9]{1,18}")


def _int_list(value: Any, record: str, field: str) -> list[int]:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        value = [value]  # Ref-YouTube-VOS and Ref-DAVIS store a single id, as a string
    if not isinstance(value, list):
        raise SchemaError(f"expected a list of integer ids, got {_show(value)}", record=record, field=field)
    return [_int(v, record, f"{field}[{i}]", text=True) for i, v in enumerate(value)]


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


MASK_DICT_NAMES = ("mask_dict.json", "mask_dict.pkl")


def find_mask_dict(root: Path) -> Path:
    """The mask_dict of a ground-truth folder: mask_dict.json, else VISA/Sa2VA's mask_dict.pkl."""
    for name in MASK_DICT_NAMES:
        if os.path.lexists(root / name):
            return root / name
    raise SchemaError(f"no {' or '.join(MASK_DICT_NAMES)} in the ground-truth folder", file=root)


def read_mask_dict_lists(path: str | os.PathLike) -> dict[str, list]:
    """A mask_dict.json or mask_dict.pkl as {anno_id: [RLE dict or None, ...]}, shape checked.

    The pickle is read with refsav's restricted unpickler (nothing in it runs); the bytes
    ``counts`` pycocotools writes become strings, as in the JSON form.
    """
    path = Path(path)
    if path.suffix != ".pkl":
        return mask_dict_lists(read_json(path), path)
    data = read_bytes(path, "pickle file")
    lists = mask_dict_lists(load_plain_pickle(data, path), path)
    # A pickle can refer to one object many times; a file that unfolds into far more RLE
    # text than it holds is refused before anything is decoded.
    budget = 4 * len(data) + (1 << 20)
    seen = 0
    out: dict[str, list] = {}
    for anno_id, rles in lists.items():
        plain = []
        for r in rles:
            counts = r.get("counts") if isinstance(r, dict) else None
            if isinstance(counts, (bytes, bytearray, str)):
                seen += len(counts)
                if seen > budget:
                    raise SchemaError(f"holds more RLE text than its {len(data):,} bytes could (shared references); "
                                      "refused", file=path)
                if not isinstance(counts, str):
                    r = {**r, "counts": bytes(counts).decode("latin-1")}
            plain.append(r)
        out[anno_id] = plain
    return out


def read_mask_dict(path: str | os.PathLike) -> dict[str, list[Rle | None]]:
    """Load mask_dict.json (or .pkl); every RLE is validated (size and run lengths)."""
    out: dict[str, list[Rle | None]] = {}
    for anno_id, rles in read_mask_dict_lists(path).items():
        masks: list[Rle | None] = []
        for t, r in enumerate(rles):
            try:
                masks.append(None if r is None else Rle.from_json(r))
            except SchemaError as err:
                raise err.within(f"[{t}]", file=path, record=anno_id) from None
        out[anno_id] = masks
    return out


def mask_dict_lists(obj: Any, path: str | os.PathLike) -> dict[str, list]:
    """The {anno_id: [RLE or null, ...]} shape of a loaded mask_dict, keys as strings; the
    RLEs themselves are not checked here."""
    if not isinstance(obj, dict):
        raise SchemaError(f"expected an object keyed by anno_id, got {_kind(obj)}", file=path)
    out: dict[str, list] = {}
    for anno_id, rles in obj.items():
        key = str(anno_id)
        if not isinstance(rles, list):
            raise SchemaError(f"expected a list with one RLE or null per frame, got {_kind(rles)}", file=path, record=key)
        if key in out:  # a pickle may hold both 3 and "3"
            raise SchemaError("anno_id appears twice", file=path, record=key)
        out[key] = rles
    return out


def write_mask_dict(path: str | os.PathLike, masks: dict[str, list[Rle | None]]) -> None:
    atomic_write_json(path, {k: [None if r is None else r.to_json() for r in v] for k, v in masks.items()})
