"""Smoke test of perf/bench_model_gpu.py: the GPU benchmark cannot run here, so its
`--cpu-smoke` mode runs the same code on a tiny model, and without CUDA the real
mode must stop at once with a clear message."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "perf" / "bench_model_gpu.py"


def _run(*args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_cpu_smoke_run_writes_the_table(tmp_path):
    out = tmp_path / "table.md"
    proc = _run("--cpu-smoke", "--sizes", "tiny", "--frames", "3,6", "--objects", "2", "--resolution", "48x64",
                "--workdir", str(tmp_path / "ckpts"), "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = out.read_text()
    main_table = table.split("Image prediction latency")[0]
    rows = [[c.strip() for c in line.split("|")] for line in main_table.splitlines() if line.startswith("| internvl-tiny")]
    # Both procedures (the default), every length, the [SEG] count asked for.
    assert [(r[2], r[3]) for r in rows] == [("official", "3"), ("official", "6"), ("sa2va-i", "3"), ("sa2va-i", "6")]
    assert all(r[4] == "2" for r in rows)
    assert all(float(r[5]) >= 0 and float(r[6]) > 0 for r in rows)  # LLM s (may round to 0.00), SAM-2 s
    assert (tmp_path / "ckpts" / "internvl-tiny-sa2va-i" / "config.json").is_file()
    image = [line for line in table.split("Image prediction latency")[1].splitlines() if line.startswith("| internvl")]
    assert len(image) == 1 and float(image[0].split("|")[2]) > 0  # median ms


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message path only exists without CUDA")
def test_without_cuda_it_stops_with_a_message(tmp_path):
    proc = _run("--sizes", "1b", "--workdir", str(tmp_path), tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr
    assert not any(tmp_path.iterdir())  # failed before writing any checkpoint
