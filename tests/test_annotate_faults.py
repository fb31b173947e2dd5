"""`refsav annotate` against a misbehaving VLM server: every fault mode at 30 % and at 100 %,
a dead server, a shard where every object failed, and reruns after the fault clears.

The server is tests/fake_vlm_server.py, a real HTTP server on 127.0.0.1 whose answers are a
function of the request, so two clean runs write the same rows; its faults hit requests by
a hash of (body, attempt), so every run here is reproducible. The CLI runs in this process
(`refsav.cli.main`, one worker), which is what keeps this module fast.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from fake_vlm_server import FAULTS, FakeVLMServer

from refsav.cli import main
from refsav.pipelines.sample import SampleConfig, write_sample
from refsav.schemas.expression import Expression
from refsav.schemas.io import read_parquet
from refsav.schemas.sav import read_sav_json

pytestmark = pytest.mark.timeout(120)

# What the first error says for each fault: the cause as the client saw it.
SIGNATURES = {
    "http500": "HTTP 500: injected internal error",
    "http429": "HTTP 429: injected rate limit",
    "hang": "no answer within 0.5 s",
    "malformed": "malformed answer (JSONDecodeError",
    "empty_choices": "malformed answer (no choices)",
    "empty_content": "malformed answer (a message without content)",
    "close": "connection failed (RemoteProtocolError",
}
RETRIES = 3


@pytest.fixture(scope="module")
def sav(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    write_sample(root, SampleConfig(videos=2, frames=12, seed=3, width=320, height=180), show_progress=False)
    return root / "sav_train"


def n_objects(sav_root: Path) -> int:
    return sum(len(read_sav_json(p).masklets) for p in sav_root.rglob("*_manual.json"))


def argv(sav_root: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return ["annotate", "--input", str(sav_root), "--out", str(out), "--base-url", base_url, "--model", "fake-vlm",
            "--workers", "1", "--shard-size", "1", "--timeout", "0.5", "--retries", str(RETRIES), "--backoff", "0.01",
            *extra]


def annotate(args: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def summary(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["summary"]


def comparable(out: Path) -> list[str]:
    """The rows as canonical JSON, without the creation time, which differs between runs."""
    rows = []
    for shard in sorted((out / "data").glob("*.parquet")):
        for e in read_parquet(shard, Expression):
            d = asdict(e)
            d["provenance"].pop("created_at")
            rows.append(json.dumps(d, sort_keys=True))
    return sorted(rows)


def failures(out: Path) -> list[dict]:
    return [f for p in sorted((out / "stats").glob("*.json")) for f in json.loads(p.read_text())["failures"]]


@pytest.fixture(scope="module")
def clean(sav, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    with FakeVLMServer() as server:
        assert main(argv(sav, out, server.base_url)) == 0
    s = summary(out)
    assert s["objects_kept"] == s["objects_seen"] == n_objects(sav) > 0 and not s["objects_dropped"]
    return out


def assert_tells(code: int, err: str, out: Path, args: list[str], fault: str, base_url: str) -> None:
    """The exit code says whether anything is left to redo, and a failed run says why and how."""
    s = summary(out)
    assert s["shards_done"] == s["shards"] and not s["shards_failed"]
    assert set(s["objects_dropped"]) <= {"vlm_error"}  # this server's answers never drop an object
    assert s["objects_seen"] == s["objects_kept"] + s["objects_dropped"].get("vlm_error", 0)
    failed = s["objects_dropped"].get("vlm_error", 0)
    assert code == (1 if failed or not s["objects_kept"] else 0), err[-2000:]
    assert "Traceback" not in err
    if code:
        first = next(line for line in err.splitlines() if line.startswith("first error: "))
        assert SIGNATURES[fault] in first and base_url in first, first
        assert f"refsav {shlex.join(args)}" in err  # the exact command that resumes the run
        assert all(SIGNATURES[fault] in f["detail"] and f["reason"] == "vlm_error" for f in failures(out))
        assert f"gave up after {RETRIES + 1} attempts" in first


@pytest.mark.parametrize("fault", FAULTS)
def test_a_30_percent_fault_is_retried_and_a_rerun_gives_the_clean_rows(fault, sav, clean, tmp_path, capsys):
    out = tmp_path / "out"
    with FakeVLMServer(fault, 0.3, hang_seconds=3) as server:
        args = argv(sav, out, server.base_url)
        code, err = annotate(args, capsys)
        assert server.faults > 0
        assert_tells(code, err, out, args, fault, server.base_url)
        assert summary(out)["objects_kept"] >= n_objects(sav) // 2  # retries carry most requests through

        server.set_fault(None)
        code, err = annotate(args, capsys)
    assert code == 0, err[-2000:]
    assert summary(out)["objects_kept"] == n_objects(sav) and not summary(out)["objects_dropped"]
    assert comparable(out) == comparable(clean)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_100_percent_fault_fails_every_object_then_a_rerun_gives_the_clean_rows(fault, sav, clean, tmp_path, capsys):
    out = tmp_path / "out"
    with FakeVLMServer(fault, 1.0, hang_seconds=3) as server:
        args = argv(sav, out, server.base_url)
        code, err = annotate(args, capsys)
        assert code == 1
        assert_tells(code, err, out, args, fault, server.base_url)
        assert summary(out)["objects_dropped"] == {"vlm_error": n_objects(sav)}
        assert "no row was kept" in err.splitlines()[-1]
        # Each object failed on its first request, after every retry, and nothing was cached.
        assert server.requests == n_objects(sav) * (RETRIES + 1)

        server.set_fault(None)
        code, err = annotate(args, capsys)
    assert code == 0, err[-2000:]
    assert comparable(out) == comparable(clean)


def test_a_shard_where_every_object_failed_keeps_the_folder_loadable(sav, clean, tmp_path, capsys):
    import datasets

    first_video = sorted(sav.rglob("*_manual.json"))[0]
    with FakeVLMServer() as server:
        # The server fails until the first shard (one video) has given up on all its objects.
        server.set_fault("http500", 1.0, budget=len(read_sav_json(first_video).masklets) * (RETRIES + 1))
        args = argv(sav, tmp_path / "out", server.base_url)
        code, err = annotate(args, capsys)
        assert code == 1 and "first error: " in err
        markers = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "markers").glob("*.done"))]
        assert [m["rows"] for m in markers] == [0, summary(tmp_path / "out")["objects_kept"]] and markers[1]["rows"] > 0
        assert [m["vlm_error"] for m in markers] == [len(read_sav_json(first_video).masklets), 0]

        ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out" / "data"), cache_dir=str(tmp_path / "hf"))
        assert ds["train"].num_rows == markers[1]["rows"]
        assert list(ds["train"].features) == Expression.ARROW_SCHEMA.names
        # Publishing it by accident is refused; on purpose it works, empty shard and all.
        publish = ["publish", "--data", str(tmp_path / "out"), "--repo-id", "o/n", "--dry-run"]
        code, err = annotate(publish, capsys)
        assert code == 2 and "failed on the VLM" in err and "\n" not in err.strip()
        assert annotate([*publish, "--allow-incomplete"], capsys)[0] == 0

        code, err = annotate(args, capsys)  # the budget is spent: the server works again
        assert code == 0, err[-2000:]
        assert summary(tmp_path / "out")["shards_resumed"] == 1  # only the failed shard was redone
    assert comparable(tmp_path / "out") == comparable(clean)


def test_content_drops_stay_dropped_and_transient_failures_are_redone(sav, tmp_path, capsys):
    """With a checker that rejects some descriptions, a clean run drops those objects; a run
    with faults, then a rerun, must end with exactly the same rows and the same drops."""
    with FakeVLMServer(no_rate=0.5) as server:
        code, err = annotate(argv(sav, tmp_path / "clean", server.base_url), capsys)
        assert code == 0, err[-2000:]  # rows were kept, and content drops are not failures
    clean_drops = summary(tmp_path / "clean")["objects_dropped"]
    assert set(clean_drops) == {"consistency_failed"} and summary(tmp_path / "clean")["objects_kept"] > 0

    with FakeVLMServer("http500", 0.5, no_rate=0.5) as server:
        args = argv(sav, tmp_path / "out", server.base_url, "--retries", "0")
        code, err = annotate(args, capsys)
        assert code == 1 and summary(tmp_path / "out")["objects_dropped"].get("vlm_error")
        server.set_fault(None)
        code, err = annotate(args, capsys)
    assert code == 0, err[-2000:]
    assert summary(tmp_path / "out")["objects_dropped"] == clean_drops
    assert comparable(tmp_path / "out") == comparable(tmp_path / "clean")


def test_an_unreachable_server_fails_fast_with_one_line(sav, tmp_path):
    """In a real process, as a user or a script runs it: the exit status and stderr."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "refsav", *argv(sav, tmp_path / "out", base_url, "--timeout", "30")],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 2 and time.monotonic() - t0 < 20
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("error: ")
    assert f"cannot reach the VLM server at {base_url}: ConnectError" in line
    assert not (tmp_path / "out" / "data").exists()  # no shard ran


def test_a_server_without_models_endpoint_passes_the_preflight(sav, clean, tmp_path, capsys):
    from refsav.pipelines.vlm.openai_backend import check_server

    with FakeVLMServer() as server:
        check_server(server.base_url.replace("/v1", "/no-such-prefix"), timeout=2)  # a 404 is an answer
        server.hide_models = True
        code, err = annotate(argv(sav, tmp_path / "out", server.base_url), capsys)
    assert code == 0, err[-2000:]
    assert comparable(tmp_path / "out") == comparable(clean)


def test_a_silent_server_fails_the_preflight_within_its_timeout():
    from refsav.pipelines.vlm.base import VLMError
    from refsav.pipelines.vlm.openai_backend import check_server

    with socket.socket() as sock:  # accepts connections (the kernel does) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        t0 = time.monotonic()
        with pytest.raises(VLMError) as info:
            check_server(base_url, timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert str(info.value) == f"the VLM server at {base_url} did not answer GET /models within 0.5 s"
