"""`refsav demo` prints and scores exactly what it did before the namespace restructure.

The fixture (tests/fixtures/before_restructure/demo.json, see make_baseline.py there) holds
the demo's output lines, less its timing line, with the output folder written as TMP, and
its three scores.json files less their creation time and submission path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "before_restructure"
sys.path.insert(0, str(FIXTURES))
from make_baseline import DEMO_ARGS, demo_scores  # noqa: E402


@pytest.mark.timeout(300)
def test_demo_output_is_unchanged(tmp_path):
    want = json.loads((FIXTURES / "demo.json").read_text())
    proc = subprocess.run([sys.executable, "-m", "refsav", "demo", "--out", str(tmp_path / "demo"), *DEMO_ARGS],
                          capture_output=True, text=True, timeout=280, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.replace(str(tmp_path), "TMP") for line in proc.stdout.splitlines() if not line.startswith("done in")]
    assert lines == want["stdout"]
    for kind, scores in want["scores"].items():
        assert demo_scores(tmp_path / "demo" / "scores" / kind / "scores.json") == scores, kind
    assert "tiny random-weight VLM" in (tmp_path / "demo" / "hub" / "README.md").read_text()  # the card says so
