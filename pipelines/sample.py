"""`refsav sample`: a synthetic SA-V sample plus its Ref-SAV-style benchmark split.

Layout of OUT (mirrors where the real files live, so every reader is exercised):

    sav_train/sav_000/<video>.mp4            H.264, 24 fps
    sav_train/sav_000/<video>_manual.json    SA-V annotation, a masklet RLE every 4th frame
    Ref-SAV.json                             Ref-SAV training JSON (paths relative to OUT)
    ref_sav_eval/meta_expressions_valid.json benchmark: long (type 0) + short (type 1) expressions
    ref_sav_eval/mask_dict.json              benchmark masks, null where the object is absent
    ref_sav_eval/videos/<video>/<frame>.jpg  the annotated frames
    synthetic.json                           generator settings and each object's true attributes
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import click

from refsav.schemas import Masklet, Video
from refsav.schemas import rle as rle_ops
from refsav.schemas.io import atomic_write_json
from refsav.schemas.refsav_json import RefSavObject, RefSavVideo, write_refsav_json
from refsav.schemas.refvos import RefExpression, RefVideo, write_mask_dict, write_meta_expressions
from refsav.schemas.rle import Rle
from refsav.schemas.sav import SavAnnotation, write_sav_json
from refsav.schemas.video import SAV_STRIDE
from refsav.schemas.version import __version__

from refsav.runtime.executor import make_executor, results_in_order
from refsav.runtime.progress import progress_bar
from .synthetic import make_video, write_mp4
from .visual.jpeg import write_jpeg

CHUNK = "sav_train/sav_000"
EVAL = "ref_sav_eval"


@dataclass(frozen=True)
class SampleConfig:
    videos: int = 4
    seed: int = 0
    width: int = 640
    height: int = 360
    frames: int = 48  # at 24 fps; 2 s
    objects: int = 4
    jpeg_quality: int = 90


@dataclass(frozen=True)
class _VideoResult:
    video_id: str
    height: int
    width: int
    frame_names: list[str]  # annotated frames
    masklets: list[Masklet]
    texts: list[tuple[str, list[str]]]  # (long, shorts) per object, aligned with masklets
    attributes: list[dict]


def video_ids(cfg: SampleConfig) -> list[str]:
    return [f"synth_{cfg.seed:03d}_{i:04d}" for i in range(cfg.videos)]


def _render_one(out: Path, video_id: str, cfg: SampleConfig) -> _VideoResult:
    video = make_video(video_id, cfg.seed, cfg.width, cfg.height, cfg.frames, cfg.objects)
    frame_dir = out / EVAL / "videos" / video_id
    frame_dir.mkdir(parents=True, exist_ok=True)
    annotated = list(range(0, video.num_frames, SAV_STRIDE))
    rles: list[list[Rle]] = [[] for _ in video.objects]

    def frames():
        # One rendering pass feeds the mp4, the SA-V masklets and the benchmark JPEGs.
        for t, (rgb, masks) in enumerate(video.frames()):
            if t % SAV_STRIDE == 0:
                for k in range(len(video.objects)):
                    rles[k].append(rle_ops.encode(masks[k]))
                write_jpeg(frame_dir / f"{t:05d}.jpg", rgb, cfg.jpeg_quality)
            yield rgb

    mp4 = out / CHUNK / f"{video_id}.mp4"
    mp4.parent.mkdir(parents=True, exist_ok=True)
    written = write_mp4(mp4, frames(), fps=video.fps)
    masklets = [Masklet.from_rles(video_id, o.object_id, annotated, rles[k]) for k, o in enumerate(video.objects)]
    meta = Video(video_id, str(mp4), float(video.fps), written, video.height, video.width, SAV_STRIDE)
    write_sav_json(out / CHUNK / f"{video_id}_manual.json", SavAnnotation(meta, masklets, environment="Outdoor"))
    attributes = [
        {
            "object_id": o.object_id,
            "category": o.category,
            "appearance": o.appearance,
            "size": o.size,
            "motion": o.motion,
            "spins": o.spins,
            "depth": o.depth,
            "facts": asdict(f),
        }
        for o, f in zip(video.objects, video.facts)
    ]
    return _VideoResult(
        video_id=video_id,
        height=video.height,
        width=video.width,
        frame_names=[f"{t:05d}" for t in annotated],
        masklets=masklets,
        texts=[(text.long, list(text.short)) for text in video.texts],
        attributes=attributes,
    )


def write_sample(out: str | os.PathLike, cfg: SampleConfig, workers: int = 1, show_progress: bool = True) -> list[str]:
    """Generate the sample; returns the video ids. Deterministic in `cfg`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = video_ids(cfg)
    render = partial(_render_one, out, cfg=cfg)
    with progress_bar("rendering videos", total=len(ids), enabled=show_progress) as advance, \
            make_executor(workers, local="processes") as executor:
        # In the order of `ids`, whichever video finishes first: the split files list them so.
        results = list(results_in_order(executor, render, ids, advance))
    _write_split_files(out, cfg, results)
    return ids


def _write_split_files(out: Path, cfg: SampleConfig, results: list[_VideoResult]) -> None:
    training, meta, mask_dict = [], [], {}
    anno_id = 0
    for r in results:
        training.append(
            RefSavVideo(
                r.video_id,
                f"{CHUNK}/{r.video_id}.mp4",
                f"{CHUNK}/{r.video_id}_manual.json",
                [RefSavObject(k, long, shorts) for k, (long, shorts) in enumerate(r.texts)],
            )
        )
        expressions = []
        for m, (long, shorts) in zip(r.masklets, r.texts):
            mask_dict[str(anno_id)] = [rle if rle_ops.area(rle) > 0 else None for rle in m.rles]
            for type_id, text in [(0, long)] + [(1, s) for s in shorts]:
                expressions.append(RefExpression(str(len(expressions)), text, [m.object_id], [anno_id], type_id))
            anno_id += 1
        meta.append(RefVideo(r.video_id, r.frame_names, expressions, r.height, r.width))
    write_refsav_json(out / "Ref-SAV.json", training)
    write_meta_expressions(out / EVAL / "meta_expressions_valid.json", meta)
    write_mask_dict(out / EVAL / "mask_dict.json", mask_dict)
    atomic_write_json(
        out / "synthetic.json",
        {
            "generator": "refsav.pipelines.synthetic",
            "toolkit_version": __version__,
            "config": asdict(cfg),
            "videos": {r.video_id: r.attributes for r in results},
        },
        indent=1,
    )


def parse_size(value: str) -> tuple[int, int]:
    presets = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}
    if value in presets:
        return presets[value]
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT or one of {', '.join(presets)}, got {value!r}") from None
    if w % 2 or h % 2 or w < 16 or h < 16:
        raise click.BadParameter(f"width and height must be even and at least 16 (H.264), got {value}")
    return w, h


@click.command("sample")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--videos", default=4, show_default=True, type=click.IntRange(1), help="Number of videos.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed; same seed, same files.")
@click.option("--size", default="640x360", show_default=True, help="WIDTHxHEIGHT, or 360p / 720p / 1080p.")
@click.option("--frames", default=48, show_default=True, type=click.IntRange(1), help="Frames per video at 24 fps.")
@click.option("--objects", default=4, show_default=True, type=click.IntRange(1, 12), help="Objects per video.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Processes rendering videos.")
def sample_command(out: Path, videos: int, seed: int, size: str, frames: int, objects: int, workers: int) -> None:
    """Generate synthetic SA-V videos with masklets, and a Ref-SAV-style benchmark split.

    Objects with known shape, colour or texture and size move, spin, occlude each other and
    leave and re-enter the frame over real photographs; expressions are built from those
    known facts, e.g. "the small red ball that moves left and passes behind the grey box".
    """
    width, height = parse_size(size)
    cfg = SampleConfig(videos=videos, seed=seed, width=width, height=height, frames=frames, objects=objects)
    write_sample(out, cfg, workers=workers)
    click.echo(f"wrote {videos} videos ({width}x{height}, {frames} frames, {objects} objects each) to {out}")
    click.echo(f"  SA-V:      {out / CHUNK}")
    click.echo(f"  Ref-SAV:   {out / 'Ref-SAV.json'}")
    click.echo(f"  benchmark: {out / EVAL}")
