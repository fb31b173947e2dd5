"""Reading video files into the `Video` contract, with clear errors for bad files.

Probing demuxes packets without decoding, which is cheap even at 1080p and
still notices a truncated file: the container's frame count and the packets
actually present disagree, or the index (moov atom) is missing altogether.
Frames are decoded with decord when it is installed (the SA-V reference
readers' choice), otherwise with PyAV.
"""
from __future__ import annotations

import os
from typing import Sequence

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


def read_frames(path: str | os.PathLike, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode frames as RGB uint8 (N, H, W, 3); all frames when `indices` is None."""
    path = str(path)
    if not os.path.exists(path):
        raise SchemaError("video file not found", file=path)
    try:
        import decord
    except ImportError:
        return _read_frames_pyav(path, indices)
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        wanted = list(range(len(reader))) if indices is None else list(indices)
        bad = [i for i in wanted if not 0 <= i < len(reader)]
        if bad:
            raise SchemaError(f"frame {bad[0]} is out of range: the video has {len(reader)} frames", file=path)
        return reader.get_batch(wanted).asnumpy()
    except SchemaError:
        raise
    except Exception as err:  # decord raises its own DECORDError and RuntimeErrors
        raise SchemaError(f"cannot decode video ({_short(err)})", file=path) from None


def _read_frames_pyav(path: str, indices: Sequence[int] | None) -> np.ndarray:
    import av

    wanted = None if indices is None else set(indices)
    frames = []
    try:
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if wanted is None or i in wanted:
                    frames.append((i, frame.to_ndarray(format="rgb24")))
    except (av.error.FFmpegError, OSError) as err:
        raise SchemaError(f"cannot decode video ({_short(err)})", file=path) from None
    if indices is None:
        return np.stack([f for _, f in frames])
    by_index = dict(frames)
    missing = [i for i in indices if i not in by_index]
    if missing:
        raise SchemaError(f"frame {missing[0]} is out of range: the video has {len(frames)} frames", file=path)
    return np.stack([by_index[i] for i in indices])


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
