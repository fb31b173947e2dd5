"""`refsav predict` and `refsav evaluate`: run a Sa2VA checkpoint over a benchmark.

Video protocols (refsav, mevis, revos, refdavis) read `meta_expressions*.json` and the
frames beside it (`videos/<vid>/<frame>.jpg` for the Ref-SAV eval set,
`JPEGImages/<vid>/<frame>.jpg` for MeViS / ReVOS), predict all of a video's
expressions in one pass (`predict_video`: frames decoded and encoded once, answers
generated `--batch-size` at a time, one SAM-2 batch; results as one
`Sa2VA.predict` per expression), and write:

    OUT/run.json              the settings; a resumed run must use the same ones (a run
                              that fails before its first part removes it again)
    OUT/parts/<video>.json    one video of Sa2VA's results.json, written atomically
    OUT/results.json          all parts, in ground-truth order (what `refsav score` reads)

A video whose part exists is skipped, so an interrupted run resumes where it stopped.
Image protocols (refcoco family) write `OUT/parts/chunk_<k>.parquet` per chunk of
sentences and `OUT/predictions.parquet` (`ImagePrediction` rows).

DeSa2VA: `--desa2va-heads HEADS.safetensors` (from `refsav model train-heads`) puts
trained decoupling heads on the checkpoint and writes their fused masks instead of
Sa2VA's (`DeSa2VA.predict`; images: fused mask, videos: fused key frames seed SAM-2's
memory). run.json then records the heads file's sha256, so a resumed run with other
heads is refused.

Several GPUs: `--workers N` starts a Dask LocalCluster of N single-GPU workers
(`CUDA_VISIBLE_DEVICES` set per worker, tasks need resource GPU=1); `--scheduler
ADDR` uses an existing cluster (start its workers with `--resources GPU=1` when
predicting on cuda). Each worker process loads the model once.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import click

from refsav.schemas.errors import RefsavError, SchemaError
from refsav.schemas.io import atomic_write_json, read_json
from refsav.schemas.protocols import protocols_of

# The protocols a reference model predicts for, from the registry the scorer reads too.
VIDEO_PROTOCOLS = tuple(protocols_of("refvos"))
IMAGE_PROTOCOLS = tuple(protocols_of("refer"))
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}
# Frame folders of the meta_expressions family, first found wins (docs/formats-benchmarks.md §1).
FRAME_FOLDERS = ("videos", "JPEGImages")
FRAME_EXTS = (".jpg", ".jpeg", ".png")
# COCO train2014 naming first (refer README), then bare ids.
COCO_NAMES = ("COCO_train2014_{id:012d}", "{id:012d}", "{id}")


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a prediction; stored in run.json so that a resumed
    run cannot mix outputs of two models or two settings."""

    model: str  # checkpoint folder (absolute)
    protocol: str
    dtype: str = "float32"
    device: str = "cpu"
    key_frames: str = "first"
    num_key_frames: int = 5
    max_new_tokens: int = 2048
    answer: str | None = None  # forced answer (teacher forcing): times the mask path, not the LLM
    desa2va_heads: str | None = None  # DeSa2VA heads file (absolute); None = plain Sa2VA
    desa2va_heads_sha256: str | None = None  # its content, checked again when a worker loads it
    # SAM-2 input normalisation (PredictOptions.sam2_norm). Always in run.json; one
    # without it predates the option and was made with "exact".
    sam2_norm: str = "official"
    # Read pickle weight files (still through torch.load(weights_only=True)). How the
    # weights are read, not what they are, so run.json does not record it.
    allow_pickle: bool = False
    # "official" or "sa2va-i" (docs/sa2va-i.md). Always in run.json; one without it
    # predates the option and was official.
    inference: str = "official"
    # Sa2VA-i: Meta's SAM-2 file the original decoder comes from (absolute) and its
    # sha256; None = the checkpoint carries both decoders.
    sam2_original: str | None = None
    sam2_original_sha256: str | None = None
    # `--server URL`: predict through `refsav serve` (model = the served model's id).
    server: str | None = None
    api_key: str | None = None  # the server's key; never written to run.json
    # Expressions of a video generated together (PredictOptions.batch_size): speed and
    # memory only, the results are the same, so run.json does not record it either.
    batch_size: int = 8

    def settings(self) -> dict:
        """What run.json stores. The heads and SAM-2 file keys appear only when used, so
        runs written before DeSa2VA or Sa2VA-i existed still resume."""
        out = asdict(self)
        out.pop("allow_pickle")
        out.pop("api_key")
        if self.server is None:
            out.pop("server")
        out.pop("batch_size")
        if self.desa2va_heads is None:
            out.pop("desa2va_heads")
            out.pop("desa2va_heads_sha256")
        if self.sam2_original is None:
            out.pop("sam2_original")
            out.pop("sam2_original_sha256")
        return out

    def options(self):
        from .config import PredictOptions

        return PredictOptions(max_new_tokens=self.max_new_tokens, key_frames=self.key_frames,
                              num_key_frames=self.num_key_frames, sam2_norm=self.sam2_norm,
                              inference=self.inference, batch_size=self.batch_size)


def prompt_for(expression: str, *, image: bool = False) -> str:
    """Sa2VA's evaluation prompts (docs/sa2va-checkpoints.md §6, docs/formats-benchmarks.md §4)."""
    exp = expression.strip()
    if image:
        return f"<image>\n Please segment {exp} in this image."
    if "?" in exp:
        return f"<image>\n {exp} Please respond with a segmentation mask."
    return f"<image>\nPlease segment {exp}."


# ----------------------------------------------------------------------------- model cache

_MODELS: dict[tuple, Any] = {}


def _load_model(path: str, dtype: str, device: str, allow_pickle: bool = False):
    import torch

    from .checkpoint import load_sa2va

    return load_sa2va(path, dtype=getattr(torch, dtype), device=device, allow_pickle=allow_pickle)


def _with_heads(sa2va, heads: str, sha256: str | None):
    """Sa2VA + trained DeSa2VA heads; the file must still be the one run.json names."""
    from refsav.schemas.io import sha256_file

    from .desa2va import DeSa2VA, load_heads

    path = Path(heads)
    if not path.is_file():
        raise SchemaError("DeSa2VA heads file not found", file=path)
    if sha256 is not None and sha256_file(path) != sha256:
        raise RefsavError("the heads file changed after the run started (sha256 differs from run.json)", file=path)
    try:
        # In the model's dtype, as Sa2VA runs its own [SEG] projection.
        return DeSa2VA.with_heads(sa2va, load_heads(path), dtype=sa2va.model.dtype)
    except SchemaError as err:
        raise err.at(file=path) from None


def _with_sam2_original(sa2va, path: str, sha256: str | None):
    """Sa2VA + Meta's original SAM-2 decoder; the file must still be the one run.json names."""
    from refsav.schemas.io import sha256_file

    from .checkpoint import attach_original_decoder

    if sha256 is not None and Path(path).is_file() and sha256_file(path) != sha256:
        raise RefsavError("the SAM-2 file changed after the run started (sha256 differs from run.json)", file=path)
    attach_original_decoder(sa2va, path)
    return sa2va


def get_model(spec: RunSpec):
    """The loaded model of this process (a Dask worker loads it on its first task):
    a `Sa2VA`, or a `DeSa2VA` with `--desa2va-heads`; both have `predict`."""
    key = (spec.model, spec.dtype, spec.device, spec.desa2va_heads, spec.desa2va_heads_sha256, spec.allow_pickle,
           spec.sam2_original, spec.sam2_original_sha256, spec.server)
    if key not in _MODELS:
        _MODELS.clear()  # one model per process: GPU memory holds one
        if spec.server is not None:
            from .serve_client import RemoteSa2VA

            model = RemoteSa2VA(spec.server, spec.model, spec.api_key)
        else:
            model = _load_model(spec.model, spec.dtype, spec.device, spec.allow_pickle)
        if spec.sam2_original is not None:
            model = _with_sam2_original(model, spec.sam2_original, spec.sam2_original_sha256)
        if spec.desa2va_heads is not None:
            model = _with_heads(model, spec.desa2va_heads, spec.desa2va_heads_sha256)
        _MODELS[key] = model
    return _MODELS[key]


# ----------------------------------------------------------------------------- video protocols


@dataclass(frozen=True)
class VideoTask:
    video: Any  # refsav.schemas.refvos.RefVideo
    frame_dir: str
    part: str  # OUT/parts/<video>.json
    index0: int  # global index of the video's first expression (results.json "index")
    spec: RunSpec


def find_frame_root(gt: Path) -> Path:
    for name in FRAME_FOLDERS:
        if (gt / name).is_dir():
            return gt / name
    raise SchemaError(f"no frame folder: expected {' or '.join(f + '/<video>/<frame>.jpg' for f in FRAME_FOLDERS)}",
                      file=gt)


def _frame_path(folder: Path, frame: str, video_id: str) -> Path:
    for ext in FRAME_EXTS:
        p = folder / f"{frame}{ext}"
        if p.exists():
            return p
    raise SchemaError(f"frame {frame!r} not found in {folder}", record=video_id, field="frames")


def load_frames(video, frame_dir: Path) -> list:
    """The video's frames as RGB PIL images, in meta order, checked against its height/width."""
    from PIL import Image

    folder = frame_dir / video.video_id
    frames = []
    for name in video.frames:
        path = _frame_path(folder, name, video.video_id)
        try:
            with Image.open(path) as img:
                frames.append(img.convert("RGB"))
        except OSError as err:
            raise SchemaError(f"unreadable image ({err})", file=path) from None
    if not frames:
        raise SchemaError("the video lists no frames", record=video.video_id, field="frames")
    w, h = frames[0].size
    if video.height and video.width and (video.height, video.width) != (h, w):
        raise SchemaError(f"frames are {h}x{w}, the meta file says {video.height}x{video.width}",
                          record=video.video_id, field="height")
    return frames


def predict_video(task: VideoTask) -> str:
    """Predict every expression of one video and write its part; returns the video id.

    The video's expressions go through the model together (`Sa2VA.ground_batch` +
    `track_batch`): frames decoded once, the vision tower once, answers generated
    `--batch-size` at a time, and SAM-2 tracks the first [SEG] of every expression in
    one pass over the frames, so each frame is encoded once. Masks are RLE-encoded frame
    by frame as SAM-2 yields them, so the part never holds a video's masklets
    uncompressed. Sa2VA-i, DeSa2VA heads and a `--server` model predict one expression
    at a time.
    """
    import numpy as np

    from refsav.schemas import rle as rle_ops

    video = task.video
    frames = load_frames(video, Path(task.frame_dir))
    sa2va = get_model(task.spec)
    opts = task.spec.options()
    prompts = [prompt_for(exp.exp) for exp in video.expressions]
    if hasattr(sa2va, "track_batch") and opts.inference == "official":
        answers = None if task.spec.answer is None else [task.spec.answer] * len(prompts)
        groundings = sa2va.ground_batch(prompts, video=frames, options=opts, answers=answers)
        texts = [g.text for g in groundings]
        rles: list[list] = [[] for _ in prompts]
        empty = None
        for _, per_expression in sa2va.track_batch(frames, groundings, opts, first_seg_only=True):
            for k, masks in enumerate(per_expression):
                if len(masks):
                    rles[k].append(rle_ops.encode(masks[0]).to_json())
                else:  # no [SEG]: an empty mask, as Sa2VA's evaluation writes
                    if empty is None:
                        empty = rle_ops.encode(np.zeros(masks.shape[1:], dtype=bool)).to_json()
                    rles[k].append(empty)
    else:
        texts, rles = [], []
        h, w = frames[0].height, frames[0].width
        for prompt in prompts:
            pred = sa2va.predict(prompt, video=frames, options=opts, answer=task.spec.answer)
            # Sa2VA's ref-VOS evaluation keeps the first [SEG]'s masklet; no [SEG] = empty masks.
            masks = pred.masks[0] if pred.masks else np.zeros((len(frames), h, w), dtype=bool)
            texts.append(pred.text)
            rles.append([rle_ops.encode(m).to_json() for m in masks])
    part: dict[str, Any] = {}
    for k, exp in enumerate(video.expressions):
        part[exp.exp_id] = {
            "index": task.index0 + k,
            "video_id": video.video_id,
            "exp_id": exp.exp_id,
            "text_prediction": texts[k],
            "frames": list(video.frames),
            "exp": prompts[k],
            "prediction_masks": rles[k],
        }
    atomic_write_json(task.part, part)
    return video.video_id


def _part_is_complete(path: Path, video) -> bool:
    """A part counts as done if it is readable JSON with every expression of the video;
    anything else is redone (parts are written atomically, so this is rare)."""
    if not path.exists():
        return False
    try:
        obj = read_json(path)
    except SchemaError:
        return False
    return isinstance(obj, dict) and set(obj) == {e.exp_id for e in video.expressions}


def _safe_name(video_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", video_id) or video_id in (".", ".."):
        raise SchemaError("video id is not a safe file name", record=video_id, field="video_id")
    return video_id


# ----------------------------------------------------------------------------- image protocols


@dataclass(frozen=True)
class ImageTask:
    samples: tuple  # refsav.schemas.refer.ImageSample
    images: dict  # image_id -> file path
    part: str
    spec: RunSpec


def find_image(folder: Path, image_id: int) -> Path:
    for pattern in COCO_NAMES:
        for ext in FRAME_EXTS:
            p = folder / (pattern.format(id=image_id) + ext)
            if p.exists():
                return p
    raise SchemaError(f"image {image_id} not found (tried COCO_train2014_{image_id:012d}.jpg)", file=folder)


def predict_images(task: ImageTask) -> int:
    import numpy as np
    from PIL import Image

    from refsav.schemas import rle as rle_ops
    from refsav.schemas.io import write_parquet
    from refsav.schemas.predictions import ImagePrediction

    sa2va = get_model(task.spec)
    opts = task.spec.options()
    rows = []
    cache: tuple[int, Any] | None = None  # sentences of a ref share the image
    for s in task.samples:
        if cache is None or cache[0] != s.image_id:
            path = task.images[s.image_id]
            try:
                with Image.open(path) as img:
                    cache = (s.image_id, img.convert("RGB"))
            except OSError as err:
                raise SchemaError(f"unreadable image ({err})", file=path) from None
        image = cache[1]
        if (image.height, image.width) != (s.height, s.width):
            raise SchemaError(f"image is {image.height}x{image.width}, instances.json says {s.height}x{s.width}",
                              file=task.images[s.image_id])
        pred = sa2va.predict(prompt_for(s.sent, image=True), image=image, options=opts, answer=task.spec.answer)
        # Sa2VA's RES evaluation: the OR of every [SEG]'s mask.
        mask = np.zeros((s.height, s.width), dtype=bool)
        for m in pred.masks:
            mask |= m[0]
        rows.append(ImagePrediction(s.sample_id, str(s.image_id), rle_ops.encode(mask), None, pred.text))
    write_parquet(task.part, rows, ImagePrediction)
    return len(rows)


# ----------------------------------------------------------------------------- executors


def _executor(workers: int, scheduler: str | None, device: str):
    from refsav.runtime.executor import make_executor

    # One GPU per task on CUDA, so that a worker never shares its device.
    return make_executor(workers, scheduler, gpus=device.startswith("cuda"))


def _run(executor, fn, tasks, advance, count) -> None:
    failed = []
    for outcome in executor.map_unordered(fn, tasks):
        if not outcome.ok:
            if isinstance(outcome.error, RefsavError):
                raise outcome.error
            failed.append((outcome.task, outcome.error))
            continue
        advance(count(outcome.task))
    if failed:
        task, err = failed[0]
        raise RuntimeError(f"{len(failed)} task(s) failed; first: {type(err).__name__}: {err}") from err


# ----------------------------------------------------------------------------- the runner


@dataclass(frozen=True)
class PredictResult:
    predictions: Path  # results.json or predictions.parquet
    done: int  # videos / sentence chunks predicted by this run
    skipped: int  # found complete from an earlier run
    items: int  # videos / sentences in the output


@contextlib.contextmanager
def _run_file(out: Path, spec: RunSpec, extra: dict) -> Iterator[None]:
    """Check OUT/run.json against these settings, or write it; run the body.

    A run that writes run.json and then fails before any part exists (a bad
    --model, an unreadable first frame) takes run.json back out, with the parts/
    and OUT folders if it created them and they are empty: otherwise the corrected
    rerun would find settings that made nothing and refuse the folder.
    """
    want = {**spec.settings(), **extra}
    path = out / "run.json"
    if path.exists():
        have = read_json(path)
        if isinstance(have, dict):
            # Written before --sam2-norm existed: those predictions used the exact statistics;
            # before --inference: the official procedure.
            have = {"sam2_norm": "exact", "inference": "official", **have}
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k)) if isinstance(have, dict) else []
            raise RefsavError(f"OUT holds predictions made with other settings ({', '.join(diff) or 'unreadable'}); "
                              "use a new --out or delete it", file=path)
        yield
        return
    made_out = not out.exists()
    parts = out / "parts"
    made_parts = not parts.exists()
    atomic_write_json(path, want, indent=1)
    try:
        yield
    except BaseException:
        if not (parts.is_dir() and any(parts.iterdir())):
            path.unlink(missing_ok=True)
            for folder, made in ((parts, made_parts), (out, made_out)):
                if made:
                    with contextlib.suppress(OSError):  # not empty, or gone: leave it
                        folder.rmdir()
        raise


def predict_video_protocol(spec: RunSpec, gt: Path, out: Path, *, meta_name: str | None = None,
                           frames: Path | None = None, limit: int | None = None, workers: int = 1,
                           scheduler: str | None = None, progress: bool = True) -> PredictResult:
    from refsav.runtime.progress import progress_bar
    from refsav.schemas.refvos import find_meta, read_meta_expressions

    gt = Path(gt)
    if not gt.is_dir():
        raise SchemaError("expected the ground-truth folder (meta_expressions*.json + frames)", file=gt)
    videos = read_meta_expressions(gt / meta_name if meta_name else find_meta(gt))
    if limit is not None:
        videos = videos[:limit]
    frame_root = Path(frames) if frames else find_frame_root(gt)
    parts = out / "parts"
    tasks, skipped, index = [], 0, 0
    for v in videos:
        part = parts / f"{_safe_name(v.video_id)}.json"
        if _part_is_complete(part, v):
            skipped += 1
        else:
            if not (frame_root / v.video_id).is_dir():
                raise SchemaError("no frame folder for this video", file=frame_root / v.video_id, record=v.video_id)
            tasks.append(VideoTask(v, str(frame_root), str(part), index, spec))
        index += len(v.expressions)
    with _run_file(out, spec, {"gt": str(gt.resolve()), "meta": meta_name}), \
            progress_bar("predicting videos", total=len(videos), enabled=progress) as advance:
        advance(skipped)
        if tasks:
            with _executor(workers, scheduler, spec.device) as ex:
                _run(ex, predict_video, tasks, advance, lambda t: 1)
    results = {v.video_id: read_json(parts / f"{v.video_id}.json") for v in videos}
    atomic_write_json(out / "results.json", results)
    return PredictResult(out / "results.json", len(tasks), skipped, len(videos))


def predict_image_protocol(spec: RunSpec, gt: Path, out: Path, *, images: Path | None, split: str = "val",
                           split_by: str | None = None, limit: int | None = None, chunk_size: int = 64,
                           workers: int = 1, scheduler: str | None = None, progress: bool = True) -> PredictResult:
    from refsav.schemas.refer import load_ground_truth
    from refsav.runtime.progress import progress_bar
    from refsav.schemas.io import read_parquet, write_parquet
    from refsav.schemas.predictions import ImagePrediction

    if images is None:
        raise RefsavError("image protocols need --images (the COCO train2014 folder)", field="images")
    truth = load_ground_truth(gt, spec.protocol, split, split_by)
    samples = truth.samples[:limit] if limit is not None else truth.samples
    paths = {iid: str(find_image(Path(images), iid)) for iid in sorted({s.image_id for s in samples})}
    chunks = [tuple(samples[i:i + chunk_size]) for i in range(0, len(samples), chunk_size)]
    parts = [out / "parts" / f"chunk_{k:05d}.parquet" for k in range(len(chunks))]
    tasks = [ImageTask(c, {s.image_id: paths[s.image_id] for s in c}, str(p), spec)
             for c, p in zip(chunks, parts) if not p.exists()]
    settings = {"gt": str(Path(gt).resolve()), "split": split, "split_by": split_by, "chunk_size": chunk_size}
    with _run_file(out, spec, settings), \
            progress_bar(f"predicting {split} sentences", total=len(samples), enabled=progress) as advance:
        advance(len(samples) - sum(len(t.samples) for t in tasks))
        if tasks:
            with _executor(workers, scheduler, spec.device) as ex:
                _run(ex, predict_images, tasks, advance, lambda t: len(t.samples))
    rows = [r for p in parts for r in read_parquet(p, ImagePrediction)]
    write_parquet(out / "predictions.parquet", rows, ImagePrediction)
    return PredictResult(out / "predictions.parquet", len(tasks), len(chunks) - len(tasks), len(rows))


def run_predict(spec: RunSpec, gt: Path, out: Path, **kw) -> PredictResult:
    if spec.protocol in VIDEO_PROTOCOLS:
        kw.pop("images", None)
        for k in ("split", "split_by", "chunk_size"):
            kw.pop(k, None)
        frames = kw.pop("frames", None)
        return predict_video_protocol(spec, gt, out, frames=frames, **kw)
    if spec.protocol in IMAGE_PROTOCOLS:
        kw.pop("meta_name", None)
        kw.pop("frames", None)
        return predict_image_protocol(spec, gt, out, **kw)
    raise RefsavError(f"no predictor for protocol {spec.protocol!r}", field="protocol")


# ----------------------------------------------------------------------------- commands


def predict_options(fn):
    options = [
        click.option("--model", "model_path", default=None, type=click.Path(file_okay=False, path_type=Path),
                     help="Sa2VA checkpoint folder (released layout, safetensors); with --server, the served "
                          "model's id (default: the server's only model)."),
        click.option("--server", default=None,
                     help="Predict through a `refsav serve` server (http://host:port) instead of loading --model."),
        click.option("--api-key", default=None, envvar="REFSAV_API_KEY",
                     help="The server's API key (also from $REFSAV_API_KEY)."),
        click.option("--protocol", required=True, type=click.Choice([*VIDEO_PROTOCOLS, *IMAGE_PROTOCOLS]),
                     help="Benchmark protocol to predict for."),
        click.option("--gt", "gt", required=True, type=click.Path(path_type=Path),
                     help="Ground truth: meta_expressions folder (video) or RefCOCO data root (image)."),
        click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Output folder (parts/, results.json or predictions.parquet); reruns resume."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N."),
        click.option("--dtype", default="bf16", show_default=True, type=click.Choice(sorted(DTYPES)),
                     help="Weights / activations dtype."),
        click.option("--key-frames", default=None, type=click.Choice(["first", "uniform"]),
                     help="Official inference: frames shown to the LLM, the first K (default, as Sa2VA) or K "
                          "spread over the video. Sa2VA-i spreads its own."),
        click.option("--num-key-frames", default=None, type=click.IntRange(1),
                     help="Key frames K (default 5 in both modes)."),
        click.option("--inference", default="official", show_default=True, type=click.Choice(["official", "sa2va-i"]),
                     help="official: Sa2VA's predict_forward; sa2va-i: key frames spread over the video, decoded by "
                          "the fine-tuned decoder, tracked by the original SAM-2 decoder (docs/sa2va-i.md)."),
        click.option("--sam2-original", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Sa2VA-i: Meta's SAM-2 checkpoint the original decoder comes from (sam2_hiera_large.pt, "
                          "read with weights_only, or its convert-sam2 safetensors copy). Not needed for a "
                          "checkpoint in the Sa2VA-i two-decoder layout."),
        click.option("--max-new-tokens", default=2048, show_default=True, type=click.IntRange(0)),
        click.option("--force-answer", default=None,
                     help="Teacher-force this answer (e.g. 'Sure, [SEG].') instead of generating: speed runs only."),
        click.option("--meta", "meta_name", default=None, help="Video: meta file name inside --gt."),
        click.option("--frames", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Video: frame root holding <video>/<frame>.jpg (default: --gt/videos or --gt/JPEGImages)."),
        click.option("--images", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Image protocols: the COCO train2014 image folder."),
        click.option("--split", default="val", show_default=True, help="refcoco*: split."),
        click.option("--split-by", default=None, help="refcoco*: refs file variant."),
        click.option("--limit", type=click.IntRange(1), default=None, help="Only the first K videos / sentences."),
        click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
                     help="Dask worker processes (one GPU each with --device cuda)."),
        click.option("--scheduler", default=None, help="Run on an existing Dask cluster (tcp://host:8786)."),
        click.option("--desa2va-heads", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="DeSa2VA heads (refsav model train-heads): predict their fused masks instead of Sa2VA's."),
        click.option("--sam2-norm", default="official", show_default=True, type=click.Choice(["official", "exact"]),
                     help="SAM-2 input normalisation: official = the released code's bf16-rounded ImageNet mean/std "
                          "(reproduces its masks); exact = float32 ImageNet mean/std."),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1),
                     help="Video: expressions of a video whose answers the LLM generates together (one left-padded "
                          "batch); every expression of the video shares its frames, vision features and SAM-2 pass "
                          "whatever this is. Speed and memory only: results do not depend on it."),
        click.option("--allow-pickle", is_flag=True, default=False,
                     help="Also read pickle weight files (.bin/.pt/.pth), listed in the shard index or alone; "
                          "they are still loaded with torch.load(weights_only=True). Default: safetensors only."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _spec(model_path: Path, protocol: str, device: str, dtype: str, key_frames: str | None,
          num_key_frames: int | None, max_new_tokens: int, force_answer: str | None, desa2va_heads: Path | None = None,
          allow_pickle: bool = False, sam2_norm: str = "official", inference: str = "official",
          sam2_original: Path | None = None, server: str | None = None, api_key: str | None = None,
          batch_size: int = 8) -> RunSpec:
    if server is not None:
        from .serve_client import remote_spec

        return remote_spec(RunSpec, server, model_path, api_key, protocol, key_frames, num_key_frames,
                           max_new_tokens, force_answer, desa2va_heads, sam2_norm, inference, sam2_original)
    if model_path is None:
        raise RefsavError("give --model (a checkpoint folder) or --server", field="model")
    if not model_path.is_dir():
        raise SchemaError("not a checkpoint folder", file=model_path)
    from .checkpoint import read_config

    # config.json only (no weights): a folder that is no Sa2VA checkpoint fails before OUT is touched.
    config = read_config(model_path)
    from .config import DEFAULT_NUM_KEY_FRAMES

    original = original_sha = None
    if inference == "sa2va-i":
        original, original_sha = _sa2va_i_checks(model_path, key_frames, desa2va_heads, sam2_original, allow_pickle,
                                                 video=protocol in VIDEO_PROTOCOLS)
    elif sam2_original is not None:
        raise RefsavError("only --inference sa2va-i uses the original SAM-2 decoder", field="sam2_original")
    key_frames = key_frames or "first"
    num_key_frames = num_key_frames or DEFAULT_NUM_KEY_FRAMES[inference]
    heads = sha = None
    if desa2va_heads is not None:
        from refsav.schemas.io import sha256_file

        from .desa2va import load_heads

        # A bad or misfitting file fails here, before run.json is written.
        load_heads(desa2va_heads, config.llm_hidden_size)
        heads, sha = str(desa2va_heads.resolve()), sha256_file(desa2va_heads)
    return RunSpec(str(model_path.resolve()), protocol, DTYPES[dtype], device, key_frames, num_key_frames,
                   max_new_tokens, force_answer, heads, sha, sam2_norm, allow_pickle, inference=inference,
                   sam2_original=original, sam2_original_sha256=original_sha, batch_size=batch_size)


def _sa2va_i_checks(model_path: Path, key_frames, desa2va_heads, sam2_original: Path | None,
                    allow_pickle: bool, *, video: bool = True) -> tuple[str | None, str | None]:
    """Refuse what sa2va-i cannot do before OUT is touched; the SAM-2 file's path and sha256.
    Images are the key-frame decode alone, so they need no original decoder."""
    if key_frames is not None:
        raise RefsavError("sa2va-i spreads its key frames from the first frame to the last; drop --key-frames "
                          "(--num-key-frames sets how many)", field="key_frames")
    if desa2va_heads is not None:
        raise RefsavError("DeSa2VA heads run the official procedure only", field="inference")
    if sam2_original is not None:
        from refsav.schemas.io import sha256_file

        if not sam2_original.is_file():
            raise SchemaError("SAM-2 file not found", file=sam2_original)
        return str(sam2_original.resolve()), sha256_file(sam2_original)
    if not video:
        return None, None
    from .checkpoint import SA2VA_I_TUNED, WeightSource

    # Tensor names only (safetensors headers): does the checkpoint carry both decoders?
    if not any(k.startswith(SA2VA_I_TUNED) for k in WeightSource(model_path, allow_pickle=allow_pickle).index):
        raise RefsavError("sa2va-i tracks with Meta's original SAM-2 mask decoder: give --sam2-original "
                          "sam2_hiera_large.pt (or its convert-sam2 copy), or a checkpoint in the Sa2VA-i "
                          "two-decoder layout", field="sam2_original")
    return None, None


def predict_from_options(model_path, protocol, gt, out, device, dtype, key_frames, num_key_frames, max_new_tokens,
                          force_answer, meta_name, frames, images, split, split_by, limit, workers,
                          scheduler, desa2va_heads=None, allow_pickle=False, sam2_norm="official",
                          inference="official", sam2_original=None, server=None, api_key=None,
                          batch_size=8) -> PredictResult:
    import time

    spec = _spec(model_path, protocol, device, dtype, key_frames, num_key_frames, max_new_tokens, force_answer,
                 desa2va_heads, allow_pickle, sam2_norm, inference, sam2_original, server, api_key,
                 batch_size)
    t0 = time.perf_counter()
    res = run_predict(spec, gt, out, meta_name=meta_name, frames=frames, images=images, split=split,
                      split_by=split_by, limit=limit, workers=workers, scheduler=scheduler)
    unit = "videos" if protocol in VIDEO_PROTOCOLS else "chunks"
    click.echo(f"wrote {res.predictions}: {res.items} {'videos' if unit == 'videos' else 'sentences'}; "
               f"{res.done} {unit} predicted, {res.skipped} resumed, in {time.perf_counter() - t0:.1f} s")
    return res


@click.command("predict")
@predict_options
def predict_command(**kw) -> None:
    """Run a Sa2VA checkpoint (optionally with DeSa2VA heads) over a benchmark; write the scorer's format."""
    predict_from_options(**kw)


__all__ = [
    "ImageTask", "PredictResult", "RunSpec", "VideoTask", "get_model", "load_frames",
    "predict_command", "predict_from_options", "predict_image_protocol", "predict_options", "predict_video", "predict_video_protocol", "prompt_for",
    "run_predict",
]
