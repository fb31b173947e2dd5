"""Ground truth of the refer-family benchmarks: RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO.

The lichengunc/refer layout, ``<data_root>/<dataset>/refs(<splitBy>).p`` (gRefCOCO:
``grefs(<splitBy>).json`` or ``.p``) beside COCO's ``instances.json``; which files a protocol
uses is its `ReferLayout` in the protocol registry (docs/formats-benchmarks.md).  One
sample is one sentence: every sentence of every ref of the split.

* RefCOCO / RefCOCO+ / RefCOCOg (LISA / Sa2VA): the mask of a ref is the referred
  annotation's polygons rasterised with pycocotools and summed (any overlap is still
  foreground).
* gRefCOCO (ReLA): the mask is the OR of the ref's annotations, skipping crowd annotations
  and polygons with fewer than 6 or an odd number of coordinates; ``ann_id == [-1]`` is a
  no-target sample.

``refs(*).p`` files are Python-2 pickles.  They are read with an unpickler that only
builds builtin containers and scalars and refuses every global, so a crafted file
cannot run code.  Masks are rasterised one ref at a time, never all at once.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as _coco

from . import rle as rle_ops
from .errors import SchemaError
from .io import read_json
from .pickles import load_plain_pickle
from .protocols import Protocol, ReferLayout, protocols_of
from .rle import Rle

__all__ = [
    "ImageSample",
    "RefCocoGroundTruth",
    "ReferringRef",
    "RefSentence",
    "load_ground_truth",
    "load_refs_pickle",
    "refer_layout",
]


def refer_layout(protocol: Protocol | str) -> ReferLayout:
    """Where the ground truth of a refer-family protocol (given as its record or name) lies."""
    name = protocol.name if isinstance(protocol, Protocol) else protocol
    known = protocols_of("refer")
    if name not in known:
        raise SchemaError(f"unknown image protocol {name!r}; known: {', '.join(sorted(known))}")
    return known[name].refer  # type: ignore[return-value]  # set for every refer-family protocol


# ------------------------------------------------------------------------ safe unpickling


def load_refs_pickle(data: bytes, label: str | os.PathLike) -> Any:
    """Unpickle a refer ``refs(*).p`` without executing anything; errors are SchemaErrors."""
    return load_plain_pickle(data, label)


# ---------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class RefSentence:
    sent_id: int
    sent: str


@dataclass(frozen=True)
class ReferringRef:
    ref_id: int
    image_id: int
    ann_ids: tuple[int, ...]  # one for refcoco*; gRefCOCO lists several, (-1,) = no target
    split: str
    sentences: tuple[RefSentence, ...]

    @property
    def no_target(self) -> bool:
        return self.ann_ids == (-1,)


@dataclass(frozen=True)
class ImageSample:
    """One evaluation unit: a sentence of a ref."""

    sample_id: str  # str(sent_id)
    ref_id: int
    image_id: int
    sent: str
    height: int
    width: int
    no_target: bool  # gRefCOCO ann_id == [-1]; always False for refcoco*


@dataclass(frozen=True)
class _Annotation:
    ann_id: int
    image_id: int
    segmentation: Any  # polygons [[x, y, ...], ...], an RLE dict, or a list of RLE dicts
    iscrowd: bool


def _int(value: Any, *, file, record, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise SchemaError(f"expected an integer, got {value!r}", file=file, record=record, field=name)
    return int(value)


def _parse_ref(obj: Any, index: int, file: str, multi_target: bool) -> ReferringRef:
    record = f"ref #{index}"
    if not isinstance(obj, dict):
        raise SchemaError(f"expected a ref object, got {type(obj).__name__}", file=file, record=record)
    for key in ("ref_id", "ann_id", "image_id", "split", "sentences"):
        if key not in obj:
            raise SchemaError("required key is missing", file=file, record=record, field=key)
    ref_id = _int(obj["ref_id"], file=file, record=record, name="ref_id")
    record = f"ref {ref_id}"
    raw_ann = obj["ann_id"]
    ann_list = raw_ann if isinstance(raw_ann, (list, tuple)) else [raw_ann]
    ann_ids = tuple(_int(a, file=file, record=record, name="ann_id") for a in ann_list)
    if not ann_ids:
        raise SchemaError("empty ann_id list", file=file, record=record, field="ann_id")
    if -1 in ann_ids and (not multi_target or len(ann_ids) != 1):
        raise SchemaError(f"ann_id {list(ann_ids)}: -1 (no target) is only valid alone in gRefCOCO", file=file, record=record, field="ann_id")
    split = obj["split"]
    if not isinstance(split, str):
        raise SchemaError(f"expected a string, got {split!r}", file=file, record=record, field="split")
    sentences = obj["sentences"]
    if not isinstance(sentences, (list, tuple)):
        raise SchemaError("expected a list of sentences", file=file, record=record, field="sentences")
    sents = []
    for j, s in enumerate(sentences):
        where = f"sentences[{j}]"
        if not isinstance(s, dict) or "sent_id" not in s:
            raise SchemaError("expected {sent_id, sent, ...}", file=file, record=record, field=where)
        text = s.get("sent", s.get("raw", ""))
        sents.append(RefSentence(_int(s["sent_id"], file=file, record=record, name=f"{where}.sent_id"), str(text)))
    return ReferringRef(
        ref_id=ref_id,
        image_id=_int(obj["image_id"], file=file, record=record, name="image_id"),
        ann_ids=ann_ids,
        split=split,
        sentences=tuple(sents),
    )


def _read_refs(folder: Path, layout: ReferLayout, split_by: str | None) -> tuple[list[ReferringRef], Path]:
    names = layout.refs_names(split_by)
    path = next((folder / n for n in names if (folder / n).is_file()), None)
    if path is None:
        raise SchemaError(f"no {' or '.join(names)} in the dataset folder", file=folder)
    if path.suffix == ".json":
        raw = read_json(path)
    else:
        raw = load_refs_pickle(path.read_bytes(), path)
    if not isinstance(raw, (list, tuple)):
        raise SchemaError(f"expected a list of refs, got {type(raw).__name__}", file=path)
    return [_parse_ref(r, i, str(path), layout.multi_target) for i, r in enumerate(raw)], path


class RefCocoGroundTruth:
    """The samples of one split and the lazily built GT mask of each."""

    def __init__(self, layout: ReferLayout, split: str, refs_path: Path, instances_path: Path,
                 refs: list[ReferringRef], sentence_splits: dict[str, str],
                 images: dict[int, tuple[int, int]], annotations: dict[int, _Annotation]):
        self.layout = layout
        self.split = split
        self.refs_path = refs_path
        self.instances_path = instances_path
        self.refs = {r.ref_id: r for r in refs}
        self.sentence_splits = sentence_splits  # every sentence of the file -> its split
        self.images = images  # image_id -> (height, width)
        self.annotations = annotations  # only those the split's refs use
        self.samples: list[ImageSample] = [
            ImageSample(str(s.sent_id), r.ref_id, r.image_id, s.sent, *images[r.image_id], r.no_target)
            for r in refs
            for s in r.sentences
        ]
        self._cached: tuple[int, np.ndarray] | None = None

    def mask(self, sample: ImageSample) -> np.ndarray:
        """Bool (H, W) GT of a sample.  Sentences of a ref are consecutive, so caching the
        last ref's mask builds each mask once while holding one at a time."""
        if self._cached is not None and self._cached[0] == sample.ref_id:
            return self._cached[1]
        m = self.ref_mask(self.refs[sample.ref_id])
        m.flags.writeable = False
        self._cached = (sample.ref_id, m)
        return m

    def ref_mask(self, ref: ReferringRef) -> np.ndarray:
        h, w = self.images[ref.image_id]
        # Column-major like pycocotools' output, so that no step copies to row-major.
        out = np.zeros((h, w), dtype=bool, order="F")
        if ref.no_target:
            return out
        for a in ref.ann_ids:
            ann = self.annotations[a]
            if self.layout.multi_target and ann.iscrowd:
                continue  # ReLA drops crowd annotations
            try:
                out |= _segmentation_mask(ann.segmentation, h, w, drop_bad_polygons=self.layout.multi_target)
            except SchemaError as err:
                raise err.at(file=self.instances_path, record=f"annotation {a}", field="segmentation") from None
        return out


def _segmentation_mask(seg: Any, h: int, w: int, *, drop_bad_polygons: bool) -> np.ndarray:
    """Bool (H, W) of one COCO segmentation, as refer/LISA (polygons) or ReLA build it."""
    if isinstance(seg, dict):
        return _rle_mask(seg, h, w)
    if not isinstance(seg, (list, tuple)):
        raise SchemaError(f"expected polygons or an RLE, got {type(seg).__name__}")
    if len(seg) == 0:  # LISA: an annotation without segmentation is an empty mask
        return np.zeros((h, w), dtype=bool)
    if all(isinstance(p, dict) for p in seg):
        out = np.zeros((h, w), dtype=bool)
        for p in seg:
            out |= _rle_mask(p, h, w)
        return out
    polys = []
    for k, p in enumerate(seg):
        if not isinstance(p, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p):
            raise SchemaError(f"polygon {k} is not a list of numbers")
        if not all(math.isfinite(v) for v in p):
            raise SchemaError(f"polygon {k} has a non-finite coordinate")
        polys.append([float(v) for v in p])
    if drop_bad_polygons:  # ReLA: "filter out invalid polygons (< 3 points)"
        polys = [p for p in polys if len(p) % 2 == 0 and len(p) >= 6]
        if not polys:
            return np.zeros((h, w), dtype=bool)
    try:
        stack = _coco.decode(_coco.frPyObjects(polys, h, w))  # (H, W, P)
    except Exception as err:  # pycocotools reads a 4-number first polygon as a box, etc.
        raise SchemaError(f"pycocotools cannot rasterise these polygons ({type(err).__name__}: {err})") from None
    # refer sums the per-polygon masks; overlaps give 2, which is still foreground.
    return stack.any(axis=2)


def _rle_mask(obj: dict, h: int, w: int) -> np.ndarray:
    rle = Rle.from_json(obj)  # validates the counts before pycocotools' C decoder sees them
    if tuple(rle.size) != (h, w):
        raise SchemaError(f"RLE size {list(rle.size)} differs from the image size {[h, w]}")
    return rle_ops.decode(rle)


def _dataset_folder(data_root: Path, layout: ReferLayout, split_by: str | None) -> Path:
    nested = data_root / layout.dataset
    if nested.is_dir():
        return nested
    # Also accept the dataset folder itself, when it holds the refs file.
    if any((data_root / n).is_file() for n in layout.refs_names(split_by)):
        return data_root
    raise SchemaError(f"no '{layout.dataset}' folder (expected <data_root>/{layout.dataset}/{layout.refs_names(split_by)[0]})", file=data_root)


def load_ground_truth(data_root: str | os.PathLike, protocol: Protocol | str, split: str = "val",
                      split_by: str | None = None) -> RefCocoGroundTruth:
    """Read refs and instances.json of one split; masks are built later, per sample."""
    layout = refer_layout(protocol)
    folder = _dataset_folder(Path(data_root), layout, split_by)
    refs, refs_path = _read_refs(folder, layout, split_by)
    available = sorted({r.split for r in refs})
    chosen = [r for r in refs if r.split == split]
    if not chosen:
        raise SchemaError(f"no refs in split {split!r}; the file has {available}", file=refs_path)

    sentence_splits: dict[str, str] = {}
    for r in refs:
        for s in r.sentences:
            sentence_splits.setdefault(str(s.sent_id), r.split)
    seen: dict[int, int] = {}
    for r in chosen:
        for s in r.sentences:
            if s.sent_id in seen:
                raise SchemaError(f"sent_id {s.sent_id} also belongs to ref {seen[s.sent_id]}; samples need unique sentence ids",
                                  file=refs_path, record=f"ref {r.ref_id}", field="sentences")
            seen[s.sent_id] = r.ref_id

    instances_path = folder / "instances.json"
    inst = read_json(instances_path)
    if not isinstance(inst, dict) or not isinstance(inst.get("images"), list) or not isinstance(inst.get("annotations"), list):
        raise SchemaError("expected a COCO object with 'images' and 'annotations' lists", file=instances_path)
    wanted_images = {r.image_id for r in chosen}
    wanted_anns = {a for r in chosen for a in r.ann_ids if a != -1}
    images: dict[int, tuple[int, int]] = {}
    for i, img in enumerate(inst["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise SchemaError("expected an image object with an id", file=instances_path, record=f"images[{i}]")
        if img["id"] in wanted_images:
            rec = f"image {img['id']}"
            h = _int(img.get("height"), file=instances_path, record=rec, name="height")
            w = _int(img.get("width"), file=instances_path, record=rec, name="width")
            if h <= 0 or w <= 0:
                raise SchemaError(f"image size {h}x{w} is not positive", file=instances_path, record=rec, field="height")
            images[int(img["id"])] = (h, w)
    annotations: dict[int, _Annotation] = {}
    for i, ann in enumerate(inst["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann:
            raise SchemaError("expected an annotation object with an id", file=instances_path, record=f"annotations[{i}]")
        if ann["id"] in wanted_anns:
            rec = f"annotation {ann['id']}"
            if "segmentation" not in ann:
                raise SchemaError("required key is missing", file=instances_path, record=rec, field="segmentation")
            annotations[int(ann["id"])] = _Annotation(
                int(ann["id"]), _int(ann.get("image_id"), file=instances_path, record=rec, name="image_id"),
                ann["segmentation"], bool(ann.get("iscrowd", 0)),
            )
    del inst  # the full COCO file is large; keep only what the split uses
    for r in chosen:
        if r.image_id not in images:
            raise SchemaError(f"image {r.image_id} is not in instances.json", file=refs_path, record=f"ref {r.ref_id}", field="image_id")
        for a in r.ann_ids:
            if a == -1:
                continue
            if a not in annotations:
                raise SchemaError(f"annotation {a} is not in instances.json", file=refs_path, record=f"ref {r.ref_id}", field="ann_id")
            if annotations[a].image_id != r.image_id:
                raise SchemaError(f"annotation {a} belongs to image {annotations[a].image_id}, the ref to image {r.image_id}",
                                  file=refs_path, record=f"ref {r.ref_id}", field="ann_id")
    return RefCocoGroundTruth(layout, split, refs_path, instances_path, chosen, sentence_splits, images, annotations)
