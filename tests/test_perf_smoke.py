"""Smoke test of the scoring benchmark: it runs, and oracle and production agree.

Timing targets live in the benchmark itself; a test on a shared machine must not
depend on how fast it is.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "perf" / "README.md"


def test_bench_scoring_quick_runs_and_parity_holds():
    readme_before = README.read_bytes() if README.exists() else None
    proc = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "bench_scoring.py"), "--quick"],
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r"^parity: max \|Δ\| = (\S+)", proc.stdout, re.MULTILINE)
    assert found, proc.stdout
    assert float(found.group(1)) <= 1e-9, found.group(0)
    # Every expression of the workload, scored by the engine at 1 and 2 workers, equals
    # the dense-mask functions.
    assert "engine: 0 expressions differ" in proc.stdout, proc.stdout
    # --quick is for smoke runs; only the full run may rewrite the published figures.
    assert (README.read_bytes() if README.exists() else None) == readme_before


def test_bench_annotate_throughput_quick_annotates_every_object():
    """The end-to-end benchmark against its simulated VLM server: every object gets a row,
    and the requests the client counted are the requests the server answered."""
    readme_before = README.read_bytes() if README.exists() else None
    proc = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "bench_annotate_throughput.py"), "--quick", "--runs", "1:2,2:2",
         "--grounded-runs", "1:2"],
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = re.findall(r"^workers=(\d) shard-size=\d+: ([\d.]+) req/s steady .*?; (\d+)/(\d+) objects; "
                      r"client (\d+) requests, server (\d+)", proc.stdout, re.MULTILINE)
    assert [r[0] for r in runs] == ["1", "2"], proc.stdout
    for _, rps, kept, seen, client, server in runs:
        assert int(seen) == 18 and int(kept) == 18  # 6 clips x 3 objects, none dropped or failed
        assert int(client) == int(server) == 5 * 18  # five stages, no retry, no cache hit
        assert float(rps) > 0
    assert (README.read_bytes() if README.exists() else None) == readme_before
    # With `refsav annotate --grounder`, one more run against the simulated `refsav serve`:
    # one grounder call per object, one request per expression (the long one and the
    # simulated VLM's two short ones), every row kept (--min-grounding 0).
    grounded = re.findall(r"^workers=1 shard-size=2 \+ grounder: .*?; (\d+)/(\d+) objects; grounder: client (\d+) "
                          r"calls, server (\d+) requests", proc.stdout, re.MULTILINE)
    help_text = subprocess.run([sys.executable, "-m", "refsav", "annotate", "--help"], cwd=ROOT, capture_output=True,
                               text=True).stdout
    if "--grounder" in help_text:
        assert grounded == [("18", "18", "18", str(3 * 18))], proc.stdout
    else:
        assert grounded == [], proc.stdout
