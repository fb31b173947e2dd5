"""A fake OpenAI-compatible VLM server on 127.0.0.1 that misbehaves on purpose.

    with FakeVLMServer() as server:                  # answers every request
        server.set_fault("http500", 0.3)             # now 30 % of requests get an HTTP 500
        ... run `refsav annotate --base-url server.base_url --model server.model` ...
        server.set_fault(None)                       # the fault clears

It answers chat completions deterministically: the answer is a function of the request
body (prompt and images), and it follows the format each built-in annotation stage asks
for, so a clean run keeps every object and two clean runs write the same rows.

A fault hits a request when a hash of (request body, how many times this body was sent
before) falls below the rate. So a 30 % run is reproducible, a retried request is a new
draw (the fault is transient: with retries most requests get through), and at rate 1.0
every request fails. Only chat completions misbehave; GET /v1/models always answers, as a
server that is up but overloaded would.

`budget` bounds how many requests get the fault (a server that fails for a while, then
recovers); `no_rate` makes that share of the consistency checks answer NO (deterministic
per request), for runs that drop objects for what the model said.

Fault modes (FAULTS): http500, http429, hang (no answer for `hang_seconds`, beyond the
client's timeout), malformed (a JSON body cut short), empty_choices (`choices: []`),
empty_content (a message whose content is null), close (the connection is closed with no
answer).
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("http500", "http429", "hang", "malformed", "empty_choices", "empty_content", "close")
MODEL = "fake-vlm"

_WORDS = ("red", "blue", "green", "striped", "round", "tall", "small", "shiny", "wooden", "metal",
          "dotted", "square", "yellow", "soft", "bright", "dark")


def _words(digest: bytes, n: int) -> list[str]:
    return [_WORDS[b % len(_WORDS)] for b in digest[:n]]


def _fraction(data: bytes) -> float:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2**64


def answer_for(body: dict, no_rate: float = 0.0) -> str:
    """The answer to a chat request, in the format its stage asks for; a function of the
    request alone (prompt and images), so that it is the same on every run."""
    content = body["messages"][-1]["content"]
    prompt = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    messages = json.dumps(body["messages"], sort_keys=True).encode()
    a, b, c = _words(hashlib.sha256(messages).digest(), 3)
    if "Answer YES or NO" in prompt:
        if _fraction(b"check:" + messages) < no_rate:
            return "NO. The outline is around something else."
        return "YES. The description matches the highlighted object."
    if "Category:" in prompt:
        return f"Category: {a} thing\nDescription: A {b} {a} thing with a {c} edge."
    if "LONG:" in prompt:
        return f"LONG: The {b} {a} thing that moves {c}.\nSHORT: {b} {a} thing\nSHORT: the {c} one"
    if "where the highlighted object is" in prompt:
        return f"It is left of a {c} shape, near the {a} corner."
    return f"It moves {c}ly to the {b} side."


class FakeVLMServer:
    def __init__(self, fault: str | None = None, rate: float = 0.0, *, hang_seconds: float = 5.0,
                 no_rate: float = 0.0) -> None:
        self.model = MODEL
        self.hang_seconds = hang_seconds
        self.no_rate = no_rate
        self.hide_models = False  # True: GET /v1/models is a 404, as on servers that lack it
        self.set_fault(fault, rate)
        self.sent: Counter[str] = Counter()  # request body hash -> times seen
        self.requests = 0
        self.faults = 0  # requests that got the fault
        self._lock = threading.Lock()
        self._closing = threading.Event()  # wakes hanging handlers at close()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # a client that timed out closed its socket: expected
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def set_fault(self, fault: str | None, rate: float = 1.0, budget: int | None = None) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        self.fault, self.rate, self.budget = fault, rate if fault else 0.0, budget

    def _draw(self, raw: bytes) -> bool:
        """Does this request get the fault? Deterministic in (body, times sent before)."""
        key = hashlib.sha256(raw).hexdigest()
        with self._lock:
            attempt = self.sent[key]
            self.sent[key] += 1
            self.requests += 1
            if not self.fault or (self.budget is not None and self.budget <= 0):
                return False
            hit = _fraction(f"{key}:{attempt}".encode()) < self.rate
            self.faults += hit
            if hit and self.budget is not None:
                self.budget -= 1
            return hit

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def send_json(self, status: int, payload, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models" and not server.hide_models:
                    self.send_json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self.send_json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self.send_json(404, {"error": {"message": "not found"}})
                    return
                body = json.loads(raw)
                if server._draw(raw):
                    server.misbehave(self)
                    return
                text = answer_for(body, server.no_rate)
                self.send_json(200, completion(text, body.get("model", "")))

        return Handler

    def misbehave(self, handler) -> None:
        fault = self.fault
        if fault == "http500":
            handler.send_json(500, {"error": {"message": "injected internal error", "code": 500}})
        elif fault == "http429":
            handler.send_json(429, {"error": {"message": "injected rate limit", "code": 429}})
        elif fault == "hang":
            self._closing.wait(self.hang_seconds)
            handler.close_connection = True
        elif fault == "malformed":
            handler.send_json(200, None, raw=b'{"id": "c1", "object": "chat.completion", "choices": [{"ind')
        elif fault == "empty_choices":
            handler.send_json(200, {**completion("", ""), "choices": []})
        elif fault == "empty_content":
            body = completion("", "")
            body["choices"][0]["message"]["content"] = None
            handler.send_json(200, body)
        elif fault == "close":
            handler.close_connection = True

    def close(self) -> None:
        self._closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FakeVLMServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def completion(text: str, model: str) -> dict:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": max(1, len(text.split())), "total_tokens": 21}}
