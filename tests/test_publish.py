"""`refsav publish`: a dataset folder built from a synthetic annotate output, reloaded with
`datasets`; the card; determinism; and the upload's retry / one-commit logic against a
test double (no test reaches the Hub)."""
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pytest
import yaml
from huggingface_hub import errors as hub_errors

from annotated_fixture import CHECKER_ID, GENERATION_CONFIG, MODEL_ID, build_annotated, prompt_refs
from refsav.cli import main
from refsav.pipelines.publish import (
    SplitRule,
    UploadError,
    assign_splits,
    build_dataset_folder,
    folder_fingerprint,
    is_transient,
    load_annotated,
    upload_dataset,
    validate_folder,
)
from refsav.schemas import SchemaError
from refsav.schemas.expression import Expression
from refsav.schemas.io import read_json, rows_to_records
from refsav.schemas.version import __version__


class _NoHub:
    def __init__(self, *args, **kwargs):
        raise AssertionError("a test tried to reach the Hub")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    fx = build_annotated(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub, "HfApi", _NoHub)
        assert main(["publish", "--data", str(fx.out), "--repo-id", "refsav-test/ref-sav-synth", "--dry-run"]) == 0
    return fx, fx.out / "hub"


def _front_matter(readme: Path) -> tuple[dict, str]:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _expected_counts(fx) -> dict[str, int]:
    splits = assign_splits(fx.video_ids, SplitRule())
    counts = {"train": 0, "validation": 0}
    for e in fx.expressions:
        counts[splits[e.video_id]] += 1
    return counts


def test_dry_run_folder_reloads_with_datasets(published, tmp_path):
    fx, folder = published
    expected = _expected_counts(fx)
    assert expected["train"] and expected["validation"]  # the fixture exercises both splits
    assert sorted(p.name for p in (folder / "data").iterdir()) == [
        "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "data"]

    meta, _ = _front_matter(folder / "README.md")
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "validation", "path": "data/validation-*"}]}]
    info = meta["dataset_info"]
    assert [f["name"] for f in info["features"]] == Expression.ARROW_SCHEMA.names
    assert {s["name"]: s["num_examples"] for s in info["splits"]} == expected
    assert meta["license"] == "cc-by-4.0"

    ds = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert {k: v.num_rows for k, v in ds.items()} == expected
    want = datasets.Features.from_arrow_schema(Expression.ARROW_SCHEMA)
    rows = []
    for name, split in ds.items():
        assert split.features == want
        rows += [(name, r) for r in rows_to_records(split.to_list(), Expression)]
    assert sorted((r for _, r in rows), key=lambda e: e.key) == fx.expressions
    # Split by video: no video in both splits, and every row of a video where the rule says.
    split_of = {}
    for name, r in rows:
        assert split_of.setdefault(r.video_id, name) == name
    assert split_of == assign_splits(fx.video_ids, SplitRule())
    assert sum(r.ambiguous for _, r in rows) == len(fx.ambiguous)
    # Annotated without a grounder: the grounding columns are there, and null.
    for split in ds.values():
        assert {r["grounding"] is None and r["provenance"]["grounder"] is None for r in split} == {True}


def test_card_holds_statistics_and_provenance(published):
    fx, folder = published
    _, body = _front_matter(folder / "README.md")
    for ref in prompt_refs():
        assert f"| {ref.template_id} | `{ref.sha256}` | {len(fx.expressions)} |" in body
    assert f"| {MODEL_ID} | r1 | synthetic | {len(fx.expressions)} |" in body
    assert f"| {CHECKER_ID} | {len(fx.expressions)} |" in body
    assert GENERATION_CONFIG in body and f"`{__version__}`" in body
    assert "CC BY 4.0" in body
    assert f"| videos | {len(fx.video_ids)} |" in body
    assert f"| objects (long expressions) | {len(fx.expressions)} |" in body
    assert f"| short expressions | {sum(len(e.short_caps) for e in fx.expressions)} |" in body
    assert f"| objects flagged ambiguous | {len(fx.ambiguous)} |" in body
    assert f"| objects dropped: consistency_failed | {len(fx.dropped)} |" in body
    categories = {}
    for e in fx.expressions:
        categories[e.category] = categories.get(e.category, 0) + 1
    for cat, n in categories.items():
        assert f"| {cat} | {n} |" in body
    assert 'sha256("0:<video_id>")' in body and "below 0.1" in body
    assert "--val-fraction 0.1 --split-seed 0" in body
    assert 'load_dataset("refsav-test/ref-sav-synth")' in body
    assert str(fx.sample) not in body  # no local paths in a public card
    grounding = body.split("## Grounding", 1)[1].split("\n## ", 1)[0]
    assert "No grounder was used" in grounding and "![" not in grounding and "| J&F |" not in grounding


def test_publish_is_deterministic_and_replaces_its_own_folder(published, tmp_path):
    fx, folder = published

    def digest(d: Path) -> dict[str, str]:
        return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}

    again = tmp_path / "again"
    assert main(["publish", "--data", str(fx.out), "--repo-id", "refsav-test/ref-sav-synth", "--folder", str(again), "--dry-run"]) == 0
    assert digest(again) == digest(folder)

    # Smaller shards, then the default again: the old shards must not linger (they would be uploaded).
    assert main(["publish", "--data", str(fx.out), "--repo-id", "o/n", "--folder", str(again), "--dry-run", "--shard-rows", "4"]) == 0
    train_files = sorted(p.name for p in (again / "data").glob("train-*"))
    n = -(-_expected_counts(fx)["train"] // 4)
    assert train_files == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)] and n > 1
    assert main(["publish", "--data", str(fx.out), "--repo-id", "o/n", "--folder", str(again), "--dry-run"]) == 0
    assert sorted(p.name for p in (again / "data").iterdir()) == ["train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]

    # Another seed moves videos between the splits, by video.
    other = tmp_path / "other"
    assert main(["publish", "--data", str(fx.out), "--repo-id", "o/n", "--folder", str(other), "--dry-run",
                 "--split-seed", "7", "--val-fraction", "0.4"]) == 0
    meta, _ = _front_matter(other / "README.md")
    splits = assign_splits(fx.video_ids, SplitRule(0.4, 7))
    counts = {s: sum(splits[e.video_id] == s for e in fx.expressions) for s in ("train", "validation")}
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]} == counts


def test_bad_inputs_and_foreign_folders_are_one_line_errors(published, tmp_path, capsys):
    fx, _ = published

    def error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("do not publish")
    err = error(["publish", "--data", str(fx.out), "--repo-id", "o/n", "--folder", str(foreign), "--dry-run"])
    assert "notes.txt" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    assert "folder not found" in error(["publish", "--data", str(tmp_path / "nowhere"), "--repo-id", "o/n", "--dry-run"])
    (tmp_path / "norun").mkdir()
    assert "run.json: file not found" in error(["publish", "--data", str(tmp_path / "norun"), "--repo-id", "o/n", "--dry-run"])
    assert main(["publish", "--data", str(fx.out), "--repo-id", "not-a-repo-id", "--dry-run"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err


def test_validation_catches_a_folder_that_does_not_load_as_written(published, tmp_path):
    fx, _ = published
    run = load_annotated(fx.out)
    built = build_dataset_folder(run, tmp_path / "hub", repo_id="o/n")
    assert validate_folder(built, expected=run.expressions) == _expected_counts(fx)
    with pytest.raises(SchemaError, match="differ"):
        validate_folder(built, expected=run.expressions[1:])
    # A shard lost after the card was written: the counts no longer match the card.
    next((tmp_path / "hub" / "data").glob("validation-*")).unlink()
    with pytest.raises(SchemaError) as info:
        validate_folder(built)
    assert str(tmp_path / "hub") in str(info.value) and "\n" not in str(info.value)


def test_split_rule_is_stable_and_by_fraction():
    ids = [f"sav_{i:06d}" for i in range(2000)]
    rule = SplitRule(0.1, 0)
    splits = assign_splits(ids, rule)
    share = sum(s == "validation" for s in splits.values()) / len(ids)
    assert 0.08 < share < 0.12
    assert assign_splits(list(reversed(ids)), rule) == splits
    # Adding videos never moves an existing one.
    more = assign_splits(ids + [f"sav_{i:06d}" for i in range(2000, 2500)], rule)
    assert all(more[v] == s for v, s in splits.items())
    assert assign_splits(ids, SplitRule(0.1, 1)) != splits
    # Tiny sets still get both splits; a single video stays in train; fraction 0 means no validation.
    two = assign_splits(["a", "b"], rule)
    assert sorted(two.values()) == ["train", "validation"]
    assert assign_splits(["a"], rule) == {"a": "train"}
    assert set(assign_splits(ids[:50], SplitRule(0.0, 0)).values()) == {"train"}


# --------------------------------------------------------------------------- upload, against a test double


class _Status(Exception):
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.response = type("R", (), {"status_code": status})()


class ConnectError(Exception):  # named like the httpx error for a refused connection
    pass


@dataclass
class _Commit:
    commit_id: str
    title: str


@dataclass
class FakeHub:
    """Records calls; `upload_failures` are raised by successive upload_folder calls.
    `land_before_failing`: the commit is recorded before the failure (answer lost)."""

    upload_failures: list = field(default_factory=list)
    create_failures: list = field(default_factory=list)
    land_before_failing: bool = False
    calls: list = field(default_factory=list)
    commits: list = field(default_factory=list)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.create_failures:
            raise self.create_failures.pop(0)
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        if self.upload_failures:
            err = self.upload_failures.pop(0)
            if self.land_before_failing:
                self.commits.insert(0, _Commit(f"c{len(self.commits)}", kwargs["commit_message"]))
            raise err
        self.commits.insert(0, _Commit(f"c{len(self.commits)}", kwargs["commit_message"]))
        return type("Info", (), {"commit_url": f"https://hub/commit/{self.commits[0].commit_id}"})()

    def list_repo_commits(self, repo_id, repo_type=None):
        self.calls.append(("list_repo_commits", repo_id))
        return list(self.commits) + [_Commit("init", "initial commit")]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-00000-of-00001.parquet").write_bytes(b"rows")
    (tmp_path / "README.md").write_text("---\n---\n")
    return tmp_path


def test_upload_retries_transient_errors_and_commits_once(folder):
    hub = FakeHub(upload_failures=[ConnectError("refused"), _Status(503)], create_failures=[TimeoutError("slow")])
    waits = []
    result = upload_dataset(hub, folder, "org/name", private=True, sleep=waits.append)
    creates = [c for c in hub.calls if c[0] == "create_repo"]
    assert creates[-1][2] == {"repo_type": "dataset", "private": True, "exist_ok": True} and len(creates) == 2
    uploads = [c[1] for c in hub.calls if c[0] == "upload_folder"]
    assert len(uploads) == 3 and len(hub.commits) == 1  # two failures, one commit
    assert uploads[-1]["repo_type"] == "dataset" and uploads[-1]["folder_path"] == str(folder)
    # Stale remote shards and a stale grounding figure go in the same commit.
    assert uploads[-1]["delete_patterns"] == ["data/*", "grounding_jf.png"]
    assert folder_fingerprint(folder)[:16] in uploads[-1]["commit_message"]
    assert waits == [2.0, 2.0, 4.0]  # create: 1 retry; upload: 2 retries with doubling backoff
    assert result.attempts == 3 and not result.already_there and result.commit.endswith("/c0")


def test_upload_does_not_retry_permanent_errors(folder):
    hub = FakeHub(upload_failures=[_Status(403)])
    with pytest.raises(UploadError, match="403"):
        upload_dataset(hub, folder, "org/name", sleep=lambda s: pytest.fail("slept on a permanent error"))
    assert sum(c[0] == "upload_folder" for c in hub.calls) == 1 and not hub.commits


def test_upload_notices_a_commit_whose_answer_was_lost(folder):
    hub = FakeHub(upload_failures=[ConnectError("reset after the commit")], land_before_failing=True)
    result = upload_dataset(hub, folder, "org/name", sleep=lambda s: None)
    assert result.already_there and result.commit == "c0"
    assert len(hub.commits) == 1 and sum(c[0] == "upload_folder" for c in hub.calls) == 1


def test_upload_gives_up_after_the_last_attempt(folder):
    hub = FakeHub(upload_failures=[_Status(502)] * 3)
    waits = []
    with pytest.raises(UploadError, match="after 3 attempts"):
        upload_dataset(hub, folder, "org/name", attempts=3, sleep=waits.append, backoff=1.5)
    assert waits == [1.5, 3.0] and not hub.commits


def test_transient_error_classification():
    transport = sys.modules[hub_errors.Response.__module__]
    request = transport.Request("POST", "https://huggingface.co/api/datasets/org/name/commit/main")

    def hub_error(status):
        return hub_errors.HfHubHTTPError(f"status {status}", response=transport.Response(status, request=request))

    assert is_transient(hub_error(503)) and is_transient(hub_error(429)) and is_transient(hub_error(500))
    assert not is_transient(hub_error(401)) and not is_transient(hub_error(404)) and not is_transient(hub_error(409))
    assert is_transient(transport.ConnectError("refused")) and is_transient(transport.ReadTimeout("slow"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert not is_transient(FileNotFoundError("README.md")) and not is_transient(ValueError("bad repo id"))


def test_offline_mode_and_permanent_statuses_fail_at_once(folder):
    transport = sys.modules[hub_errors.Response.__module__]
    request = transport.Request("POST", "https://huggingface.co/api/repos/create")

    def hub_error(status):
        return hub_errors.HfHubHTTPError(f"status {status}", response=transport.Response(status, request=request))

    offline = hub_errors.OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: offline mode")
    assert isinstance(offline, ConnectionError) and not is_transient(offline)
    assert not is_transient(hub_errors.LocalTokenNotFoundError("no token"))
    for err, hint in ((offline, ""), (hub_error(401), "HF_TOKEN"), (hub_error(403), "may not write"),
                      (hub_error(404), "no such repository")):
        hub = FakeHub(create_failures=[err])
        with pytest.raises(UploadError) as info:
            upload_dataset(hub, folder, "org/name", sleep=lambda s: pytest.fail(f"slept on {err!r}"))
        assert "\n" not in str(info.value) and hint in str(info.value)
        assert [c[0] for c in hub.calls] == ["create_repo"]  # one attempt, no upload


def test_publish_with_offline_hub_is_one_line_and_uploads_nothing(published, tmp_path, monkeypatch, capsys):
    fx, _ = published
    monkeypatch.setattr(huggingface_hub, "HfApi", _NoHub)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["publish", "--data", str(fx.out), "--repo-id", "o/n", "--folder", str(tmp_path / "hub")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "HF_HUB_OFFLINE is set" in err and "--dry-run" in err


def test_card_note_and_commands_that_run(published, tmp_path):
    """The card's notice, and its example commands name every option their command requires."""
    import click

    from refsav.cli import COMMANDS

    fx, _ = published
    note = "a demo: every text comes from a random-weight model."
    assert main(["publish", "--data", str(fx.out), "--repo-id", "o/n", "--folder", str(tmp_path / "hub"), "--dry-run",
                 "--card-note", note]) == 0
    _, body = _front_matter(tmp_path / "hub" / "README.md")
    assert body.lstrip().split("\n\n")[1] == f"> **Note:** {note}"
    commands = [line for line in body.splitlines() if line.startswith("refsav ")]
    assert {c.split()[1] for c in commands} == {"export", "score"}
    for line in commands:
        words = line.split()
        module, attr, _ = COMMANDS[words[1]]
        command = getattr(__import__(module, fromlist=[attr]), attr)
        if isinstance(command, click.Group):
            command = command.commands[words[2]]
        required = [p for p in command.params if isinstance(p, click.Option) and p.required]
        missing = [p.opts[0] for p in required if not set(p.opts) & set(words)]
        assert not missing, f"{line!r} lacks {missing}"


# --------------------------------------------------------------------------- grounded rows


@pytest.fixture(scope="module")
def grounded(tmp_path_factory):
    fx = build_annotated(tmp_path_factory.mktemp("grounded"), grounded=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub, "HfApi", _NoHub)
        assert main(["publish", "--data", str(fx.out), "--repo-id", "o/grounded", "--dry-run"]) == 0
    return fx, fx.out / "hub"


def _kept_scores(fx) -> list[float]:
    """J&F of every kept expression, read from the fixture's rows: long ones, then kept short ones."""
    rows = [e for e in fx.expressions if e.grounding is not None]
    assert rows and len(rows) < len(fx.expressions)  # grounded and ungrounded rows side by side
    kept = [e.grounding.scores[0].j_and_f for e in rows]
    for e in rows:
        short = {sc.text: sc.j_and_f for sc in e.grounding.scores[1:]}
        kept += [short[c] for c in e.short_caps]
    return kept


def _bars(png: Path) -> list[tuple[float, int]]:
    """(x centre, height in pixels) of every bar in the figure, left to right."""
    from PIL import Image

    from refsav.pipelines.dataset_card import _BAR_RGB

    with Image.open(png) as im:
        im.verify()  # a complete, valid PNG
    with Image.open(png) as im:
        assert im.format == "PNG"
        rgb = np.asarray(im.convert("RGB"))
    heights = (rgb == np.array(_BAR_RGB, dtype=rgb.dtype)).all(axis=2).sum(axis=0)
    bars, start = [], None
    for x, h in enumerate(list(heights) + [0]):
        if h and start is None:
            start = x
        elif not h and start is not None:
            bars.append(((start + x - 1) / 2, int(heights[start:x].max())))
            start = None
    return bars


def test_grounded_card_histogram_figure_and_table_match_the_scores(grounded):
    fx, folder = grounded
    scores = np.asarray(_kept_scores(fx))
    counts, _ = np.histogram(scores, bins=20, range=(0.0, 1.0))
    assert counts.sum() == len(scores) and (counts > 0).sum() >= 5

    _, body = _front_matter(folder / "README.md")
    assert "![Grounding J&F of kept expressions](grounding_jf.png)" in body
    table = re.findall(r"^\| \[(\d\.\d\d), (\d\.\d\d)[)\]] \| (\d+) \|$", body, flags=re.M)
    assert [(float(a), float(b)) for a, b, _ in table] == [(i / 20, (i + 1) / 20) for i in range(20)]
    assert [int(n) for *_, n in table] == counts.tolist()

    # The image itself: one bar per non-empty bin, at its bin's place, as tall as its count.
    bars = _bars(folder / "grounding_jf.png")
    nonzero = np.flatnonzero(counts)
    assert len(bars) == len(nonzero)
    pitch = (bars[-1][0] - bars[0][0]) / (nonzero[-1] - nonzero[0])
    px_per_count = max(h for _, h in bars) / counts.max()
    for (x, h), i in zip(bars, nonzero):
        assert abs(x - (bars[0][0] + (i - nonzero[0]) * pitch)) <= 1.5
        assert abs(h - counts[i] * px_per_count) <= 1.5, (i, h, counts[i])


def test_grounded_card_counts_by_reason(grounded):
    fx, folder = grounded
    _, body = _front_matter(folder / "README.md")
    section = body.split("## Grounding", 1)[1].split("\n## ", 1)[0]
    reasons = dict(re.findall(r"^\| (.+?) \| (\d+) \|$", section.split("Counts by reason", 1)[1], flags=re.M))
    truth = read_json(fx.sample / "Ref-SAV.json")
    grounded_rows = [e for e in fx.expressions if e.grounding is not None]
    # Removed shorts: those the sample wrote for the object minus those the row kept.
    removed = sum(len(truth[e.video_id]["objects"][str(e.object_id)]["short_caps"]) - len(e.short_caps)
                  for e in grounded_rows)
    assert removed > 0
    dropped = [k for k, why in fx.drop_reasons.items() if why == "grounding_failed"]
    assert dropped
    assert int(reasons["objects dropped by grounding (`grounding_failed`: the long expression's J&F below the threshold)"]) == len(dropped)
    assert int(reasons["objects dropped for another reason: `consistency_failed`"]) == len(fx.dropped) - len(dropped)
    assert int(reasons["short expressions removed by grounding (failed on their own)"]) == removed
    assert int(reasons["objects flagged ambiguous by grounding (`confusable_with`)"]) == len(fx.ambiguous)
    assert int(reasons["objects kept with grounding"]) == len(grounded_rows)
    assert int(reasons["objects kept without grounding (null)"]) == len(fx.expressions) - len(grounded_rows)
    assert "synthetic/tiny-sa2va" in body and '"min_grounding":0.5' in body  # the grounder, under Provenance


def test_grounded_rows_load_with_datasets_null_where_ungrounded(grounded, tmp_path):
    fx, folder = grounded
    ds = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    by_key = {e.key: e for e in fx.expressions}
    seen = 0
    for split in ds.values():
        assert split.features == datasets.Features.from_arrow_schema(Expression.ARROW_SCHEMA)
        for r in split:
            e = by_key[(r["video_id"], r["object_id"])]
            seen += 1
            if e.grounding is None:
                assert r["grounding"] is None and r["provenance"]["grounder"] is None  # null, not zeros
                continue
            g = r["grounding"]
            assert [(s["kind"], s["j_and_f"], s["kept"]) for s in g["scores"]] == [
                (s.kind, s.j_and_f, s.kept) for s in e.grounding.scores]
            assert [c["object_id"] for c in g["confusable_with"]] == e.ambiguous_with
            assert r["provenance"]["grounder"]["model"] == "synthetic/tiny-sa2va"
    assert seen == len(fx.expressions)


def test_grounded_publish_is_deterministic_and_an_ungrounded_rebuild_drops_the_figure(grounded, published, tmp_path):
    fx, folder = grounded

    def digest(d: Path) -> dict[str, str]:
        return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}

    again = tmp_path / "hub"
    assert main(["publish", "--data", str(fx.out), "--repo-id", "o/grounded", "--folder", str(again), "--dry-run"]) == 0
    assert digest(again) == digest(folder) and "grounding_jf.png" in digest(again)
    # A figure left half-written by a killed build is cleared, not refused as a stray file.
    (again / ".grounding_jf.png.abc123.tmp").write_bytes(b"partial")
    plain, _ = published
    assert main(["publish", "--data", str(plain.out), "--repo-id", "o/n", "--folder", str(again), "--dry-run"]) == 0
    assert sorted(p.name for p in again.iterdir()) == ["README.md", "data"]
