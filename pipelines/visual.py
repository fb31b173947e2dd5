"""Visual prompts for the VLM annotator: which frames to show, and how to point at one object.

Ref-SAV's three stages each look at a masklet differently (shared/reference/
annotation-pipeline.md §2): stage 1 describes the object itself (zoomed crops), stage 2
the object in its scene (one full frame), stage 3 the object over time (8 frames
sampled uniformly where it is visible). The paper does not say how the target was
marked; following §3-4 of that sheet we default to a mask-precise contour drawn just
*outside* the object, so its own pixels (and so its colour) reach the VLM untouched.

Flow for one video, decoded once for all its objects:

    plan = plan_video(annotation, k, n)                       # from the RLEs alone, no pixels
    frames = decode_frames(video.path, plan.frames, yuv=True) # only the frames needed
    views = render_video(annotation, frames, style)           # ObjectViews | NotVisible per object

(`build_video_views` does all three and names the video file in any SchemaError.)

Only annotated frames (every 4th in SA-V) are ever chosen: elsewhere there is no mask.
Everything here is deterministic: the same masklet and pixels give the same bytes.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import cv2
import numpy as np
from pycocotools import mask as _coco

from refsav.schemas.errors import SchemaError
from refsav.schemas.rle import Rle
from refsav.schemas.sav import SavAnnotation
from refsav.schemas.video import Masklet

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


@dataclass(frozen=True)
class YuvFrame:
    """A decoded frame kept as BT.601 limited-range 4:2:0 planes, as H.264 delivers it.

    Converting a whole 1080p frame to RGB costs ~2 ms and downscaling it another
    ~1.6 ms; the renderer needs full resolution only inside crops, and elsewhere at
    most max_side, so it converts just those pixels (identical to converting
    everything and cropping: OpenCV's I420 conversion works per 2x2 block).
    """

    y: np.ndarray = field(repr=False)  # (H, W) uint8, possibly a strided view of the decoder's buffer
    u: np.ndarray = field(repr=False)  # (H/2, W/2)
    v: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:  # as the RGB frame would be
        return (self.y.shape[0], self.y.shape[1], 3)

    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.y, self.u, self.v


Frame = np.ndarray | YuvFrame  # an (H, W, 3) uint8 RGB array, or a YuvFrame
Frames = Mapping[int, Frame]  # frame index -> decoded frame


def frame_view_bgr(frame: Frame, region: Box | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """`region` of the frame (default: all of it) at `size` (w, h, no larger than the
    region; default: unscaled), in OpenCV's BGR order."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = region or (0, 0, w, h)
    size = size or (x1 - x0, y1 - y0)
    if isinstance(frame, np.ndarray):
        return cv2.cvtColor(np.ascontiguousarray(downscale(frame[y0:y1, x0:x1], size)), cv2.COLOR_RGB2BGR)
    # I420 works on 2x2 blocks: take the enclosing even-aligned block (crop_box already
    # gives even edges), scale its planes, and convert only then, at the output size.
    ax0, ay0, ax1, ay1 = x0 & ~1, y0 & ~1, x1 + (x1 & 1), y1 + (y1 & 1)
    yp, up, vp = (p[ay0 // s : ay1 // s, ax0 // s : ax1 // s] for p, s in zip(frame.planes(), (1, 2, 2)))
    exact = size == (x1 - x0, y1 - y0)
    ew, eh = (ax1 - ax0, ay1 - ay0) if exact else (size[0] + (size[0] & 1), size[1] + (size[1] & 1))
    if not exact:
        yp, up, vp = downscale(yp, (ew, eh)), downscale(up, (ew // 2, eh // 2)), downscale(vp, (ew // 2, eh // 2))
    block = np.concatenate((yp.ravel(), up.ravel(), vp.ravel())).reshape(-1, ew)
    bgr = cv2.cvtColor(block, cv2.COLOR_YUV2BGR_I420)
    if exact:
        return np.ascontiguousarray(bgr[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0])
    return bgr if (ew, eh) == size else cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)


def frame_grey(frame: Frame, region: Box) -> np.ndarray:
    """Luma of `region` (for YuvFrames the Y plane itself, in limited range)."""
    x0, y0, x1, y1 = region
    if isinstance(frame, np.ndarray):
        return cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return frame.planes()[0][y0:y1, x0:x1]


MODES = ("contour", "tint", "box", "crop")
# Named colours only, so a prompt can say "the object outlined in red".
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (235, 30, 30),
    "green": (30, 210, 50),
    "blue": (30, 90, 255),
    "yellow": (250, 225, 0),
    "magenta": (235, 0, 235),
    "cyan": (0, 225, 235),
}

# A frame's cheap score is multiplied by this for every frame side the mask's box
# touches: a half-visible object cut by the border is a poor portrait even when large.
BORDER_PENALTY = 0.4
# Sharpness is measured on the object's box resized to this long side, so boxes of
# different sizes are compared at the same scale (small boxes get upsampled, which
# also blurs them: a mild extra preference for large views).
SHARPNESS_SIDE = 128


# --------------------------------------------------------------------------- style


@dataclass(frozen=True)
class HighlightStyle:
    """How the target object is marked and how big the images sent to the VLM are.

    mode:
      contour  a line of `colour` hugging the mask from outside (default)
      tint     the mask filled with `colour` at opacity `alpha` (alters the object's colour)
      box      a rectangle just outside the mask's bounding box
      crop     nothing drawn: views are cropped on the object and everything outside
               the mask is darkened by `alpha` (the reverse-mask idea of FGVP)
    """

    mode: str = "contour"
    colour: str = "auto"  # a PALETTE name, or "auto": the one that stands out most around the object
    line_fraction: float = 0.004  # line thickness as a fraction of the output image's long side
    min_line_px: int = 2
    alpha: float = 0.4  # tint opacity; for "crop", how much the outside is darkened
    context_margin: float = 0.3  # crop margin on each side, as a fraction of the box size
    min_crop_px: int = 128  # small objects still get this much context (source pixels)
    max_side: int = 768  # long side of stage-1 crops and the stage-2 frame, at most (never upscaled)
    # Stage 3 sends 8 frames; video VLMs shrink each to ~448 px anyway (InternVL2: one
    # 448x448 tile per frame), so larger frames cost tokens and time for nothing.
    video_max_side: int = 512
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SchemaError(f"unknown highlight mode {self.mode!r}; one of {', '.join(MODES)}", field="mode")
        if self.colour != "auto" and self.colour not in PALETTE:
            raise SchemaError(f"unknown colour {self.colour!r}; 'auto' or one of {', '.join(PALETTE)}", field="colour")
        if not 0 < self.line_fraction < 0.1:
            raise SchemaError(f"must be in (0, 0.1), got {self.line_fraction}", field="line_fraction")
        if self.min_line_px < 1:
            raise SchemaError(f"must be >= 1, got {self.min_line_px}", field="min_line_px")
        if not 0 <= self.alpha <= 1:
            raise SchemaError(f"must be in [0, 1], got {self.alpha}", field="alpha")
        if not 0 <= self.context_margin <= 5:
            raise SchemaError(f"must be in [0, 5], got {self.context_margin}", field="context_margin")
        if self.min_crop_px < 1:
            raise SchemaError(f"must be >= 1, got {self.min_crop_px}", field="min_crop_px")
        for name in ("max_side", "video_max_side"):
            if getattr(self, name) < 32:
                raise SchemaError(f"must be >= 32, got {getattr(self, name)}", field=name)
        if not 1 <= self.jpeg_quality <= 100:
            raise SchemaError(f"must be in 1..100, got {self.jpeg_quality}", field="jpeg_quality")

    def line_px(self, width: int, height: int) -> int:
        """Line thickness for an output image of this size."""
        return max(self.min_line_px, round(self.line_fraction * max(width, height)))


# --------------------------------------------------------------------------- frame selection


@dataclass(frozen=True)
class FrameStats:
    """One annotated frame of a masklet, measured on its RLE without decoding it."""

    frame: int
    area: int
    box: Box | None  # None where the object is not visible
    border_sides: int  # frame sides the box touches (0-4)
    score: float  # visible area relative to the masklet's largest, penalised at the border


def frame_stats(masklet: Masklet) -> list[FrameStats]:
    if not masklet.rles:
        return []
    height, width = masklet.rles[0].size
    coco = [r.to_coco() for r in masklet.rles]
    areas = _coco.area(coco)
    boxes = _coco.toBbox(coco)
    largest = max(int(a) for a in areas)
    stats = []
    for frame, a, (x, y, w, h) in zip(masklet.frame_indices, areas, boxes):
        a = int(a)
        if a == 0:
            stats.append(FrameStats(int(frame), 0, None, 0, 0.0))
            continue
        box = (int(x), int(y), int(x) + int(w), int(y) + int(h))
        sides = (box[0] <= 0) + (box[1] <= 0) + (box[2] >= width) + (box[3] >= height)
        stats.append(FrameStats(int(frame), a, box, int(sides), a / largest * BORDER_PENALTY**sides))
    return stats


DEFAULT_K = 3  # stage-1 crops per object


def default_candidates(k: int) -> int:
    """How many frames to decode and judge for sharpness when picking k."""
    return max(2 * k, 4)


def candidate_frames(masklet: Masklet, count: int) -> list[int]:
    """The `count` visible annotated frames with the best cheap score, best first."""
    visible = [s for s in frame_stats(masklet) if s.area > 0]
    visible.sort(key=lambda s: (-s.score, s.frame))
    return [s.frame for s in visible[:count]]


def sharpness(frame: Frame, box: Box) -> float:
    """Variance of the Laplacian of the grey box, resized to SHARPNESS_SIDE."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return 0.0
    h, w = y1 - y0, x1 - x0
    scale = SHARPNESS_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = frame_grey(frame, box)
    grey = downscale(grey, size) if scale < 1 else cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def select_object_frames(masklet: Masklet, frames: Frames, k: int = DEFAULT_K, *, candidates: int | None = None) -> list[int]:
    """The best k annotated frames for stage 1, best first; [] if never visible.

    The candidates (best cheap scores) that are present in `frames` are re-ranked by
    sharpness inside the object's box; the picks are then spread over the visible span
    so that k > 1 views do not show one moment three times.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    stats = {s.frame: s for s in frame_stats(masklet)}
    pool = candidate_frames(masklet, candidates or default_candidates(k))
    if not pool:
        return []
    index = {f: t for t, f in enumerate(masklet.frame_indices)}
    sharp = {
        f: sharpness(_frame(frames, f, masklet.rles[index[f]]), stats[f].box)  # type: ignore[arg-type]
        for f in pool
        if f in frames
    }
    best = max(sharp.values(), default=0.0)

    def final(f: int) -> float:
        if not sharp:
            return stats[f].score
        # Undecoded candidates rank as if blurry: nothing is known of their pixels.
        factor = 0.5 + 0.5 * (sharp[f] / best if best > 0 else 1.0) if f in sharp else 0.5
        return stats[f].score * factor

    ranked = sorted(pool, key=lambda f: (-final(f), f))
    span = (masklet.last_visible_frame or 0) - (masklet.first_visible_frame or 0)
    gap = span / (2 * k) if k > 1 else 0.0
    chosen: list[int] = []
    for f in ranked:
        if len(chosen) < k and all(abs(f - c) >= gap for c in chosen):
            chosen.append(f)
    for f in ranked:  # not enough spread-out candidates: fill with the next best
        if len(chosen) < k and f not in chosen:
            chosen.append(f)
    return chosen


def scene_frame(masklet: Masklet, frames: Frames, *, candidates: int | None = None) -> int | None:
    """Stage 2's frame: the single best one (the first stage-1 pick from the same
    candidates), None if the object is never visible."""
    best = select_object_frames(masklet, frames, 1, candidates=candidates or default_candidates(DEFAULT_K))
    return best[0] if best else None


def uniform_visible_frames(masklet: Masklet, n: int = 8) -> list[int]:
    """n annotated frames where the object is visible, spread uniformly in time from its
    first to its last visible frame (both included); all of them if there are fewer."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    visible = [s.frame for s in frame_stats(masklet) if s.area > 0]
    if len(visible) <= n:
        return visible
    if n == 1:
        return [visible[len(visible) // 2]]
    chosen = {visible[0], visible[-1]}
    pool = np.array(visible)
    for target in np.linspace(visible[0], visible[-1], n)[1:-1]:
        free = np.array([f not in chosen for f in visible])
        dist = np.where(free, np.abs(pool - target), np.inf)
        chosen.add(int(pool[int(np.argmin(dist))]))  # argmin: ties go to the earlier frame
    return sorted(chosen)


@dataclass(frozen=True)
class ViewSelection:
    object_frames: tuple[int, ...]  # stage 1, best first
    scene_frame: int  # stage 2
    video_frames: tuple[int, ...]  # stage 3, in time order


@dataclass(frozen=True)
class NotVisible:
    """An object that cannot be shown: the pipeline records it and moves on."""

    video_id: str
    object_id: int
    reason: str


def select_views(masklet: Masklet, frames: Frames, k: int = DEFAULT_K, n_video_frames: int = 8) -> ViewSelection | NotVisible:
    if masklet.visible_count == 0 or masklet.first_visible_frame is None:
        return NotVisible(masklet.video_id, masklet.object_id, "not visible in any annotated frame")
    picks = select_object_frames(masklet, frames, k)
    return ViewSelection(tuple(picks), picks[0], tuple(uniform_visible_frames(masklet, n_video_frames)))


# --------------------------------------------------------------------------- planning and decoding


@dataclass(frozen=True)
class ObjectPlan:
    object_id: int
    visible: bool
    candidates: tuple[int, ...]  # stage-1/2 candidates, judged for sharpness once decoded
    video_frames: tuple[int, ...]  # stage 3

    @property
    def frames(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.candidates) | set(self.video_frames)))


@dataclass(frozen=True)
class VideoPlan:
    video_id: str
    video_path: str
    height: int
    width: int
    objects: tuple[ObjectPlan, ...]
    frames: tuple[int, ...]  # union over objects, sorted: decode these once


def plan_video(annotation: SavAnnotation, k: int = DEFAULT_K, n_video_frames: int = 8, *, candidates: int | None = None) -> VideoPlan:
    """Which frames each object needs, from the RLEs alone (no pixels)."""
    count = candidates or default_candidates(k)
    objects = []
    for m in annotation.masklets:
        visible = m.visible_count > 0
        objects.append(
            ObjectPlan(
                object_id=m.object_id,
                visible=visible,
                candidates=tuple(candidate_frames(m, count)) if visible else (),
                video_frames=tuple(uniform_visible_frames(m, n_video_frames)) if visible else (),
            )
        )
    union = sorted(set().union(*(o.frames for o in objects))) if objects else []
    v = annotation.video
    return VideoPlan(v.video_id, v.path, v.height, v.width, tuple(objects), tuple(union))


def decode_frames(
    video_path: str | os.PathLike, indices: Iterable[int], *, backend: str = "pyav", yuv: bool = False
) -> dict[int, Frame]:
    """Decode just these frames, keyed by frame index: (H, W, 3) uint8 RGB arrays, or
    with yuv=True `YuvFrame`s where the video is plain BT.601 yuv420p (most H.264),
    which the renderer converts only where and at the size it needs (much cheaper).

    backend "pyav" (default) demuxes once, stops after the last wanted frame, and lets
    the decoder drop non-reference frames nobody asked for; plain BT.601 yuv420p is
    converted by OpenCV (faster than swscale, same matrix). backend "media" uses
    refsav.schemas.media.read_frames (decord when installed): about 2x slower on our 1080p
    samples for the same frames (see perf/bench_annotate_overhead.py --compare-decord).
    """
    path = str(video_path)
    wanted = sorted({int(i) for i in indices})
    if not os.path.exists(path):
        raise SchemaError("video file not found", file=path)
    if not wanted:
        return {}
    if wanted[0] < 0:
        raise SchemaError(f"frame {wanted[0]} is out of range", file=path)
    if backend == "media":
        from refsav.schemas.media import read_frames

        return {i: np.ascontiguousarray(f) for i, f in zip(wanted, read_frames(path, wanted))}
    if backend != "pyav":
        raise ValueError(f"unknown backend {backend!r}; 'pyav' or 'media'")
    return _decode_pyav(path, wanted, yuv)


def _decode_pyav(path: str, wanted: list[int], yuv: bool) -> dict[int, Frame]:
    import av

    convert = _to_yuv_frame if yuv else _to_rgb
    total = 0
    try:
        # skip_frame=all only affects FFmpeg's stream probing, which would otherwise
        # decode frames just to learn what the mp4 header already says (~20 ms at 1080p).
        with av.open(path, options={"skip_frame": "all", "threads": "1"}) as container:
            if not container.streams.video:
                raise SchemaError("no video stream", file=path)
            stream = container.streams.video[0]
            ctx = stream.codec_context
            # Dropping frames per packet is only exact when packets are decoded in
            # order on one thread; parallelism belongs to the caller (one video per process).
            ctx.thread_count = 1
            packets = [p for p in container.demux(stream) if p.size > 0]
            total = len(packets)
            pts = [p.pts for p in packets]
            if any(p is None for p in pts) or len(set(pts)) != len(pts):
                out = _decode_sequential(container, wanted, convert)
            else:
                out = _decode_packets(ctx, packets, wanted, convert)
    except SchemaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise SchemaError(f"cannot decode video ({_short(err)})", file=path) from None
    missing = [i for i in wanted if i not in out]
    if missing:
        raise SchemaError(f"frame {missing[0]} could not be decoded: the video has {total} frames", file=path)
    return out


def _decode_packets(ctx, packets: list, wanted: list[int], convert) -> dict[int, Frame]:
    # A frame's index is its rank in presentation order, as decord and refsav.schemas.media
    # count frames.
    pts = [p.pts for p in packets]
    index_of = {p: i for i, p in enumerate(sorted(pts))}
    want, out = set(wanted), {}
    last = max((pos for pos, p in enumerate(pts) if index_of[p] in want), default=-1)
    for packet in packets[: last + 1]:
        # Frames no one asked for are dropped when nothing references them; reference
        # frames must still be decoded for the wanted ones to come out right.
        ctx.skip_frame = "DEFAULT" if index_of[packet.pts] in want else "NONREF"
        for frame in ctx.decode(packet):
            if index_of.get(frame.pts) in want:
                out[index_of[frame.pts]] = convert(frame)
    ctx.skip_frame = "DEFAULT"
    for frame in ctx.decode(None):  # drain the frames the decoder still holds
        if index_of.get(frame.pts) in want:
            out[index_of[frame.pts]] = convert(frame)
    return out


def _decode_sequential(container, wanted: list[int], convert) -> dict[int, Frame]:
    # Fallback for streams without usable timestamps: count frames as they come.
    container.seek(0)
    want, out = set(wanted), {}
    for i, frame in enumerate(container.decode(video=0)):
        if i in want:
            out[i] = convert(frame)
        if i >= wanted[-1]:
            break
    return out


# FFmpeg enum values (libavutil/pixfmt.h): colour spaces and ranges that mean BT.601 limited range.
_BT601_SPACES = {2, 5, 6}  # unspecified, BT470BG, SMPTE170M
_LIMITED_RANGES = {0, 1}  # unspecified, MPEG


def _plain_i420(frame) -> bool:
    return (
        frame.format.name == "yuv420p"
        and int(getattr(frame, "colorspace", 2)) in _BT601_SPACES
        and int(getattr(frame, "color_range", 0)) in _LIMITED_RANGES
        and frame.width % 2 == 0
        and frame.height % 2 == 0
    )


def _to_rgb(frame) -> np.ndarray:
    if _plain_i420(frame):
        return cv2.cvtColor(frame.to_ndarray(format="yuv420p"), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24")  # swscale honours other matrices and ranges


def _to_yuv_frame(frame) -> Frame:
    if _plain_i420(frame):
        # Views of the decoder's own buffers (they stay alive with the arrays): PyAV's
        # to_ndarray would copy 3 MB per 1080p frame.
        y, u, v = (
            np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes[:3]
        )
        return YuvFrame(y, u, v)
    return frame.to_ndarray(format="rgb24")


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] if text else type(err).__name__


# --------------------------------------------------------------------------- masks


def rle_box(rle: Rle, box: Box) -> np.ndarray:
    """The mask inside `box` as uint8 0/1, decoding only the box's columns.

    COCO RLE is column-major, so columns x0..x1 are one contiguous stretch of runs;
    the cost follows the box, not the frame (pycocotools decodes all of a 1080p
    frame, ~1.6 ms, for every view).
    """
    height, _ = rle.size
    x0, y0, x1, y1 = box
    runs = _runs(rle.counts)
    bounds = np.concatenate(([0], np.cumsum(runs)))
    lo, hi = x0 * height, x1 * height
    lengths = np.diff(np.clip(bounds, lo, hi))
    values = (np.arange(len(runs)) & 1).astype(np.uint8)  # runs alternate 0, 1, 0, ...
    columns = np.repeat(values, lengths).reshape(x1 - x0, height)[:, y0:y1]
    if columns.size == 0:
        return np.zeros((y1 - y0, x1 - x0), np.uint8)
    return cv2.transpose(np.ascontiguousarray(columns))  # ~5x faster than NumPy's strided copy


def _runs(counts: str) -> np.ndarray:
    """Vectorised COCO counts parser (see refsav.schemas.rle.run_lengths for the format)."""
    c = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    ends = np.flatnonzero((c & 0x20) == 0)  # the last char of every value
    starts = np.concatenate(([0], ends[:-1] + 1))
    nchars = ends - starts + 1
    shift = np.arange(len(c)) - np.repeat(starts, nchars)
    values = np.add.reduceat((c & 0x1F) << (5 * shift), starts)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * nchars[negative])
    # From the third run on, values are deltas to the run two places back.
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


# --------------------------------------------------------------------------- geometry and canvases


def crop_box(box: Box, frame_size: tuple[int, int], margin: float, min_side: int) -> Box:
    """The stage-1 crop: the box plus `margin` of its size on every side, at least
    `min_side` wide and high, shifted (not cut) to stay inside the (H, W) frame, and
    widened to even edges (4:2:0 video converts to RGB in 2x2 blocks)."""
    height, width = frame_size

    def span(a: int, b: int, limit: int) -> tuple[int, int]:
        size = b - a
        want = min(max(size + 2 * math.ceil(margin * size), min_side), limit)
        start = a - (want - size) // 2
        start = min(max(start, 0), limit - want)
        return start & ~1, min(limit, start + want + ((start + want) & 1))

    x0, x1 = span(box[0], box[2], width)
    y0, y1 = span(box[1], box[3], height)
    return (x0, y0, x1, y1)


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def downscale(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (w, h) <= the image's size, antialiased but cheap.

    OpenCV's INTER_AREA is ~5x slower for fractional factors than for exact halving;
    halving while the result stays >= the target, then a mild (> 0.5x) bilinear step,
    gives nearly the same pixels (mean |diff| 0.3/255 at 1080p -> 768) far faster.
    """
    w, h = size
    while image.shape[1] >= 2 * w and image.shape[0] >= 2 * h:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if image.shape[1] == w and image.shape[0] == h:
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


Scaled = Mapping[tuple[int, int], np.ndarray]  # (frame, max_side) -> whole frame, BGR


def scale_frames(frames: Frames, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
    """Whole frames downscaled for full-frame views, keyed (frame, max_side); computed
    once per video and shared by all its objects."""
    out = {}
    for frame, max_side in sorted(set(wanted)):
        h, w = frames[frame].shape[:2]
        out[(frame, max_side)] = frame_view_bgr(frames[frame], None, output_size(w, h, max_side))
    return out


@dataclass(frozen=True)
class Canvas:
    """One view before highlighting: the image as it will be sent, and the object's mask on it."""

    frame: int
    region: Box  # the part of the source frame shown (the whole frame for stages 2-3)
    object_box: Box  # the object's box in source pixels
    image: np.ndarray = field(repr=False)  # (h, w, 3) uint8 BGR (OpenCV's order); may be shared, never modified
    mask: np.ndarray = field(repr=False)  # uint8 0/1 over mask_box
    mask_box: Box  # where `mask` lies in image coordinates


@dataclass(frozen=True)
class ObjectCanvases:
    object_views: tuple[Canvas, ...]
    scene_view: Canvas
    video_views: tuple[Canvas, ...]


def _frame_box(masklet: Masklet, frame: int) -> tuple[Rle, Box]:
    try:
        t = masklet.frame_indices.index(frame)
    except ValueError:
        raise ValueError(f"frame {frame} is not an annotated frame of object {masklet.object_id}") from None
    rle = masklet.rles[t]
    x, y, w, h = _coco.toBbox(rle.to_coco())
    if w <= 0 or h <= 0:
        raise ValueError(f"object {masklet.object_id} is not visible on frame {frame}")
    return rle, (int(x), int(y), int(x + w), int(y + h))


def _frame(frames: Frames, frame: int, rle: Rle) -> Frame:
    if frame not in frames:
        raise ValueError(f"frame {frame} was not decoded (plan_video lists the frames to decode)")
    image = frames[frame]
    if image.shape[:2] != tuple(rle.size):
        raise SchemaError(
            f"decoded frame {frame} is {image.shape[1]}x{image.shape[0]} but the masks are {rle.size[1]}x{rle.size[0]}",
            field="video_height",
        )
    return image


def crop_canvas(masklet: Masklet, frames: Frames, frame: int, style: HighlightStyle) -> Canvas:
    """A stage-1 view: the object's context crop, downscaled to style.max_side."""
    rle, box = _frame_box(masklet, frame)
    image = _frame(frames, frame, rle)
    region = crop_box(box, image.shape[:2], style.context_margin, style.min_crop_px)
    size = output_size(region[2] - region[0], region[3] - region[1], style.max_side)
    crop = frame_view_bgr(image, region, size)
    mask, mask_box = _mask_on_output(rle, box, region, size)
    return Canvas(frame, region, box, crop, mask, mask_box)


def full_canvas(masklet: Masklet, frames: Frames, frame: int, max_side: int, scaled: Scaled | None = None) -> Canvas:
    """A stage-2/3 view: the whole frame, downscaled to max_side."""
    rle, box = _frame_box(masklet, frame)
    image = _frame(frames, frame, rle)
    height, width = image.shape[:2]
    size = output_size(width, height, max_side)
    key = (frame, max_side)
    small = scaled[key] if scaled is not None and key in scaled else frame_view_bgr(image, None, size)
    region = (0, 0, width, height)
    mask, mask_box = _mask_on_output(rle, box, region, size)
    return Canvas(frame, region, box, small, mask, mask_box)


def _mask_on_output(rle: Rle, box: Box, region: Box, size: tuple[int, int]) -> tuple[np.ndarray, Box]:
    """The object's mask where `region` of the source is shown at `size` (w, h): only
    around the object's box, from only the source pixels that land there."""
    rx0, ry0, rx1, ry1 = region
    ow, oh = size
    sx, sy = ow / (rx1 - rx0), oh / (ry1 - ry0)
    ox0, oy0 = int((box[0] - rx0) * sx), int((box[1] - ry0) * sy)
    ox1, oy1 = min(ow, math.ceil((box[2] - rx0) * sx)), min(oh, math.ceil((box[3] - ry0) * sy))
    if (sx, sy) == (1.0, 1.0):
        return rle_box(rle, box), (ox0, oy0, ox1, oy1)
    sx0, sy0 = rx0 + int(ox0 / sx), ry0 + int(oy0 / sy)
    sx1, sy1 = min(rx1, rx0 + math.ceil(ox1 / sx)), min(ry1, ry0 + math.ceil(oy1 / sy))
    src = rle_box(rle, (sx0, sy0, sx1, sy1))
    resized = downscale(src * 255, (ox1 - ox0, oy1 - oy0))
    mask = (resized >= 128).astype(np.uint8)
    if not mask.any():
        # A sliver thinner than an output pixel: keep whatever it touches, or at
        # least the box's centre, so a tiny object is still marked.
        mask = (resized > 0).astype(np.uint8)
        if not mask.any():
            mask[mask.shape[0] // 2, mask.shape[1] // 2] = 1
    return mask, (ox0, oy0, ox1, oy1)


def full_view_keys(selection: ViewSelection, style: HighlightStyle) -> set[tuple[int, int]]:
    """The (frame, max_side) downscaled frames this object's full-frame views use."""
    return {(selection.scene_frame, style.max_side)} | {(f, style.video_max_side) for f in selection.video_frames}


def view_canvases(
    masklet: Masklet, frames: Frames, selection: ViewSelection, style: HighlightStyle, scaled: Scaled | None = None
) -> ObjectCanvases:
    return ObjectCanvases(
        object_views=tuple(crop_canvas(masklet, frames, f, style) for f in selection.object_frames),
        scene_view=full_canvas(masklet, frames, selection.scene_frame, style.max_side, scaled),
        video_views=tuple(full_canvas(masklet, frames, f, style.video_max_side, scaled) for f in selection.video_frames),
    )


# --------------------------------------------------------------------------- highlighting and encoding


def _bgr(colour: str) -> tuple[int, int, int]:
    r, g, b = PALETTE[colour]
    return (b, g, r)


def pick_colour(canvas: Canvas, style: HighlightStyle) -> str:
    """style.colour, or for "auto" the palette colour farthest from both the object's
    mean colour and that of its surroundings (the line lies on the surroundings)."""
    if style.colour != "auto":
        return style.colour
    x0, y0, x1, y1 = canvas.mask_box
    ih, iw = canvas.image.shape[:2]
    pad = max(2, (x1 - x0 + y1 - y0) // 8)
    rx0, ry0, rx1, ry1 = max(0, x0 - pad), max(0, y0 - pad), min(iw, x1 + pad), min(ih, y1 + pad)
    roi = np.ascontiguousarray(canvas.image[ry0:ry1, rx0:rx1])
    inside = np.zeros(roi.shape[:2], np.uint8)
    inside[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] = canvas.mask
    obj = np.array(cv2.mean(roi, inside)[:3])
    around = np.array(cv2.mean(roi, 1 - inside)[:3]) if (inside == 0).any() else obj

    def contrast(name: str) -> float:
        c = np.array(_bgr(name), dtype=float)
        return min(float(np.linalg.norm(c - obj)), float(np.linalg.norm(c - around)))

    return max(PALETTE, key=lambda name: (contrast(name), -list(PALETTE).index(name)))


def highlight(canvas: Canvas, style: HighlightStyle, colour: str) -> np.ndarray:
    """A new BGR image with the object marked per style.mode; the canvas is untouched."""
    base = canvas.image
    ih, iw = base.shape[:2]
    bgr = _bgr(colour)
    t = style.line_px(iw, ih)
    x0, y0, x1, y1 = canvas.mask_box
    if style.mode == "crop":
        # Darken everything, then put the object's own pixels back.
        image = cv2.convertScaleAbs(base, alpha=1.0 - style.alpha)
        roi = np.ascontiguousarray(image[y0:y1, x0:x1])
        cv2.copyTo(np.ascontiguousarray(base[y0:y1, x0:x1]), canvas.mask, roi)
        image[y0:y1, x0:x1] = roi
        return image
    image = base.copy()
    if style.mode == "box":
        # Four strips t wide, one pixel clear of the box, clipped to the image.
        ix0, iy0, ix1, iy1 = x0 - 1, y0 - 1, x1 + 1, y1 + 1
        ox0, oy0, ox1, oy1 = max(0, ix0 - t), max(0, iy0 - t), min(iw, ix1 + t), min(ih, iy1 + t)
        image[oy0 : max(oy0, iy0), ox0:ox1] = bgr
        image[min(oy1, iy1) : oy1, ox0:ox1] = bgr
        image[oy0:oy1, ox0 : max(ox0, ix0)] = bgr
        image[oy0:oy1, min(ox1, ix1) : ox1] = bgr
        return image
    if style.mode == "tint":
        roi = np.ascontiguousarray(image[y0:y1, x0:x1])
        tinted = cv2.addWeighted(roi, 1.0 - style.alpha, np.full_like(roi, bgr), style.alpha, 0.0)
        cv2.copyTo(tinted, canvas.mask, roi)
        image[y0:y1, x0:x1] = roi
        return image
    # contour: a line 2t wide centred on the boundary, then the object's pixels restored,
    # which leaves a t-wide line outside the object and the object unpainted.
    pad = 2 * t + 2
    rx0, ry0, rx1, ry1 = max(0, x0 - pad), max(0, y0 - pad), min(iw, x1 + pad), min(ih, y1 + pad)
    inside = np.zeros((ry1 - ry0, rx1 - rx0), np.uint8)
    inside[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] = canvas.mask
    contours, _ = cv2.findContours(inside, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    roi = np.ascontiguousarray(image[ry0:ry1, rx0:rx1])
    cv2.drawContours(roi, contours, -1, bgr, 2 * t, cv2.LINE_AA)
    cv2.copyTo(np.ascontiguousarray(base[ry0:ry1, rx0:rx1]), inside, roi)
    image[ry0:ry1, rx0:rx1] = roi
    return image


def encode_jpeg(bgr: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a BGR image (OpenCV's order, as `highlight` returns)."""
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode the image as JPEG")
    return data.tobytes()


def write_jpeg(path: str | os.PathLike, rgb: np.ndarray, quality: int = 90) -> None:
    """An RGB frame as a JPEG file, written atomically (a reader never sees half a file)."""
    from refsav.schemas.io import atomic_path

    try:
        data = encode_jpeg(np.ascontiguousarray(rgb[:, :, ::-1]), quality)
    except RuntimeError as err:
        raise SchemaError(str(err), file=path) from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# --------------------------------------------------------------------------- views


@dataclass(frozen=True)
class ViewImage:
    """One image for the VLM, with what it shows (for prompts and provenance)."""

    frame: int  # frame index at the video's fps (an annotated frame)
    region: Box  # source pixels shown
    object_box: Box  # the object's box in source pixels
    width: int  # of the JPEG
    height: int
    jpeg: bytes = field(repr=False)


@dataclass(frozen=True)
class ObjectViews:
    video_id: str
    object_id: int
    mode: str  # HighlightStyle.mode
    colour: str  # the PALETTE name used, for the prompt ("outlined in red")
    object_views: tuple[ViewImage, ...]  # stage 1: crops, best first
    scene_view: ViewImage  # stage 2: the full frame
    video_views: tuple[ViewImage, ...]  # stage 3: full frames in time order

    @property
    def frames_used(self) -> tuple[int, ...]:
        views = (*self.object_views, self.scene_view, *self.video_views)
        return tuple(sorted({v.frame for v in views}))


def view_image(canvas: Canvas, image: np.ndarray, quality: int) -> ViewImage:
    """Encode a highlighted (BGR) canvas image."""
    return ViewImage(canvas.frame, canvas.region, canvas.object_box, image.shape[1], image.shape[0], encode_jpeg(image, quality))


def render_views(
    masklet: Masklet,
    frames: Frames,
    style: HighlightStyle = HighlightStyle(),
    *,
    k: int = DEFAULT_K,
    n_video_frames: int = 8,
    selection: ViewSelection | NotVisible | None = None,
    scaled: Scaled | None = None,
) -> ObjectViews | NotVisible:
    """All three stages' images for one object, as JPEG bytes of bounded size."""
    if selection is None:
        selection = select_views(masklet, frames, k, n_video_frames)
    if isinstance(selection, NotVisible):
        return selection
    canvases = view_canvases(masklet, frames, selection, style, scaled)
    colour = pick_colour(canvases.scene_view, style)

    def render(c: Canvas) -> ViewImage:
        return view_image(c, highlight(c, style, colour), style.jpeg_quality)

    return ObjectViews(
        video_id=masklet.video_id,
        object_id=masklet.object_id,
        mode=style.mode,
        colour=colour,
        object_views=tuple(render(c) for c in canvases.object_views),
        scene_view=render(canvases.scene_view),
        video_views=tuple(render(c) for c in canvases.video_views),
    )


def render_video(
    annotation: SavAnnotation,
    frames: Frames,
    style: HighlightStyle = HighlightStyle(),
    *,
    k: int = DEFAULT_K,
    n_video_frames: int = 8,
) -> list[ObjectViews | NotVisible]:
    """Views for every object of a video, from frames decoded once (plan_video's union)."""
    selections = [select_views(m, frames, k, n_video_frames) for m in annotation.masklets]
    keys = set().union(*(full_view_keys(s, style) for s in selections if isinstance(s, ViewSelection)))
    scaled = scale_frames(frames, keys)
    return [render_views(m, frames, style, selection=s, scaled=scaled) for m, s in zip(annotation.masklets, selections)]


def build_video_views(
    annotation: SavAnnotation,
    style: HighlightStyle = HighlightStyle(),
    *,
    k: int = DEFAULT_K,
    n_video_frames: int = 8,
    backend: str = "pyav",
) -> list[ObjectViews | NotVisible]:
    """Plan, decode once, render: the whole visual side of annotating one video.

    Raises SchemaError (naming the video file) when the video cannot be read or does
    not match its annotation; the caller records it and skips the video.
    """
    plan = plan_video(annotation, k, n_video_frames)
    frames = decode_frames(annotation.video.path, plan.frames, backend=backend, yuv=backend == "pyav")
    try:
        return render_video(annotation, frames, style, k=k, n_video_frames=n_video_frames)
    except SchemaError as err:
        raise err.at(file=annotation.video.path) from None


__all__ = [
    "MODES",
    "PALETTE",
    "Canvas",
    "Frame",
    "FrameStats",
    "HighlightStyle",
    "NotVisible",
    "ObjectCanvases",
    "ObjectPlan",
    "ObjectViews",
    "VideoPlan",
    "ViewImage",
    "ViewSelection",
    "YuvFrame",
    "build_video_views",
    "candidate_frames",
    "crop_box",
    "crop_canvas",
    "decode_frames",
    "default_candidates",
    "downscale",
    "encode_jpeg",
    "frame_grey",
    "frame_view_bgr",
    "frame_stats",
    "full_canvas",
    "full_view_keys",
    "highlight",
    "output_size",
    "pick_colour",
    "plan_video",
    "render_video",
    "render_views",
    "rle_box",
    "scale_frames",
    "scene_frame",
    "select_object_frames",
    "select_views",
    "sharpness",
    "uniform_visible_frames",
    "view_canvases",
    "view_image",
]
