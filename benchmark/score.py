"""Scoring engine for the meta_expressions + mask_dict family of benchmarks.

Videos are scored in parallel worker processes (each loads the ground truth and
the predictions once); per-expression results are aggregated by the protocol.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .inputs import Issue, PredictionSet, RefVosGroundTruth, load_predictions
from .metrics import f_per_frame, j_per_frame, revos_accuracy, revos_robustness
from .protocols import VideoProtocol
from .report import ScoreReport


@dataclass(frozen=True)
class ExpressionScore:
    video_id: str
    exp_id: str
    exp: str
    type_id: int | None
    subset: str
    metrics: dict[str, float]  # x100; rounded when the protocol says so
    missing: bool  # no prediction: scored 0 as the official scripts do




# Worker state: loaded once per process, then reused for every video it scores.
_STATE: dict[str, object] = {}


def _init_worker(gt_root: str, meta_name: str | None, pred_path: str) -> None:
    _STATE["gt"] = RefVosGroundTruth.load(gt_root, meta_name)
    _STATE["pred"] = load_predictions(pred_path)


def _score_video_ids(protocol: VideoProtocol, video_ids: list[str]) -> tuple[list[ExpressionScore], list[Issue]]:
    gt: RefVosGroundTruth = _STATE["gt"]  # type: ignore[assignment]
    pred: PredictionSet = _STATE["pred"]  # type: ignore[assignment]
    wanted = set(video_ids)
    scores, issues = [], []
    for video in gt.videos:
        if video.video_id in wanted:
            s, i = score_video(gt, pred, video, protocol)
            scores += s
            issues += i
    return scores, issues


def score_video(gt: RefVosGroundTruth, pred: PredictionSet, video, protocol: VideoProtocol):
    """Per-expression scores of one video."""
    size = gt.frame_size(video)
    fg = gt.video_foreground(video) if "R" in protocol.metrics else None
    scores, issues = [], []
    for exp in video.expressions:
        subset = protocol.subset_of(exp.type_id)
        if subset is None:
            continue
        masks, problems = pred.masks(video, exp, size)
        issues += problems
        if masks is None:
            scores.append(ExpressionScore(video.video_id, exp.exp_id, exp.exp, exp.type_id, subset,
                                          {m: 0.0 for m in protocol.metrics}, True))
            continue
        target = gt.expression_mask(video, exp)
        values = {"J": float(np.mean(j_per_frame(masks, target))), "F": float(np.mean(f_per_frame(masks, target)))}
        if "A" in protocol.metrics:
            values["A"] = float(np.mean(revos_accuracy(masks, target)))
        if "R" in protocol.metrics:
            values["R"] = float(np.mean(revos_robustness(masks, target, fg)))
        values = {k: _finish(v * 100, protocol) for k, v in values.items() if k in protocol.metrics}
        scores.append(ExpressionScore(video.video_id, exp.exp_id, exp.exp, exp.type_id, subset, values, False))
    return scores, issues


def _finish(value: float, protocol: VideoProtocol) -> float:
    return round(value, 2) if protocol.round_per_expression else value


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


def score_refvos(
    gt_root: str | os.PathLike,
    pred_path: str | os.PathLike,
    protocol: VideoProtocol,
    *,
    meta_name: str | None = None,
    workers: int = 1,
    on_video: Callable[[int], None] | None = None,
) -> ScoreReport:
    """Score a submission against a meta_expressions + mask_dict ground truth."""
    gt = RefVosGroundTruth.load(gt_root, meta_name)
    pred = load_predictions(pred_path)
    issues = list(pred.issues) + _coverage_issues(gt, pred)
    ids = [v.video_id for v in gt.videos]
    scores: list[ExpressionScore] = []
    if workers <= 1:
        for video in gt.videos:
            s, i = score_video(gt, pred, video, protocol)
            scores += s
            issues += i
            if on_video:
                on_video(1)
    else:
        chunks = [ids[i :: workers * 4] for i in range(min(len(ids), workers * 4))]
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(gt_root), meta_name, str(pred_path))) as pool:
            for chunk, (s, i) in zip(chunks, pool.map(_score_video_ids, [protocol] * len(chunks), chunks)):
                scores += s
                issues += i
                if on_video:
                    on_video(len(chunk))
    order = {(v.video_id, e.exp_id): n for n, (v, e) in enumerate((v, e) for v in gt.videos for e in v.expressions)}
    scores.sort(key=lambda s: order[(s.video_id, s.exp_id)])
    totals, subsets = aggregate(protocol, scores)
    return ScoreReport(protocol.name, "J&F", totals, subsets, scores, issues)


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
