"""Scoring speed benchmark: oracle vs production J/F, and the whole Ref-SAV scoring engine.

Workload: Ref-SAV-like expressions built from the synthetic generator (4 objects per
video, one long and 1-3 short expressions per object, SA-V's every-4th-frame
annotation, objects from ~0.2% to ~10% of the frame, frames where the object is
absent), at 1280x720 and 1920x1080.  Predictions are the GT shifted and grown or shrunk
by a few pixels per frame, and for ~10% of expressions another object of the video.

For each frame size it measures, on one core:
  (a) the plain per-frame oracle (benchmark/oracle.py) on a spread subset of expressions,
  (b) the production metrics (benchmark/metrics.py) on every expression,
and checks per-expression J and F agree to 1e-9; then it times the whole engine
(``score_refvos``: RLE decoding + metrics + aggregation) with 1 and 2 worker processes.

    make perf      # or: .venv/bin/python perf/bench_scoring.py [--quick]

The full run rewrites its section of perf/README.md; --quick is a smoke test that
touches nothing outside a temporary directory.
"""

from __future__ import annotations

import os

# Every process here, the engine's workers included, must use exactly one core, or the
# "single core" and "2 workers" figures would silently borrow the other core.  The
# pools read these variables once, when numpy / OpenCV load.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENCV_FOR_THREADS_NUM"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark import metrics, oracle  # noqa: E402
from benchmark.protocols import VIDEO_PROTOCOLS  # noqa: E402
from benchmark.score import score_refvos  # noqa: E402
from pipelines.synthetic import make_video  # noqa: E402
from schemas import rle as rle_ops  # noqa: E402
from schemas.io import atomic_path, atomic_write_json  # noqa: E402
from schemas.refvos import RefExpression, RefVideo, write_mask_dict, write_meta_expressions  # noqa: E402
from schemas.video import SAV_STRIDE  # noqa: E402

README = ROOT / "perf" / "README.md"
START, END = "<!-- bench_scoring:start -->", "<!-- bench_scoring:end -->"
README_INTRO = """# Performance

Benchmarks of refsav, each with the command that produced its figures.  Every script
rewrites only its own marked section of this file.
"""

PARITY_TOL = 1e-9
SPEEDUP_TARGET = 30.0
SCALING_TARGET = 0.8  # parallel efficiency (t1 / t2 / 2) that counts as near-linear
WRONG_OBJECT_RATE = 0.1
SPLIT_EXPRESSIONS = 6  # re-decoded and re-scored to split the engine's time


@dataclass(frozen=True)
class Workload:
    expressions: int  # per frame size
    frames: int  # annotated frames per expression
    oracle_expressions: int  # this many also go through the (slow) oracle
    sizes: tuple[tuple[int, int], ...] = ((1280, 720), (1920, 1080))  # (W, H)
    objects: int = 4  # per video
    seed: int = 0


FULL = Workload(expressions=200, frames=60, oracle_expressions=30)
QUICK = Workload(expressions=6, frames=6, oracle_expressions=2)


@dataclass
class SizeResult:
    width: int
    height: int
    videos: int = 0
    expressions: int = 0
    frames: int = 0  # expression-frames, i.e. (pred, gt) pairs
    gt_areas: list[float] = field(default_factory=list)  # fraction of the frame, non-empty GT frames
    gt_empty: int = 0
    # single-core metric timings (seconds)
    prod_j: float = 0.0
    prod_f: float = 0.0
    oracle_expressions: int = 0
    oracle_frames: int = 0
    oracle_j: float = 0.0
    oracle_f: float = 0.0
    prod_j_subset: float = 0.0  # production on exactly the oracle's frames
    prod_f_subset: float = 0.0
    max_dj: float = 0.0
    max_df: float = 0.0
    # whole engine (seconds) by worker count
    engine: dict[int, float] = field(default_factory=dict)
    engine_mismatches: int = 0
    decode_ms: float = float("nan")  # per frame: decoding one prediction + one GT
    score_ms: float = float("nan")  # per frame: J + F + A


# --------------------------------------------------------------------------- workload


def noisy_prediction(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W) bool: what a decent model might predict for target.

    Each frame is shifted by up to 6 px and dilated or eroded by 1-4 px, so predicted
    and GT boundaries rarely coincide (coinciding boundaries would hit a fast path).
    Empty GT frames stay empty; erosion can empty a small object's frame.
    """
    out = np.zeros_like(target)
    h, w = target.shape[1:]
    for t, mask in enumerate(target):
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
        # Work on a crop with room for the largest shift plus dilation: full-frame
        # morphology would make building the workload take longer than scoring it.
        pad = 6 + 4 + 1
        y0, y1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, h)
        x0, x1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, w)
        crop = np.ascontiguousarray(mask[y0:y1, x0:x1]).view(np.uint8)
        dy, dx = rng.integers(-6, 7, size=2)
        moved = cv2.warpAffine(crop, np.float32([[1, 0, dx], [0, 1, dy]]), (x1 - x0, y1 - y0), flags=cv2.INTER_NEAREST)
        r = int(rng.integers(1, 5))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        grow_or_shrink = cv2.dilate if rng.random() < 0.5 else cv2.erode
        out[t, y0:y1, x0:x1] = grow_or_shrink(moved, kernel) != 0
    return out


def encode(mask: np.ndarray) -> rle_ops.Rle:
    """RLE of a C-ordered (H, W) bool frame.

    RLE runs are column-major; handing rle_ops.encode a Fortran-ordered frame made by
    cv2's blocked transpose halves the cost of numpy's strided copy inside it.
    """
    return rle_ops.encode(cv2.transpose(mask.view(np.uint8)).T)


def time_call(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - t0, value


def oracle_per_frame(fn, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.array([fn(pred[t], gt[t]) for t in range(len(pred))], dtype=np.float64)


def build_and_time_metrics(wl: Workload, width: int, height: int, out: Path) -> tuple[SizeResult, dict, list]:
    """Generate the workload for one frame size, time (a) and (b) on it, write it to out.

    Metrics are timed right where each expression's masks are made, so nothing needs to
    be decoded back from RLE for them.  Returns the result, the production
    per-expression (J, F) means keyed by (video_id, exp_id) to check the engine with, and
    the first few expressions' (GT RLEs, prediction RLEs, (H, W)) for decode_vs_metrics.
    """
    res = SizeResult(width, height)
    sample: list[tuple[list, list, tuple[int, int]]] = []
    # Spread over all videos and object sizes, not the first few videos only.
    oracle_ids = set(np.linspace(0, wl.expressions - 1, wl.oracle_expressions).round().astype(int).tolist())
    meta: list[RefVideo] = []
    mask_dict: dict[str, list] = {}
    predictions: dict[str, dict] = {}
    expected: dict[tuple[str, str], tuple[float, float]] = {}
    annotated = list(range(0, wl.frames * SAV_STRIDE, SAV_STRIDE))
    frame_names = [f"{t:05d}" for t in annotated]

    while res.expressions < wl.expressions:
        video_id = f"bench_{res.videos:04d}"
        video = make_video(video_id, wl.seed, width, height, wl.frames * SAV_STRIDE, wl.objects)
        res.videos += 1
        masks = np.empty((len(video.objects), len(annotated), height, width), dtype=bool)
        for t, frame_masks in enumerate(video.masks(annotated)):
            masks[:, t] = frame_masks
        expressions: list[RefExpression] = []
        for k, text in enumerate(video.texts):
            if res.expressions >= wl.expressions:
                break
            anno_id = len(mask_dict)
            gt = masks[k]
            mask_dict[str(anno_id)] = [encode(m) if m.any() else None for m in gt]
            areas = gt.sum(axis=(1, 2)) / (width * height)
            for type_id, sentence in [(0, text.long)] + [(1, s) for s in text.short]:
                if res.expressions >= wl.expressions:
                    break
                n = res.expressions
                exp_id = str(len(expressions))
                expressions.append(RefExpression(exp_id, sentence, [k], [anno_id], type_id))
                rng = np.random.default_rng([wl.seed, width, n])
                followed = k
                if len(video.objects) > 1 and rng.random() < WRONG_OBJECT_RATE:
                    followed = int(rng.choice([o for o in range(len(video.objects)) if o != k]))
                pred = noisy_prediction(masks[followed], rng)

                tj, j = time_call(metrics.j_per_frame, pred, gt)
                tf, f = time_call(metrics.f_per_frame, pred, gt)
                res.prod_j += tj
                res.prod_f += tf
                expected[(video_id, exp_id)] = (float(np.mean(j)), float(np.mean(f)))
                if n in oracle_ids:
                    tj_o, j_o = time_call(oracle_per_frame, oracle.db_eval_iou, pred, gt)
                    tf_o, f_o = time_call(oracle_per_frame, oracle.f_measure, pred, gt)
                    res.oracle_j += tj_o
                    res.oracle_f += tf_o
                    res.prod_j_subset += tj
                    res.prod_f_subset += tf
                    res.oracle_expressions += 1
                    res.oracle_frames += len(gt)
                    res.max_dj = max(res.max_dj, abs(float(np.mean(j)) - float(np.mean(j_o))))
                    res.max_df = max(res.max_df, abs(float(np.mean(f)) - float(np.mean(f_o))))

                pred_rles = [encode(m) for m in pred]
                predictions.setdefault(video_id, {})[exp_id] = {
                    "exp": sentence,
                    "frames": frame_names,
                    "prediction_masks": [r.to_json() for r in pred_rles],
                }
                if len(sample) < SPLIT_EXPRESSIONS:
                    sample.append((mask_dict[str(anno_id)], pred_rles, (height, width)))
                res.expressions += 1
                res.frames += len(gt)
                res.gt_areas += [a for a in areas if a > 0]
                res.gt_empty += int(np.count_nonzero(areas == 0))
        meta.append(RefVideo(video_id, frame_names, expressions, height, width))

    write_meta_expressions(out / "meta_expressions_valid.json", meta)
    write_mask_dict(out / "mask_dict.json", mask_dict)
    atomic_write_json(out / "results.json", predictions)
    return res, expected, sample


# --------------------------------------------------------------------------- engine


def time_engine(res: SizeResult, gt_dir: Path, expected: dict, workers: int) -> None:
    """Time score_refvos end to end and check it scored what the production metrics did."""
    t0 = time.perf_counter()
    report = score_refvos(gt_dir, gt_dir / "results.json", VIDEO_PROTOCOLS["refsav"], workers=workers)
    res.engine[workers] = time.perf_counter() - t0
    if report.issues or len(report.items) != len(expected):
        raise SystemExit(f"engine saw a malformed workload: {len(report.issues)} issues, e.g. {report.issues[:1]}")
    # refsav rounds x100 values to 2 decimals per expression; the same floats must come out.
    for s in report.items:
        j, f = expected[(s.video_id, s.exp_id)]
        if s.metrics["J"] != round(j * 100, 2) or s.metrics["F"] != round(f * 100, 2):
            res.engine_mismatches += 1


def _decode(rles: list, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros((len(rles), *shape), dtype=bool)
    for t, r in enumerate(rles):
        if r is not None:
            out[t] = rle_ops.decode(r)
    return out


def decode_vs_metrics(res: SizeResult, sample: list) -> None:
    """Split an engine worker's per-frame work into RLE decoding and metrics (J, F, A).

    The engine only exposes its total; this redoes both steps on a few expressions.
    """
    decoding = scoring = 0.0
    for gt_rles, pred_rles, shape in sample:
        t0 = time.perf_counter()
        gt, pred = _decode(gt_rles, shape), _decode(pred_rles, shape)
        t1 = time.perf_counter()
        metrics.j_per_frame(pred, gt)
        metrics.f_per_frame(pred, gt)
        metrics.revos_accuracy(pred, gt)
        decoding, scoring = decoding + t1 - t0, scoring + time.perf_counter() - t1
    frames = sum(len(pred_rles) for _, pred_rles, _ in sample)
    res.decode_ms, res.score_ms = ms(decoding, frames), ms(scoring, frames)


# --------------------------------------------------------------------------- report


def ms(seconds: float, frames: int) -> float:
    return 1e3 * seconds / frames if frames else float("nan")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    # Repo-relative, so the line in perf/README.md works on any checkout.
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"make perf   # = .venv/bin/python perf/bench_scoring.py {args}".rstrip()


def mark(ok: bool) -> str:
    return "target met" if ok else "**target missed**"


def metrics_table(results: list[SizeResult]) -> str:
    rows = [
        "| frame size | oracle run on | oracle ms/frame J + F | production ms/frame J + F (same frames) "
        "| speedup J+F (J / F) | production ms/frame J+F, all frames | max abs Δ J / F (per expression) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        oj, of = ms(r.oracle_j, r.oracle_frames), ms(r.oracle_f, r.oracle_frames)
        pj, pf = ms(r.prod_j_subset, r.oracle_frames), ms(r.prod_f_subset, r.oracle_frames)
        rows.append(
            f"| {r.width}×{r.height} | {r.oracle_expressions} expr × {r.frames // r.expressions} frames "
            f"| {oj:.2f} + {of:.2f} = {oj + of:.2f} | {pj:.3f} + {pf:.3f} = {pj + pf:.3f} "
            f"| **{(oj + of) / (pj + pf):.0f}×** ({oj / pj:.0f}× / {of / pf:.0f}×) "
            f"| {ms(r.prod_j + r.prod_f, r.frames):.3f} ({r.expressions} expr, {r.frames} frames) "
            f"| {r.max_dj:.1e} / {r.max_df:.1e} |"
        )
    return "\n".join(rows)


def engine_table(results: list[SizeResult]) -> str:
    rows = [
        "| frame size | expressions × frames | workers=1 s (ms/frame) | workers=2 s (ms/frame) "
        "| scaling t1/t2 (efficiency) | of one worker's ms/frame: RLE decode / J+F+A |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        t1, t2 = r.engine[1], r.engine[2]
        rows.append(
            f"| {r.width}×{r.height} | {r.expressions} × {r.frames // r.expressions} "
            f"| {t1:.1f} ({ms(t1, r.frames):.2f}) | {t2:.1f} ({ms(t2, r.frames):.2f}) "
            f"| **{t1 / t2:.2f}×** ({t1 / t2 / 2:.0%}) | {r.decode_ms:.2f} / {r.score_ms:.2f} |"
        )
    return "\n".join(rows)


def workload_lines(wl: Workload, results: list[SizeResult]) -> list[str]:
    lines = []
    for r in results:
        areas = 100 * np.array(r.gt_areas)
        lines.append(
            f"- {r.width}×{r.height}: {r.videos} videos, {r.expressions} expressions × "
            f"{r.frames // r.expressions} frames = {r.frames} (prediction, GT) frame pairs; GT object "
            f"area median {np.median(areas):.2f}% of the frame (p10 {np.percentile(areas, 10):.2f}%, "
            f"p90 {np.percentile(areas, 90):.2f}%), GT empty in {r.gt_empty / r.frames:.0%} of frames"
        )
    return lines


def verdicts(results: list[SizeResult]) -> list[str]:
    lines = []
    for r in results:
        speedup = (r.oracle_j + r.oracle_f) / (r.prod_j_subset + r.prod_f_subset)
        efficiency = r.engine[1] / r.engine[2] / 2
        lines.append(
            f"- {r.width}×{r.height}: metrics speedup {speedup:.0f}× vs ≥ {SPEEDUP_TARGET:.0f}×: "
            f"{mark(speedup >= SPEEDUP_TARGET)}; 2-worker efficiency {efficiency:.0%} vs ≥ "
            f"{SCALING_TARGET:.0%}: {mark(efficiency >= SCALING_TARGET)}"
        )
    return lines


def update_readme(section: str) -> None:
    text = README.read_text() if README.exists() else README_INTRO
    block = f"{START}\n{section.strip()}\n{END}"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with atomic_path(README) as tmp:
        tmp.write_text(text)


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run; does not touch perf/README.md")
    args = ap.parse_args()
    wl = QUICK if args.quick else FULL
    started = time.perf_counter()
    load_before = os.getloadavg()
    results: list[SizeResult] = []

    with tempfile.TemporaryDirectory(prefix="bench_scoring_") as tmp:
        for width, height in wl.sizes:
            out = Path(tmp) / f"{width}x{height}"
            out.mkdir()
            t0 = time.perf_counter()
            res, expected, sample = build_and_time_metrics(wl, width, height, out)
            print(
                f"{width}x{height}: built {res.expressions} expressions x {res.frames // res.expressions} frames "
                f"({res.videos} videos) and timed the metrics in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            for workers in (1, 2):
                time_engine(res, out, expected, workers)
                print(f"{width}x{height}: engine, workers={workers}: {res.engine[workers]:.1f} s", flush=True)
            decode_vs_metrics(res, sample)
            results.append(res)

    max_dj = max(r.max_dj for r in results)
    max_df = max(r.max_df for r in results)
    max_delta = max(max_dj, max_df)
    n_checked = sum(r.oracle_expressions for r in results)
    mismatches = sum(r.engine_mismatches for r in results)
    parity_ok = max_delta <= PARITY_TOL
    elapsed = time.perf_counter() - started

    print()
    print(metrics_table(results))
    print()
    print(engine_table(results))
    print()
    print(
        f"parity: max |Δ| = {max_delta:.3e} (J {max_dj:.3e}, F {max_df:.3e}) over {n_checked} expressions, "
        f"oracle vs production, tolerance {PARITY_TOL:g}: {'OK' if parity_ok else 'FAILED'}"
    )
    print(f"engine: {mismatches} expressions whose J or F differ from the production metrics' rounded values")
    if not args.quick:
        print("\n".join(verdicts(results)))
    print(f"total {elapsed:.0f} s")
    if not parity_ok or mismatches:
        return 1
    if args.quick:
        return 0

    section = "\n".join(
        [
            "## Scoring speed (`perf/bench_scoring.py`)",
            "",
            f"Run {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {os.cpu_count()} cores, "
            f"{cpu_model()}; Python {platform.python_version()}, NumPy {np.__version__}, OpenCV {cv2.__version__}. "
            f"1-minute load average at the start: {load_before[0]:.2f}. Whole run {elapsed / 60:.1f} min.",
            "",
            "Workload: Ref-SAV-like, from `pipelines/synthetic.py` (4 objects per video, 1 long + 1-3 short "
            f"expressions per object, every {SAV_STRIDE}th frame annotated); predictions are the GT shifted "
            "by ≤ 6 px and dilated/eroded by 1-4 px per frame, following the wrong object for "
            f"~{WRONG_OBJECT_RATE:.0%} of expressions.",
            *workload_lines(wl, results),
            "",
            "**Metrics, one core** (`benchmark/oracle.py` per frame vs `benchmark/metrics.py` per stack; "
            "masks already in memory). The oracle is too slow for the whole workload: it runs on "
            f"{wl.oracle_expressions} expressions spread evenly over it, and the speedup compares both "
            "implementations on exactly those frames.",
            "",
            metrics_table(results),
            "",
            f"Per-expression J and F: max |Δ| = {max_delta:.1e} over {n_checked} expressions (tolerance "
            f"{PARITY_TOL:g}). The engine's rounded per-expression J and F equal the production values for "
            "every expression.",
            "",
            "**Whole engine** (`score_refvos`, protocol `refsav`: load + RLE decode + J, F, A + aggregation), "
            "one process per worker, one thread each. The last column redoes a worker's two main steps "
            f"on {SPLIT_EXPRESSIONS} expressions to show where its time goes.",
            "",
            engine_table(results),
            "",
            *verdicts(results),
            "",
            "Command:",
            "",
            "```",
            command_line(),
            "```",
        ]
    )
    update_readme(section)
    print(f"wrote {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
