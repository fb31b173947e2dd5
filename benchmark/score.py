"""Scoring engine for the meta_expressions + mask_dict family of benchmarks.

Masks stay run-length encoded from the files to the metrics (``metrics.RunMasks``):
J, A and R come from run arithmetic, F decodes only a small crop around both masks of
a frame, and each ground-truth object is parsed once per video however many
expressions refer to it.

Videos are scored where the caller asks: in this process (``workers=1``), in a pool of
local worker processes (``workers > 1``), or on a Dask cluster (``scheduler``, through
``refsav.runtime.executor``, the engine the annotation pipeline runs on).  Either way the
unit of work is a chunk of videos, every video is scored by the same ``score_video``,
and the report is assembled in ground-truth order, so it is identical however the work
was spread.
"""
from __future__ import annotations

import heapq
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from refsav.runtime.executor import make_executor
from refsav.schemas.refvos import find_mask_dict, find_meta

from .files import DEFAULT_LIMITS, SubmissionLimits
from .inputs import FOREGROUND_NAME, PredictionSet, RefVosGroundTruth, load_predictions
from .metrics import RunMasks, frame_scores
from .protocols import VideoProtocol
from .report import Issue, ScoreReport


@dataclass(frozen=True)
class ExpressionScore:
    video_id: str
    exp_id: str
    exp: str
    type_id: int | None
    subset: str
    metrics: dict[str, float]  # x100; rounded when the protocol says so
    missing: bool  # no prediction: scored 0 as the official scripts do


@dataclass(frozen=True)
class VideoResult:
    """What scoring one video produced."""

    video_id: str
    scores: tuple[ExpressionScore, ...]
    issues: tuple[Issue, ...]


@dataclass(frozen=True)
class ChunkTask:
    """A unit of work for a worker: score these videos of this submission.

    Workers open the inputs themselves (from the same paths, so a remote Dask worker
    needs a shared filesystem) and keep them for the next chunk of the same job.
    """

    gt_root: str
    meta_name: str | None
    pred_path: str
    protocol: VideoProtocol
    video_ids: tuple[str, ...]
    limits: SubmissionLimits = DEFAULT_LIMITS


def score_video(gt: RefVosGroundTruth, pred: PredictionSet, video, protocol: VideoProtocol):
    """Per-expression scores of one video: (list[ExpressionScore], list[Issue])."""
    size = gt.frame_size(video)
    objects: dict[tuple[int, ...], RunMasks] = {}  # this video's GT, parsed once
    fg_areas = gt.foreground_areas(video, objects) if "R" in protocol.metrics else None
    scores, issues = [], []
    for exp in video.expressions:
        subset = protocol.subset_of(exp.type_id)
        if subset is None:
            if exp.type_id not in protocol.dropped_types:
                # The official scripts drop it silently (no subset's filter matches it).
                known = ", ".join(str(t) for t in sorted(protocol.subsets or {}))
                got = "no type_id" if exp.type_id is None else f"type_id {exp.type_id}"
                issues.append(Issue("unknown_type_id", f"{video.video_id}/{exp.exp_id}",
                                    f"{got} in the ground truth; {protocol.name} knows {known}; not scored"))
            continue
        runs, problems = pred.runs(video, exp, size)
        issues += problems
        if runs is None:
            scores.append(ExpressionScore(video.video_id, exp.exp_id, exp.exp, exp.type_id, subset,
                                          {m: 0.0 for m in protocol.metrics}, True))
            continue
        s = frame_scores(runs, gt.expression_runs(video, exp, objects))
        values = {"J": float(np.mean(s.j)), "F": float(np.mean(s.f))}
        if "A" in protocol.metrics:
            values["A"] = float(np.mean(s.accuracy))
        if "R" in protocol.metrics:
            values["R"] = float(np.mean(s.robustness(fg_areas)))
        values = {k: _finish(v * 100, protocol) for k, v in values.items() if k in protocol.metrics}
        scores.append(ExpressionScore(video.video_id, exp.exp_id, exp.exp, exp.type_id, subset, values, False))
    return scores, issues


def _finish(value: float, protocol: VideoProtocol) -> float:
    # The official scripts round NumPy float64s (`round(100 * j, 2)` with j from
    # ndarray.mean()), i.e. NumPy's scale-rint-unscale rounding, not Python's exact
    # decimal rounding of a float: at x.xx5 boundaries the two differ (docs/metrics.md).
    return float(np.round(np.float64(value), 2)) if protocol.round_per_expression else value


def _summary(scores: list[ExpressionScore], metrics: tuple[str, ...]) -> dict[str, float]:
    if not scores:
        return {m: math.nan for m in metrics} | {"J&F": math.nan}
    out = {m: float(np.mean([s.metrics[m] for s in scores])) for m in metrics}
    out["J&F"] = (out["J"] + out["F"]) / 2
    return out


def aggregate(protocol: VideoProtocol, scores: list[ExpressionScore]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    subsets: dict[str, dict[str, float]] = {}
    if protocol.subsets is not None:
        for name in protocol.subsets.values():
            subsets[name] = _summary([s for s in scores if s.subset == name], protocol.metrics)
    if protocol.overall == "mean_of_subsets" and subsets:
        keys = list(protocol.metrics) + ["J&F"]
        totals = {k: float(np.mean([subsets[s][k] for s in subsets])) for k in keys}
        totals["J&F"] = (totals["J"] + totals["F"]) / 2
    else:
        totals = _summary(scores, protocol.metrics)
    return totals, subsets


# --------------------------------------------------------------------------- workers

# Inputs a worker process has opened, by the files they came from; a long-lived Dask
# worker serving several jobs keeps only the most recent few.
_OPENED: OrderedDict[tuple, tuple[RefVosGroundTruth, PredictionSet]] = OrderedDict()
_OPENED_MAX = 2


def _inputs_key(gt_root: str, meta_name: str | None, pred_path: str) -> tuple:
    """Identity of a job's inputs: paths plus size and mtime, so an edited file is reread."""
    root = Path(gt_root)
    files = [find_mask_dict(root), root / meta_name if meta_name else find_meta(root), Path(pred_path)]
    fg = root / FOREGROUND_NAME
    if fg.exists():
        files.append(fg)
    stamps = []
    for f in files:
        st = f.stat()
        stamps.append((str(f.resolve()), st.st_size, st.st_mtime_ns))
    return (meta_name, tuple(stamps))


def _opened(gt_root: str, meta_name: str | None, pred_path: str,
            limits: SubmissionLimits = DEFAULT_LIMITS) -> tuple[RefVosGroundTruth, PredictionSet]:
    key = (_inputs_key(gt_root, meta_name, pred_path), limits)
    if key in _OPENED:
        _OPENED.move_to_end(key)
    else:
        _OPENED[key] = (RefVosGroundTruth.load(gt_root, meta_name), load_predictions(pred_path, limits=limits))
        while len(_OPENED) > _OPENED_MAX:
            _OPENED.popitem(last=False)
    return _OPENED[key]


_ALLOCATOR_TUNED = False


def _keep_temporaries_on_the_heap() -> None:
    """Undo, for this process, a low MALLOC_TRIM_THRESHOLD_ (Dask's nanny sets 65536).

    With it, glibc hands every freed block over 64 KiB back to the OS, so the engine's
    short-lived arrays (0.1-2 MB, thousands per video) are page-faulted in afresh each
    time: measured 2.5x slower.  Raising the trim and mmap thresholds keeps them on the
    heap; a worker then holds at most 64 MiB of freed memory.  glibc only.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (its maximum on 64-bit)
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to undo


def score_chunk(task: ChunkTask) -> list[VideoResult]:
    """Score a chunk of videos (run by a worker; inputs opened once per worker process)."""
    _keep_temporaries_on_the_heap()
    gt, pred = _opened(task.gt_root, task.meta_name, task.pred_path, task.limits)
    by_id = {v.video_id: v for v in gt.videos}
    out = []
    for vid in task.video_ids:
        scores, issues = score_video(gt, pred, by_id[vid], task.protocol)
        out.append(VideoResult(vid, tuple(scores), tuple(issues)))
    return out


def plan_chunks(gt: RefVosGroundTruth, protocol: VideoProtocol, n_chunks: int) -> list[tuple[str, ...]]:
    """Split the videos into at most n_chunks chunks of similar cost, costliest first.

    Cost of a video: frames x scored expressions.  Greedy longest-first assignment to
    the cheapest chunk, so no worker is left with a tail of big videos.
    """
    costs = []
    for i, v in enumerate(gt.videos):
        n_exp = sum(1 for e in v.expressions if protocol.subset_of(e.type_id) is not None)
        costs.append((max(len(v.frames), 1) * max(n_exp, 1), i))
    n_chunks = max(1, min(n_chunks, len(costs)))
    heap = [(0, k) for k in range(n_chunks)]
    members: list[list[int]] = [[] for _ in range(n_chunks)]
    totals = [0] * n_chunks
    for cost, i in sorted(costs, key=lambda c: (-c[0], c[1])):
        total, k = heapq.heappop(heap)
        members[k].append(i)
        totals[k] = total + cost
        heapq.heappush(heap, (totals[k], k))
    order = sorted((k for k in range(n_chunks) if members[k]), key=lambda k: (-totals[k], k))
    return [tuple(gt.videos[i].video_id for i in sorted(members[k])) for k in order]


CHUNKS_PER_WORKER = 4


def score_refvos(
    gt_root: str | os.PathLike,
    pred_path: str | os.PathLike,
    protocol: VideoProtocol,
    *,
    meta_name: str | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    on_video: Callable[[int], None] | None = None,
    limits: SubmissionLimits = DEFAULT_LIMITS,
) -> ScoreReport:
    """Score a submission against a meta_expressions + mask_dict ground truth.

    ``workers``: 1 scores in this process; more starts that many local worker processes.
    ``scheduler``: the address of a Dask scheduler (``tcp://host:8786``) whose workers
    score the videos instead; they must be able to import refsav and to read
    ``gt_root`` and ``pred_path`` at the same paths.  ``on_video(n)`` is called as
    videos finish.  ``limits``: caps on reading the submission (docs/submission-limits.md).
    The report does not depend on where the videos were scored.
    """
    gt = RefVosGroundTruth.load(gt_root, meta_name)
    pred = load_predictions(pred_path, limits=limits)
    issues = list(pred.issues) + _coverage_issues(gt, pred)
    results: dict[str, VideoResult] = {}
    if scheduler is None and workers <= 1:
        for video in gt.videos:
            s, i = score_video(gt, pred, video, protocol)
            results[video.video_id] = VideoResult(video.video_id, tuple(s), tuple(i))
            if on_video:
                on_video(1)
    else:
        # Absolute paths: a worker's working directory need not be ours.
        results = _score_elsewhere(gt, pred, protocol, os.path.abspath(gt_root), meta_name,
                                   os.path.abspath(pred_path), workers, scheduler, on_video, limits)
    scores: list[ExpressionScore] = []
    for video in gt.videos:
        scores += results[video.video_id].scores
        issues += results[video.video_id].issues
    issues += pred.unscored_issues({(s.video_id, s.exp_id) for s in scores if not s.missing})
    totals, subsets = aggregate(protocol, scores)
    return ScoreReport(protocol.name, "J&F", totals, subsets, scores, issues)


def _score_elsewhere(gt, pred, protocol, gt_root, meta_name, pred_path, workers, scheduler, on_video,
                     limits) -> dict[str, VideoResult]:
    # Workers open the inputs themselves (cheaply: RLEs are validated when scored), never
    # inheriting this process's: an open zip shared by forked processes corrupts reads.
    # Local workers are plain processes: they start in milliseconds, a Dask LocalCluster in seconds.
    results: dict[str, VideoResult] = {}
    with make_executor(workers, scheduler, local="processes") as executor:
        n_chunks = CHUNKS_PER_WORKER * max(executor.n_workers, 1)
        tasks = [ChunkTask(gt_root, meta_name, pred_path, protocol, ids, limits) for ids in plan_chunks(gt, protocol, n_chunks)]
        for outcome in executor.map_unordered(score_chunk, tasks):
            if not outcome.ok:
                raise outcome.error  # type: ignore[misc]  # e.g. a SchemaError in the GT
            for r in outcome.result:
                results[r.video_id] = r
            if on_video:
                on_video(len(outcome.task.video_ids))
    return results


def _coverage_issues(gt: RefVosGroundTruth, pred: PredictionSet) -> list[Issue]:
    expected = {(v.video_id, e.exp_id) for v in gt.videos for e in v.expressions}
    got = pred.keys()
    videos = {v for v, _ in expected}
    pred_videos = {v for v, _ in got}
    issues = []
    for vid in sorted(videos - pred_videos):
        issues.append(Issue("missing_video", vid, "no predictions for this video; its expressions score 0"))
    for vid, exp in sorted(expected - got):
        if vid in pred_videos:
            issues.append(Issue("missing_expression", f"{vid}/{exp}", "no prediction; scored 0"))
    for vid in sorted(pred_videos - videos):
        issues.append(Issue("extra_video", vid, "not in the ground truth; ignored"))
    for vid, exp in sorted(got - expected):
        if vid in videos:
            issues.append(Issue("extra_expression", f"{vid}/{exp}", "not in the ground truth; ignored"))
    return issues
