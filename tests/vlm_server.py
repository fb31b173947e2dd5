"""A tiny random-weight VLM served by `transformers serve`, for tests of the VLM backends.

Other test modules import this file (tests/ is on sys.path under pytest):

    from vlm_server import vlm_server, tiny_vlm_dir        # fixtures: pytest finds them by name
    from vlm_server import save_tiny_vlm, start_transformers_serve, test_jpeg

The model is a LLaVA (CLIP vision tower + Llama text model, 67k random parameters, 300 KB on
disk), a byte-level BPE tokenizer trained here in well under a second, a CLIP image processor at
32x32 and a small chat template. LLaVA rather than Qwen2-VL: for the Qwen model types
`transformers serve` runs every answer through its Qwen response parser (reasoning, tool calls)
instead of returning the decoded text, which would make random output harder to compare; a
LLaVA answer is the plain decoded text. Each image becomes `TINY_IMAGE_TOKENS` placeholder
tokens, so a test can check from the reported prompt token count that every image reached the
model.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Iterator

import pytest

from refsav.pipelines.vlm.tiny import (  # noqa: F401 - re-exported for the tests
    END_TOKEN,
    IMAGE_TOKEN,
    TINY_IMAGE_SIZE,
    TINY_IMAGE_TOKENS,
    save_tiny_vlm,
)


def test_jpeg(seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    """A small deterministic JPEG (noise), distinct per seed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


test_jpeg.__test__ = False  # a helper, not a test, despite its name


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def transformers_cli() -> list[str]:
    """The `transformers` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("transformers")
    if script.exists():
        return [str(script)]
    found = shutil.which("transformers")
    if found:
        return [found]
    return [sys.executable, "-m", "transformers.cli.transformers"]


@dataclass
class ServerHandle:
    process: subprocess.Popen
    base_url: str  # ends with /v1, as the OpenAI client expects
    model: str  # the model id requests must name (the server is pinned to it)
    log_path: Path
    startup_seconds: float

    def logs(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL), and its process group."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(grace)


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up here, in the parent: the child between fork and exec should do as little as possible.
_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM the server when the test process dies,
    so a killed pytest leaves no server behind. Elsewhere a no-op (teardown and atexit remain)."""
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def start_transformers_serve(
    model_dir: str | os.PathLike,
    *,
    port: int | None = None,
    log_path: str | os.PathLike | None = None,
    startup_timeout: float = 180.0,
) -> ServerHandle:
    """Start `transformers serve MODEL_DIR` on 127.0.0.1 and wait until /health answers.

    The positional model argument pins the server to that model and loads it before the
    server listens, so a healthy server is ready to generate; requests must name the same
    string (`handle.model`). Raises RuntimeError with the server's log tail if it exits or is
    not healthy in time (the process is killed then). A port taken between choosing and
    binding it is retried with another port.
    """
    for attempt in range(3):
        try:
            return _start_once(model_dir, port or free_port(), log_path, startup_timeout)
        except _PortTaken:
            if port is not None or attempt == 2:
                raise RuntimeError(f"transformers serve could not bind a port on 127.0.0.1 ({attempt + 1} tries)") from None
    raise AssertionError("unreachable")


class _PortTaken(RuntimeError):
    pass


def _start_once(model_dir, port: int, log_path, startup_timeout: float) -> ServerHandle:
    model = str(Path(model_dir).resolve())
    log_file = Path(log_path) if log_path else Path(model).parent / f"transformers-serve-{port}.log"
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",  # the CLI would otherwise ask PyPI for a newer transformers
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    cmd = [
        *transformers_cli(),
        "serve",
        model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--device", "cpu",
        "--dtype", "float32",
        "--log-level", "info",
    ]
    start = time.monotonic()
    with open(log_file, "wb") as log:
        # Its own session, so that stop() can signal the server and anything it spawned.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)
    handle = ServerHandle(proc, f"http://127.0.0.1:{port}/v1", model, log_file, 0.0)
    atexit.register(handle.stop)  # an interrupted session still stops its server
    deadline = start + startup_timeout
    while True:
        if proc.poll() is not None:
            logs = handle.logs()
            if "address already in use" in logs.lower():
                raise _PortTaken(logs)
            raise RuntimeError(
                f"transformers serve exited with code {proc.returncode} before it was ready; log {log_file}:\n{logs}"
            )
        # Our uvicorn's own line first: a stranger that grabbed the port could answer /health too.
        if f"running on http://127.0.0.1:{port}" in handle.logs(tail=10**6).lower():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
        if time.monotonic() > deadline:
            handle.stop()
            raise RuntimeError(
                f"transformers serve was not healthy after {startup_timeout:.0f} s; log {log_file}:\n{handle.logs()}"
            )
        time.sleep(0.2)
    handle.startup_seconds = time.monotonic() - start
    return handle


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    return save_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm") / "model")


@pytest.fixture(scope="session")
def vlm_server(tiny_vlm_dir, tmp_path_factory) -> Iterator[ServerHandle]:
    """A running `transformers serve` for the tiny VLM, shared by the session; killed at teardown."""
    log = tmp_path_factory.mktemp("vlm-server") / "serve.log"
    try:
        handle = start_transformers_serve(tiny_vlm_dir, log_path=log)
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)
    try:
        yield handle
    finally:
        handle.stop()
