"""Referring image segmentation: RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO.

Ground truth is the lichengunc/refer layout, ``<data_root>/<dataset>/refs(<splitBy>).p``
(gRefCOCO: ``grefs(<splitBy>).json`` or ``.p``) beside ``instances.json``; formats in
``shared/reference/formats-benchmarks.md`` §4, metrics in ``metrics.md`` §5.  One
sample is one sentence: every sentence of every ref of the split.

* RefCOCO / RefCOCO+ / RefCOCOg follow LISA / Sa2VA (``RES.py``): the GT mask is the
  referred annotation's polygons rasterised with pycocotools and summed (any overlap is
  still foreground); cIoU = sum(I) / sum(U), gIoU = mean per-sample IoU with an empty
  union scoring 1 (``empty_union="one"``) or 0 (LAVT, ``"zero"``); Pr@k as LAVT.
  LISA's epsilons (I / (U + 1e-5), sum(I) / (sum(U) + 1e-10)) are off by default, so
  that a perfect submission scores exactly 100 and Pr@k matches LAVT's exact thresholds;
  ``lisa_eps=True`` puts them back (the difference is below 1e-3 points on real masks).
* gRefCOCO follows ReLA's ``ReferEvaluator``: the GT mask is the OR of the ref's
  annotations, skipping crowd annotations and polygons with fewer than 6 or an odd
  number of coordinates; ``ann_id == [-1]`` is a no-target sample.  A prediction may carry
  its own ``no_target`` flag; without one an empty mask means "no target".

``refs(*).p`` files are Python-2 pickles.  They are read with an unpickler that only
builds builtin containers and scalars and refuses every global, so a crafted file
cannot run code.  Masks are rasterised one ref at a time, never all at once.

Submission problems (missing, extra, duplicate, wrong-size or corrupt masks) become
``Issue``s; a missing sample is scored as an all-zero prediction, which is what Sa2VA
does for an answer without ``[SEG]``.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np
from pycocotools import mask as _coco

from refsav.schemas import rle as rle_ops
from refsav.schemas.errors import SchemaError
from refsav.schemas.io import read_json
from refsav.schemas.rle import Rle

from .files import DEFAULT_MAX_UNZIPPED, ReadOnlyFiles
from .metrics import (
    LISA_CIOU_EPS,
    LISA_IOU_EPS,
    MaskCounts,
    ciou,
    giou,
    grefcoco_scores,
    mask_counts,
    precision_at,
    sample_iou,
)
from .report import Issue, ScoreReport

__all__ = [
    "ImageProtocol",
    "IMAGE_PROTOCOLS",
    "get_image_protocol",
    "PR_THRESHOLDS",
    "RefSentence",
    "ReferringRef",
    "ImageSample",
    "RefCocoGroundTruth",
    "load_ground_truth",
    "load_refs_pickle",
    "SubmittedMask",
    "ImagePredictionSet",
    "load_image_predictions",
    "ImageSampleScore",
    "score_refcoco",
    "iter_sample_ids",
]

PR_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


# ----------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class ImageProtocol:
    name: str
    source: str  # the official code whose numbers this reproduces
    description: str
    dataset: str  # folder under data_root
    split_by: str  # default splitBy ("unc", "umd", "google")
    refs_files: tuple[str, ...]  # candidate file names, "{split_by}" filled in; first found wins
    splits: tuple[str, ...]  # the splits the dataset defines (others are refused)
    metrics: tuple[str, ...]  # keys of ScoreReport.totals
    primary_metric: str
    multi_target: bool = False  # gRefCOCO: ann_id lists, [-1] = no target, ReLA bookkeeping

    def refs_names(self, split_by: str | None = None) -> list[str]:
        return [f.format(split_by=split_by or self.split_by) for f in self.refs_files]


_PR_KEYS = tuple(f"Pr@{k:.1f}" for k in PR_THRESHOLDS)
_LISA = "dvlab-research/LISA train_ds.py validate; bytedance/Sa2VA projects/sa2va/evaluation/dataset/RES.py"
_REFCOCO_TEXT = (
    "{name} ({split_by} splits): one sample per sentence; GT = the referred annotation's "
    "polygons (pycocotools, summed, as bool). cIoU = sum(I)/sum(U) (headline, as LISA/Sa2VA "
    "report it), gIoU = mean per-sample IoU (empty union -> 1, LISA), Pr@k as LAVT, all x100."
)

IMAGE_PROTOCOLS: dict[str, ImageProtocol] = {
    p.name: p
    for p in [
        ImageProtocol(
            "refcoco", _LISA, _REFCOCO_TEXT.format(name="RefCOCO", split_by="unc"),
            dataset="refcoco", split_by="unc", refs_files=("refs({split_by}).p",),
            splits=("train", "val", "testA", "testB"),
            metrics=("cIoU", "gIoU") + _PR_KEYS, primary_metric="cIoU",
        ),
        ImageProtocol(
            "refcoco+", _LISA, _REFCOCO_TEXT.format(name="RefCOCO+", split_by="unc"),
            dataset="refcoco+", split_by="unc", refs_files=("refs({split_by}).p",),
            splits=("train", "val", "testA", "testB"),
            metrics=("cIoU", "gIoU") + _PR_KEYS, primary_metric="cIoU",
        ),
        ImageProtocol(
            "refcocog", _LISA, _REFCOCO_TEXT.format(name="RefCOCOg", split_by="umd"),
            dataset="refcocog", split_by="umd", refs_files=("refs({split_by}).p",),
            splits=("train", "val", "test"),  # umd; the google split has train/val only
            metrics=("cIoU", "gIoU") + _PR_KEYS, primary_metric="cIoU",
        ),
        ImageProtocol(
            "grefcoco",
            "henghuiding/ReLA gres_model/evaluation/refer_evaluation.py (ReferEvaluator), "
            "gres_model/data/datasets/grefcoco.py",
            "gRefCOCO (unc splits): one sample per sentence; GT = OR of the ref's non-crowd "
            "annotations (polygons with < 6 or odd coordinates dropped), ann_id [-1] = no target. "
            "ReLA bookkeeping: gIoU (headline) = mean per-sample IoU with a correctly rejected "
            "no-target sample scoring 1, cIoU = sum(I)/sum(U), Pr@k over targeted samples only, "
            "N-acc = no-target recall, T-acc = target recall; no_target defaults to 'empty mask'.",
            dataset="grefcoco", split_by="unc",
            # JSON first: same content as the pickle, and nothing to execute.
            refs_files=("grefs({split_by}).json", "grefs({split_by}).p"),
            splits=("train", "val", "testA", "testB"),
            metrics=("gIoU", "cIoU", "N-acc", "T-acc") + _PR_KEYS, primary_metric="gIoU",
            multi_target=True,
        ),
    ]
}


def get_image_protocol(name: str) -> ImageProtocol:
    try:
        return IMAGE_PROTOCOLS[name]
    except KeyError:
        raise SchemaError(f"unknown image protocol {name!r}; known: {', '.join(sorted(IMAGE_PROTOCOLS))}") from None


# ------------------------------------------------------------------------ safe unpickling


class _RefsUnpickler(pickle.Unpickler):
    """Builds only what pickle opcodes make without a global: list, dict, tuple, str,
    bytes, int, float, bool, None.  Any class or function lookup is refused before it
    happens, which is what stops ``__reduce__`` payloads."""

    def __init__(self, fh, label: str):
        # refer's files come from Python 2: str is latin-1 bytes, unicode is str.
        super().__init__(fh, encoding="latin1")
        self._label = label

    def find_class(self, module: str, name: str):
        raise SchemaError(
            f"pickle refers to the global {module}.{name}; only plain lists, dicts, strings and numbers are allowed",
            file=self._label,
        )

    def persistent_load(self, pid):
        raise SchemaError("pickle uses a persistent id; only plain lists, dicts, strings and numbers are allowed", file=self._label)


def load_refs_pickle(data: bytes, label: str | os.PathLike) -> Any:
    """Unpickle a refer ``refs(*).p`` without executing anything; errors are SchemaErrors."""
    label = str(label)
    try:
        return _RefsUnpickler(io.BytesIO(data), label).load()
    except SchemaError:
        raise
    except Exception as err:  # truncated or garbled pickles raise many types
        raise SchemaError(f"not a readable pickle ({type(err).__name__}: {err})", file=label) from None


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


def _read_refs(folder: Path, protocol: ImageProtocol, split_by: str | None) -> tuple[list[ReferringRef], Path]:
    names = protocol.refs_names(split_by)
    path = next((folder / n for n in names if (folder / n).is_file()), None)
    if path is None:
        raise SchemaError(f"no {' or '.join(names)} in the dataset folder", file=folder)
    if path.suffix == ".json":
        raw = read_json(path)
    else:
        raw = load_refs_pickle(path.read_bytes(), path)
    if not isinstance(raw, (list, tuple)):
        raise SchemaError(f"expected a list of refs, got {type(raw).__name__}", file=path)
    return [_parse_ref(r, i, str(path), protocol.multi_target) for i, r in enumerate(raw)], path


class RefCocoGroundTruth:
    """The samples of one split and the lazily built GT mask of each."""

    def __init__(self, protocol: ImageProtocol, split: str, refs_path: Path, instances_path: Path,
                 refs: list[ReferringRef], sentence_splits: dict[str, str],
                 images: dict[int, tuple[int, int]], annotations: dict[int, _Annotation]):
        self.protocol = protocol
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
            if self.protocol.multi_target and ann.iscrowd:
                continue  # ReLA drops crowd annotations
            try:
                out |= _segmentation_mask(ann.segmentation, h, w, drop_bad_polygons=self.protocol.multi_target)
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


def _dataset_folder(data_root: Path, protocol: ImageProtocol, split_by: str | None) -> Path:
    nested = data_root / protocol.dataset
    if nested.is_dir():
        return nested
    # Also accept the dataset folder itself, when it holds the refs file.
    if any((data_root / n).is_file() for n in protocol.refs_names(split_by)):
        return data_root
    raise SchemaError(f"no '{protocol.dataset}' folder (expected <data_root>/{protocol.dataset}/{protocol.refs_names(split_by)[0]})", file=data_root)


def load_ground_truth(data_root: str | os.PathLike, protocol: ImageProtocol | str, split: str = "val",
                      split_by: str | None = None) -> RefCocoGroundTruth:
    """Read refs and instances.json of one split; masks are built later, per sample."""
    if isinstance(protocol, str):
        protocol = get_image_protocol(protocol)
    folder = _dataset_folder(Path(data_root), protocol, split_by)
    refs, refs_path = _read_refs(folder, protocol, split_by)
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
    return RefCocoGroundTruth(protocol, split, refs_path, instances_path, chosen, sentence_splits, images, annotations)


# ----------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class SubmittedMask:
    sample_id: str
    image_id: str | None
    rle: Rle | None  # None: the mask was corrupt (reported); scored as empty
    no_target: bool | None  # gRefCOCO flag; None = "empty mask means no target"
    where: str  # file and row, for issues


@dataclass
class ImagePredictionSet:
    source: str  # "parquet", "json", "jsonl", or several joined by "+"
    entries: dict[str, SubmittedMask] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    def add(self, entry: SubmittedMask) -> None:
        first = self.entries.get(entry.sample_id)
        if first is not None:
            self.issues.append(Issue("duplicate", entry.sample_id, f"predicted twice ({first.where}, {entry.where}); the first is scored"))
            return
        self.entries[entry.sample_id] = entry


def _sample_key(value: Any) -> str | None:
    """Sentence ids arrive as ints (JSON) or strings (Parquet); both become the int's text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        v = value.strip()
        return str(int(v)) if v.lstrip("-").isdigit() else v
    return None


def _parse_prediction(obj: Any, where: str, issues: list[Issue]) -> SubmittedMask | None:
    if not isinstance(obj, dict):
        issues.append(Issue("bad_record", where, f"expected an object {{sample_id, rle}}, got {type(obj).__name__}; ignored"))
        return None
    raw_ids = [obj[k] for k in ("sample_id", "sent_id") if obj.get(k) is not None]
    keys = {_sample_key(v) for v in raw_ids}
    if not raw_ids or None in keys:
        issues.append(Issue("bad_record", where, "no usable 'sample_id' / 'sent_id' (an integer or string); ignored"))
        return None
    if len(keys) > 1:
        issues.append(Issue("bad_record", where, f"sample_id and sent_id disagree ({raw_ids}); ignored"))
        return None
    sample_id = keys.pop()
    no_target = obj.get("no_target")
    if no_target is not None and not isinstance(no_target, bool):
        issues.append(Issue("bad_record", sample_id, f"no_target must be true/false, got {no_target!r}; flag ignored"))
        no_target = None
    image_id = obj.get("image_id")
    image_id = None if image_id is None else str(image_id)
    rle = None
    if obj.get("rle") is None:
        issues.append(Issue("corrupt_mask", sample_id, f"{where}: no 'rle'; scored as empty"))
    else:
        try:
            rle = Rle.from_json(obj["rle"])
        except SchemaError as err:
            issues.append(Issue("corrupt_mask", sample_id, f"{where}: {err.within('rle')}; scored as empty"))
    return SubmittedMask(sample_id, image_id, rle, no_target, where)


def _json_records(data: bytes, label: str, jsonl: bool, issues: list[Issue]) -> list[tuple[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SchemaError(f"not UTF-8 text ({err})", file=label) from None
    if not jsonl:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise SchemaError(f"not valid JSON ({err}); expected a list of {{sample_id, rle}} objects", file=label) from None
        if not isinstance(obj, list):
            raise SchemaError(f"expected a JSON list of {{sample_id, rle}} objects, got {type(obj).__name__}", file=label)
        return [(f"{label}#{i}", o) for i, o in enumerate(obj)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{label}:{n}", json.loads(line)))
        except json.JSONDecodeError as err:
            issues.append(Issue("bad_record", f"{label}:{n}", f"not valid JSON ({err}); ignored"))
    return out


def _parquet_records(source: str | os.PathLike | bytes, label: str) -> list[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (pa.ArrowException, OSError) as err:
        raise SchemaError(f"not a readable Parquet file ({err})", file=label) from None
    for col in ("sample_id", "rle"):
        if col not in table.column_names:
            raise SchemaError("column missing from the ImagePrediction table", file=label, field=col)
    return [(f"{label}#{i}", row) for i, row in enumerate(table.to_pylist())]


_KINDS = {".parquet": "parquet", ".json": "json", ".jsonl": "jsonl"}


def load_image_predictions(path: str | os.PathLike, max_unzipped: int = DEFAULT_MAX_UNZIPPED) -> ImagePredictionSet:
    """Read an ImagePrediction Parquet, a JSON list / JSONL of {sample_id|sent_id, rle,
    no_target?}, or a .zip / folder holding any number of these."""
    path = Path(path)
    if not path.exists():
        raise SchemaError("prediction path not found", file=path)
    issues: list[Issue] = []
    records: list[tuple[str, Any]] = []
    kinds: list[str] = []
    suffix = path.suffix.lower()
    if path.is_file() and suffix in _KINDS:
        kinds.append(_KINDS[suffix])
        if suffix == ".parquet":
            records = _parquet_records(path, str(path))
        else:
            records = _json_records(path.read_bytes(), str(path), suffix == ".jsonl", issues)
    else:
        files = ReadOnlyFiles(path, max_unzipped)  # zips are read in place, never extracted
        issues += files.issues
        for rel in files.names():
            base = posixpath.basename(rel)
            ext = posixpath.splitext(base)[1].lower()
            if ext not in _KINDS or base.startswith(".") or rel.startswith("__MACOSX/"):
                continue
            label = f"{path}:{rel}"
            kinds.append(_KINDS[ext])
            if ext == ".parquet":
                local = files.local_path(rel)
                records += _parquet_records(local if local is not None else files.read(rel), label)
            else:
                records += _json_records(files.read(rel), label, ext == ".jsonl", issues)
        if not kinds:
            raise SchemaError("no predictions found: expected *.parquet, *.json or *.jsonl", file=path)
    pred = ImagePredictionSet("+".join(sorted(set(kinds))))
    for where, obj in records:
        entry = _parse_prediction(obj, where, issues)
        if entry is not None:
            pred.add(entry)
    pred.issues[:0] = issues
    return pred


# --------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ImageSampleScore:
    """One sentence's result.  intersection / union are the pixel counts that enter
    cIoU (for gRefCOCO after ReLA's no-target rules); iou is a fraction in [0, 1]."""

    sample_id: str
    ref_id: int
    image_id: int
    intersection: int
    union: int
    iou: float
    gt_area: int
    pred_area: int
    missing: bool  # no usable mask was submitted (missing, corrupt or wrong size): scored as empty
    gt_no_target: bool | None = None  # gRefCOCO only
    pred_no_target: bool | None = None  # gRefCOCO only: the flag as submitted or inferred


def _prediction_mask(entry: SubmittedMask | None, sample: ImageSample, issues: list[Issue]) -> np.ndarray | None:
    if entry is None or entry.rle is None:
        return None
    if tuple(entry.rle.size) != (sample.height, sample.width):
        issues.append(Issue("wrong_size", sample.sample_id,
                            f"mask is {entry.rle.size[0]}x{entry.rle.size[1]}, image is {sample.height}x{sample.width}; scored as empty"))
        return None
    if entry.image_id is not None and _sample_key(entry.image_id) != str(sample.image_id):
        issues.append(Issue("image_mismatch", sample.sample_id,
                            f"prediction names image {entry.image_id}, the sentence belongs to image {sample.image_id}; scored anyway"))
    return rle_ops.decode(entry.rle)


def _coverage_issues(gt: RefCocoGroundTruth, pred: ImagePredictionSet) -> list[Issue]:
    expected = {s.sample_id for s in gt.samples}
    issues = [Issue("missing_sample", s.sample_id, "no prediction; scored as an empty mask")
              for s in gt.samples if s.sample_id not in pred.entries]
    other_splits: Counter[str] = Counter()
    for sid in pred.entries:
        if sid in expected:
            continue
        split = gt.sentence_splits.get(sid)
        if split is None:
            issues.append(Issue("extra_sample", sid, "not a sentence of this dataset; ignored"))
        else:
            other_splits[split] += 1
    for split, n in sorted(other_splits.items()):
        issues.append(Issue("extra_sample", f"split {split}", f"{n} predictions for sentences of split {split!r}, not {gt.split!r}; ignored"))
    return issues


def _empty_counts(gt_area: int) -> MaskCounts:
    return MaskCounts(intersection=0, union=gt_area, pred_area=0, gt_area=gt_area)


def score_refcoco(
    data_root: str | os.PathLike,
    pred_path: str | os.PathLike,
    protocol_name: str,
    *,
    split: str = "val",
    split_by: str | None = None,
    empty_union: Literal["one", "zero"] = "one",
    lisa_eps: bool = False,
    on_sample: Callable[[int], None] | None = None,
) -> ScoreReport:
    """Score a referring image segmentation submission against one split.

    ``empty_union`` (refcoco* only): per-sample IoU when prediction and GT are both
    empty, 1 (LISA/Sa2VA) or 0 (LAVT).  gRefCOCO uses ReLA's own rules, whose
    correctly rejected no-target sample scores 1, so only "one" is accepted there.
    ``lisa_eps``: use LISA's I/(U+1e-5) and sum(I)/(sum(U)+1e-10) (refcoco* only).
    A submitted ``no_target`` flag only matters for gRefCOCO; refcoco* score the mask.
    ``on_sample(n)`` is called as samples are scored (for progress bars).
    """
    protocol = get_image_protocol(protocol_name)
    if empty_union not in ("one", "zero"):
        raise ValueError(f"empty_union must be 'one' or 'zero', got {empty_union!r}")
    if protocol.multi_target and (empty_union != "one" or lisa_eps):
        raise ValueError("grefcoco scores with ReLA's rules: empty_union='one' and no LISA epsilons")
    gt = load_ground_truth(data_root, protocol, split, split_by)
    pred = load_image_predictions(pred_path)
    issues = list(pred.issues) + _coverage_issues(gt, pred)

    counts: list[MaskCounts] = []
    missing: list[bool] = []
    pred_nt: list[bool] = []
    for sample in gt.samples:
        target = gt.mask(sample)
        entry = pred.entries.get(sample.sample_id)
        mask = _prediction_mask(entry, sample, issues)
        if mask is None:
            c = _empty_counts(int(np.count_nonzero(target)))
        elif mask.flags.f_contiguous and target.flags.f_contiguous:
            # Decoded RLEs are column-major; the transposes are row-major views with the
            # same counts, which spares mask_counts a copy of each mask.
            c = mask_counts(mask.T, target.T)
        else:
            c = mask_counts(mask, target)
        counts.append(c)
        missing.append(mask is None)
        flag = entry.no_target if entry is not None else None
        pred_nt.append(c.pred_area == 0 if flag is None else flag)
        if on_sample:
            on_sample(1)

    if protocol.multi_target:
        totals, items = _grefcoco_totals(gt, counts, missing, pred_nt)
    else:
        totals, items = _refcoco_totals(gt, counts, missing, empty_union, lisa_eps)
    return ScoreReport(protocol.name, protocol.primary_metric, totals, {}, items, issues, item_kind="samples")


def _refcoco_totals(gt: RefCocoGroundTruth, counts: list[MaskCounts], missing: list[bool],
                    empty_union: Literal["one", "zero"], lisa_eps: bool) -> tuple[dict[str, float], list[ImageSampleScore]]:
    inter = np.array([c.intersection for c in counts], dtype=np.int64)
    union = np.array([c.union for c in counts], dtype=np.int64)
    ious = sample_iou(inter, union, empty_union, LISA_IOU_EPS if lisa_eps else 0.0)
    totals = {
        "cIoU": 100.0 * ciou(inter, union, LISA_CIOU_EPS if lisa_eps else 0.0),
        "gIoU": 100.0 * giou(inter, union, empty_union, LISA_IOU_EPS if lisa_eps else 0.0),
    }
    for k, v in precision_at(ious, PR_THRESHOLDS).items():
        totals[f"Pr@{k:.1f}"] = 100.0 * v
    items = [
        ImageSampleScore(s.sample_id, s.ref_id, s.image_id, c.intersection, c.union, float(iou), c.gt_area, c.pred_area, m)
        for s, c, iou, m in zip(gt.samples, counts, ious, missing)
    ]
    return totals, items


def _grefcoco_totals(gt: RefCocoGroundTruth, counts: list[MaskCounts], missing: list[bool],
                     pred_nt: list[bool]) -> tuple[dict[str, float], list[ImageSampleScore]]:
    gt_nt = [s.no_target for s in gt.samples]
    scores = grefcoco_scores(counts, pred_nt, gt_nt, thresholds=PR_THRESHOLDS)
    totals = {"gIoU": scores.giou, "cIoU": scores.ciou, "N-acc": scores.n_acc, "T-acc": scores.t_acc}
    for k in PR_THRESHOLDS:
        totals[f"Pr@{k:.1f}"] = scores.precision[float(k)]
    items = []
    for s, c, m, p, g in zip(gt.samples, counts, missing, pred_nt, gt_nt):
        # Per-sample values exactly as ReLA's detailed results record them.
        if g:
            inter, union, iou = (0, 0, 1.0) if p else (0, c.union, 0.0)
        else:
            inter, union = (0 if p else c.intersection), c.union
            iou = inter / union if union else 0.0
        items.append(ImageSampleScore(s.sample_id, s.ref_id, s.image_id, inter, union, iou, c.gt_area, c.pred_area, m, g, p))
    return totals, items


def iter_sample_ids(gt: RefCocoGroundTruth) -> Iterable[str]:
    """Sentence ids of the split in scoring order (what a model run must predict)."""
    return (s.sample_id for s in gt.samples)
