"""VLM backends: request keys, retries against a scripted HTTP server, the answer cache, and
the real path: the openai backend against `transformers serve` running a tiny random VLM."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import subprocess
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from refsav.pipelines.vlm import CachedBackend, GenerationConfig, RequestCache, VLMError, VLMRequest, VLMResponse, make_backend
from refsav.pipelines.vlm.base import VLMBackend, backoff_delay, image_mime
from refsav.pipelines.vlm.openai_backend import OpenAIBackend, is_retryable_status
from refsav.schemas.errors import SchemaError
from vlm_server import TINY_IMAGE_TOKENS, start_transformers_serve, test_jpeg, tiny_vlm_dir, vlm_server  # noqa: F401

JPEG_A, JPEG_B = test_jpeg(1), test_jpeg(2)
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


# ---------------------------------------------------------------- request, config, cache key


def test_cache_key_changes_with_everything_that_changes_the_answer():
    base = VLMRequest("describe it", images=(JPEG_A, JPEG_B), system="be brief")
    key = base.cache_key("m")
    assert len(key) == 64 and key == VLMRequest("describe it", images=[JPEG_A, JPEG_B], system="be brief").cache_key("m")
    one_byte_off = JPEG_B[:-3] + bytes([JPEG_B[-3] ^ 1]) + JPEG_B[-2:]
    variants = {
        "model": base.cache_key("m2"),
        "prompt": dataclasses.replace(base, prompt="describe it.").cache_key("m"),
        "system": dataclasses.replace(base, system=None).cache_key("m"),
        "image byte": dataclasses.replace(base, images=(JPEG_A, one_byte_off)).cache_key("m"),
        "image order": dataclasses.replace(base, images=(JPEG_B, JPEG_A)).cache_key("m"),
        "image dropped": dataclasses.replace(base, images=(JPEG_A,)).cache_key("m"),
        "max_tokens": dataclasses.replace(base, config=GenerationConfig(max_tokens=255)).cache_key("m"),
        "temperature": dataclasses.replace(base, config=GenerationConfig(temperature=0.7)).cache_key("m"),
        "top_p": dataclasses.replace(base, config=GenerationConfig(top_p=0.9)).cache_key("m"),
        "seed": dataclasses.replace(base, config=GenerationConfig(seed=1)).cache_key("m"),
        "no seed": dataclasses.replace(base, config=GenerationConfig(seed=None)).cache_key("m"),
    }
    assert key not in variants.values()
    assert len(set(variants.values())) == len(variants), "two different requests share a key"
    # An int temperature is the same config as the float one: same JSON, same key.
    same = dataclasses.replace(base, config=GenerationConfig(temperature=0, top_p=1))
    assert same.cache_key("m") == key


def test_generation_config_json_is_canonical_and_validated():
    cfg = GenerationConfig(max_tokens=64, temperature=0, top_p=1, seed=None)
    assert cfg.to_json() == '{"max_tokens":64,"seed":null,"temperature":0.0,"top_p":1.0}'
    assert json.loads(GenerationConfig().to_json()) == {"max_tokens": 256, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    for kwargs, field in [({"max_tokens": 0}, "max_tokens"), ({"temperature": -1}, "temperature"),
                          ({"top_p": 0}, "top_p"), ({"seed": 1.5}, "seed"), ({"max_tokens": True}, "max_tokens")]:
        with pytest.raises(SchemaError, match=f"field 'generation_config.{field}'"):
            GenerationConfig(**kwargs)


def test_request_rejects_bytes_that_are_not_an_image():
    assert image_mime(JPEG_A) == "image/jpeg" and image_mime(PNG) == "image/png"
    assert VLMRequest("p", images=(JPEG_A, PNG)).image_mimes == ("image/jpeg", "image/png")
    with pytest.raises(SchemaError, match=r"field 'images\[1\]'.*not a JPEG"):
        VLMRequest("p", images=(JPEG_A, b"GIF89a..."))
    with pytest.raises(SchemaError, match=r"field 'images\[0\]'"):
        VLMRequest("p", images=("frame.jpg",))


def test_backoff_grows_exponentially_is_capped_and_jittered():
    ceilings = [backoff_delay(a, base=0.5, cap=3.0, jitter=1.0) for a in range(5)]
    assert ceilings == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(2, base=0.5, cap=3.0, jitter=0.0) == 1.0  # never less than half the ceiling
    assert 1.0 < backoff_delay(2, base=0.5, cap=3.0, jitter=0.5) < 2.0
    assert [s for s in (400, 401, 404, 408, 422, 429, 500, 502, 503) if is_retryable_status(s)] == [408, 429, 500, 502, 503]


def test_make_backend_rejects_bad_settings_in_one_line():
    with pytest.raises(SchemaError, match="field 'backend': unknown VLM backend 'vllm'"):
        make_backend("vllm", model="m")
    with pytest.raises(SchemaError, match="field 'max_in_flight'"):
        make_backend("openai", model="m", base_url="http://127.0.0.1:9/v1", max_in_flight=0)
    with pytest.raises(SchemaError, match="field 'model'"):
        make_backend("openai", model="")


def test_lmdeploy_missing_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmdeploy", None)  # as on any machine without it
    with pytest.raises(VLMError) as info:
        make_backend("lmdeploy", model="OpenGVLab/InternVL2-1B")
    msg = str(info.value)
    assert "lmdeploy" in msg and "pip install 'refsav[lmdeploy]' on a CUDA machine" in msg and "\n" not in msg


def test_lmdeploy_backend_batches_requests_that_arrive_together(monkeypatch):
    """The adapter's own logic, with a stand-in for lmdeploy's pipeline (which needs CUDA)."""

    @dataclasses.dataclass
    class FakeGenConfig:  # the fields lmdeploy's GenerationConfig has
        max_new_tokens: int = 512
        do_sample: bool = False
        top_p: float = 1.0
        top_k: int = 50
        temperature: float = 0.8
        random_seed: int | None = None

    batches: list[tuple[list, list]] = []

    def pipeline(model, backend_config=None, chat_template_config=None):
        def run(prompts, gen_config):
            batches.append((prompts, gen_config))
            return [types.SimpleNamespace(text=f"answer {len(p[-1]['content'])}", input_token_len=10 * i,
                                          generate_token_len=i) for i, p in enumerate(prompts)]
        return run

    monkeypatch.setitem(sys.modules, "lmdeploy", types.SimpleNamespace(pipeline=pipeline, GenerationConfig=FakeGenConfig))
    backend = make_backend("lmdeploy", model="tiny", max_in_flight=4)

    async def go():
        reqs = [VLMRequest(f"p{i}", images=(JPEG_A,) * (i % 2), config=GenerationConfig(max_tokens=8 + i)) for i in range(5)]
        out = await asyncio.gather(*(backend.generate(r) for r in reqs))
        await backend.aclose()
        return out

    out = asyncio.run(go())
    assert [len(p) for p, _ in batches] == [4, 1]
    first_prompts, first_configs = batches[0]
    assert [c.max_new_tokens for c in first_configs] == [8, 9, 10, 11]
    assert all(c.do_sample is False and c.random_seed == 0 for c in first_configs)
    parts = first_prompts[1][-1]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/jpeg;base64,") and parts[1] == {"type": "text", "text": "p1"}
    assert [r.text for r in out] == ["answer 1", "answer 2", "answer 1", "answer 2", "answer 1"]
    assert [(r.prompt_tokens, r.completion_tokens) for r in out[:4]] == [(0, 0), (10, 1), (20, 2), (30, 3)]


# ---------------------------------------------------------------- a scripted OpenAI-compatible server


def completion_body(text: str, usage: bool = True) -> dict:
    body = {"id": "c1", "object": "chat.completion", "created": 0, "model": "stub",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    return body


class StubServer:
    """Answers POST /v1/chat/completions by a script: one action per request, the last one
    repeated. Actions: ("ok", text), ("ok-no-usage", text), ("status", code), ("drop",)
    (close the connection without answering), ("sleep", seconds) (then answer ok)."""

    def __init__(self, *script):
        self.script = list(script)
        self.requests: list[dict] = []
        self.active = self.peak = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    action = stub.script[min(len(stub.requests), len(stub.script) - 1)]
                    stub.requests.append(body)
                    stub.active += 1
                    stub.peak = max(stub.peak, stub.active)
                try:
                    stub.act(self, action)
                finally:
                    with stub._lock:
                        stub.active -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # a client that timed out closed its socket: expected
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def act(handler, action):
        kind = action[0]
        if kind == "drop":
            handler.close_connection = True
            return
        if kind == "sleep":
            time.sleep(action[1])
            action = ("ok", "late")
            kind = "ok"
        if kind == "status":
            code, payload = action[1], {"error": {"message": f"scripted failure {action[1]}", "code": action[1]}}
        else:
            code, payload = 200, completion_body(action[1], usage=kind == "ok")
        data = json.dumps(payload).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub_factory():
    servers = []

    def make(*script):
        servers.append(StubServer(*script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def fast_backend(url: str, **kw) -> OpenAIBackend:
    kw = {"max_retries": 3, "timeout": 5.0, "backoff_base": 0.01, "backoff_max": 0.05, **kw}
    return make_backend("openai", model="stub-model", base_url=url, **kw)


def run(backend, *requests):
    async def go():
        try:
            return await asyncio.gather(*(backend.generate(r) for r in requests))
        finally:
            await backend.aclose()

    out = asyncio.run(go())
    return out[0] if len(out) == 1 else out


def run_error(backend, request) -> VLMError:
    with pytest.raises(VLMError) as info:
        run(backend, request)
    assert "\n" not in str(info.value)
    return info.value


def test_openai_request_carries_images_in_order_then_text(stub_factory):
    stub = stub_factory(("ok", "a red ball"))
    req = VLMRequest("what is outlined?", images=(JPEG_A, PNG), system="answer briefly",
                     config=GenerationConfig(max_tokens=17, temperature=0.5, top_p=0.9, seed=3))
    resp = run(fast_backend(stub.base_url), req)
    assert resp == VLMResponse("a red ball", 11, 3, resp.seconds, cached=False) and resp.seconds > 0
    (body,) = stub.requests
    assert body["model"] == "stub-model"
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (17, 0.5, 0.9, 3)
    system, user = body["messages"]
    assert system == {"role": "system", "content": "answer briefly"}
    img1, img2, text = user["content"]
    assert text == {"type": "text", "text": "what is outlined?"}
    for part, raw, mime in ((img1, JPEG_A, "image/jpeg"), (img2, PNG, "image/png")):
        head, b64 = part["image_url"]["url"].split(",", 1)
        assert part["type"] == "image_url" and head == f"data:{mime};base64" and base64.b64decode(b64) == raw


def test_retries_server_errors_then_succeeds_with_no_client_retries(stub_factory):
    stub = stub_factory(("status", 503), ("status", 500), ("status", 429), ("ok", "fine"))
    resp = run(fast_backend(stub.base_url, max_retries=3), VLMRequest("p"))
    assert resp.text == "fine"
    assert len(stub.requests) == 4  # the openai client itself retried nothing


def test_dropped_connections_are_retried(stub_factory):
    stub = stub_factory(("drop",), ("ok", "after drop"))
    assert run(fast_backend(stub.base_url), VLMRequest("p")).text == "after drop"
    assert len(stub.requests) == 2


def test_client_errors_are_not_retried(stub_factory):
    stub = stub_factory(("status", 400), ("ok", "never"))
    err = run_error(fast_backend(stub.base_url), VLMRequest("p"))
    assert len(stub.requests) == 1
    assert "HTTP 400" in str(err) and "scripted failure 400" in str(err) and "stub-model" in str(err)


def test_gives_up_after_bounded_retries(stub_factory):
    stub = stub_factory(("status", 502))
    err = run_error(fast_backend(stub.base_url, max_retries=2), VLMRequest("p"))
    assert len(stub.requests) == 3
    assert "gave up after 3 attempts: HTTP 502" in str(err)


def test_timeout_is_per_request_and_retried(stub_factory):
    stub = stub_factory(("sleep", 3.0))
    t0 = time.monotonic()
    err = run_error(fast_backend(stub.base_url, timeout=0.3, max_retries=1), VLMRequest("p"))
    elapsed = time.monotonic() - t0
    assert len(stub.requests) == 2 and "no answer within 0.3 s" in str(err)
    assert elapsed < 2.0, f"two 0.3 s attempts took {elapsed:.1f} s"


def test_missing_usage_counts_zero_tokens(stub_factory):
    stub = stub_factory(("ok-no-usage", "x"))
    resp = run(fast_backend(stub.base_url), VLMRequest("p"))
    assert (resp.text, resp.prompt_tokens, resp.completion_tokens) == ("x", 0, 0)


def test_requests_in_flight_are_bounded(stub_factory):
    stub = stub_factory(("sleep", 0.2))
    out = run(fast_backend(stub.base_url, max_in_flight=2), *[VLMRequest(f"p{i}") for i in range(6)])
    assert [r.text for r in out] == ["late"] * 6 and len(stub.requests) == 6
    assert stub.peak == 2


def test_api_key_defaults_to_empty_or_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert OpenAIBackend(model="m", base_url="http://127.0.0.1:9/v1")._client.api_key == "EMPTY"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert OpenAIBackend(model="m", base_url="http://127.0.0.1:9/v1")._client.api_key == "sk-env"
    assert OpenAIBackend(model="m", base_url="http://127.0.0.1:9/v1", api_key="sk-arg")._client.api_key == "sk-arg"


# ---------------------------------------------------------------- the answer cache


def test_cache_answers_repeats_and_never_stores_failures(stub_factory, tmp_path):
    stub = stub_factory(("status", 400), ("ok", "first"), ("ok", "second"))
    cache_file = tmp_path / "sub" / "cache.sqlite"
    backend = fast_backend(stub.base_url, cache_path=str(cache_file))
    assert isinstance(backend, CachedBackend) and isinstance(backend, VLMBackend)
    assert (backend.name, backend.model) == ("openai", "stub-model")
    req = VLMRequest("p", images=(JPEG_A,))

    async def go():
        with pytest.raises(VLMError, match="HTTP 400"):
            await backend.generate(req)
        fresh = await backend.generate(req)
        again = await backend.generate(req)
        other = await backend.generate(dataclasses.replace(req, config=GenerationConfig(seed=1)))
        await backend.aclose()
        return fresh, again, other

    fresh, again, other = asyncio.run(go())
    assert (fresh.text, fresh.cached) == ("first", False)
    assert again == dataclasses.replace(fresh, cached=True)
    assert (other.text, other.cached) == ("second", False)
    assert len(stub.requests) == 3  # the failure, the first answer, the other seed; the repeat never left
    assert (backend.stats.hits, backend.stats.misses) == (1, 3)
    reopened = RequestCache(cache_file)
    assert len(reopened) == 2 and reopened.get(req.cache_key("stub-model")).text == "first"
    assert reopened.get(req.cache_key("another-model")) is None


def test_identical_requests_in_flight_share_one_call(stub_factory, tmp_path):
    stub = stub_factory(("sleep", 0.3))
    backend = fast_backend(stub.base_url, cache_path=str(tmp_path / "c.sqlite"))
    out = run(backend, *[VLMRequest("same")] * 3, VLMRequest("other"))
    assert len(stub.requests) == 2
    assert sorted(r.cached for r in out) == [False, False, True, True]
    assert {r.text for r in out} == {"late"}


_WRITER = """
import sys
from refsav.pipelines.vlm.base import VLMResponse
from refsav.pipelines.vlm.cache import RequestCache
cache = RequestCache(sys.argv[1])
worker = sys.argv[2]
for i in range(200):
    cache.put(f"{worker}-{i}", "m", VLMResponse(f"text {worker} {i}", i, 1, 0.5))
    assert cache.get(f"{worker}-{i}").text == f"text {worker} {i}"
    cache.put("shared", "m", VLMResponse(worker, 0, 0, 0.0))
"""


def test_cache_is_shared_safely_by_processes(tmp_path):
    path = tmp_path / "shared.sqlite"
    root = str(Path(__file__).resolve().parents[1])
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w)], cwd=root,
                              stderr=subprocess.PIPE, text=True) for w in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    cache = RequestCache(path)
    assert len(cache) == 3 * 200 + 1
    assert cache.get("2-199") == VLMResponse("text 2 199", 199, 1, 0.5, cached=True)
    assert cache.get("shared").text in {"0", "1", "2"}  # one writer's, untouched by the others


# ---------------------------------------------------------------- end to end: transformers serve


def two_image_request(n_images: int = 2) -> VLMRequest:
    return VLMRequest("Describe the object outlined in red.", images=(JPEG_A, JPEG_B)[:n_images],
                      config=GenerationConfig(max_tokens=12))


def test_openai_backend_against_transformers_serve(vlm_server, tmp_path):
    backend = make_backend("openai", model=vlm_server.model, base_url=vlm_server.base_url, timeout=60,
                           cache_path=str(tmp_path / "cache.sqlite"))
    posts = lambda: vlm_server.logs(tail=10**7).count("POST /v1/chat/completions")  # noqa: E731

    async def go():
        two = await backend.generate(two_image_request(2))
        one = await backend.generate(two_image_request(1))
        n = posts()
        again = await backend.generate(two_image_request(2))
        assert posts() == n, "a cached request reached the server"
        await backend.aclose()
        return two, one, again

    two, one, again = asyncio.run(go())
    assert isinstance(two.text, str) and two.text.strip() and not two.cached
    assert 1 <= two.completion_tokens <= 12
    # Each image is expanded into TINY_IMAGE_TOKENS placeholders: the second image reached the model.
    assert two.prompt_tokens - one.prompt_tokens == TINY_IMAGE_TOKENS
    assert one.prompt_tokens > TINY_IMAGE_TOKENS
    assert again == dataclasses.replace(two, cached=True)


def test_transformers_backend_matches_the_server(vlm_server, tiny_vlm_dir):
    """Same weights, same greedy decoding: in process and behind the server, the same answer."""
    served = run(make_backend("openai", model=vlm_server.model, base_url=vlm_server.base_url, timeout=60),
                 two_image_request(2))
    local = run(make_backend("transformers", model=str(tiny_vlm_dir), device="cpu"), two_image_request(2))
    assert (local.text, local.prompt_tokens, local.completion_tokens) == (
        served.text, served.prompt_tokens, served.completion_tokens)


def test_transformers_backend_rejects_a_missing_model(tmp_path):
    with pytest.raises(SchemaError, match="field 'model': cannot load image-text-to-text model"):
        make_backend("transformers", model=str(tmp_path / "nowhere"))


def test_stopped_server_cache_still_answers_and_uncached_fails_fast(tiny_vlm_dir, tmp_path):
    server = start_transformers_serve(tiny_vlm_dir, log_path=tmp_path / "serve.log")
    cache = str(tmp_path / "cache.sqlite")
    try:
        kw = {"model": server.model, "base_url": server.base_url, "timeout": 60, "cache_path": cache}
        first = run(make_backend("openai", **kw), two_image_request(2))
    finally:
        server.stop()
    assert not server.alive and not first.cached
    backend = make_backend("openai", **kw, max_retries=2, backoff_base=0.01, backoff_max=0.05)

    async def go():
        replay = await backend.generate(two_image_request(2))
        t0 = time.monotonic()
        with pytest.raises(VLMError) as info:
            await backend.generate(two_image_request(1))
        await backend.aclose()
        return replay, info.value, time.monotonic() - t0

    replay, err, seconds = asyncio.run(go())
    assert replay == dataclasses.replace(first, cached=True)
    assert "gave up after 3 attempts: connection failed" in str(err) and "\n" not in str(err)
    assert seconds < 5, f"a refused connection took {seconds:.1f} s to report"
    assert backend.stats.misses == 1 and backend.stats.hits == 1
