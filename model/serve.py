"""`refsav serve`: Sa2VA (or DeSa2VA) behind an OpenAI-compatible HTTP API.

    POST /v1/chat/completions   one user turn: text + an image or a video; answers a
                                chat completion plus the `refsav` extension field
                                (one masklet per [SEG], COCO RLE per frame)
    GET  /v1/models             the one model this server holds
    GET  /health                liveness and queue length (no key needed)

The request schema, the limits and the extension field are documented in docs/serve.md.

Design:
* The HTTP side (FastAPI on uvicorn, imported only when the server starts, so refsav
  works without the `serve` extra) reads the body with a size and time limit, parses it
  into a `ChatRequest` (frames decoded on a worker thread) and hands it to the `Batcher`.
* The `Batcher` owns the model on one thread: it takes the first queued request, waits a
  few milliseconds for more, groups those that share their frames and settings, and
  runs each group through `predict_group`, the single place that calls the model.
* Every bad request is a `RequestError`: a 4xx with an OpenAI-style JSON error and one
  log line. Anything else is a 500 with one log line; no traceback reaches the log.
* Without an API key the server listens on loopback only.
"""
# No `from __future__ import annotations`: FastAPI reads the route functions' annotations
# (`request: Request`) at run time, and Request is imported only inside create_app.
import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import hmac
import io
import ipaddress
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import click

from refsav.schemas.errors import RefsavError, SchemaError

EXTENSION = "refsav"  # request and response field that carries what OpenAI's schema lacks
EXTENSION_VERSION = 1
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
# Request options of the extension field, and the PredictOptions field each sets.
EXTENSION_OPTIONS = {"key_frames": "key_frames", "num_key_frames": "num_key_frames", "sam2_norm": "sam2_norm",
                     "inference": "inference"}
DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)

log = logging.getLogger("refsav.serve")


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. The defaults admit a 256-frame 1080p video."""

    max_body_bytes: int = 256 << 20
    max_frames: int = 256
    max_frame_pixels: int = 3840 * 2160
    max_request_pixels: int = 256 * 1920 * 1080  # all frames together: bounds decoded memory
    max_tokens: int = 2048  # cap on max_tokens, and its default
    max_queue: int = 16  # requests admitted (decoding, queued or running) at once
    request_timeout_s: float = 600.0  # from the body's arrival to the answer
    body_timeout_s: float = 60.0  # to receive the body


@dataclass(frozen=True)
class ServeConfig:
    model_id: str  # the name clients put in "model"
    dtype: str = "float32"  # reported in /v1/models, so that clients can record it
    device: str = "cpu"
    desa2va: bool = False
    api_key: str | None = None
    media_root: Path | None = None  # resolved; None: video_url is refused
    limits: Limits = Limits()
    max_batch: int = 8
    batch_wait_s: float = 0.005


class RequestError(Exception):
    """A request the server refuses: HTTP `status` with an OpenAI-style error body."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 408: "timeout", 413: "request_too_large", 503: "server_busy",
             504: "timeout"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        self.status, self.message, self.param, self.code = status, " ".join(message.split()), param, code
        super().__init__(self.message)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "error"),
                          "param": self.param, "code": self.code}}


# ----------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class Visual:
    """The decoded image or video of a request. `key` identifies the content, so that
    requests about the same frames can be served together."""

    is_video: bool
    frames: tuple  # RGB PIL images or (H, W, 3) uint8 arrays, one size
    key: str

    @property
    def size(self) -> tuple[int, int]:
        first = self.frames[0]
        return (first.height, first.width) if hasattr(first, "height") else tuple(first.shape[:2])


@dataclass(frozen=True)
class ChatRequest:
    text: str  # the user's text; "<image>" marks where the frames go (else before it)
    visual: Visual
    options: Any  # refsav.model.config.PredictOptions
    answer: str | None  # forced answer (extension): the mask path without generation


def decode_data_url(url: Any, where: str) -> bytes:
    if not isinstance(url, str):
        raise RequestError(400, f"expected a data URL string, got {type(url).__name__}", param=where)
    m = DATA_URL.match(url)
    if m is None:
        # Remote URLs are never fetched: the server reads nothing the operator did not offer.
        raise RequestError(400, "expected a base64 data URL (data:image/...;base64,...)", param=where)
    try:
        return base64.b64decode(url[m.end():], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "not valid base64", param=where) from None


def decode_image(data: bytes, where: str, limits: Limits):
    """Bytes → RGB PIL image, as `refsav predict` reads frame files (PIL, convert("RGB"));
    the size is checked from the header before any pixel is decoded."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in IMAGE_FORMATS:
                raise RequestError(400, f"image format {img.format} is not one of {', '.join(IMAGE_FORMATS)}",
                                   param=where)
            if img.width * img.height > limits.max_frame_pixels:
                raise RequestError(413, f"image is {img.width}x{img.height}, over the server's limit of "
                                        f"{limits.max_frame_pixels} pixels", param=where)
            return img.convert("RGB")
    except RequestError:
        raise
    except Image.UnidentifiedImageError:
        raise RequestError(400, "not a readable image (unknown format)", param=where) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise RequestError(413, "the image would decode to too many pixels", param=where) from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise RequestError(400, f"not a readable image ({str(err)[:120]})", param=where) from None


def resolve_media(url: Any, root: Path | None, where: str) -> Path:
    """A `video_url` → a regular file under the media root. Symlinks are followed and
    the target must still lie under the root."""
    if root is None:
        raise RequestError(403, "this server reads no files: start it with --media-root to accept video_url",
                           param=where)
    if not isinstance(url, str) or not url or "\x00" in url:
        raise RequestError(400, "expected a path under the media root", param=where)
    rel = url[len("file://"):] if url.startswith("file://") else url
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", rel):
        raise RequestError(400, "video_url must be a path under the media root (no remote URLs)", param=where)
    # Outside the root by its very spelling: refused before the file system is asked, so the
    # answer says nothing about what exists out there.
    if not Path(os.path.normpath(root / rel)).is_relative_to(root):
        raise RequestError(403, "the path leads outside the media root", param=where)
    try:
        path = (root / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        raise RequestError(404, "no such file under the media root", param=where) from None
    if not path.is_relative_to(root):
        raise RequestError(403, "the path leads outside the media root", param=where)
    if not path.is_file():
        raise RequestError(400, "not a regular file", param=where)
    return path


def read_video(path: Path, root: Path, where: str, limits: Limits) -> tuple:
    """Decode a video file under the media root, checked against the limits first.

    The file is opened once and read through its descriptor, whose real path is checked
    again, so a symlink swapped in after `resolve_media` cannot lead outside the root."""
    from refsav.schemas.media import probe_video, read_frames

    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for a FIFO or device since the check
            raise RequestError(400, "not a regular file", param=where)
        fd_path = f"/proc/self/fd/{fd}"
        if os.path.exists(fd_path):
            if not Path(os.path.realpath(fd_path)).is_relative_to(root):
                raise RequestError(403, "the path leads outside the media root", param=where)
        else:  # no /proc: read the checked path itself
            fd_path = str(path)
        try:
            info = probe_video(fd_path)
            if info.num_frames > limits.max_frames:
                raise RequestError(413, f"the video has {info.num_frames} frames, over the server's limit of "
                                        f"{limits.max_frames}", param=where)
            if info.width * info.height > limits.max_frame_pixels or \
                    info.num_frames * info.width * info.height > limits.max_request_pixels:
                raise RequestError(413, f"the video's {info.num_frames} frames of {info.width}x{info.height} "
                                        "are over the server's pixel limits", param=where)
            frames = read_frames(fd_path)
        except SchemaError as err:
            raise RequestError(400, f"unreadable video: {err.message}", param=where) from None
    finally:
        os.close(fd)
    return tuple(frames)


def _frames_of(part: dict, kind: str, where: str, cfg: ServeConfig) -> Visual:
    limits = cfg.limits
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        data = decode_data_url(url, f"{where}.image_url.url")
        img = decode_image(data, f"{where}.image_url.url", limits)
        return Visual(False, (img,), "image:" + hashlib.sha256(data).hexdigest())
    if kind == "video":
        urls = part.get("video")
        if not isinstance(urls, list) or not urls:
            raise RequestError(400, "expected a non-empty list of frame data URLs", param=f"{where}.video")
        if len(urls) > limits.max_frames:
            raise RequestError(413, f"{len(urls)} frames, over the server's limit of {limits.max_frames}",
                               param=f"{where}.video")
        digest = hashlib.sha256()
        frames = []
        total = 0
        for i, url in enumerate(urls):
            data = decode_data_url(url, f"{where}.video[{i}]")
            digest.update(hashlib.sha256(data).digest())
            img = decode_image(data, f"{where}.video[{i}]", limits)
            if frames and img.size != frames[0].size:
                raise RequestError(400, f"frame is {img.height}x{img.width}, frame 0 is "
                                        f"{frames[0].height}x{frames[0].width}", param=f"{where}.video[{i}]")
            total += img.width * img.height
            if total > limits.max_request_pixels:
                raise RequestError(413, f"the frames hold over {limits.max_request_pixels} pixels, the server's limit",
                                   param=f"{where}.video")
            frames.append(img)
        return Visual(True, tuple(frames), "frames:" + digest.hexdigest())
    # video_url
    url = part.get("video_url")
    url = url.get("url") if isinstance(url, dict) else url
    param = f"{where}.video_url.url"
    path = resolve_media(url, cfg.media_root, param)
    st = path.stat()
    frames = read_video(path, cfg.media_root, param, limits)
    return Visual(True, frames, f"file:{path}:{st.st_size}:{st.st_mtime_ns}")


def _int_field(obj: dict, name: str, default: int, low: int, high: int) -> int:
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(400, f"must be an integer from {low} to {high}", param=name)
    return value


def parse_request(raw: bytes, cfg: ServeConfig) -> ChatRequest:
    """The body of a chat completion request → `ChatRequest` (frames decoded).

    One user message; its content is a string or a list of parts: `text` parts (joined
    with newlines) and exactly one visual part, `image_url` (a data URL), `video` (a list
    of frame data URLs) or `video_url` (a path under the media root)."""
    from refsav.schemas.io import parse_json

    from .config import DEFAULT_NUM_KEY_FRAMES, PredictOptions

    try:
        obj = parse_json(raw, file="request body")
    except SchemaError as err:
        raise RequestError(400, err.message) from None
    if not isinstance(obj, dict):
        raise RequestError(400, "the body must be a JSON object")
    if obj.get("model") != cfg.model_id:
        raise RequestError(404, f"unknown model {str(obj.get('model'))[:80]!r}; this server holds {cfg.model_id!r}",
                           param="model", code="model_not_found")
    if obj.get("stream"):
        raise RequestError(400, "streaming is not supported", param="stream")
    if obj.get("n") not in (None, 1):
        raise RequestError(400, "only n=1 is supported", param="n")
    tokens = obj.get("max_completion_tokens", obj.get("max_tokens"))
    max_tokens = _int_field({"max_tokens": tokens}, "max_tokens", cfg.limits.max_tokens, 0, cfg.limits.max_tokens)
    messages = obj.get("messages")
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict) \
            or messages[0].get("role") != "user":
        raise RequestError(400, "expected exactly one message, from the user (Sa2VA answers single turns)",
                           param="messages")
    content = messages[0].get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise RequestError(400, "content must be a string or a list of parts", param="messages[0].content")
    texts, visuals = [], []
    for i, part in enumerate(content):
        where = f"messages[0].content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "video", "video_url"):
            visuals.append((i, part, kind))
        else:
            raise RequestError(400, "expected a part of type text, image_url, video or video_url", param=where)
    if len(visuals) != 1:
        raise RequestError(400, f"expected exactly one image or video, got {len(visuals)}",
                           param="messages[0].content")
    ext = obj.get(EXTENSION, {})
    if not isinstance(ext, dict):
        raise RequestError(400, "must be an object", param=EXTENSION)
    unknown = sorted(set(ext) - {"answer", *EXTENSION_OPTIONS})
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(unknown)}", param=EXTENSION)
    answer = ext.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise RequestError(400, "must be a string", param=f"{EXTENSION}.answer")
    settings = {EXTENSION_OPTIONS[k]: v for k, v in ext.items() if k in EXTENSION_OPTIONS}
    if "num_key_frames" in settings:
        settings["num_key_frames"] = _int_field(settings, "num_key_frames", 5, 1, cfg.limits.max_frames)
    elif settings.get("inference") in DEFAULT_NUM_KEY_FRAMES:
        settings["num_key_frames"] = DEFAULT_NUM_KEY_FRAMES[settings["inference"]]
    try:
        options = PredictOptions(max_new_tokens=max_tokens, **settings)
    except RefsavError as err:
        raise RequestError(400, err.message, param=f"{EXTENSION}.{err.location.field}") from None
    i, part, kind = visuals[0]
    visual = _frames_of(part, kind, f"messages[0].content[{i}]", cfg)
    return ChatRequest("\n".join(texts), visual, options, answer)


# ----------------------------------------------------------------------------- the batcher


@dataclass
class Job:
    request: ChatRequest
    deadline: float  # time.monotonic()
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    batch_size: int = 0  # how many requests the worker took together with this one
    queued_s: float = 0.0  # from submission to the start of its group's prediction
    predict_s: float = 0.0  # its group's prediction (shared by the group's requests)
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class Group:
    """Queued requests about the same frames with the same settings."""

    visual: Visual
    options: Any
    jobs: list[Job]


def predict_group(model, group: Group) -> list:
    """Predict every request of a group: one visual input, several prompts.

    The only place the server calls the model. Sa2VA takes the group's prompts in one
    pass (`predict_batch`: the vision tower once, batched generation, each frame encoded
    once; the same results as `predict` per prompt); DeSa2VA heads go one at a time."""
    v = group.visual
    if hasattr(model, "predict_batch"):
        return model.predict_batch([job.request.text for job in group.jobs],
                                   image=None if v.is_video else v.frames[0],
                                   video=list(v.frames) if v.is_video else None, options=group.options,
                                   answers=[job.request.answer for job in group.jobs])
    return [model.predict(job.request.text, image=None if v.is_video else v.frames[0],
                          video=list(v.frames) if v.is_video else None, options=group.options,
                          answer=job.request.answer) for job in group.jobs]


def group_jobs(jobs: Sequence[Job]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for job in jobs:
        key = (job.request.visual.key, job.request.options)
        if key not in groups:
            groups[key] = Group(job.request.visual, job.request.options, [])
        groups[key].jobs.append(job)
    return list(groups.values())


class Batcher:
    """One thread owns the model; requests queue here and leave in groups."""

    def __init__(self, model, *, max_batch: int, wait_s: float, threads: int | None = None):
        self.model, self.max_batch, self.wait_s, self.threads = model, max_batch, wait_s, threads
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="refsav-serve-model", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> concurrent.futures.Future:
        self.queue.put(job)
        return job.future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=5)

    def _gather(self, first: Job) -> list[Job]:
        jobs = [first]
        end = time.monotonic() + self.wait_s
        while len(jobs) < self.max_batch:
            try:
                nxt = self.queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if nxt is None:
                self.queue.put(None)  # stop after this batch
                break
            jobs.append(nxt)
        return jobs

    def _loop(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        while True:
            first = self.queue.get()
            if first is None:
                return
            jobs = self._gather(first)
            now = time.monotonic()
            live = []
            for job in jobs:
                # A request whose client gave up (cancelled) or whose time ran out in the queue is dropped.
                if not job.future.set_running_or_notify_cancel():
                    continue
                if now > job.deadline:
                    job.future.set_exception(RequestError(504, "the request waited in the queue past the time limit"))
                    continue
                job.batch_size = len(jobs)
                live.append(job)
            for group in group_jobs(live):
                t0 = time.monotonic()
                for job in group.jobs:
                    job.queued_s = t0 - job.submitted
                try:
                    preds = predict_group(self.model, group)
                except RefsavError as err:
                    for job in group.jobs:
                        job.future.set_exception(RequestError(400, str(err)))
                    continue
                except Exception as err:  # noqa: BLE001 - reported to each waiting client
                    for job in group.jobs:
                        job.future.set_exception(err)
                    continue
                t1 = time.monotonic()
                for job, pred in zip(group.jobs, preds):
                    job.predict_s = t1 - t0
                    job.future.set_result(pred)


# ----------------------------------------------------------------------------- the answer


def completion_body(model_id: str, model, job: Job, pred) -> dict:
    """The chat completion, with one masklet per [SEG] as COCO RLE per frame."""
    from refsav.schemas import rle as rle_ops

    req = job.request
    stops = set(getattr(getattr(model, "sa2va", model), "stop_ids", ()))
    ids = tuple(pred.answer_ids)
    capped = req.answer is None and len(ids) >= req.options.max_new_tokens and (not ids or ids[-1] not in stops)
    h, w = req.visual.size
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": pred.text},
                     "finish_reason": "length" if capped else "stop", "logprobs": None}],
        EXTENSION: {
            "version": EXTENSION_VERSION,
            "frames": len(req.visual.frames),
            "height": int(h),
            "width": int(w),
            "key_frames": [int(k) for k in pred.key_frames],
            "batch_size": job.batch_size,
            "timing": {"queued_s": round(job.queued_s, 6), "predict_s": round(job.predict_s, 6)},
            "masklets": [[rle_ops.encode(frame).to_json() for frame in masklet] for masklet in pred.masks],
        },
    }


# ----------------------------------------------------------------------------- the app


class _Admission:
    """Counts requests between the body's arrival and the answer; refuses past the limit."""

    def __init__(self, limit: int):
        self.limit, self.count, self.lock = limit, 0, threading.Lock()

    def __enter__(self):
        with self.lock:
            if self.count >= self.limit:
                raise RequestError(503, f"the server is busy ({self.limit} requests in progress); retry later")
            self.count += 1
        return self

    def __exit__(self, *exc):
        with self.lock:
            self.count -= 1
        return False


async def _read_body(request, limits: Limits) -> bytes:
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes):
        raise RequestError(413, f"the body is over the server's limit of {limits.max_body_bytes} bytes")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise RequestError(413, f"the body is over the server's limit of {limits.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the body did not arrive within {limits.body_timeout_s:g} s") from None
    except ClientDisconnect:
        raise RequestError(400, "the client disconnected while sending the body") from None


def create_app(model, cfg: ServeConfig, batcher: Batcher):
    """The FastAPI app around a loaded model and its batcher."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="refsav serve", docs_url=None, redoc_url=None, openapi_url=None)
    admission = _Admission(cfg.limits.max_queue)
    created = int(time.time())

    def error(err: RequestError, request) -> JSONResponse:
        log.warning("%d %s %s: %s", err.status, request.method, request.url.path, err.message)
        return JSONResponse(err.body(), status_code=err.status)

    def check_key(request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), cfg.api_key.encode()):
            raise RequestError(401, "missing or wrong API key (Authorization: Bearer KEY)")

    def model_card() -> dict:
        return {"id": cfg.model_id, "object": "model", "created": created, "owned_by": "refsav",
                EXTENSION: {"dtype": cfg.dtype, "device": cfg.device, "desa2va": cfg.desa2va}}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # Unknown routes and methods answer in the same error format as everything else.
        return error(RequestError(exc.status_code, str(exc.detail)), request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": cfg.model_id, "in_progress": admission.count}

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            check_key(request)
        except RequestError as err:
            return error(err, request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model_info(name: str, request: Request):
        try:
            check_key(request)
            if name != cfg.model_id:
                raise RequestError(404, f"unknown model {name[:80]!r}", param="model", code="model_not_found")
        except RequestError as err:
            return error(err, request)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            check_key(request)
            with admission:
                raw = await _read_body(request, cfg.limits)
                deadline = time.monotonic() + cfg.limits.request_timeout_s
                req = await run_in_threadpool(parse_request, raw, cfg)
                del raw
                job = Job(req, deadline)
                fut = asyncio.wrap_future(batcher.submit(job))
                try:
                    pred = await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    raise RequestError(504, f"no answer within the server's limit of "
                                            f"{cfg.limits.request_timeout_s:g} s") from None
                body = await run_in_threadpool(completion_body, cfg.model_id, model, job, pred)
            return JSONResponse(body)
        except RequestError as err:
            return error(err, request)
        except Exception as err:  # noqa: BLE001 - a bug, not a bad request: one line, no traceback
            log.error("500 %s %s: internal error: %s: %s", request.method, request.url.path,
                      type(err).__name__, " ".join(str(err).split())[:300])
            return JSONResponse({"error": {"message": "internal server error", "type": "server_error",
                                           "param": None, "code": None}}, status_code=500)

    return app


# ----------------------------------------------------------------------------- the command


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _import_server():
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise RefsavError(f"refsav serve needs the serve extra ({err.name} is missing): "
                          "pip install 'refsav[serve]'") from None
    return uvicorn


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise RefsavError(f"cannot listen on {host}:{port} ({err.strerror})", field="port") from None
    sock.listen(128)
    return sock


@click.command("serve")
@click.option("--model", "model_path", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Sa2VA checkpoint folder (released layout, safetensors).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --api-key.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port; 0 picks a free one (the ready line names it).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N  [default: cuda if available, else cpu]")
@click.option("--dtype", default="bf16", show_default=True,
              type=click.Choice(["bf16", "bfloat16", "fp16", "float16", "fp32", "float32"]))
@click.option("--api-key", default=None, envvar="REFSAV_API_KEY",
              help="Require 'Authorization: Bearer KEY' on /v1 (also from $REFSAV_API_KEY).")
@click.option("--media-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder whose video files requests may name in video_url; nothing outside it is read.")
@click.option("--desa2va-heads", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="DeSa2VA heads (refsav model train-heads): serve their fused masks instead of Sa2VA's.")
@click.option("--sam2-original", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Sa2VA-i (requests with refsav.inference = sa2va-i): Meta's SAM-2 file of the original decoder.")
@click.option("--model-name", default=None, help="Model id clients send [default: the checkpoint folder's name].")
@click.option("--allow-pickle", is_flag=True, default=False,
              help="Also read pickle weight files, through torch.load(weights_only=True).")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1),
              help="Most requests taken from the queue together.")
@click.option("--batch-wait-ms", default=5.0, show_default=True, type=click.FloatRange(0),
              help="How long the first request of a batch waits for others.")
@click.option("--max-frames", default=Limits.max_frames, show_default=True, type=click.IntRange(1))
@click.option("--max-body-mb", default=Limits.max_body_bytes >> 20, show_default=True, type=click.IntRange(1))
@click.option("--max-tokens", default=Limits.max_tokens, show_default=True, type=click.IntRange(0),
              help="Most tokens a request may generate (and the default).")
@click.option("--max-queue", default=Limits.max_queue, show_default=True, type=click.IntRange(1),
              help="Requests in progress at once; more get 503.")
@click.option("--timeout", "timeout_s", default=Limits.request_timeout_s, show_default=True,
              type=click.FloatRange(0, min_open=True), help="Seconds a request may take; then 504.")
@click.option("--threads", default=None, type=click.IntRange(1), help="torch CPU threads of the model.")
def serve_command(model_path: Path, host: str, port: int, device: str | None, dtype: str, api_key: str | None,
                  media_root: Path | None, desa2va_heads: Path | None, sam2_original: Path | None,
                  model_name: str | None, allow_pickle: bool,
                  max_batch: int, batch_wait_ms: float, max_frames: int, max_body_mb: int, max_tokens: int,
                  max_queue: int, timeout_s: float, threads: int | None) -> None:
    """Serve a Sa2VA checkpoint over an OpenAI-compatible HTTP API (docs/serve.md)."""
    from .predict import DTYPES, _load_model, _with_heads, _with_sam2_original

    if not api_key and not is_loopback(host):
        raise RefsavError(f"refusing to listen on {host} without --api-key: anyone who reaches it could use the "
                          "model; give --api-key or use 127.0.0.1", field="host")
    if not model_path.is_dir():
        raise SchemaError("not a checkpoint folder", file=model_path)
    root = None
    if media_root is not None:
        if not media_root.is_dir():
            raise SchemaError("the media root is not a folder", file=media_root)
        root = media_root.resolve()
    uvicorn = _import_server()
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    model = _load_model(str(model_path), DTYPES[dtype], device, allow_pickle)
    if sam2_original is not None:
        if not sam2_original.is_file():
            raise SchemaError("SAM-2 file not found", file=sam2_original)
        model = _with_sam2_original(model, str(sam2_original), None)
    if desa2va_heads is not None:
        model = _with_heads(model, str(desa2va_heads), None)
    limits = Limits(max_body_bytes=max_body_mb << 20, max_frames=max_frames, max_tokens=max_tokens,
                    max_queue=max_queue, request_timeout_s=timeout_s)
    cfg = ServeConfig(model_id=model_name or model_path.resolve().name, dtype=DTYPES[dtype], device=device,
                      desa2va=desa2va_heads is not None, api_key=api_key or None, media_root=root,
                      limits=limits, max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000)
    sock = _bind(host, port)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    batcher = Batcher(model, max_batch=max_batch, wait_s=cfg.batch_wait_s, threads=threads)
    app = create_app(model, cfg, batcher)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"refsav serve: model {cfg.model_id!r} ({device}, {DTYPES[dtype]}) loaded in "
               f"{time.perf_counter() - t0:.1f} s; listening on http://{shown}:{bound}", err=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=bound, log_level="info", access_log=True,
                                           timeout_keep_alive=30, limit_concurrency=max(64, 4 * max_queue)))
    try:
        server.run(sockets=[sock])
    finally:
        batcher.close()
        sock.close()


__all__ = ["Batcher", "ChatRequest", "Group", "Limits", "RequestError", "ServeConfig", "create_app",
           "parse_request", "predict_group", "serve_command"]
