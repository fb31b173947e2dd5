"""`refsav serve` in a subprocess on 127.0.0.1, with a tiny random Sa2VA, against in-process predict.

The server runs float32 on CPU with one torch thread, as this process does (the
`one_thread` fixture), so that both compute the same numbers and the masks can be
compared bit for bit. Answers are teacher-forced ("Sure, [SEG].", the `refsav.answer`
extension) so that the random model reaches the mask path; one request generates, to
cover that path too.
"""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_model import one_thread, tiny_dir  # noqa: F401 - fixtures: one torch thread, a tiny Sa2VA

import refsav.cli as root_cli
from refsav.model.checkpoint import load_sa2va
from refsav.model.config import PredictOptions
from refsav.schemas import rle as rle_ops

ANSWER = "Sure, [SEG]."
KEY = "test-key"
MAX_FRAMES = 16
MAX_BODY_MB = 2


def png_url(frame) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(frame)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_mp4(path: Path, frames) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_sa2va(tiny_dir)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A media root with an mp4, and an mp4 outside it reachable through a symlink."""
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(6)]
    write_mp4(root / "clip.mp4", frames)
    outside = root.parent / "secret.mp4"  # exists, beside the root
    write_mp4(outside, frames)
    (root / "link.mp4").symlink_to(outside)
    write_mp4(root / "many.mp4", [frames[0]] * (MAX_FRAMES + 1))
    return root


@pytest.fixture(scope="module")
def server(tiny_dir, media, tmp_path_factory):
    """`refsav serve` on 127.0.0.1, a free port; yields (base URL, log file)."""
    logfile = tmp_path_factory.mktemp("serve") / "server.log"
    args = [sys.executable, "-m", "refsav", "serve", "--model", str(tiny_dir), "--port", "0", "--device", "cpu",
            "--dtype", "fp32", "--threads", "1", "--api-key", KEY, "--media-root", str(media),
            "--max-frames", str(MAX_FRAMES), "--max-body-mb", str(MAX_BODY_MB), "--batch-wait-ms", "20"]
    with open(logfile, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            text = logfile.read_text(errors="replace")
            for line in text.splitlines():
                if "listening on http://" in line:
                    url = line.split("listening on ", 1)[1].strip()
            if url is None:
                assert proc.poll() is None, f"refsav serve exited:\n{text}"
                assert time.monotonic() < deadline, f"refsav serve did not start:\n{text}"
                time.sleep(0.2)
        yield url, logfile
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def http(method: str, url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """A raw request (stdlib: what a client without the openai package sends); (status, JSON body)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def masks_of(completion) -> list[np.ndarray]:
    ext = completion.model_extra["refsav"]
    return [rle_ops.decode_many([rle_ops.Rle.from_json(r) for r in m]) for m in ext["masklets"]]


def ask(client, part, text, **kw):
    extra = kw.pop("refsav", {"answer": ANSWER})
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": [part, {"type": "text", "text": text}]}],
        extra_body={"refsav": extra}, **kw)


# ----------------------------------------------------------------------------- answers


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    card = client.models.list().data[0].model_extra["refsav"]
    assert card == {"dtype": "float32", "device": "cpu", "desa2va": False}
    status, health = http("GET", server[0] + "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny"


def test_image_request_equals_in_process_predict(client, tiny):
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    prompt = "<image>\n Please segment the red ball in this image."
    got = ask(client, {"type": "image_url", "image_url": {"url": png_url(image)}}, prompt)
    want = tiny.predict(prompt, image=image, answer=ANSWER)
    assert got.choices[0].message.content == want.text == ANSWER
    assert got.choices[0].finish_reason == "stop"
    ext = got.model_extra["refsav"]
    assert (ext["frames"], ext["height"], ext["width"]) == (1, 90, 120)
    assert ext["timing"]["predict_s"] > 0 and ext["timing"]["queued_s"] >= 0
    (mask,) = masks_of(got)
    assert mask.shape == (1, 90, 120) and mask.any() and np.array_equal(mask, want.masks[0])

    # Generated, not forced: the same tokens as in-process greedy decoding, cut at max_tokens.
    gen = ask(client, {"type": "image_url", "image_url": {"url": png_url(image)}}, prompt, max_tokens=4, refsav={})
    ref = tiny.predict(prompt, image=image, options=PredictOptions(max_new_tokens=4))
    assert gen.choices[0].message.content == ref.text
    assert gen.choices[0].finish_reason == ("length" if len(ref.answer_ids) == 4 else "stop")
    assert len(masks_of(gen)) == len(ref.masks)


def test_video_frames_and_video_url_equal_in_process_predict(client, tiny, media):
    from refsav.schemas.media import read_frames

    prompt = "<image>\nPlease segment the moving square."
    opts = {"answer": ANSWER, "num_key_frames": 2, "key_frames": "uniform"}
    options = PredictOptions(num_key_frames=2, key_frames="uniform")

    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 255, (48, 80, 3), dtype=np.uint8) for _ in range(5)]
    got = ask(client, {"type": "video", "video": [png_url(f) for f in frames]}, prompt, refsav=opts)
    want = tiny.predict(prompt, video=frames, options=options, answer=ANSWER)
    assert got.model_extra["refsav"]["key_frames"] == list(want.key_frames) == [0, 4]
    (masklet,) = masks_of(got)
    assert masklet.shape == (5, 48, 80) and np.array_equal(masklet, want.masks[0])

    got = ask(client, {"type": "video_url", "video_url": {"url": "clip.mp4"}}, prompt, refsav=opts)
    decoded = list(read_frames(media / "clip.mp4"))
    want = tiny.predict(prompt, video=decoded, options=options, answer=ANSWER)
    (masklet,) = masks_of(got)
    assert masklet.shape == (6, 64, 96) and np.array_equal(masklet, want.masks[0])


def test_eight_concurrent_requests_all_succeed_and_are_batched(client, tiny):
    image = np.random.default_rng(5).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    part = {"type": "image_url", "image_url": {"url": png_url(image)}}
    things = ["cat", "dog", "ball", "cup", "tree", "car", "bird", "lamp"]
    prompts = [f"<image>\nPlease segment the {t}." for t in things]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: ask(client, part, p), prompts))
    for prompt, got in zip(prompts, answers):
        want = tiny.predict(prompt, image=image, answer=ANSWER)
        assert np.array_equal(masks_of(got)[0], want.masks[0])
    # While the model works on the first request the others queue, and leave together.
    assert max(a.model_extra["refsav"]["batch_size"] for a in answers) > 1


# ----------------------------------------------------------------------------- refusals


def test_bad_requests_get_a_4xx_json_error_and_no_traceback(server, media):
    url, logfile = server
    auth = {"Authorization": f"Bearer {KEY}"}
    tiny_png = png_url(np.zeros((8, 8, 3), dtype=np.uint8))

    def body(part, model="tiny"):
        return {"model": model, "messages": [{"role": "user", "content": [part, {"type": "text", "text": "x"}]}]}

    cases = {
        "malformed JSON": (b'{"model": "tiny", "messages": [', 400),
        "deep nesting": (b"[" * 100000 + b"]" * 100000, 400),
        "bad base64": (body({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not-base64@@"}}), 400),
        "not an image": (body({"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(b"hello").decode()}}), 400),
        "remote image URL": (body({"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}), 400),
        "unknown model": (body({"type": "image_url", "image_url": {"url": tiny_png}}, model="gpt-4o"), 404),
        "too many frames": (body({"type": "video", "video": [tiny_png] * (MAX_FRAMES + 1)}), 413),
        "too many frames in a file": (body({"type": "video_url", "video_url": {"url": "many.mp4"}}), 413),
        "path outside the media root": (body({"type": "video_url", "video_url": {"url": "../secret.mp4"}}), 403),
        "absolute path outside": (body({"type": "video_url", "video_url": {"url": "/etc/passwd"}}), 403),
        "symlink out of the media root": (body({"type": "video_url", "video_url": {"url": "link.mp4"}}), 403),
        "missing file": (body({"type": "video_url", "video_url": {"url": "nope.mp4"}}), 404),
        "no image": ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}, 400),
        "unknown extension field": ({**body({"type": "image_url", "image_url": {"url": tiny_png}}),
                                     "refsav": {"answr": "x"}}, 400),
    }
    for name, (payload, status) in cases.items():
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        got, answer = http("POST", url + "/v1/chat/completions", data, {**auth, "Content-Type": "application/json"})
        assert got == status, (name, got, answer)
        assert isinstance(answer["error"]["message"], str) and answer["error"]["message"], name
    # Too large a body is refused from its Content-Length, before it is read: the client
    # sends only the headers, since the server may close while a body is still on the way
    # (a broken pipe for the sender, not an answer to check).
    from http.client import HTTPConnection
    from urllib.parse import urlsplit

    where = urlsplit(url)
    conn = HTTPConnection(where.hostname, where.port, timeout=60)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        for k, v in {**auth, "Content-Type": "application/json",
                     "Content-Length": str((MAX_BODY_MB << 20) + 1)}.items():
            conn.putheader(k, v)
        conn.endheaders()
        res = conn.getresponse()
        assert res.status == 413 and json.loads(res.read())["error"]["message"]
    finally:
        conn.close()
    good = json.dumps(body({"type": "image_url", "image_url": {"url": tiny_png}})).encode()
    got, answer = http("POST", url + "/v1/chat/completions", good, {"Content-Type": "application/json"})
    assert got == 401 and "API key" in answer["error"]["message"]
    assert http("GET", url + "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
    time.sleep(0.3)  # the log is written by another process
    log = logfile.read_text(errors="replace")
    assert "Traceback" not in log and " 500" not in log
    assert log.count("WARNING: 4") >= len(cases) + 2


def test_non_loopback_host_needs_an_api_key(tiny_dir, capsys):
    assert root_cli.main(["serve", "--model", str(tiny_dir), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--api-key" in err


# ----------------------------------------------------------------------------- predict --server


def test_predict_through_the_server_writes_the_same_results(server, tiny_dir, tmp_path):
    from refsav.pipelines.sample import EVAL, SampleConfig, write_sample

    write_sample(tmp_path / "sample", SampleConfig(videos=2, width=96, height=64, frames=8, objects=1),
                 show_progress=False)
    gt = tmp_path / "sample" / EVAL
    common = ["predict", "--protocol", "refsav", "--gt", str(gt), "--force-answer", ANSWER,
              "--num-key-frames", "2"]
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert root_cli.main([*common, "--model", str(tiny_dir), "--dtype", "fp32", "--out", str(local)]) == 0
    assert root_cli.main([*common, "--server", server[0], "--api-key", KEY, "--out", str(remote)]) == 0
    assert (remote / "results.json").read_bytes() == (local / "results.json").read_bytes()
    run = json.loads((remote / "run.json").read_text())
    assert run["server"] == server[0] and run["model"] == "tiny" and "api_key" not in run
    results = json.loads((local / "results.json").read_text())
    areas = {rle_ops.area(rle_ops.Rle.from_json(r)) for v in results.values() for e in v.values()
             for r in e["prediction_masks"]}
    assert len(areas) > 1  # the masks are not all empty or all full: the comparison means something


# ----------------------------------------------------------------------------- the queue, in-process


class _SlowModel:
    """Records the groups it is given; each predict takes a while, so requests pile up."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def predict(self, text, *, image=None, video=None, options=None, answer=None):
        time.sleep(0.05)
        self.calls.append((text, "video" if video is not None else "image"))
        return text


def _job(text: str, key: str, deadline: float | None = None):
    from refsav.model.serve import ChatRequest, Job, Visual

    frame = np.zeros((4, 4, 3), dtype=np.uint8)
    req = ChatRequest(text, Visual(False, (frame,), key), PredictOptions(), None)
    return Job(req, time.monotonic() + 60 if deadline is None else deadline)


def test_batcher_groups_by_frames_and_drops_expired_or_cancelled_requests():
    from refsav.model.serve import Batcher, RequestError

    model = _SlowModel()
    batcher = Batcher(model, max_batch=8, wait_s=0.2)
    try:
        jobs = [_job("a", "img1"), _job("b", "img2"), _job("c", "img1"),
                _job("late", "img1", deadline=time.monotonic() - 1), _job("gone", "img2")]
        jobs[4].future.cancel()  # its client gave up before the model got to it
        for job in jobs:
            batcher.submit(job)
        assert [j.future.result(timeout=30) for j in jobs[:3]] == ["a", "b", "c"]
        with pytest.raises(RequestError) as err:
            jobs[3].future.result(timeout=30)
        assert err.value.status == 504
        assert jobs[4].future.cancelled()
        # One batch of five; the img1 requests ran together before img2's.
        assert [j.batch_size for j in jobs[:3]] == [5, 5, 5]
        assert [c[0] for c in model.calls] == ["a", "c", "b"]
        assert jobs[0].predict_s == jobs[2].predict_s >= 0.1
    finally:
        batcher.close()


def test_serve_without_the_extra_is_one_line(tiny_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # what an install without [serve] looks like
    assert root_cli.main(["serve", "--model", str(tiny_dir), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refsav[serve]" in err
