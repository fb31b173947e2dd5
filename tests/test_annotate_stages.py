"""Annotation stages as plugins: registering a new stage, the stage list's checks, and the
retry of the consistency check, with a scripted VLM (pure logic) and with the tiny VLM in
this process (a real run)."""
from __future__ import annotations

import asyncio
import fcntl
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from refsav.pipelines.annotate.annotator import Annotator
from refsav.pipelines.annotate.config import DEFAULT_STAGES, AnnotateConfig, VLMSettings
from refsav.pipelines.annotate.prompts import DEFAULT_DIR, load_prompts
from refsav.pipelines.annotate.records import DroppedObject, Meter
from refsav.pipelines.annotate.registry import get_stage, register, resolve
from refsav.pipelines.annotate.run import annotate
from refsav.pipelines.annotate.stage import ObjectContext, Turn
from refsav.pipelines.annotate.text import parse_object_answer
from refsav.pipelines.vlm.base import GenerationConfig, VLMResponse
from refsav.runtime.executor import make_executor
from refsav.schemas.errors import RefsavError, SchemaError
from refsav.schemas.expression import Expression
from refsav.schemas.io import read_parquet

JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 16  # a JPEG signature is all a request checks


class Toy:
    """Asks the VLM one more question with its own template; its answer lands in
    Expression.extra_answers["toy"]."""

    name = "toy"
    template = "toy"
    fields = frozenset({"highlight", "long"})
    backend = "describer"
    needs = ("merge",)

    async def run(self, turn: Turn) -> str:
        prompt = turn.prompt.render(highlight=turn.obj.highlight, long=turn.answers["merge"].long)
        answer = await turn.ask(prompt, (turn.obj.views.scene_view.jpeg,))
        return f"object {turn.obj.object_id}: {answer}"


register(Toy())


@pytest.fixture(scope="module")
def sav(tmp_path_factory) -> Path:
    from refsav.pipelines.sample import SampleConfig, write_sample

    root = tmp_path_factory.mktemp("sample")
    write_sample(root, SampleConfig(videos=2, frames=24, seed=3), show_progress=False)
    return root / "sav_train"


def test_a_registered_stage_runs_and_its_answer_is_in_the_rows(sav, tmp_path):
    from refsav.pipelines.vlm.tiny import save_tiny_vlm

    prompts = tmp_path / "prompts"
    shutil.copytree(DEFAULT_DIR, prompts)
    (prompts / "toy.v1.txt").write_text("Is {highlight} the object in: {long}?")
    stages = (*(s for s in DEFAULT_STAGES if s != "check"), "toy")
    config = AnnotateConfig(vlm=VLMSettings(backend="transformers", model=str(save_tiny_vlm(tmp_path / "tiny")),
                                            max_tokens=12), stages=stages, prompts_dir=str(prompts))
    with make_executor(1) as executor:
        summary = annotate(sav, tmp_path / "out", config, executor, show_progress=False)
    assert summary.complete and summary.objects_kept > 0

    rows = [e for p in sorted((tmp_path / "out" / "data").glob("*.parquet")) for e in read_parquet(p, Expression)]
    assert len(rows) == summary.objects_kept
    for e in rows:
        assert e.extra_answers["toy"].startswith(f"object {e.object_id}: ")
        assert e.provenance.stages == list(stages)
        assert [r.template_id for r in e.provenance.prompts] == [
            "object/v1", "check/v1", "scene/v1", "video/v1", "merge/v1", "toy/v1"]
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out" / "data"))["train"]
    assert sorted(Expression.from_row(r).extra_answers["toy"] for r in ds) == sorted(e.extra_answers["toy"] for e in rows)
    plan = (tmp_path / "out" / "plan.json").read_text()
    assert '"toy"' in plan and '"toy/v1"' in plan


def test_stage_lists_are_checked():
    assert [s.name for s in resolve(DEFAULT_STAGES)] == list(DEFAULT_STAGES)
    for names, message in [
        (("object", "nope", "merge"), "unknown annotation stage 'nope'"),
        (("object", "scene", "scene", "video", "merge"), "listed twice"),
        (("object", "merge", "scene", "video"), "'merge' needs the answers of scene, video"),
        (("object", "scene", "video", "toy"), "'toy' needs the answers of merge"),
        (("object", "scene"), "must include merge"),
    ]:
        with pytest.raises(RefsavError, match=message):
            resolve(names)
    with pytest.raises(RefsavError, match="already registered"):
        register(Toy())
    assert get_stage("toy").template == "toy"


def test_a_stage_template_is_checked_against_its_own_placeholders(tmp_path):
    shutil.copytree(DEFAULT_DIR, tmp_path / "p")
    assert load_prompts(tmp_path / "p").get("toy") is None  # not asked for: not loaded
    with pytest.raises(SchemaError, match="toy"):
        load_prompts(tmp_path / "p", ("toy",))
    (tmp_path / "p" / "toy.v1.txt").write_text("{long} {description}")
    with pytest.raises(SchemaError, match=r"toy\.v1\.txt.*description"):
        load_prompts(tmp_path / "p", ("toy",))
    with pytest.raises(RefsavError, match="prompt folder not found"):
        load_prompts(tmp_path / "nowhere")


class Scripted:
    """A VLM backend that gives the next scripted answer and keeps the prompts it was sent."""

    name = "scripted"

    def __init__(self, model: str, answers: list[str]) -> None:
        self.model = model
        self.answers = list(answers)
        self.prompts: list[str] = []

    async def generate(self, request) -> VLMResponse:
        self.prompts.append(request.prompt)
        return VLMResponse(self.answers.pop(0), 1, 1, 0.0)

    async def aclose(self) -> None:
        pass


def scripted_object() -> ObjectContext:
    view = SimpleNamespace(jpeg=JPEG)
    views = SimpleNamespace(mode="contour", colour="red", object_views=(view, view), scene_view=view,
                            video_views=(view,) * 3)
    return ObjectContext("v1", SimpleNamespace(video_id="v1"), SimpleNamespace(object_id=7), views, ())


def run_scripted(stage_names, describer: Scripted, checker: Scripted):
    annotator = Annotator(resolve(stage_names), load_prompts(), {"describer": describer, "checker": checker},
                          GenerationConfig(max_tokens=8), Meter(), "0.0")
    return asyncio.run(annotator.annotate(scripted_object()))


MERGED = "LONG: the red ball rolling left\nSHORT: red ball"


def test_a_rejected_description_is_described_again_with_the_objection():
    describer = Scripted("d", ["Category: ball\nDescription: a blue ball", "Category: ball\nDescription: a red ball",
                               "on the left", "rolls left", MERGED])
    checker = Scripted("c", ["NO. The ball is red.", "YES. It is the red ball."])
    e = run_scripted(DEFAULT_STAGES, describer, checker)
    assert isinstance(e, Expression)
    assert (e.object_description, e.consistency.attempts, e.consistency.reason) == ("a red ball", 2, "It is the red ball.")
    assert "rejected: The ball is red." in describer.prompts[1] and "rejected" not in describer.prompts[0]
    assert e.provenance.checker_model_id == "c" and e.provenance.stages == list(DEFAULT_STAGES)
    assert e.extra_answers == {}


@pytest.mark.parametrize("describe,check,reason", [
    (["", ""], [], "empty_description"),
    (["Description: a", ""], ["no, wrong"], "empty_description"),
    (["Description: a", "Description: b"], ["no, wrong", "unsure"], "consistency_unclear"),
    (["", "Description: b"], ["no, wrong"], "consistency_failed"),
])
def test_attempts_are_shared_by_all_stages(describe, check, reason):
    describer, checker = Scripted("d", describe), Scripted("c", check)
    out = run_scripted(DEFAULT_STAGES, describer, checker)
    assert isinstance(out, DroppedObject) and (out.video_id, out.object_id, out.reason) == ("v1", 7, reason)
    assert not describer.answers and not checker.answers  # no request more or less than scripted
    if len(describe) == 2 and not parse_object_answer(describe[0]).description:
        assert "A previous answer was empty" in describer.prompts[1]


def test_without_check_nothing_is_checked():
    describer = Scripted("d", ["Description: a red ball", "on the left", "rolls left", MERGED])
    e = run_scripted(tuple(s for s in DEFAULT_STAGES if s != "check"), describer, describer)
    assert (e.consistency.attempts, e.consistency.reason, e.provenance.checker_model_id) == (1, "not checked", "")
    assert e.short_caps == ["red ball"]


def test_a_locked_folder_is_a_refsav_error_not_a_schema_error(sav, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    config = AnnotateConfig(vlm=VLMSettings(backend="transformers", model="unused"))
    with open(out / ".lock", "w") as fh, make_executor(1) as executor:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RefsavError, match="another refsav annotate run") as caught:
            annotate(sav, out, config, executor, show_progress=False)
    assert not isinstance(caught.value, SchemaError)


def test_rows_written_before_stage_lists_still_read(tmp_path):
    """Parquet from before provenance.stages and extra_answers: both read as empty."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    describer = Scripted("d", ["Description: a red ball", "on the left", "rolls left", MERGED])
    row = run_scripted(tuple(s for s in DEFAULT_STAGES if s != "check"), describer, describer).to_row()
    del row["extra_answers"], row["provenance"]["stages"]
    old_schema = pa.schema([f for f in Expression.ARROW_SCHEMA if f.name != "extra_answers"])
    provenance = old_schema.field("provenance").type
    old_schema = old_schema.set(old_schema.get_field_index("provenance"), pa.field(
        "provenance", pa.struct([f for f in provenance if f.name != "stages"])))
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), tmp_path / "old.parquet")
    (e,) = read_parquet(tmp_path / "old.parquet", Expression)
    assert (e.provenance.stages, e.extra_answers, e.formated) == ([], {}, "the red ball rolling left")


PLUGIN = '''
from refsav.pipelines.annotate.registry import register


class Shout:
    name, template, backend, fields, needs = "shout", None, "describer", frozenset(), ("merge",)

    async def run(self, turn):
        return turn.answers["merge"].long.upper()


register(Shout())
'''


@pytest.mark.timeout(300)
def test_the_cli_runs_a_stage_from_a_plugin_module(sav, tmp_path):
    import os
    import subprocess
    import sys

    from refsav.pipelines.vlm.tiny import save_tiny_vlm

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "shout_stage.py").write_text(PLUGIN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")]))
    base = [sys.executable, "-m", "refsav", "annotate", "--input", str(sav), "--vlm", "transformers",
            "--model", str(save_tiny_vlm(tmp_path / "tiny")), "--max-tokens", "8", "--workers", "1", "--no-check"]

    bad = subprocess.run(base + ["--out", str(tmp_path / "bad"), "--stages", "object,scene,video,merge,shout"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "unknown annotation stage 'shout'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()

    proc = subprocess.run(base + ["--out", str(tmp_path / "out"), "--plugin", "shout_stage",
                                  "--stages", "object,check,scene,video,merge,shout"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Loading weights" not in proc.stderr  # transformers' own bars stay out of refsav's display
    rows = [e for p in sorted((tmp_path / "out" / "data").glob("*.parquet")) for e in read_parquet(p, Expression)]
    assert rows
    for e in rows:
        assert e.extra_answers["shout"] == e.formated.upper()
        assert e.provenance.stages == ["object", "scene", "video", "merge", "shout"]
