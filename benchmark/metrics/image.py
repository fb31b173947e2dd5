"""Image referring-segmentation scores: per-sample IoU, gIoU, cIoU, Pr@k (LISA, LAVT) and
gRefCOCO's (ReLA ``ReferEvaluator``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from .masks import as_bool, check_shapes


#: LISA (and Sa2VA ``RES.py``) per-sample IoU is I / (U + 1e-5) ...
LISA_IOU_EPS = 1e-5
#: ... and its cIoU is sum(I) / (sum(U) + 1e-10).
LISA_CIOU_EPS = 1e-10


@dataclass(frozen=True)
class MaskCounts:
    """Pixel counts of one (prediction, ground truth) pair of binary masks."""

    intersection: int
    union: int
    pred_area: int
    gt_area: int


def mask_counts(pred: np.ndarray, gt: np.ndarray) -> MaskCounts:
    """(H, W) prediction and ground truth -> MaskCounts (any non-zero is foreground)."""
    p, g = as_bool(np.asarray(pred)), as_bool(np.asarray(gt))
    check_shapes(p, g)
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    inter = int(np.count_nonzero(p & g))
    return MaskCounts(intersection=inter, union=n_p + n_g - inter, pred_area=n_p, gt_area=n_g)


def sample_iou(
    intersections: Sequence[float] | np.ndarray,
    unions: Sequence[float] | np.ndarray,
    empty_union: Literal["one", "zero"] = "one",
    eps: float = 0.0,
) -> np.ndarray:
    """Per-sample IoU I / (U + eps); samples with U = 0 score 1 ("one") or 0 ("zero").

    "one" + eps=LISA_IOU_EPS is LISA/Sa2VA (an empty prediction on an empty target is
    perfect; a perfect non-empty mask scores slightly below 1); "zero" + eps=0 is LAVT.
    """
    i = np.asarray(intersections, dtype=np.float64)
    u = np.asarray(unions, dtype=np.float64)
    if empty_union not in ("one", "zero"):
        raise ValueError(f"empty_union must be 'one' or 'zero', got {empty_union!r}")
    empty = u == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = i / (u + eps)
    iou[empty] = 1.0 if empty_union == "one" else 0.0
    return iou


def giou(
    intersections: Sequence[float] | np.ndarray,
    unions: Sequence[float] | np.ndarray,
    empty_union: Literal["one", "zero"] = "one",
    eps: float = 0.0,
) -> float:
    """gIoU / mIoU: mean of ``sample_iou`` over samples (a fraction in [0, 1]).

    LISA computes this in float32 on the GPU and averages per-image batch means; its
    printed value agrees with this float64 mean to ~1e-6.
    """
    iou = sample_iou(intersections, unions, empty_union, eps)
    return float(np.mean(iou)) if iou.size else float("nan")


def ciou(
    intersections: Sequence[float] | np.ndarray,
    unions: Sequence[float] | np.ndarray,
    eps: float = 0.0,
) -> float:
    """cIoU / overall IoU: sum(I) / (sum(U) + eps) (a fraction); NaN if the denominator is 0.

    eps=0 is LAVT/ReLA, eps=LISA_CIOU_EPS is LISA/Sa2VA (which sums in float32, so its
    printed value agrees with this float64 one to ~1e-7 relative).
    """
    i = float(np.sum(np.asarray(intersections, dtype=np.float64)))
    u = float(np.sum(np.asarray(unions, dtype=np.float64))) + eps
    return i / u if u != 0 else float("nan")


def precision_at(
    ious: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
) -> dict[float, float]:
    """Pr@k (LAVT): fraction of samples with IoU >= k, for each threshold k (fractions)."""
    v = np.asarray(ious, dtype=np.float64)
    if v.size == 0:
        return {float(k): float("nan") for k in thresholds}
    return {float(k): float(np.count_nonzero(v >= k)) / v.size for k in thresholds}


@dataclass(frozen=True)
class GRefCocoScores:
    """gRefCOCO scores (ReLA ``ReferEvaluator``), all in percent.

    ReLA prints T_acc / N_acc as fractions; here they are x100 like its gIoU/cIoU/Pr.
    """

    giou: float  # 100 * sum(sample IoU) / #samples
    ciou: float  # 100 * sum(I) / sum(U)
    n_acc: float  # no-target recall, 100 * TP / (TP + FN)
    t_acc: float  # target recall, 100 * TN / (TN + FP)
    precision: dict[float, float] = field(default_factory=dict)  # Pr@k over targeted samples
    n_samples: int = 0
    n_no_target: int = 0


def grefcoco_scores(
    samples: Sequence[MaskCounts],
    pred_no_target: Sequence[bool] | None = None,
    gt_no_target: Sequence[bool] | None = None,
    thresholds: Sequence[float] = (0.7, 0.8, 0.9),
) -> GRefCocoScores:
    """gRefCOCO gIoU, cIoU, N-acc, T-acc and Pr@k with ReLA's bookkeeping.

    samples: one MaskCounts per sentence.  pred_no_target: the model's no-target flag per
    sample; default (mask-only models) "empty predicted mask => no target".
    gt_no_target: default "empty GT mask" (ReLA reads the dataset's ``empty`` flag).
    No-target GT: predicted no-target -> TP, IoU 1, adds I = U = 0; otherwise FN, IoU 0,
    adds U.  Targeted GT: predicted no-target -> FP and I := 0; otherwise TN; IoU = I/U
    (0 if U = 0), adds I and U, counts for Pr@k whose denominator is the targeted
    samples only.  Sums are sequential in sample order, as in ReLA.  Divergences: ReLA
    reports N-acc = T-acc = 0 when there is no no-target sample (kept), and raises on a
    zero denominator where this returns NaN.
    """
    n = len(samples)
    pred_nt = [s.pred_area == 0 for s in samples] if pred_no_target is None else list(pred_no_target)
    gt_nt = [s.gt_area == 0 for s in samples] if gt_no_target is None else list(gt_no_target)
    if len(pred_nt) != n or len(gt_nt) != n:
        raise ValueError("pred_no_target / gt_no_target must have one entry per sample")
    thresholds = [float(k) for k in thresholds]

    acc_i = acc_u = acc_iou = 0.0
    tp = tn = fp = fn = 0
    hits = {k: 0 for k in thresholds}
    n_targeted = 0
    for s, p_nt, g_nt in zip(samples, pred_nt, gt_nt):
        inter, union = s.intersection, s.union
        if g_nt:
            if p_nt:
                tp += 1
                acc_iou += 1
            else:
                fn += 1
                acc_u += union
            continue
        if p_nt:
            fp += 1
            inter = 0
        else:
            tn += 1
        this_iou = 0.0 if union == 0 else float(inter) / float(union)
        acc_iou += this_iou
        acc_i += inter
        acc_u += union
        n_targeted += 1
        for k in thresholds:
            if this_iou >= k:
                hits[k] += 1

    def ratio(num: float, den: float) -> float:
        return num / den if den else float("nan")

    n_nt = tp + fn
    if n_nt > 0:
        t_acc = 100.0 * ratio(tn, tn + fp)
        n_acc = 100.0 * ratio(tp, tp + fn)
    else:
        t_acc = n_acc = 0.0
    return GRefCocoScores(
        giou=100.0 * ratio(acc_iou, n),
        ciou=ratio(acc_i * 100.0, acc_u),
        n_acc=n_acc,
        t_acc=t_acc,
        precision={k: ratio(hits[k] * 100.0, n_targeted) for k in thresholds},
        n_samples=n,
        n_no_target=n_nt,
    )
