"""End to end: can `refsav annotate` keep a VLM server (and a grounder) busy?

The servers are simulated, each in its own process on 127.0.0.1: an OpenAI-compatible VLM
with a fixed latency and a fixed number of slots (0.5 s and 32 slots = 64 requests/s by
default; requests beyond the slots queue), and optionally a `refsav serve`-style grounder
with its own latency and slots. The VLM answers each built-in stage in the format its
prompt asks for, so no object is dropped or retried; the grounder answers empty masks of
the right size. The workload is SA-V-like: synthetic 1280x720 H.264 clips at 24 fps with a
masklet every 4th frame (6 fps, as SA-V annotates), from `refsav.pipelines.sample`.

The real `refsav annotate` CLI runs against them with 1 and with 2 local workers. Reported:

- requests/s that the VLM server answered, against its capacity (slots / latency), over
  the steady part of the run (the middle 80% of the answers) and over the whole run;
- CPU per object: CPU seconds of the annotate process and all its children (Dask workers)
  divided by the objects annotated;
- where the time goes: a stack sampler in a profiled 1-worker run in this process
  (`annotate()` with the inline executor), every thread classified as decoding, rendering,
  building requests, HTTP/JSON, cache, or waiting.

    .venv/bin/python perf/bench_annotate_throughput.py [--quick] [--json out.json]

Target: at least 90% of the VLM server's capacity with 2 workers. A full run also
rechecks the targets of perf/bench_annotate_overhead.py (decode within 1.25x of FFmpeg's
floor, per-object work at most 30 ms at 1080p), with that script's own timing functions,
and rewrites this benchmark's section of perf/README.md; --quick writes nothing there.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perf.readme import update_section  # noqa: E402

VLM_MODEL = "sim-vlm"
GROUNDER_MODEL = "sim-sa2va"
TARGET_SHARE = 0.90
# The restated targets of bench_annotate_overhead.py (issue 14).
DECODE_RATIO_TARGET = 1.25
WORK_MS_TARGET = 30.0


# ============================================================================ simulated servers
#
# A deliberately small HTTP/1.1 server on asyncio streams: keep-alive, Content-Length bodies
# (what the openai client sends), JSON answers. Its own cost per request is a JSON parse,
# so that on a 2-core machine the simulation takes as little CPU from the client as possible.


@dataclass
class _Log:
    """One answered chat request: arrival, slot taken, answer sent (seconds since the epoch)."""

    arrived: float
    started: float
    finished: float
    kind: str  # the stage it answered (vlm) or "segment" (grounder)
    images: int = 0  # images (frames) in the request
    body_bytes: int = 0


class SimServer:
    def __init__(self, kind: str, latency: float, slots: int) -> None:
        self.kind, self.latency, self.slots = kind, latency, slots
        self.log: list[_Log] = []
        self.errors = 0
        self._slots: asyncio.Semaphore | None = None

    async def serve(self, port: int, ready: "callable") -> None:
        self._slots = asyncio.Semaphore(self.slots)
        server = await asyncio.start_server(self._connection, "127.0.0.1", port, backlog=1024)
        ready(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path = line.decode("latin-1").split(" ")[:2]
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                size = int(headers.get("content-length", "0"))
                body = await reader.readexactly(size) if size else b""
                status, payload = await self._route(method, path.split("?")[0].rstrip("/"), body)
                data = json.dumps(payload).encode()
                writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % (status, b"OK" if status == 200 else b"ERROR", len(data)) + data)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if method == "GET" and path == "/v1/models":
            model = VLM_MODEL if self.kind == "vlm" else GROUNDER_MODEL
            card = {"id": model, "object": "model", "owned_by": "bench"}
            if self.kind == "grounder":
                card["refsav"] = {"dtype": "bfloat16", "device": "simulated", "desa2va": False}
            return 200, {"object": "list", "data": [card]}
        if method == "GET" and path == "/health":
            return 200, {"status": "ok", "model": GROUNDER_MODEL, "in_progress": 0}
        if method == "GET" and path == "/bench/log":
            return 200, {"log": [asdict(x) for x in self.log], "errors": self.errors}
        if method == "POST" and path == "/v1/chat/completions":
            arrived = time.time()
            try:
                kind, answer = vlm_answer(json.loads(body)) if self.kind == "vlm" else grounder_answer(body)
            except (ValueError, KeyError, TypeError, IndexError) as err:
                self.errors += 1
                return 400, {"error": {"message": f"{type(err).__name__}: {err}", "type": "invalid_request_error"}}
            async with self._slots:
                started = time.time()
                await asyncio.sleep(self.latency)
            self.log.append(_Log(arrived, started, time.time(), kind, body.count(b'"data:image/'), len(body)))
            return 200, answer
        return 404, {"error": {"message": "not found"}}


def _prompt_and_images(request: dict) -> tuple[str, list[str]]:
    content = request["messages"][-1]["content"]
    if isinstance(content, str):
        return content, []
    text = "\n".join(p["text"] for p in content if p.get("type") == "text")
    urls = [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]
    for p in content:
        if p.get("type") == "video":
            urls.extend(p["video"])
    return text, urls


_WORDS = ("red", "blue", "green", "striped", "round", "tall", "small", "shiny", "wooden", "metal", "dotted",
          "square", "yellow", "soft", "bright", "dark", "left", "right", "upper", "lower")


def _completion(model: str, text: str, **extra) -> dict:
    return {"id": "sim", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": len(text.split()),
                      "total_tokens": 100 + len(text.split())}, **extra}


def vlm_answer(request: dict) -> tuple[str, dict]:
    """The answer each built-in stage's prompt asks for, with words drawn from a hash of the
    request: objects get different descriptions (none is flagged ambiguous by the text) and
    every answer parses on the first try (nothing is dropped or retried)."""
    prompt, images = _prompt_and_images(request)
    digest = hashlib.sha256(prompt.encode() + "".join(u[-64:] for u in images).encode()).digest()
    a, b, c, d = (_WORDS[x % len(_WORDS)] for x in digest[:4])
    n = digest[4]
    if "Answer YES or NO" in prompt:
        kind, text = "check", "YES. The description fits the highlighted object."
    elif "Category:" in prompt:
        kind, text = "object", f"Category: {a} shape\nDescription: A {b} {a} shape number {n} with a {c} {d} rim."
    elif "LONG:" in prompt:
        kind, text = "merge", (f"LONG: The {b} {a} shape number {n} on the {c} side that drifts {d}.\n"
                               f"SHORT: {b} {a} shape {n}\nSHORT: the {c} {d} one {n}")
    elif "where the highlighted object is" in prompt:
        kind, text = "scene", f"It is on the {c} side, next to a {d} shape."
    else:
        kind, text = "video", f"It moves slowly towards the {d} edge, {c} of centre."
    return kind, _completion(request.get("model", VLM_MODEL), text)


def image_size(url: str) -> tuple[int, int]:
    """(height, width) from a data URL's PNG or JPEG header, without decoding the pixels."""
    raw = base64.b64decode(url.split(",", 1)[1][:64 * 1024])  # the header is near the start
    if raw.startswith(b"\x89PNG"):
        w, h = struct.unpack(">II", raw[16:24])
        return h, w
    i = 2
    while i + 9 < len(raw):  # JPEG: walk the segments to the first start-of-frame
        marker, length = raw[i + 1], struct.unpack(">H", raw[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", raw[i + 5:i + 9])
            return h, w
        i += 2 + length
    raise ValueError("no image size in the header")


def grounder_answer(body: bytes) -> tuple[str, dict]:
    """A `refsav serve` answer: one [SEG], its masklet an empty mask per frame of the right size.

    The body holds every frame as a data URL (megabytes per request); it is scanned, not
    parsed, so that the simulation takes little of the CPU it shares with the client."""
    from refsav.schemas import rle as rle_ops

    frames = body.count(b'"data:image/')
    if not frames:
        raise ValueError("no image or video")
    start = body.index(b'"data:image/') + 1
    h, w = image_size(body[start:start + 96 * 1024].split(b'"', 1)[0].decode("ascii"))
    empty = rle_ops.empty(h, w).to_json()
    ext = {"version": 1, "frames": frames, "height": h, "width": w, "key_frames": list(range(min(5, frames))),
           "masklets": [[empty] * frames], "batch_size": 1, "timing": {"queued_s": 0.0, "predict_s": 0.0}}
    return "segment", _completion(GROUNDER_MODEL, "Sure, [SEG].", refsav=ext)


def serve_main(kind: str, latency: float, slots: int) -> None:
    """Run a simulated server in this process; prints `port N` once listening."""
    def ready(port: int) -> None:
        print(f"port {port}", flush=True)

    asyncio.run(SimServer(kind, latency, slots).serve(0, ready))


class ServerProcess:
    """A simulated server in a child process (this script with --serve)."""

    def __init__(self, kind: str, latency: float, slots: int) -> None:
        self.kind, self.latency, self.slots = kind, latency, slots
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--latency", str(latency), "--slots", str(slots)],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.proc.kill()
            raise SystemExit(f"the simulated {kind} server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    @property
    def capacity(self) -> float:
        return self.slots / self.latency

    def log(self) -> tuple[list[_Log], int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/bench/log", timeout=30) as r:
            d = json.loads(r.read())
        return [_Log(**x) for x in d["log"]], d["errors"]

    def cpu_seconds(self) -> float:
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ============================================================================ measuring a run


@dataclass
class Rate:
    requests: int  # answered during the run
    whole_s: float  # first arrival to last answer
    whole_rps: float
    steady_s: float  # the middle 80% of the answers
    steady_rps: float
    steady_busy: float  # mean share of the slots held over the steady window
    queue_p50_s: float  # time waiting for a slot, median


def rate_of(log: list[_Log], slots: int) -> Rate:
    if len(log) < 10:
        return Rate(len(log), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    ends = sorted(x.finished for x in log)
    t0, t1 = min(x.arrived for x in log), ends[-1]
    lo, hi = ends[len(ends) // 10], ends[len(ends) * 9 // 10]
    n_steady = len(ends) * 9 // 10 - len(ends) // 10
    busy = sum(max(0.0, min(x.finished, hi) - max(x.started, lo)) for x in log)
    return Rate(len(log), t1 - t0, len(log) / (t1 - t0), hi - lo, n_steady / (hi - lo), busy / (slots * (hi - lo)),
                statistics.median(x.started - x.arrived for x in log))


def timeline(log: list[_Log], step: float = 0.5) -> list[tuple[float, float, float]]:
    """(seconds from the first arrival, mean slots held, mean requests queued) per `step`."""
    if not log:
        return []
    t0 = min(x.arrived for x in log)
    n = int((max(x.finished for x in log) - t0) / step) + 1
    held, queued = [0.0] * n, [0.0] * n

    def spread(into: list[float], a: float, b: float) -> None:
        a, b = a - t0, b - t0
        i = int(a / step)
        while a < b and i < n:
            end = min(b, (i + 1) * step)
            into[i] += (end - a) / step
            a, i = end, i + 1

    for x in log:
        spread(queued, x.arrived, x.started)
        spread(held, x.started, x.finished)
    return [(round(i * step, 2), round(held[i], 1), round(queued[i], 1)) for i in range(n)]


class TreeCPU:
    """CPU seconds of a process and all its descendants, polled (a child's last
    fraction of a second before it exits can be missed)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.seen: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                t = p.cpu_times()
                self.seen[p.pid] = ("annotate" if p.pid == self.root.pid else "children", t.user + t.system)
            except psutil.Error:
                pass

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        out = {"annotate": 0.0, "children": 0.0}
        for role, cpu in self.seen.values():
            out[role] += cpu
        return out


@dataclass
class RunResult:
    workers: int
    shard_size: int
    max_in_flight: int
    objects_seen: int
    objects_kept: int
    dropped: dict
    vlm_calls: int  # the client's count (run.json)
    vlm_failed: int
    server_requests: int  # the server's count
    vlm: Rate
    grounder: Rate | None
    grounder_calls: int | None
    grounder_frames: float | None  # frames per grounder request, mean
    grounder_mb: float | None  # request body, MB, mean
    wall_s: float  # the CLI, start to exit
    cpu_s: dict  # annotate process / its children
    server_cpu_s: float
    load_before: float
    load_after: float
    timeline: list = field(default_factory=list)  # (s, slots held, queued) per 0.5 s, VLM server

    @property
    def cpu_ms_per_object(self) -> float:
        return 1000 * sum(self.cpu_s.values()) / max(1, self.objects_kept)


@functools.lru_cache(maxsize=1)
def annotate_help() -> str:
    return subprocess.run([sys.executable, "-m", "refsav", "annotate", "--help"], capture_output=True, text=True,
                          cwd=ROOT).stdout


def has_grounder_option() -> bool:
    return "--grounder " in annotate_help() or "--grounder\n" in annotate_help()


def annotate_args(data: Path, out: Path, vlm: ServerProcess, grounder: ServerProcess | None, workers: int,
                  max_in_flight: int, shard_size: int, limit: int | None) -> list[str]:
    args = ["annotate", "--input", str(data), "--out", str(out), "--base-url", vlm.base_url, "--model", VLM_MODEL,
            "--workers", str(workers), "--max-in-flight", str(max_in_flight), "--shard-size", str(shard_size),
            "--retries", "0"]
    if limit is not None:
        args += ["--limit", str(limit)]
    if grounder is not None:
        # Empty masks score low: --min-grounding 0 keeps every row, so that the rows are
        # the same with and without the grounder.
        args += ["--grounder", grounder.base_url, "--min-grounding", "0"]
        if "--grounder-max-in-flight" in annotate_help():
            # As for the VLM: each worker alone can fill the grounder's slots.
            args += ["--grounder-max-in-flight", str(grounder.slots)]
    return args


def run_annotate(data: Path, out: Path, vlm: ServerProcess, grounder: ServerProcess | None, workers: int,
                 max_in_flight: int, shard_size: int, limit: int | None = None) -> RunResult:
    before, errors_before = vlm.log()
    g_before = grounder.log()[0] if grounder else []
    server_cpu = vlm.cpu_seconds()
    cmd = [sys.executable, "-m", "refsav",
           *annotate_args(data, out, vlm, grounder, workers, max_in_flight, shard_size, limit)]
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu = TreeCPU(proc.pid)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    cpu_s = cpu.stop()
    if proc.returncode != 0:
        raise SystemExit(f"refsav annotate failed ({proc.returncode}):\n{stdout}\n{stderr[-3000:]}")
    log, errors = vlm.log()
    log = log[len(before):]
    if errors != errors_before:
        raise SystemExit(f"the simulated VLM server refused {errors - errors_before} request(s)")
    summary = json.loads((out / "run.json").read_text())["summary"]
    g_log = grounder.log()[0][len(g_before):] if grounder else None
    g = summary.get("grounding") or {}
    return RunResult(
        workers=workers, shard_size=shard_size, max_in_flight=max_in_flight,
        objects_seen=summary["objects_seen"], objects_kept=summary["objects_kept"],
        dropped=summary["objects_dropped"], vlm_calls=summary["vlm"]["calls"],
        vlm_failed=summary["vlm"]["failed_calls"], server_requests=len(log),
        vlm=rate_of(log, vlm.slots), grounder=rate_of(g_log, grounder.slots) if grounder else None,
        grounder_calls=(g.get("grounder") or {}).get("calls") if grounder else None,
        grounder_frames=statistics.mean(x.images for x in g_log) if g_log else None,
        grounder_mb=statistics.mean(x.body_bytes for x in g_log) / 1e6 if g_log else None,
        wall_s=wall, cpu_s=cpu_s, server_cpu_s=vlm.cpu_seconds() - server_cpu,
        load_before=load_before, load_after=os.getloadavg()[0], timeline=timeline(log))


# ============================================================================ where the time goes

# (category, path fragment or function name) tested from the innermost frame outwards; the
# first match names what the thread is doing.
# Python frames that block in C: the thread is idle (a pool thread waiting for work, a loop
# waiting for sockets, a lock).
_LEAF_WAIT = frozenset({"select", "poll", "wait", "_wait_for_tstate_lock", "get", "acquire", "sleep", "_worker"})
_RULES = (
    ("decode", ("/schemas/media.py",)),
    ("render: JPEG encode", ("/visual/jpeg.py", "view_image")),
    ("render: highlight", ("/visual/highlight.py",)),
    ("render: frames, crops", ("/visual/canvas.py", "/visual/selection.py", "/visual/plan.py", "/visual/views.py")),
    ("SA-V JSON, RLE, hashing inputs", ("/schemas/sav.py", "/schemas/rle.py", "sha256_file")),
    ("request: base64, cache key", ("build_messages", "cache_key", "image_mime", "__post_init__")),
    ("request cache (SQLite)", ("/vlm/cache.py",)),
    ("grounder client: PNG data URLs, RLE", ("/model/serve_client.py",)),
    ("grounding: J&F against every masklet", ("/benchmark/",)),
    ("grounding: frames, policy", ("/annotate/grounding.py", "/refsav/grounding.py")),
    ("HTTP, JSON (openai client)", ("/openai/", "/httpx", "/httpcore", "/h11/", "/anyio/", "/pydantic")),
    ("writing rows", ("write_parquet", "/pyarrow/", "atomic_write")),
    ("stages, parsing answers", ("/annotate/",)),
)


def classify(frame) -> str | None:
    """What a thread is doing, from its stack: None when it is idle (waiting on I/O or a lock)."""
    leaf = frame
    if leaf.f_code.co_name in _LEAF_WAIT or "selectors.py" in leaf.f_code.co_filename:
        return None
    f = frame
    while f is not None:
        name, path = f.f_code.co_name, f.f_code.co_filename
        for category, marks in _RULES:
            if any(m in path or m == name for m in marks):
                return category
        f = f.f_back
    return "other Python (event loop, asyncio)"


class StackSampler:
    """Samples every thread's stack every `interval` seconds; counts busy samples by category."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            self.samples += 1
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                category = classify(frame)
                if category is not None:
                    self.counts[category] += 1

    def __enter__(self) -> "StackSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Profile:
    objects: int
    wall_s: float
    cpu_s: float  # this process, during the run
    busy_s: dict[str, float] = field(default_factory=dict)  # category -> thread-seconds busy
    render_wall_s: float = 0.0  # the run's own stats: prepare_video, per shard
    vlm_wait_s: float = 0.0  # the run's own stats: seconds in answered requests


def profile_run(data: Path, out: Path, vlm: ServerProcess, grounder: ServerProcess | None, max_in_flight: int,
                shard_size: int, limit: int | None = None) -> Profile:
    """`refsav annotate --workers 1` in this process (the inline executor runs the shards
    here too), every thread sampled."""
    import contextlib
    import io

    from refsav.cli import main as refsav_main

    cpu0, t0 = time.process_time(), time.perf_counter()
    with StackSampler() as sampler, contextlib.redirect_stderr(io.StringIO()) as err:
        rc = refsav_main(annotate_args(data, out, vlm, grounder, 1, max_in_flight, shard_size, limit))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if rc:
        raise SystemExit(f"the profiled run failed ({rc}): {err.getvalue()[-2000:]}")
    run = json.loads((out / "run.json").read_text())
    return Profile(run["summary"]["objects_kept"], wall, cpu,
                   # A sample stands for the sampler's real period (the GIL can delay it).
                   {k: v * wall / max(1, sampler.samples) for k, v in sampler.counts.items()},
                   sum(s.get("render_seconds", 0.0) for s in run["shards"]), run["summary"]["vlm"]["seconds"])


# ============================================================================ the overhead targets


def overhead_targets(tmp: Path, repeats: int) -> dict:
    """decode / FFmpeg floor and per-object work without decode at 1080p, measured with
    bench_annotate_overhead's own functions on its default workload."""
    os.environ.setdefault("OPENCV_FOR_THREADS_NUM", "1")
    from perf.bench_annotate_overhead import PHASES, codec_floor_ms, time_video
    from refsav.pipelines.annotate.config import AnnotateConfig
    from refsav.pipelines.sample import CHUNK, SampleConfig, write_sample
    from refsav.pipelines.visual.style import HighlightStyle
    from refsav.schemas.sav import read_sav_json

    import cv2

    cv2.setNumThreads(1)
    folder = tmp / "overhead_1080p"
    write_sample(folder, SampleConfig(videos=3, seed=11, width=1920, height=1080, frames=60, objects=5), workers=2,
                 show_progress=False)
    anns = [read_sav_json(p) for p in sorted((folder / CHUNK).glob("*_manual.json"))]
    style = HighlightStyle(mode="contour")
    decode, work, floor, objects = [], [], [], 0
    for ann in anns:
        runs = [time_video(ann, style, AnnotateConfig.object_frames, 8)[0] for _ in range(repeats)]
        decode.append(statistics.median(r.cpu["decode"] for r in runs))
        work.append(statistics.median(sum(r.cpu[p] for p in PHASES if p != "decode") for r in runs))
        floor.append(statistics.median(codec_floor_ms(ann.video.path) for _ in range(repeats)) / 1000)
        objects += runs[0].objects
    return {"decode_ms_per_video": 1000 * statistics.mean(decode), "floor_ms_per_video": 1000 * statistics.mean(floor),
            "decode_ratio": sum(decode) / sum(floor), "work_ms_per_object": 1000 * sum(work) / objects,
            "videos": len(anns), "objects": objects, "repeats": repeats}


# ============================================================================ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", choices=("vlm", "grounder"), help=argparse.SUPPRESS)
    ap.add_argument("--latency", type=float, default=0.5, help="VLM seconds per request")
    ap.add_argument("--slots", type=int, default=32, help="VLM requests answered at once")
    ap.add_argument("--grounder-latency", type=float, default=1.0)
    ap.add_argument("--grounder-slots", type=int, default=8)
    ap.add_argument("--videos", type=int, default=96)
    ap.add_argument("--objects", type=int, default=6, help="objects per video")
    ap.add_argument("--frames", type=int, default=96, help="frames per clip at 24 fps")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--runs", default="1:8,2:8,2:24",
                    help="WORKERS:SHARD_SIZE pairs, comma-separated (8 = refsav annotate's default shard size)")
    ap.add_argument("--max-in-flight", type=int, default=None, help="per worker (default: --slots)")
    ap.add_argument("--grounded-runs", default="2:8", help="WORKERS:SHARD_SIZE pairs of the runs with a grounder")
    ap.add_argument("--grounded-videos", type=int, default=8,
                    help="videos of the grounded runs (refsav annotate --limit): grounding over HTTP is slow here")
    ap.add_argument("--grounder", choices=("auto", "off"), default="auto",
                    help="auto: also run with a simulated grounder when refsav annotate has --grounder")
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="skip the sampled 1-worker run")
    ap.add_argument("--no-overhead", dest="overhead", action="store_false",
                    help="skip rechecking the 1080p overhead targets")
    ap.add_argument("--data", type=Path, help="keep the generated clips here (reused when present)")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 small clips, fast server; README untouched")
    args = ap.parse_args(argv)
    if args.serve:
        serve_main(args.serve, args.latency if args.serve == "vlm" else args.grounder_latency,
                   args.slots if args.serve == "vlm" else args.grounder_slots)
        return 0
    if args.quick:
        args.videos, args.objects, args.frames, args.size = 6, 3, 24, "640x360"
        args.latency, args.slots, args.grounder_latency, args.grounder_slots = 0.05, 8, 0.05, 4
        args.profile = args.overhead = False
    width, height = (int(v) for v in args.size.split("x"))
    plan = [tuple(int(v) for v in pair.split(":")) for pair in args.runs.split(",")]
    grounded_plan = [tuple(int(v) for v in pair.split(":")) for pair in args.grounded_runs.split(",")]
    mif = args.max_in_flight or args.slots
    started = time.perf_counter()
    load_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp_name:
        tmp = Path(tmp_name)
        data = args.data or tmp / "data"
        from refsav.pipelines.sample import CHUNK, SampleConfig, write_sample

        cfg = SampleConfig(videos=args.videos, seed=14, width=width, height=height, frames=args.frames,
                           objects=args.objects)
        stamp = data / "bench_sample.json"
        t = time.perf_counter()
        if not (stamp.exists() and json.loads(stamp.read_text()) == asdict(cfg)):
            write_sample(data, cfg, workers=min(2, os.cpu_count() or 1), show_progress=False)
            stamp.write_text(json.dumps(asdict(cfg)))
        gen_s = time.perf_counter() - t
        clips = data / CHUNK

        use_grounder = args.grounder == "auto" and has_grounder_option()
        vlm = ServerProcess("vlm", args.latency, args.slots)
        grounder = ServerProcess("grounder", args.grounder_latency, args.grounder_slots) if use_grounder else None
        runs: list[RunResult] = []
        grounded: list[RunResult] = []
        profile = g_profile = None
        try:
            for w, shard in plan:
                r = run_annotate(clips, tmp / f"out_w{w}_s{shard}", vlm, None, w, mif, shard)
                runs.append(r)
                print(f"workers={w} shard-size={shard}: {r.vlm.steady_rps:.1f} req/s steady "
                      f"({r.vlm.steady_rps / vlm.capacity:.0%} of {vlm.capacity:.0f}), {r.vlm.whole_rps:.1f} whole "
                      f"run; {r.objects_kept}/{r.objects_seen} objects; client {r.vlm_calls} requests, server "
                      f"{r.server_requests}; CPU {r.cpu_ms_per_object:.1f} ms/object",
                      flush=True)
            if grounder is not None:
                for w, shard in grounded_plan:
                    r = run_annotate(clips, tmp / f"out_g{w}_s{shard}", vlm, grounder, w, mif, shard,
                                     args.grounded_videos)
                    grounded.append(r)
                    print(f"workers={w} shard-size={shard} + grounder: {r.vlm.steady_rps:.1f} VLM req/s steady, "
                          f"grounder {r.grounder.steady_rps:.1f} req/s of {grounder.capacity:.0f}; {r.objects_kept}/"
                          f"{r.objects_seen} objects; grounder: client {r.grounder_calls} calls, server "
                          f"{r.grounder.requests} requests; CPU {r.cpu_ms_per_object:.1f} ms/object", flush=True)
            if args.profile:
                profile = profile_run(clips, tmp / "out_profile", vlm, None, mif, plan[0][1])
                print(f"profiled 1-worker run: {profile.wall_s:.1f} s, CPU {profile.cpu_s:.1f} s", flush=True)
                if grounder is not None:
                    g_profile = profile_run(clips, tmp / "out_gprofile", vlm, grounder, mif, plan[0][1],
                                            max(1, args.grounded_videos // 2))
                    print(f"profiled 1-worker run with the grounder: {g_profile.wall_s:.1f} s, CPU "
                          f"{g_profile.cpu_s:.1f} s", flush=True)
        finally:
            vlm.close()
            if grounder is not None:
                grounder.close()
        overhead = overhead_targets(tmp, 3) if args.overhead else None

    report = render_report(args, width, height, vlm.capacity, mif, runs, grounded, use_grounder, grounder, g_profile,
                           profile, overhead, gen_s, time.perf_counter() - started, load_start)
    print("\n".join(report))
    for r in runs + grounded:
        objects_total = args.objects * (args.videos if r.grounder is None else min(args.videos, args.grounded_videos))
        # Every object annotated, and the client's request count is the server's: otherwise
        # the figures above measure something else (drops, retries, cache hits).
        if r.objects_kept != objects_total or r.vlm_calls != r.server_requests:
            raise SystemExit(f"workers={r.workers}: {r.objects_kept} of {objects_total} objects kept "
                             f"(dropped: {r.dropped}); client {r.vlm_calls} requests, server {r.server_requests}")
    if not args.quick:
        update_section("bench_annotate_throughput", "\n".join(report))
    if args.json:
        from refsav.schemas.io import atomic_write_json

        atomic_write_json(args.json, {
            "benchmark": "bench_annotate_throughput", "capacity_rps": vlm.capacity,
            "runs": [{**asdict(r), "cpu_ms_per_object": r.cpu_ms_per_object} for r in runs],
            "grounded": [{**asdict(r), "cpu_ms_per_object": r.cpu_ms_per_object} for r in grounded],
            "profile": asdict(profile) if profile else None,
            "profile_grounded": asdict(g_profile) if g_profile else None,
            "overhead": overhead,
        }, indent=1)
    return 0


def _gaps(r: RunResult, capacity_slots: int) -> int:
    """Half-second bins of the steady part where the server held fewer than half its slots."""
    bins = r.timeline[2:-4]
    return sum(h < capacity_slots / 2 for _, h, _ in bins)


def _profile_table(profile: Profile) -> list[str]:
    busy = sum(profile.busy_s.values())
    per_obj = 1000 * profile.cpu_s / max(1, profile.objects)
    lines = ["| activity | share of busy samples | ≈ CPU ms/object |", "|---|---:|---:|"]
    for k, v in sorted(profile.busy_s.items(), key=lambda kv: -kv[1]):
        if v / max(busy, 1e-9) >= 0.005:
            lines.append(f"| {k} | {v / max(busy, 1e-9):.0%} | {per_obj * v / max(busy, 1e-9):.1f} |")
    return lines


def render_report(args, width, height, capacity, mif, runs, grounded, use_grounder, grounder, g_profile, profile,
                  overhead, gen_s, total_s, load_start) -> list[str]:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## End-to-end annotation throughput against a simulated VLM server",
        "",
        "`make perf` (or `.venv/bin/python perf/bench_annotate_throughput.py`). "
        f"Finished {now} on {os.cpu_count()} cores ({platform.processor() or platform.machine()}), shared with "
        "other jobs: 1-minute load average "
        f"{load_start:.1f} at the start; each run's load is in its row.",
        "",
        f"Simulated VLM: an OpenAI-compatible HTTP server in its own process on 127.0.0.1, {args.latency:g} s per "
        f"request and {args.slots} slots (capacity **{capacity:.0f} requests/s**); requests beyond the slots queue. "
        "It answers each stage in the format its prompt asks for, so no object is dropped or retried. "
        f"Workload: {args.videos} synthetic SA-V-like clips (`refsav.pipelines.sample`), {width}x{height} H.264, "
        f"{args.frames} frames at 24 fps ({args.frames / 24:.1f} s), a masklet every 4th frame (6 fps, as SA-V), "
        f"{args.objects} objects per clip = {args.videos * args.objects} objects, 5 requests each. The CLI as a user "
        f"runs it: `refsav annotate --workers N --max-in-flight {mif} --shard-size S` (1 worker runs in the CLI's "
        "process, 2 are a Dask LocalCluster), a fresh output folder and request cache per run.",
        "",
        "| workers | shard size (videos) | VLM requests/s, steady (share of capacity) | slots busy, steady | whole run "
        "requests/s | objects kept | requests: client / server | wall s | CPU ms/object: all (CLI + workers) | "
        "load before/after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        n = max(1, r.objects_kept)
        lines.append(
            f"| {r.workers} | {r.shard_size} | **{r.vlm.steady_rps:.1f}** ({r.vlm.steady_rps / capacity:.0%}) "
            f"| {r.vlm.steady_busy:.0%} | {r.vlm.whole_rps:.1f} ({r.vlm.whole_rps / capacity:.0%}) "
            f"| {r.objects_kept}/{r.objects_seen} | {r.vlm_calls} / {r.server_requests} | {r.wall_s:.1f} "
            f"| {r.cpu_ms_per_object:.1f} ({1000 * r.cpu_s['annotate'] / n:.1f} + "
            f"{1000 * r.cpu_s['children'] / n:.1f}) "
            f"| {r.load_before:.1f}/{r.load_after:.1f} |")
    lines += [
        "",
        "Steady: the middle 80% of the answers (from the 10th to the 90th percentile of their times), leaving out "
        "the ramp-up and the drain of the last objects; whole run: first request to last answer. CPU: the annotate "
        "process and its children (Dask workers), start-up and imports included; the server's CPU is not counted.",
        "",
    ]
    for r in runs:
        if r.workers == 2:
            share = r.vlm.steady_rps / capacity
            lines.append(f"- **Target: at least {TARGET_SHARE:.0%} of capacity with 2 workers, shard size "
                         f"{r.shard_size}: {'met' if share >= TARGET_SHARE else 'MISSED'}** ({share:.0%} steady, "
                         f"{r.vlm.whole_rps / capacity:.0%} whole run; {_gaps(r, args.slots)} half-second bins of "
                         "the steady part with fewer than half the slots busy).")
    lines += [
        "",
        "Why (the server's timeline per run is in the JSON): a worker runs one shard at a time. Each shard ends "
        "with its last answers and starts with its first videos rendering; in between, that worker has no request "
        "in flight. Two workers with equal shards finish together, so their gaps line up and the server idles "
        "(the half-second bins counted above). Bigger shards leave fewer gaps. Each worker's `--max-in-flight` "
        "should be at least the server's slots, so that one worker alone fills the server while the other is "
        "between shards. Note `--max-in-flight` defaults to 8 per "
        f"worker: at {args.latency:g} s per request that caps 2 workers at {16 / args.latency:.0f} requests/s "
        f"({16 / args.latency / capacity:.0%} of this server), whatever the CPU. The runs here use {mif}.",
    ]
    if profile is not None:
        per_obj = 1000 * profile.cpu_s / max(1, profile.objects)
        lines += [
            "",
            f"Where the time goes: a 1-worker run (shard size {runs[0].shard_size if runs else '-'}) in the "
            f"benchmark's own process, with the inline executor. {profile.objects} objects in {profile.wall_s:.1f} s, "
            f"process CPU {profile.cpu_s:.1f} s = **{per_obj:.1f} ms/object**. Every thread's stack was sampled every "
            "5 ms and named by the innermost frame that matches a rule below. Threads waiting on sockets, locks or "
            "queues are left out. The CPU column splits the measured CPU by those shares. Python samples cannot tell "
            "time spent waiting for the GIL from time spent working.",
            "",
            *_profile_table(profile),
        ]
        lines += ["", f"The run's own stats: preparing videos (reading, decoding, rendering, JPEG; in a thread) took "
                      f"{profile.render_wall_s:.1f} s of wall time in all. The answered requests took "
                      f"{profile.vlm_wait_s:.1f} request-seconds, {profile.vlm_wait_s / max(1, profile.objects):.2f} "
                      "s/object: the simulated latency plus the wait for a slot."]
    lines.append("")
    if use_grounder and grounded:
        lines += [f"**With a simulated grounder** (`--grounder URL`, the first {args.grounded_videos} clips = "
                  f"{min(args.videos, args.grounded_videos) * args.objects} objects). It speaks the `refsav serve` "
                  f"protocol, takes {args.grounder_latency:g} s per request and has {args.grounder_slots} slots = "
                  f"{grounder.capacity:.0f} requests/s. It answers empty masks of the frame's size, and "
                  "`--min-grounding 0` keeps every row; `--grounder-max-in-flight` is the grounder's slots. Grounding "
                  "sends one request per expression (the long one and each short one), each carrying the object's "
                  "frames as PNG data URLs:", "",
                  "| workers | shard size | VLM requests/s, steady (share of capacity) | grounder requests/s, steady "
                  "(share of its capacity) | grounder requests (frames, MB each) | wall s | CPU ms/object |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in grounded:
            lines.append(f"| {r.workers} | {r.shard_size} | {r.vlm.steady_rps:.1f} ({r.vlm.steady_rps / capacity:.0%}) "
                         f"| {r.grounder.steady_rps:.1f} ({r.grounder.steady_rps / grounder.capacity:.0%}) | "
                         f"{r.grounder.requests} ({r.grounder_frames or 0:.1f} frames, {r.grounder_mb or 0:.1f} MB) "
                         f"| {r.wall_s:.1f} | {r.cpu_ms_per_object:.1f} |")
        if g_profile is not None:
            lines += ["", f"Where the time goes with the grounder: the same sampled 1-worker run with `--grounder`, on "
                          f"{g_profile.objects} objects: {g_profile.wall_s:.1f} s, process CPU "
                          f"{g_profile.cpu_s:.1f} s = "
                          f"**{1000 * g_profile.cpu_s / max(1, g_profile.objects):.0f} ms/object**.", "",
                      *_profile_table(g_profile), "",
                      "With the grounder, the annotate process is the bottleneck, not either server. Each request "
                      "carries the object's frames as lossless full-size PNGs, and the request for each short "
                      "expression sends them again. The openai client then serialises those megabytes as JSON, and "
                      "the answer's RLE masks are decoded to pixels and encoded again."]
    else:
        lines.append("Grounder: not measured. This checkout's `refsav annotate` has no `--grounder` option. The "
                     "benchmark already has a simulated grounder: the `refsav serve` protocol, chat completions whose "
                     "`refsav` field carries one COCO RLE per frame. It adds a grounded run for each row above once "
                     "the option exists.")
    lines.append("")
    if overhead is not None:
        ok_d = overhead["decode_ratio"] <= DECODE_RATIO_TARGET
        ok_w = overhead["work_ms_per_object"] <= WORK_MS_TARGET
        lines.append(
            f"Per-object targets at 1080p, rechecked here with `perf/bench_annotate_overhead.py`'s own timing "
            f"functions. The workload is that script's default ({overhead['videos']} videos, {overhead['objects']} "
            f"objects, one thread, median of {overhead['repeats']}); its own section has the breakdown. Decode takes "
            f"{overhead['decode_ms_per_video']:.0f} ms/video against FFmpeg's floor of "
            f"{overhead['floor_ms_per_video']:.0f} ms = **{overhead['decode_ratio']:.2f}x** (target <= "
            f"{DECODE_RATIO_TARGET}x: {'met' if ok_d else 'MISSED'}). Per-object work without decode is "
            f"**{overhead['work_ms_per_object']:.1f} ms** (target <= {WORK_MS_TARGET:.0f} ms: "
            f"{'met' if ok_w else 'MISSED'}).")
        lines.append("")
    lines.append(f"(clip generation {gen_s:.0f} s, not timed; whole benchmark {total_s:.0f} s)")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
