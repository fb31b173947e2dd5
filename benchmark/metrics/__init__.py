"""Segmentation metrics of the referring video/image benchmarks, fast and exact.

Definitions: ``docs/metrics.md``.  The functions return the same numbers as the official
scripts (davis2017-evaluation, MeViS, ReVOS/VISA, Ref-SAV, LISA/LAVT, ReLA) except for a
few deliberate, documented divergences: int64 decay bins (``decay``), binarised ReVOS A/R
(``revos_accuracy``), float64 instead of LISA's float32 (``giou``), NaN instead of
ZeroDivisionError (``grefcoco_scores``).  ``benchmark/oracle.py`` holds a plain per-frame
transcription of the video definitions and ``tests/test_metrics.py`` checks these
modules against it.

Masks are numpy arrays of any dtype; any non-zero value is foreground.  Video functions
take a (T, H, W) stack or a single (H, W) frame and always return a length-T vector
(T = 1 for a single frame); scorers average those vectors themselves.

One module per topic: ``region`` (J), ``boundary`` (F), ``davis_statistics`` (M, R, D),
``revos`` (A, R), ``run_masks`` (J, F and A straight from RLE, what the video scorers
use) and ``image`` (IoU, gIoU, cIoU, Pr@k, gRefCOCO); ``masks`` holds their shared array
conventions.  This package re-exports their public names.
"""

from .boundary import boundary_counts, boundary_radius, disk_footprint, f_per_frame, seg2bmap
from .davis_statistics import DavisStats, db_statistics, decay
from .image import (
    LISA_CIOU_EPS,
    LISA_IOU_EPS,
    GRefCocoScores,
    MaskCounts,
    ciou,
    giou,
    grefcoco_scores,
    mask_counts,
    precision_at,
    sample_iou,
)
from .region import j_per_frame
from .revos import revos_accuracy, revos_robustness
from .run_masks import FrameScores, RunMasks, frame_scores

__all__ = [
    "j_per_frame",
    "f_per_frame",
    "boundary_radius",
    "disk_footprint",
    "seg2bmap",
    "boundary_counts",
    "decay",
    "db_statistics",
    "DavisStats",
    "revos_accuracy",
    "revos_robustness",
    "RunMasks",
    "FrameScores",
    "frame_scores",
    "MaskCounts",
    "mask_counts",
    "sample_iou",
    "ciou",
    "giou",
    "precision_at",
    "GRefCocoScores",
    "grefcoco_scores",
    "LISA_IOU_EPS",
    "LISA_CIOU_EPS",
]
