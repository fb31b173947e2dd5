"""`refsav annotate` end to end: the synthetic SA-V sample, a real `transformers serve` on
127.0.0.1 serving a tiny random-weight VLM, the real CLI in a subprocess, real Parquet
read back by `datasets`, a real Dask scheduler, SIGKILL mid-run, and a server that stops.

The model's answers are meaningless; these tests check shapes, counts, provenance,
resumption and recovery.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from vlm_server import start_transformers_serve, tiny_vlm_dir, vlm_server  # noqa: F401 - fixtures

from refsav.pipelines.annotate.prompts import load_prompts
from refsav.pipelines.sample import SampleConfig, write_sample
from refsav.schemas.expression import Expression
from refsav.schemas.io import read_parquet, sha256_file
from refsav.schemas.sav import read_sav_json

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def sav(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    write_sample(root, SampleConfig(videos=3, frames=24, seed=3), show_progress=False)
    return root / "sav_train"


def masklet_count(sav_root: Path) -> int:
    return sum(len(read_sav_json(p).masklets) for p in sav_root.rglob("*_manual.json"))


def annotate_cmd(sav_root: Path, out: Path, server, *extra: str) -> list[str]:
    return [sys.executable, "-m", "refsav", "annotate", "--input", str(sav_root), "--out", str(out),
            "--vlm", "openai", "--base-url", server.base_url, "--model", server.model,
            "--max-tokens", "12", "--max-in-flight", "4", *extra]


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def rows(out: Path) -> list[Expression]:
    found = []
    for shard in sorted((out / "data").glob("*.parquet")):
        found += read_parquet(shard, Expression)
    return found


def comparable(expressions: list[Expression]) -> list[str]:
    """Rows as canonical JSON without the creation time, which differs between runs."""
    out = []
    for e in expressions:
        d = asdict(e)
        d["provenance"].pop("created_at")
        out.append(json.dumps(d, sort_keys=True))
    return sorted(out)


def summary(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["summary"]


@pytest.fixture(scope="module")
def baseline(sav, vlm_server, tmp_path_factory):  # noqa: F811 - fixture
    """An uninterrupted run without the consistency check (a random model never says YES)."""
    out = tmp_path_factory.mktemp("baseline") / "out"
    proc = run(annotate_cmd(sav, out, vlm_server, "--no-check", "--workers", "1", "--shard-size", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_end_to_end_rows_provenance_and_datasets(sav, baseline, vlm_server):  # noqa: F811 - fixture
    import datasets

    n_objects = masklet_count(sav)
    s = summary(baseline)
    assert s["shards"] == s["shards_done"] == 2 and not s["shards_failed"]
    assert s["videos"] == 3 and s["videos_skipped"] == 0
    assert s["objects_seen"] == n_objects == s["objects_kept"] + sum(s["objects_dropped"].values())
    assert s["vlm"]["calls"] > 0 and s["vlm"]["prompt_tokens"] > 0 and s["vlm"]["completion_tokens"] > 0

    ds = datasets.load_dataset("parquet", data_dir=str(baseline / "data"))["train"]
    assert ds.num_rows == s["objects_kept"] > 0
    assert list(ds.features) == Expression.ARROW_SCHEMA.names
    assert sorted((baseline / "data").glob("*.parquet")) == [
        baseline / "data" / "train-00000-of-00002.parquet", baseline / "data" / "train-00001-of-00002.parquet"]
    assert len(list((baseline / "markers").glob("*.done"))) == 2

    prompts = {(r.template_id, r.sha256) for r in load_prompts().refs}
    for e in rows(baseline):
        assert 1 <= len(e.short_caps) <= 3 and e.formated.strip()
        p = e.provenance
        assert (p.backend, p.model_id) == ("openai", vlm_server.model)
        assert {(r.template_id, r.sha256) for r in p.prompts} == prompts
        assert json.loads(p.generation_config)["max_tokens"] == 12
        mp4, ann = p.input_files
        assert mp4.path.endswith(f"{e.video_id}.mp4") and ann.path.endswith(f"{e.video_id}_manual.json")
        for f in p.input_files:
            assert f.sha256 == sha256_file(sav / f.path)
        assert e.consistency.passed and e.consistency.reason == "not checked"
        assert e.object_id in {m.object_id for m in read_sav_json(sav / ann.path).masklets}
        if e.ambiguous:
            assert e.ambiguous_with and e.object_id not in e.ambiguous_with


def test_rerun_skips_complete_shards_and_calls_no_model(sav, baseline, vlm_server):  # noqa: F811 - fixture
    before = {p: p.stat().st_mtime_ns for p in (baseline / "data").glob("*.parquet")}
    proc = run(annotate_cmd(sav, baseline, vlm_server, "--no-check", "--workers", "1", "--shard-size", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary(baseline)
    assert s["shards_resumed"] == s["shards"] == 2 and s["vlm"]["calls"] == 0
    assert {p: p.stat().st_mtime_ns for p in (baseline / "data").glob("*.parquet")} == before


def test_other_settings_on_the_same_folder_are_refused(sav, baseline, vlm_server):  # noqa: F811 - fixture
    proc = run(annotate_cmd(sav, baseline, vlm_server, "--no-check", "--workers", "1", "--shard-size", "2",
                            "--highlight", "box"))
    assert proc.returncode == 2
    assert "plan.json" in proc.stderr and "different settings" in proc.stderr and "Traceback" not in proc.stderr


def test_consistency_check_drops_are_counted_and_recorded(sav, vlm_server, tmp_path):  # noqa: F811 - fixture
    out = tmp_path / "out"
    proc = run(annotate_cmd(sav, out, vlm_server, "--workers", "1", "--limit", "1"))
    s = summary(out)
    # Content drops are no failure, but a run that kept no row at all must not look like a success.
    assert proc.returncode == (0 if s["objects_kept"] else 1), proc.stderr[-3000:]
    assert s["objects_kept"] or "no row was kept" in proc.stderr
    stats = json.loads((out / "stats" / "shard-00000.json").read_text())
    dropped = sum(s["objects_dropped"].values())
    assert s["objects_seen"] == s["objects_kept"] + dropped > 0
    assert set(s["objects_dropped"]) <= {"consistency_unclear", "consistency_failed", "empty_description"}
    assert len(stats["failures"]) == dropped
    assert all(f["reason"] in s["objects_dropped"] for f in stats["failures"])
    kept = rows(out)
    assert all(e.consistency.passed and e.consistency.attempts in (1, 2) for e in kept)


def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(sav, baseline, vlm_server, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    cmd = annotate_cmd(sav, out, vlm_server, "--no-check", "--workers", "1", "--shard-size", "1")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if list((out / "markers").glob("*.done")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "markers").glob("*.done")))
    assert 1 <= done < 3
    for shard in (out / "data").glob("*.parquet"):  # whatever a reader can see is whole
        read_parquet(shard, Expression)

    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    s = summary(out)
    assert s["shards_done"] == 3 and s["shards_resumed"] == done
    assert comparable(rows(out)) == comparable(rows(baseline))
    assert not list(out.glob("*/.*.tmp"))


def test_same_job_on_a_dask_cluster_over_tcp(sav, baseline, vlm_server, tmp_path):  # noqa: F811 - fixture
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as cluster:
        out = tmp_path / "out"
        proc = run(annotate_cmd(sav, out, vlm_server, "--no-check", "--scheduler", cluster.scheduler_address,
                                "--shard-size", "1"))
        assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "run.json").read_text())
    assert meta["executor"] == "dask" and meta["scheduler"] == cluster.scheduler_address
    assert comparable(rows(out)) == comparable(rows(baseline))


def test_server_stopped_mid_run_records_failures_and_completes(sav, tiny_vlm_dir, tmp_path):  # noqa: F811
    server = start_transformers_serve(tiny_vlm_dir, log_path=tmp_path / "serve.log")
    out = tmp_path / "out"
    try:
        cmd = annotate_cmd(sav, out, server, "--no-check", "--workers", "1", "--shard-size", "1",
                           "--timeout", "5", "--retries", "1")
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not list((out / "markers").glob("*.done")):
            time.sleep(0.01)
        server.stop()
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        server.stop()
    # Every shard completes, but objects failed: the exit code says so, with the cause and the way on.
    assert proc.returncode == 1, stderr[-3000:]
    assert "first error: " in stderr and "rerun the same command" in stderr and "Traceback" not in stderr
    s = summary(out)
    assert s["shards_done"] == 3 and not s["shards_failed"]
    assert s["objects_dropped"].get("vlm_error", 0) > 0 and s["vlm"]["failed_calls"] > 0
    failures = [f for p in sorted((out / "stats").glob("*.json")) for f in json.loads(p.read_text())["failures"]]
    assert {f["reason"] for f in failures} == {"vlm_error"}
    assert all("gave up after 2 attempts" in f["detail"] for f in failures)

    # The server comes back (on another port): a rerun redoes only the shards with failures.
    server = start_transformers_serve(tiny_vlm_dir, log_path=tmp_path / "serve2.log")
    try:
        again = run(annotate_cmd(sav, out, server, "--no-check", "--workers", "1", "--shard-size", "1"))
    finally:
        server.stop()
    assert again.returncode == 0, again.stderr[-3000:]
    s = summary(out)
    assert "vlm_error" not in s["objects_dropped"] and s["objects_kept"] == masklet_count(sav)
    assert s["shards_resumed"] >= 1


def test_bad_inputs_are_skipped_with_reasons(sav, vlm_server, tmp_path):  # noqa: F811 - fixture
    import shutil

    src = sorted(sav.rglob("*_manual.json"))[0]
    vid = src.name[: -len("_manual.json")]
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(src, root / src.name)
    shutil.copy(src.with_name(f"{vid}.mp4"), root / f"{vid}.mp4")
    (root / "b_lonely.mp4").write_bytes(src.with_name(f"{vid}.mp4").read_bytes())  # no annotation
    shutil.copy(src, root / "c_nomp4_manual.json")  # no video
    (root / "d_broken.mp4").write_bytes(src.with_name(f"{vid}.mp4").read_bytes()[:2000])  # truncated
    shutil.copy(src, root / "d_broken_manual.json")
    (root / "e_badjson.mp4").write_bytes(b"")
    (root / "e_badjson_manual.json").write_text('{"video_id": "e_badjson"')
    out = tmp_path / "out"
    proc = run(annotate_cmd(root, out, vlm_server, "--no-check", "--workers", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((out / "stats" / "shard-00000.json").read_text())
    reasons = {s["video_id"]: s["reason"] for s in stats["videos_skipped"]}
    assert reasons == {"b_lonely": "missing_annotation", "c_nomp4": "missing_video",
                       "d_broken": "bad_input", "e_badjson": "bad_input"}
    details = {s["video_id"]: s["detail"] for s in stats["videos_skipped"]}
    assert "e_badjson_manual.json" in details["e_badjson"]
    assert stats["objects_kept"] == len(read_sav_json(src).masklets)


def test_real_run_publishes_and_exports_a_benchmark_that_scores_100(baseline, tmp_path):
    """The annotate output as it really is (not a fixture) through publish --dry-run and the exports."""
    import datasets

    from refsav.benchmark.baselines import write_baseline
    from refsav.benchmark.inputs import RefVosGroundTruth
    from refsav.benchmark.protocols import VIDEO_PROTOCOLS
    from refsav.benchmark.score import score_refvos
    from refsav.cli import main as cli_main

    assert cli_main(["publish", "--data", str(baseline), "--repo-id", "org/refsav-test", "--folder",
                     str(tmp_path / "hub"), "--dry-run"]) == 0
    loaded = datasets.load_dataset(str(tmp_path / "hub"))
    assert sum(loaded[s].num_rows for s in loaded) == len(rows(baseline))

    assert cli_main(["export", "refsav-json", "--data", str(baseline), "--out", str(tmp_path / "Ref-SAV.json"),
                     "--split", "all"]) == 0
    exported = json.loads((tmp_path / "Ref-SAV.json").read_text())
    assert sum(len(v["objects"]) for v in exported.values()) == len(rows(baseline))
    assert all(v["video_path"].endswith(f"{vid}.mp4") and v["anno_path"].endswith(f"{vid}_manual.json")
               for vid, v in exported.items())

    bench = tmp_path / "bench"
    assert cli_main(["export", "benchmark", "--data", str(baseline), "--out", str(bench), "--split", "all"]) == 0
    gt = RefVosGroundTruth.load(bench)
    n_unambiguous = sum(not e.ambiguous for e in rows(baseline))
    assert sum(e.type_id == 0 for v in gt.videos for e in v.expressions) == n_unambiguous
    write_baseline(gt, tmp_path / "perfect.json", "perfect")
    report = score_refvos(bench, tmp_path / "perfect.json", VIDEO_PROTOCOLS["refsav"])
    assert report.totals["J&F"] == 100.0 and not report.issues
