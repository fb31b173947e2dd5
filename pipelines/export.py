"""`refsav export`: Ref-SAV-compatible files from the output of `refsav annotate`.

`refsav-json` writes the training JSON that Sa2VA's `refsav` loader reads
(docs/formats-sav.md §5): `{video_id: {video_path, anno_path, objects: {"<masklet column>":
{formated, short_caps}}}}`, paths relative to the SA-V root as the rows record them
(`provenance.input_files`: the mp4 first, then the SA-V annotation JSON(s)).

`benchmark` writes a split in the Ref-SAV eval layout (docs/formats-benchmarks.md §1c), which
`refsav score --protocol refsav` reads:

    DIR/meta_expressions_valid.json   per video: frames, height, width, and per object one
                                      long (type_id 0) and its short (type_id 1) expressions
    DIR/mask_dict.json                per object: an RLE per listed frame, null where absent
    DIR/videos/<video>/<frame>.jpg    the annotated frames (every 4th, named by 24 fps index)
    DIR/selection.json                how the objects were chosen (not read by scorers)

Selection of `--select N` objects (each brings its long and short expressions):
objects flagged ambiguous are excluded; the rest are drawn so that categories are as
even as the data allow (round-robin over categories: a rare category is used up before
a frequent one gets a second object), and within each category the motion buckets
alternate. The order inside a (category, motion) cell is a hash of the seed, video id
and object id, so the selection is a pure function of the rows, the masks and the seed.

Grounding (rows of `refsav annotate --grounder`) enters in three ways:

- Preference: grounded objects form the first tier and ungrounded ones the second; an
  ungrounded object is chosen only once every eligible grounded one is, and the
  category/motion balance above applies within each tier. A grounded expression has been
  shown to segment its own masklet; an ungrounded one has not.
- Ambiguous objects stay excluded, not ranked last: the benchmark holds one masklet per
  expression, so an expression that fits another object as well would mark a model wrong
  for a right answer. With a grounder, `ambiguous` is the grounder's verdict.
- `--min-grounding X` (off by default): an object whose long expression has grounding
  J&F below X is left out, and so is each short expression below X (the object keeps
  its others). Ungrounded objects are then left out too, since nothing shows that they
  pass; the counts of all three are reported. Without it, ungrounded rows are used as
  before, after the grounded ones.

Grounding J&F is a gate, never a ranking: preferring the highest-scoring objects would
fill the benchmark with what the grounding model already segments well, and bias it in
that model's favour. An object's expressions keep their order (long, then the short
ones as in the row); all that pass go in, so their order does not change a score.

Motion is measured on the masklet itself: the centroid of the visible mask on each
annotated frame, the distance it travels in about one second (`fps / stride`
annotated frames; 6 in SA-V), divided by the frame diagonal, and the median of that
over the object's visible frames: diagonals per second, in image space (camera
motion counts). Buckets: static < 0.02, slow < 0.10, fast otherwise. The median
ignores the occasional jump of a centroid when the object is partly occluded. For
speed, the pool of objects whose masklets are measured is first cut, by the same
round-robin over categories, to `POOL_FACTOR * N` objects.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import click
import numpy as np

from refsav.schemas import rle as rle_ops
from refsav.schemas.errors import SchemaError
from refsav.schemas.expression import Expression
from refsav.schemas.io import atomic_write_json
from refsav.schemas.refsav_json import RefSavObject, RefSavVideo, write_refsav_json
from refsav.schemas.refvos import RefExpression, RefVideo, write_mask_dict, write_meta_expressions
from refsav.schemas.rle import Rle
from refsav.schemas.video import Masklet

from refsav.runtime.executor import make_executor, results_in_order
from refsav.runtime.progress import progress_bar
from .visual.jpeg import write_jpeg
from .publish import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, AnnotatedRun, SplitRule, load_annotated, rows_of_split

MOTION_BUCKETS = ("static", "slow", "fast")
MOTION_THRESHOLDS = (0.02, 0.10)  # frame diagonals per second: static < 0.02 <= slow < 0.10 <= fast
POOL_FACTOR = 3
META_NAME = "meta_expressions_valid.json"
T = TypeVar("T")


# --------------------------------------------------------------------------- rows -> SA-V files


@dataclass(frozen=True)
class SavFiles:
    """Where a row's video and masklets are, relative to the SA-V root."""

    video: str
    annotation: str


def sav_files(e: Expression) -> SavFiles:
    """input_files[0] is the mp4; of the annotation JSONs, the manual one is what Sa2VA reads."""
    files = [f.path for f in e.provenance.input_files]
    if len(files) < 2:
        raise SchemaError("expected the mp4 and the SA-V annotation JSON in the input files",
                          record=f"{e.video_id}/{e.object_id}", field="provenance.input_files")
    annotations = files[1:]
    manual = [p for p in annotations if p.endswith("_manual.json")]
    return SavFiles(_posix(files[0]), _posix((manual or annotations)[0]))


def _posix(path: str) -> str:
    return path.replace(os.sep, "/") if os.sep != "/" else path


def video_files(rows: Sequence[Expression]) -> dict[str, SavFiles]:
    """One SavFiles per video; rows of one video that disagree are an error."""
    out: dict[str, SavFiles] = {}
    for e in rows:
        files = sav_files(e)
        if out.setdefault(e.video_id, files) != files:
            raise SchemaError(f"rows of one video name different files ({out[e.video_id]} vs {files})",
                              record=f"{e.video_id}/{e.object_id}", field="provenance.input_files")
    return out


def check_files_exist(root: Path, files: dict[str, SavFiles]) -> None:
    for vid in sorted(files):
        for rel in (files[vid].video, files[vid].annotation):
            if not (root / rel).is_file():
                raise SchemaError(f"source file of video {vid} is gone (run.json input is {root})", file=root / rel)


# --------------------------------------------------------------------------- Ref-SAV training JSON


def refsav_videos(rows: Sequence[Expression], prefix: str = "") -> list[RefSavVideo]:
    files = video_files(rows)
    by_video: dict[str, list[Expression]] = defaultdict(list)
    for e in rows:
        by_video[e.video_id].append(e)
    return [
        RefSavVideo(
            vid,
            prefix + files[vid].video,
            prefix + files[vid].annotation,
            [RefSavObject(e.object_id, e.formated, list(e.short_caps)) for e in sorted(by_video[vid], key=lambda e: e.object_id)],
        )
        for vid in sorted(by_video)
    ]


@dataclass(frozen=True)
class RefSavExport:
    path: Path
    videos: int
    objects: int
    dropped_ambiguous: int


def export_refsav_json(
    run: AnnotatedRun,
    out_file: str | os.PathLike,
    *,
    split: str = "train",
    rule: SplitRule = SplitRule(),
    prefix: str = "",
    drop_ambiguous: bool = False,
    check_files: bool = True,
) -> RefSavExport:
    rows = rows_of_split(run.expressions, split, rule)
    kept = [e for e in rows if not (drop_ambiguous and e.ambiguous)]
    if not kept:
        raise SchemaError(f"no rows in split {split!r} to export", file=run.out)
    if check_files:
        check_files_exist(run.input_root, video_files(kept))
    videos = refsav_videos(kept, prefix)
    write_refsav_json(out_file, videos)
    return RefSavExport(Path(out_file), len(videos), len(kept), len(rows) - len(kept))


# --------------------------------------------------------------------------- motion


def rle_centroid(rle: Rle) -> tuple[float, float] | None:
    """(x, y) centroid of a mask straight from its runs, None when empty.

    COCO runs are column-major (pixel p is at x = p // H, y = p % H), so the sums of x
    and y over a run [s, e) are differences of closed forms; no mask is decoded, which
    matters for thousands of 1080p masklets.
    """
    h = rle.size[0]
    bounds = np.concatenate([[0], np.cumsum(np.asarray(rle_ops.run_lengths(rle.counts), dtype=np.int64))])
    starts, ends = bounds[1::2], bounds[2::2]
    starts = starts[: len(ends)]
    n = int((ends - starts).sum())
    if n == 0:
        return None

    def sums(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # sum over pixels 0..p-1 of x, and of y
        q, r = p // h, p % h
        return h * q * (q - 1) / 2 + r * q, q * (h * (h - 1) / 2) + r * (r - 1) / 2

    xs_e, ys_e = sums(ends)
    xs_s, ys_s = sums(starts)
    return float((xs_e - xs_s).sum()) / n, float((ys_e - ys_s).sum()) / n


def centroids(masklet: Masklet) -> list[tuple[float, float] | None]:
    """Centroid of the visible mask on each annotated frame, None where the object is absent."""
    return [rle_centroid(r) for r in masklet.rles]


def motion_speed(points: Sequence[tuple[float, float] | None], width: int, height: int, *, window: int) -> float:
    """Median centroid travel over `window` annotated frames (about 1 s), in frame diagonals.

    A masklet visible for less than a window uses its first and last visible frames,
    scaled to a window; fewer than two visible frames is 0.
    """
    diag = math.hypot(width, height)
    visible = [i for i, p in enumerate(points) if p is not None]
    steps = [math.dist(points[i], points[i + window]) for i in visible
             if i + window < len(points) and points[i + window] is not None]
    if steps:
        return float(np.median(steps)) / diag
    if len(visible) < 2:
        return 0.0
    first, last = visible[0], visible[-1]
    return math.dist(points[first], points[last]) * window / (last - first) / diag


def motion_bucket(speed: float) -> str:
    static, slow = MOTION_THRESHOLDS
    return "static" if speed < static else "slow" if speed < slow else "fast"


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Candidate:
    video_id: str
    object_id: int
    category: str
    motion: str = ""  # bucket, once measured
    speed: float = math.nan
    grounding_j_and_f: float | None = None  # the long expression's; None for an ungrounded row

    @property
    def key(self) -> tuple[str, int]:
        return (self.video_id, self.object_id)

    @property
    def grounded(self) -> bool:
        return self.grounding_j_and_f is not None


def short_scores(e: Expression) -> list[tuple[str, float | None]]:
    """Each of the row's short expressions with its grounding J&F (None when ungrounded).

    The schema guarantees that the kept short scores are the row's short_caps, in order."""
    if e.grounding is None:
        return [(c, None) for c in e.short_caps]
    kept = [sc for sc in e.grounding.scores[1:] if sc.kept]
    return [(c, sc.j_and_f) for c, sc in zip(e.short_caps, kept)]


def benchmark_shorts(e: Expression, min_grounding: float | None) -> list[str]:
    """The short expressions that go into a benchmark, in the row's order."""
    return [c for c, jf in short_scores(e) if min_grounding is None or (jf is not None and jf >= min_grounding)]


def category_of(e: Expression) -> str:
    return " ".join(e.category.lower().split()) or "(none)"


def _rank(seed: int, c: Candidate) -> str:
    return hashlib.sha256(f"{seed}:{c.video_id}:{c.object_id}".encode("utf-8")).hexdigest()


def _round_robin(queues: Sequence[Sequence[T]], limit: int | None = None) -> list[T]:
    """Interleave: first of every queue, then second of every queue, ... (up to `limit`)."""
    out: list[T] = []
    depth = max((len(q) for q in queues), default=0)
    for i in range(depth):
        for q in queues:
            if i < len(q):
                out.append(q[i])
                if limit is not None and len(out) == limit:
                    return out
    return out


def pool_for_measuring(candidates: Sequence[Candidate], n: int | None, seed: int) -> list[Candidate]:
    """At most POOL_FACTOR*n candidates, as balanced over categories as the data allow."""
    if n is None or len(candidates) <= POOL_FACTOR * n:
        return sorted(candidates, key=lambda c: c.key)
    by_cat: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_cat[c.category].append(c)
    queues = [sorted(by_cat[cat], key=lambda c: _rank(seed, c)) for cat in sorted(by_cat)]
    return sorted(_round_robin(queues, POOL_FACTOR * n), key=lambda c: c.key)


def select_balanced(candidates: Sequence[Candidate], n: int | None, seed: int) -> list[Candidate]:
    """`n` measured candidates (all when None), balanced over categories, then motion."""
    by_cat: dict[str, dict[str, list[Candidate]]] = defaultdict(lambda: defaultdict(list))
    for c in candidates:
        by_cat[c.category][c.motion].append(c)
    queues = []
    for k, cat in enumerate(sorted(by_cat)):
        # Start each category on a different bucket, so that small categories do not
        # all contribute their static object first.
        order = MOTION_BUCKETS[k % 3:] + MOTION_BUCKETS[: k % 3]
        buckets = [sorted(by_cat[cat][m], key=lambda c: _rank(seed, c)) for m in order if by_cat[cat][m]]
        queues.append(_round_robin(buckets))
    chosen = _round_robin(queues, n)
    return sorted(chosen, key=lambda c: c.key)


# --------------------------------------------------------------------------- per-video work (worker processes)


@dataclass(frozen=True)
class VideoJob:
    video_id: str
    video_path: str  # absolute
    annotation_path: str  # absolute
    object_ids: tuple[int, ...]


@dataclass(frozen=True)
class MeasuredVideo:
    video_id: str
    speeds: dict[int, float]


@dataclass(frozen=True)
class WrittenVideo:
    video_id: str
    frames: list[str]
    height: int
    width: int
    masks: dict[int, list[Rle | None]]  # object id -> per listed frame


def _read_masklets(job: VideoJob):
    from refsav.schemas.sav import read_sav_json

    if not Path(job.video_path).is_file():
        raise SchemaError(f"video of {job.video_id} is gone", file=job.video_path)
    ann = read_sav_json(job.annotation_path, video_path=job.video_path)
    out = {}
    for oid in job.object_ids:
        # Ref-SAV object keys are columns of the SA-V masklet lists; in SA-V the column
        # and the masklet id coincide, and a file where they do not is not guessed at.
        if not 0 <= oid < len(ann.masklets) or ann.masklets[oid].object_id != oid:
            raise SchemaError(f"object {oid} is not masklet column {oid} of this annotation", file=job.annotation_path,
                              field="masklet_id")
        out[oid] = ann.masklets[oid]
    return ann, out


def measure_video(job: VideoJob) -> MeasuredVideo:
    ann, masklets = _read_masklets(job)
    v = ann.video
    window = max(1, round(v.fps / v.annotation_stride))
    speeds = {oid: motion_speed(centroids(m), v.width, v.height, window=window) for oid, m in masklets.items()}
    return MeasuredVideo(job.video_id, speeds)


def write_video(job: VideoJob, out_dir: str, jpeg_quality: int, chunk: int = 8) -> WrittenVideo:
    """Decode the annotated frames and write them as JPEG; return the masks to list."""
    from refsav.schemas.media import read_frames

    ann, masklets = _read_masklets(job)
    frame_indices = ann.masklets[0].frame_indices if ann.masklets else []
    names = [f"{t:05d}" for t in frame_indices]
    folder = Path(out_dir) / "videos" / job.video_id
    folder.mkdir(parents=True, exist_ok=True)
    h, w = ann.video.height, ann.video.width
    # A chunk at a time: all annotated frames of a 20 s 1080p video would be ~0.7 GB.
    for start in range(0, len(frame_indices), chunk):
        idx = frame_indices[start : start + chunk]
        frames = read_frames(job.video_path, idx)
        if frames.shape[1:3] != (h, w):
            raise SchemaError(f"the video decodes to {frames.shape[2]}x{frames.shape[1]} but its annotation is {w}x{h}",
                              file=job.video_path)
        for name, rgb in zip(names[start : start + chunk], frames):
            write_jpeg(folder / f"{name}.jpg", rgb, jpeg_quality)
    masks = {oid: [r if rle_ops.area(r) > 0 else None for r in m.rles] for oid, m in masklets.items()}
    return WrittenVideo(job.video_id, names, h, w, masks)


def _run_jobs(fn: Callable[[VideoJob], T], jobs: Sequence[VideoJob], workers: int, label: str, show: bool) -> Iterator[T]:
    with progress_bar(label, total=len(jobs), enabled=show) as advance, \
            make_executor(workers if len(jobs) > 1 else 1, local="processes") as executor:
        yield from results_in_order(executor, fn, jobs, advance)


# --------------------------------------------------------------------------- benchmark export


@dataclass(frozen=True)
class BenchmarkExport:
    out_dir: Path
    requested: int | None
    objects: int
    videos: int
    expressions: int
    excluded_ambiguous: int
    categories: dict[str, int]
    motion: dict[str, int]
    grounded: int = 0  # chosen objects with grounding (they are preferred)
    min_grounding: float | None = None
    excluded_ungrounded: int = 0  # unambiguous objects without grounding, left out by min_grounding
    excluded_below_min: int = 0  # unambiguous grounded objects whose long expression is below it
    shorts_below_min: int = 0  # short expressions of the chosen objects left out by it


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    owned = {META_NAME, "mask_dict.json", "selection.json", "videos"}
    if out_dir.exists():
        if not out_dir.is_dir():
            raise SchemaError("not a folder", file=out_dir)
        present = {p.name for p in out_dir.iterdir()}
        if present and not overwrite:
            raise SchemaError("output folder is not empty; pass --overwrite to replace an earlier export", file=out_dir)
        if overwrite:
            # Only what an export writes is removed, never a user's other files.
            for name in present & owned:
                p = out_dir / name
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def export_benchmark(
    run: AnnotatedRun,
    out_dir: str | os.PathLike,
    *,
    select: int | None,
    seed: int = 0,
    split: str = "validation",
    rule: SplitRule = SplitRule(),
    workers: int = 1,
    jpeg_quality: int = 95,
    overwrite: bool = False,
    show_progress: bool = False,
    min_grounding: float | None = None,
) -> BenchmarkExport:
    if select is not None and select < 1:
        raise SchemaError(f"--select must be at least 1, got {select}", field="select")
    if min_grounding is not None and not 0.0 <= min_grounding <= 1.0:
        raise SchemaError(f"--min-grounding must lie in [0, 1], got {min_grounding}", field="min_grounding")
    out_dir = Path(out_dir)
    rows = rows_of_split(run.expressions, split, rule)
    unambiguous = [e for e in rows if not e.ambiguous]
    ungrounded = below = 0
    eligible = unambiguous
    if min_grounding is not None:
        ungrounded = sum(e.grounding is None for e in unambiguous)
        below = sum(e.grounding is not None and e.grounding.scores[0].j_and_f < min_grounding for e in unambiguous)
        eligible = [e for e in unambiguous if e.grounding is not None and e.grounding.scores[0].j_and_f >= min_grounding]
    if not eligible:
        gate = f" with grounding J&F >= {min_grounding:g}" if min_grounding is not None else ""
        raise SchemaError(f"no unambiguous rows{gate} in split {split!r} to build a benchmark from", file=run.out)
    by_key = {e.key: e for e in eligible}
    files = video_files(eligible)

    def jobs_for(cands: Iterable[Candidate]) -> list[VideoJob]:
        objs: dict[str, list[int]] = defaultdict(list)
        for c in cands:
            objs[c.video_id].append(c.object_id)
        return [VideoJob(vid, str(run.input_root / files[vid].video), str(run.input_root / files[vid].annotation),
                         tuple(sorted(ids))) for vid, ids in sorted(objs.items())]

    candidates = [Candidate(e.video_id, e.object_id, category_of(e),
                            grounding_j_and_f=e.grounding.scores[0].j_and_f if e.grounding is not None else None)
                  for e in eligible]
    # Grounded first: the second tier is asked only for what the first cannot give, and
    # select_balanced takes min(need, tier size), so both needs are known before measuring.
    tiers, needs, left = [], [], select
    for tier in ([c for c in candidates if c.grounded], [c for c in candidates if not c.grounded]):
        if tier and (left is None or left > 0):
            tiers.append(tier)
            needs.append(left)
            left = None if left is None else left - min(left, len(tier))
    pools = [pool_for_measuring(tier, need, seed) for tier, need in zip(tiers, needs)]
    measuring = [c for pool in pools for c in pool]
    check_files_exist(run.input_root, {c.video_id: files[c.video_id] for c in measuring})  # before any long work
    speeds: dict[tuple[str, int], float] = {}
    for measured in _run_jobs(measure_video, jobs_for(measuring), workers, "measuring motion", show_progress):
        speeds.update({(measured.video_id, oid): s for oid, s in measured.speeds.items()})
    chosen: list[Candidate] = []
    for pool, need in zip(pools, needs):
        measured_pool = [replace(c, motion=motion_bucket(speeds[c.key]), speed=speeds[c.key]) for c in pool]
        chosen += select_balanced(measured_pool, need, seed)
    chosen.sort(key=lambda c: c.key)

    _prepare_out_dir(out_dir, overwrite)
    written = {w.video_id: w for w in _run_jobs(partial(write_video, out_dir=str(out_dir), jpeg_quality=jpeg_quality),
                                                 jobs_for(chosen), workers, "writing frames", show_progress)}
    videos, mask_dict, selection = [], {}, []
    anno_id = shorts_below = 0
    for vid in sorted(written):
        w = written[vid]
        expressions: list[RefExpression] = []
        for c in (c for c in chosen if c.video_id == vid):
            e = by_key[c.key]
            mask_dict[str(anno_id)] = w.masks[c.object_id]
            shorts = benchmark_shorts(e, min_grounding)
            shorts_below += len(e.short_caps) - len(shorts)
            for type_id, text in [(0, e.formated)] + [(1, s) for s in shorts]:
                expressions.append(RefExpression(str(len(expressions)), text, [c.object_id], [anno_id], type_id))
            selection.append({**asdict(c), "anno_id": anno_id})
            anno_id += 1
        videos.append(RefVideo(vid, w.frames, expressions, w.height, w.width))
    result = BenchmarkExport(
        out_dir=out_dir,
        requested=select,
        objects=len(chosen),
        videos=len(videos),
        expressions=sum(len(v.expressions) for v in videos),
        excluded_ambiguous=len(rows) - len(unambiguous),
        categories=dict(sorted(Counter(c.category for c in chosen).items())),
        motion={m: sum(c.motion == m for c in chosen) for m in MOTION_BUCKETS},
        grounded=sum(c.grounded for c in chosen),
        min_grounding=min_grounding,
        excluded_ungrounded=ungrounded,
        excluded_below_min=below,
        shorts_below_min=shorts_below,
    )
    write_mask_dict(out_dir / "mask_dict.json", mask_dict)
    atomic_write_json(out_dir / "selection.json", {
        "source": str(run.out.resolve()), "split": split, "split_rule": rule.describe(), "seed": seed,
        "requested": select, "candidates": len(eligible), "measured": len(measuring),
        "excluded_ambiguous": result.excluded_ambiguous,
        "grounding": {"preference": "grounded objects first, ungrounded only when those run out; ambiguous excluded",
                      "min_grounding": min_grounding, "grounded_chosen": result.grounded,
                      "excluded_ungrounded": ungrounded, "excluded_below_min_grounding": below,
                      "short_expressions_below_min_grounding": shorts_below},
        "motion": {"definition": "median centroid travel over ~1 s of annotated frames / frame diagonal",
                   "thresholds": dict(zip(("static_below", "slow_below"), MOTION_THRESHOLDS))},
        "categories": result.categories, "motion_buckets": result.motion, "objects": selection,
    }, indent=1)
    write_meta_expressions(out_dir / META_NAME, videos)  # last: its presence marks a finished export
    return result


# --------------------------------------------------------------------------- commands

_split_options = [
    click.option("--val-fraction", default=DEFAULT_VAL_FRACTION, show_default=True,
                 type=click.FloatRange(0.0, 1.0, max_open=True), help="Validation fraction of the split (as in publish)."),
    click.option("--split-seed", default=DEFAULT_SPLIT_SEED, show_default=True, type=int, help="Seed of the split (as in publish)."),
    click.option("--allow-incomplete", is_flag=True, help="Use a run even if shards are missing or have objects that failed on the VLM."),
]


def _with(options):
    def wrap(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return wrap


@click.group("export")
def export_group() -> None:
    """Write Ref-SAV-compatible files (training JSON, benchmark split) from a `refsav annotate` output."""


@export_group.command("refsav-json", short_help="Ref-SAV training JSON for Sa2VA.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Output folder of `refsav annotate`.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSON file to write.")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "validation", "all"]),
              help="Videos to include (video-level split, as in `refsav publish`).")
@_with(_split_options)
@click.option("--prefix", default="", help="Prepended to video_path/anno_path, e.g. 'sav_train/' when annotate ran on that folder.")
@click.option("--drop-ambiguous", is_flag=True, help="Leave out objects flagged ambiguous.")
@click.option("--no-check-files", is_flag=True, help="Do not check that the mp4 and JSON files still exist.")
def refsav_json_command(data, out_file, split, val_fraction, split_seed, allow_incomplete, prefix, drop_ambiguous,
                        no_check_files) -> None:
    """Write the Ref-SAV training JSON that Sa2VA's `refsav` dataset reads."""
    run = load_annotated(data, allow_incomplete=allow_incomplete)
    r = export_refsav_json(run, out_file, split=split, rule=SplitRule(val_fraction, split_seed), prefix=prefix,
                           drop_ambiguous=drop_ambiguous, check_files=not no_check_files)
    extra = f"; left out {r.dropped_ambiguous} ambiguous" if drop_ambiguous else ""
    click.echo(f"wrote {r.objects} objects of {r.videos} videos ({split} split) to {r.path}{extra}")


@export_group.command("benchmark", short_help="Benchmark split in the Ref-SAV eval layout.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Output folder of `refsav annotate`.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Benchmark folder to write.")
@click.option("--select", default=None, type=click.IntRange(1),
              help="Number of objects (default: all unambiguous ones). Grounded objects are chosen first; "
                   "ungrounded ones only when the grounded ones run out.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the selection.")
@click.option("--split", default="validation", show_default=True, type=click.Choice(["train", "validation", "all"]),
              help="Videos to draw from (video-level split, as in `refsav publish`).")
@_with(_split_options)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Processes reading videos.")
@click.option("--jpeg-quality", default=95, show_default=True, type=click.IntRange(50, 100), help="JPEG quality of the frames.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in --out.")
@click.option("--min-grounding", default=None, type=click.FloatRange(0.0, 1.0), metavar="X",
              help="Leave out expressions whose grounding J&F (refsav annotate --grounder) is below X: an object "
                   "whose long expression is below X, and each short expression below X. Rows annotated without "
                   "a grounder are then left out as well (counted in the summary). Default: no threshold; "
                   "ungrounded rows are used after the grounded ones.")
def benchmark_command(data, out_dir, select, seed, split, val_fraction, split_seed, allow_incomplete, workers, jpeg_quality,
                      overwrite, min_grounding) -> None:
    """Write a benchmark split in the Ref-SAV eval layout (scored by `refsav score --protocol refsav`).

    Objects flagged ambiguous are never used; grounded objects are preferred to ungrounded ones."""
    run = load_annotated(data, allow_incomplete=allow_incomplete)
    r = export_benchmark(run, out_dir, select=select, seed=seed, split=split, rule=SplitRule(val_fraction, split_seed),
                         workers=workers, jpeg_quality=jpeg_quality, overwrite=overwrite, show_progress=True,
                         min_grounding=min_grounding)
    if select is not None and r.objects < select:
        gate = f" with grounding J&F >= {min_grounding:g}" if min_grounding is not None else ""
        click.echo(f"note: only {r.objects} unambiguous objects{gate} in the {split} split; {select} requested", err=True)
    motion = ", ".join(f"{m} {n}" for m, n in r.motion.items())
    click.echo(f"wrote {r.objects} objects ({r.expressions} expressions) of {r.videos} videos to {r.out_dir}")
    click.echo(f"  categories: {len(r.categories)}; motion: {motion}; ambiguous left out: {r.excluded_ambiguous}")
    click.echo(f"  grounded objects: {r.grounded} of {r.objects}")
    if min_grounding is not None:
        click.echo(f"  --min-grounding {min_grounding:g} left out: {r.excluded_below_min} objects below it, "
                   f"{r.excluded_ungrounded} ungrounded objects, {r.shorts_below_min} short expressions below it")
