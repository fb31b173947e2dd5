"""`refsav sample` writes the same bytes as before the restructure, on one worker or several."""
import hashlib
import json
from pathlib import Path

import pytest

from refsav.pipelines.sample import SampleConfig, write_sample

BEFORE = Path(__file__).parent / "fixtures" / "before_restructure"


def tree_sha256(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("workers", [1, 2])
def test_sample_bytes_equal_the_fixture(tmp_path, workers):
    # The settings make_baseline.py used for sample_sha256.json.
    write_sample(tmp_path, SampleConfig(videos=3, frames=24, seed=3), workers=workers, show_progress=False)
    assert tree_sha256(tmp_path) == json.loads((BEFORE / "sample_sha256.json").read_text())
