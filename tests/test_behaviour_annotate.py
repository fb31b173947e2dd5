"""`refsav annotate` writes the same rows as before the stages became plugins.

tests/fixtures/before_restructure/ holds the rows and counts of one run made by the code
before the restructure (make_baseline.py says how); this reruns it with today's code. The
rows gained `provenance.stages` and `extra_answers`, checked on their own.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "before_restructure"
sys.path.insert(0, str(FIXTURES))

from make_baseline import ANNOTATE_ARGS, SAMPLE, comparable_rows, summary_counts  # noqa: E402

from refsav.pipelines.annotate.cli import annotate_command  # noqa: E402
from refsav.pipelines.sample import SampleConfig, write_sample  # noqa: E402
from refsav.pipelines.vlm.tiny import save_tiny_vlm  # noqa: E402
from refsav.schemas.expression import Expression  # noqa: E402
from refsav.schemas.io import read_parquet  # noqa: E402

pytestmark = pytest.mark.timeout(300)

# --no-check takes check out of the default list object, check, scene, video, merge.
STAGES_WITHOUT_CHECK = ["object", "scene", "video", "merge"]


def test_annotate_rows_and_counts_are_unchanged(tmp_path):
    write_sample(tmp_path / "sample", SampleConfig(**SAMPLE), show_progress=False)
    model = save_tiny_vlm(tmp_path / "tiny")
    out = tmp_path / "annotated"
    annotate_command.main(["--input", str(tmp_path / "sample" / "sav_train"), "--out", str(out), "--model", str(model),
                           *ANNOTATE_ARGS], standalone_mode=False)

    before = json.loads((FIXTURES / "annotate_rows.json").read_text())
    now = comparable_rows(out, Expression, read_parquet)
    assert len(now) == len(before) > 0
    for row in now:  # the fields that did not exist before
        assert row["provenance"].pop("stages") == STAGES_WITHOUT_CHECK
        assert row.pop("extra_answers") == {}
        # Without --grounder the grounding fields are null, not zero.
        assert row.pop("grounding") is None and row["provenance"].pop("grounder") is None
    assert sorted(now, key=lambda d: json.dumps(d, sort_keys=True)) == before
    assert summary_counts(out) == json.loads((FIXTURES / "annotate_summary.json").read_text())
