"""The scoring benchmark's quick workload scores exactly as before the restructure.

tests/fixtures/before_restructure/scores_quick.json holds the per-expression J, F and A
of perf/bench_scoring.py's QUICK workload under protocol refsav, unrounded, as the code
before the restructure computed them (see make_baseline.py there).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "before_restructure" / "scores_quick.json"

# In its own process: importing bench_scoring pins the importing process to one thread.
SCORE_QUICK_WORKLOAD = """
import json, sys, tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import bench_scoring
from refsav.benchmark.protocols import VIDEO_PROTOCOLS
from refsav.benchmark.score import score_refvos

unrounded = replace(VIDEO_PROTOCOLS["refsav"], round_per_expression=False)
found = []
with tempfile.TemporaryDirectory() as tmp:
    for width, height in bench_scoring.QUICK.sizes:
        folder = Path(tmp) / f"bench_quick_{width}"
        folder.mkdir()
        bench_scoring.build(bench_scoring.QUICK, width, height, folder)
        report = score_refvos(folder, folder / "results.json", unrounded)
        found.append([f"{width}x{height}", sorted([s.video_id, s.exp_id, s.metrics] for s in report.items)])
print(json.dumps(found))
"""


def test_quick_workload_scores_equal_the_fixture():
    proc = subprocess.run([sys.executable, "-c", SCORE_QUICK_WORKLOAD, str(ROOT / "perf")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    expected = json.loads(FIXTURE.read_text())
    got = json.loads(proc.stdout)
    assert [size for size, _ in got] == [size for size, _ in expected]
    for (size, rows), (_, want) in zip(got, expected):
        assert rows == want, size  # exact: every float bit for bit
