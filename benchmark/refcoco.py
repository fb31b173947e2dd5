"""Referring image segmentation scoring: RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO.

The ground truth (refs + instances.json, one sample per sentence, the GT mask of each) is
read by `refsav.schemas.refer`; this module reads submissions and scores them (metrics in
``docs/metrics.md`` §5; formats in ``docs/formats-benchmarks.md`` §4).

* RefCOCO / RefCOCO+ / RefCOCOg follow LISA / Sa2VA (``RES.py``): cIoU = sum(I) / sum(U),
  gIoU = mean per-sample IoU with an empty union scoring 1 (``empty_union="one"``) or 0
  (LAVT, ``"zero"``); Pr@k as LAVT.  LISA's epsilons (I / (U + 1e-5), sum(I) / (sum(U) +
  1e-10)) are off by default, so that a perfect submission scores exactly 100 and Pr@k
  matches LAVT's exact thresholds; ``lisa_eps=True`` puts them back (the difference is
  below 1e-3 points on real masks).
* gRefCOCO follows ReLA's ``ReferEvaluator``; ``ann_id == [-1]`` is a no-target sample.
  A prediction may carry its own ``no_target`` flag; without one an empty mask means
  "no target".

Submission problems (missing, extra, duplicate, wrong-size or corrupt masks) become
``Issue``s; a missing sample is scored as an all-zero prediction, which is what Sa2VA
does for an answer without ``[SEG]``.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from refsav.schemas import rle as rle_ops
from refsav.schemas.errors import SchemaError
from refsav.schemas.protocols import get_protocol
from refsav.schemas.refer import ImageSample, RefCocoGroundTruth, load_ground_truth, refer_layout
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
    "SubmittedMask",
    "ImagePredictionSet",
    "load_image_predictions",
    "ImageSampleScore",
    "score_refcoco",
]

PR_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


# ----------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class ImageProtocol:
    """How a refer-family protocol is scored; its data layout and primary metric are in
    the registry (`refsav.schemas.protocols`) under the same name."""

    name: str
    source: str  # the official code whose numbers this reproduces
    description: str
    metrics: tuple[str, ...]  # keys of ScoreReport.totals


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
        ImageProtocol("refcoco", _LISA, _REFCOCO_TEXT.format(name="RefCOCO", split_by="unc"),
                      metrics=("cIoU", "gIoU") + _PR_KEYS),
        ImageProtocol("refcoco+", _LISA, _REFCOCO_TEXT.format(name="RefCOCO+", split_by="unc"),
                      metrics=("cIoU", "gIoU") + _PR_KEYS),
        ImageProtocol("refcocog", _LISA, _REFCOCO_TEXT.format(name="RefCOCOg", split_by="umd"),
                      metrics=("cIoU", "gIoU") + _PR_KEYS),
        ImageProtocol(
            "grefcoco",
            "henghuiding/ReLA gres_model/evaluation/refer_evaluation.py (ReferEvaluator), "
            "gres_model/data/datasets/grefcoco.py",
            "gRefCOCO (unc splits): one sample per sentence; GT = OR of the ref's non-crowd "
            "annotations (polygons with < 6 or odd coordinates dropped), ann_id [-1] = no target. "
            "ReLA bookkeeping: gIoU (headline) = mean per-sample IoU with a correctly rejected "
            "no-target sample scoring 1, cIoU = sum(I)/sum(U), Pr@k over targeted samples only, "
            "N-acc = no-target recall, T-acc = target recall; no_target defaults to 'empty mask'.",
            metrics=("gIoU", "cIoU", "N-acc", "T-acc") + _PR_KEYS,
        ),
    ]
}


def get_image_protocol(name: str) -> ImageProtocol:
    refer_layout(name)  # refuses a name that is no refer-family protocol, listing those that are
    return IMAGE_PROTOCOLS[name]


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
    multi_target = refer_layout(protocol_name).multi_target
    if empty_union not in ("one", "zero"):
        raise ValueError(f"empty_union must be 'one' or 'zero', got {empty_union!r}")
    if multi_target and (empty_union != "one" or lisa_eps):
        raise ValueError("grefcoco scores with ReLA's rules: empty_union='one' and no LISA epsilons")
    gt = load_ground_truth(data_root, protocol_name, split, split_by)
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

    if multi_target:
        totals, items = _grefcoco_totals(gt, counts, missing, pred_nt)
    else:
        totals, items = _refcoco_totals(gt, counts, missing, empty_union, lisa_eps)
    return ScoreReport(protocol.name, get_protocol(protocol.name).primary_metric, totals, {}, items, issues,
                       item_kind="samples")


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

