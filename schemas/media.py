"""Reading video files into the `Video` contract, with clear errors for bad files.

Probing demuxes packets without decoding, which is cheap even at 1080p and
still notices a truncated file: the container's frame count and the packets
actually present disagree, or the index (moov atom) is missing altogether.
Frames are decoded here and nowhere else, with PyAV: `decode_frames` for the
annotation pipeline (just the frames it planned, optionally kept as YUV planes),
`read_frames` for everything else (an RGB stack).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .errors import SchemaError
from .video import SAV_STRIDE, Video


def probe_video(path: str | os.PathLike, video_id: str | None = None, stride: int = SAV_STRIDE) -> Video:
    import av

    path = str(path)
    if not os.path.exists(path):
        raise SchemaError("video file not found", file=path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise SchemaError("no video stream", file=path)
            stream = container.streams.video[0]
            declared = int(stream.frames or 0)
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
            present = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except SchemaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise SchemaError(f"cannot read video ({_short(err)}); the file may be truncated or not an mp4", file=path) from None
    if present == 0:
        raise SchemaError("video has no frames", file=path)
    if declared and present < declared:
        raise SchemaError(f"video is truncated: the container lists {declared} frames but only {present} are present", file=path)
    return Video(
        video_id=video_id or os.path.splitext(os.path.basename(path))[0],
        path=path,
        fps=fps,
        num_frames=present,
        height=height,
        width=width,
        annotation_stride=stride,
    )


@dataclass(frozen=True)
class YuvFrame:
    """A decoded frame kept as BT.601 limited-range 4:2:0 planes, as H.264 delivers it.

    Converting a whole 1080p frame to RGB costs ~2 ms and downscaling it another
    ~1.6 ms; the annotation renderer needs full resolution only inside crops, and
    elsewhere at most its output size, so it converts just those pixels itself.
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


def read_frames(path: str | os.PathLike, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode frames as RGB uint8 (N, H, W, 3) in the order of `indices`; all frames when None."""
    path = str(path)
    if not os.path.exists(path):
        raise SchemaError("video file not found", file=path)
    frames, total = _decode(path, None if indices is None else sorted(set(indices)), yuv=False)
    order = range(total) if indices is None else indices
    bad = [i for i in order if i not in frames]
    if bad:
        raise SchemaError(f"frame {bad[0]} is out of range: the video has {total} frames", file=path)
    return np.stack([frames[i] for i in order])


def decode_frames(path: str | os.PathLike, indices: Iterable[int], *, yuv: bool = False) -> dict[int, Frame]:
    """Decode just these frames, keyed by frame index: (H, W, 3) uint8 RGB arrays, or
    with yuv=True `YuvFrame`s where the video is plain BT.601 yuv420p (most H.264; the
    caller converts only the pixels it needs) and RGB arrays elsewhere."""
    path = str(path)
    wanted = sorted({int(i) for i in indices})
    if not os.path.exists(path):
        raise SchemaError("video file not found", file=path)
    if not wanted:
        return {}
    if wanted[0] < 0:
        raise SchemaError(f"frame {wanted[0]} is out of range", file=path)
    frames, total = _decode(path, wanted, yuv)
    missing = [i for i in wanted if i not in frames]
    if missing:
        raise SchemaError(f"frame {missing[0]} could not be decoded: the video has {total} frames", file=path)
    return frames


def _decode(path: str, wanted: list[int] | None, yuv: bool) -> tuple[dict[int, Frame], int]:
    """The frames of `wanted` (sorted; None: all) that the video has, and its frame count.

    Demuxes once, stops after the last wanted frame, and lets the decoder drop the
    non-reference frames nobody asked for. RGB is FFmpeg's own conversion (swscale),
    the pixels decord and other FFmpeg-based readers give.
    """
    import av

    convert = _to_yuv_frame if yuv else _to_rgb
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
            want = set(range(total) if wanted is None else wanted)
            pts = [p.pts for p in packets]
            if any(p is None for p in pts) or len(set(pts)) != len(pts):
                return _decode_sequential(container, want, convert), total
            return _decode_packets(ctx, packets, want, convert), total
    except SchemaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise SchemaError(f"cannot decode video ({_short(err)})", file=path) from None


def _decode_packets(ctx, packets: list, want: set[int], convert) -> dict[int, Frame]:
    # A frame's index is its rank in presentation order, as decord and other readers count frames.
    pts = [p.pts for p in packets]
    index_of = {p: i for i, p in enumerate(sorted(pts))}
    out: dict[int, Frame] = {}
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


def _decode_sequential(container, want: set[int], convert) -> dict[int, Frame]:
    # Fallback for streams without usable timestamps: count frames as they come.
    container.seek(0)
    out: dict[int, Frame] = {}
    last = max(want, default=-1)
    for i, frame in enumerate(container.decode(video=0)):
        if i in want:
            out[i] = convert(frame)
        if i >= last:
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
    return frame.to_ndarray(format="rgb24")


def _to_yuv_frame(frame) -> Frame:
    if _plain_i420(frame):
        # Views of the decoder's own buffers (they stay alive with the arrays): PyAV's
        # to_ndarray would copy 3 MB per 1080p frame.
        y, u, v = (
            np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes[:3]
        )
        return YuvFrame(y, u, v)
    return _to_rgb(frame)  # swscale honours other matrices and ranges


def check_frame_count(video: Video, annotated: int, *, file: str | None = None) -> None:
    """SA-V annotates every `stride`-th decoded frame; the two counts must agree."""
    expected = len(range(0, video.num_frames, video.annotation_stride))
    if expected != annotated:
        raise SchemaError(
            f"frame-count mismatch: the video decodes to {video.num_frames} frames "
            f"({expected} annotated at stride {video.annotation_stride}) but the annotation has {annotated}",
            file=file or video.path,
            field="masklet",
        )


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] if text else type(err).__name__
