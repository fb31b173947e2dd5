"""The scoring benchmark's workloads score exactly as before the restructure.

tests/fixtures/before_restructure/scores_quick.json and scores_720p.json hold the
per-expression J, F and A of perf/bench_scoring.py's QUICK workload and of its full workload
at 1280x720 (200 expressions x 60 frames) under protocol refsav, unrounded, as the code
before the restructure computed them (see make_baseline.py there).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "before_restructure"

# In its own process: importing bench_scoring pins the importing process to one thread.
SCORE_WORKLOAD = """
import json, sys, tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import bench_scoring
from refsav.benchmark.protocols import VIDEO_PROTOCOLS
from refsav.benchmark.score import score_refvos

unrounded = replace(VIDEO_PROTOCOLS["refsav"], round_per_expression=False)
workload = getattr(bench_scoring, sys.argv[2])
sizes = json.loads(sys.argv[3]) or workload.sizes
found = []
with tempfile.TemporaryDirectory() as tmp:
    for width, height in sizes:
        folder = Path(tmp) / f"bench_{width}"
        folder.mkdir()
        bench_scoring.build(workload, width, height, folder)
        report = score_refvos(folder, folder / "results.json", unrounded)
        found.append([f"{width}x{height}", sorted([s.video_id, s.exp_id, s.metrics] for s in report.items)])
print(json.dumps(found))
"""


@pytest.mark.parametrize("fixture, workload, sizes", [
    ("scores_quick.json", "QUICK", []),  # the workload's own sizes, 720p and 1080p
    ("scores_720p.json", "FULL", [[1280, 720]]),
])
@pytest.mark.timeout(300)
def test_workload_scores_equal_the_fixture(fixture, workload, sizes):
    proc = subprocess.run([sys.executable, "-c", SCORE_WORKLOAD, str(ROOT / "perf"), workload, json.dumps(sizes)],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr
    expected = json.loads((FIXTURES / fixture).read_text())
    got = json.loads(proc.stdout)
    assert [size for size, _ in got] == [size for size, _ in expected]
    for (size, rows), (_, want) in zip(got, expected):
        assert rows == want, size  # exact: every float bit for bit
