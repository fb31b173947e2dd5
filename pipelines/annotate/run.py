"""One annotation run: plan the shards, run them on an executor, keep run.json current.

OUT/plan.json pins what the shards contain and the settings that shape their rows. A
rerun with the same plan skips finished shards and redoes the others: those never
written, and those where objects failed on the VLM (their good answers come from the
request cache). A rerun with a different plan is refused, because mixing rows made under
two settings in one dataset is a silent error.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from refsav.runtime.executor import Executor
from refsav.runtime.progress import progress_bar
from refsav.schemas.errors import RefsavError
from refsav.schemas.expression import PromptRef
from refsav.schemas.io import atomic_write_json, read_json

from .config import AnnotateConfig
from .grounding import GROUNDER_ERROR, GroundingStats, deciles
from .inputs import VideoInput, discover
from .prompts import load_prompts
from .records import VLM_ERROR, Meter, ShardFailure
from .registry import resolve
from .shards import ShardStats, ShardTask, finished_stats, run_shard

DEFAULT_SHARD_SIZE = 8  # videos per shard


@dataclass
class RunSummary:
    """Objects: the whole dataset in OUT. VLM usage: this run only."""

    out: str
    shards: int
    shards_done: int = 0
    shards_resumed: int = 0
    shards_failed: list[ShardFailure] = field(default_factory=list)
    videos: int = 0
    videos_skipped: int = 0
    objects_seen: int = 0
    objects_kept: int = 0
    objects_dropped: dict[str, int] = field(default_factory=dict)
    ambiguous: int = 0
    vlm: Meter = field(default_factory=Meter)
    seconds: float = 0.0
    # The first failure, in shard order: a shard's exception, else an object's VLM or grounder error.
    first_error: str = ""
    # With a grounder: counts, and the deciles of the kept expressions' J&F over the whole dataset.
    grounding: GroundingStats | None = None

    def __post_init__(self) -> None:
        self._j_and_f: list[float] = []  # not a field: run.json carries the deciles only

    def add(self, s: ShardStats) -> None:
        self.shards_done += 1
        self.shards_resumed += s.resumed
        self.videos += s.videos
        self.videos_skipped += len(s.videos_skipped)
        self.objects_seen += s.objects_seen
        self.objects_kept += s.objects_kept
        for reason, n in s.objects_dropped.items():
            self.objects_dropped[reason] = self.objects_dropped.get(reason, 0) + n
        self.ambiguous += s.ambiguous
        if not s.resumed:  # a resumed shard's VLM usage belongs to the run that made it
            self.vlm.add(s.vlm)
        if s.grounding is not None:
            if self.grounding is None:
                self.grounding = GroundingStats()
            self.grounding.add(s.grounding, usage=not s.resumed)
            self._j_and_f += s.grounding.j_and_f or []
            self.grounding.deciles = deciles(self._j_and_f)

    @property
    def complete(self) -> bool:
        """Every shard written and no object failed on the VLM: a rerun has nothing to redo."""
        return self.shards_done == self.shards and not self.shards_failed and not self.objects_failed

    @property
    def objects_failed(self) -> int:
        """Objects without a row because their VLM or grounder requests failed; a rerun asks again."""
        return self.objects_dropped.get(VLM_ERROR, 0) + self.objects_dropped.get(GROUNDER_ERROR, 0)


@dataclass(frozen=True)
class Plan:
    """OUT/plan.json: what the shards contain and what shapes their rows."""

    settings: str  # AnnotateConfig.fingerprint(), which includes the stage list
    prompts: tuple[PromptRef, ...]
    shards: tuple[tuple[str, ...], ...]  # video ids of each shard

    def to_json(self) -> dict:
        return {"settings": json.loads(self.settings), "prompts": [asdict(r) for r in self.prompts],
                "shards": [list(g) for g in self.shards]}


def plan_shards(videos: list[VideoInput], shard_size: int) -> list[tuple[VideoInput, ...]]:
    return [tuple(videos[i : i + shard_size]) for i in range(0, len(videos), shard_size)]


@contextlib.contextmanager
def _exclusive(out: Path):
    """One run per output folder: two runs would redo each other's shards and race on files."""
    import fcntl

    with open(out / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RefsavError("another refsav annotate run is using this folder", file=out) from None
        # Temporary files of a killed run: never visible to readers (hidden names), but litter.
        for stale in out.glob("*/.*.tmp"):
            stale.unlink(missing_ok=True)
        yield


def _check_plan(out: Path, plan: Plan) -> None:
    """Write the plan, or refuse a folder whose plan differs. Compared as JSON: the old file
    may come from another version of refsav (one from before stage lists differs in settings)."""
    path = out / "plan.json"
    new = plan.to_json()
    if not path.exists():
        atomic_write_json(path, new, indent=1)
        return
    old = read_json(path)
    for key in new:
        if not isinstance(old, dict) or old.get(key) != new[key]:
            raise RefsavError(
                f"this folder holds a run with different {key}; use a new --out (or delete the folder) "
                "so that rows made under different settings are not mixed", file=path, field=key)


def annotate(
    input_root: str | Path,
    out: str | Path,
    config: AnnotateConfig,
    executor: Executor,
    *,
    limit: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    preflight: bool = True,
    show_progress: bool = True,
) -> RunSummary:
    """Annotate every video under `input_root` into shards under `out`, on `executor`
    (refsav.runtime.executor.make_executor).

    With `preflight`, an OpenAI-compatible server that cannot be reached from here is a
    RefsavError before any shard starts (only when some shard has work left). Turn it off
    when the workers see the server at an address this machine does not.
    """
    input_root, out = Path(input_root).resolve(), Path(out).resolve()
    if shard_size < 1:
        raise RefsavError(f"--shard-size must be at least 1, got {shard_size}")
    stages = resolve(config.stages)
    videos = discover(input_root, config.masklets)
    if limit is not None:
        videos = videos[:limit]
    if not videos:
        raise RefsavError("no SA-V videos (<id>.mp4 with <id>_manual.json) found", file=input_root)
    prompts = load_prompts(config.prompts_dir, config.stages)
    groups = plan_shards(videos, shard_size)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        _check_plan(out, Plan(config.fingerprint(), tuple(prompts.refs), tuple(tuple(v.video_id for v in g) for g in groups)))
        tasks = [ShardTask(i, len(groups), g, str(input_root), str(out), config, stages, prompts)
                 for i, g in enumerate(groups)]
        if preflight and not all(finished_stats(t) for t in tasks):
            _check_servers(config)
        return _run(input_root, out, config, tasks, executor, show_progress)


def _check_servers(config: AnnotateConfig) -> None:
    if config.grounding is not None:
        config.grounding.grounder.check()
    servers = [v for v in (config.vlm, config.checker) if v is not None and v.backend == "openai" and v.base_url]
    if not servers:
        return
    from ..vlm.base import VLMError
    from ..vlm.openai_backend import check_server

    for url in dict.fromkeys(v.base_url for v in servers):
        try:
            check_server(url, timeout=min(config.vlm.timeout, 10.0))
        except VLMError as err:
            raise RefsavError(f"{err}; start the server or fix --base-url, then rerun") from None


def _run(input_root: Path, out: Path, config: AnnotateConfig, tasks: list[ShardTask], executor: Executor,
         show_progress: bool) -> RunSummary:
    summary = RunSummary(out=str(out), shards=len(tasks))
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    per_shard: dict[int, ShardStats | ShardFailure] = {}

    def save() -> None:
        summary.seconds = round(time.perf_counter() - t0, 3)
        atomic_write_json(out / "run.json", {
            "started_at": started,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": str(input_root),
            "executor": executor.name,
            "scheduler": executor.address,
            "config": json.loads(config.fingerprint()),
            "summary": _summary_json(summary),
            "shards": [_shard_json(per_shard[i]) for i in sorted(per_shard)],
        }, indent=1)

    with progress_bar("annotating shards", total=len(tasks), enabled=show_progress) as advance:
        save()
        for outcome in executor.map_unordered(run_shard, tasks):
            if outcome.ok:
                stats: ShardStats = outcome.result
                summary.add(stats)
                per_shard[stats.shard] = stats
            else:
                failure = ShardFailure(outcome.task.index, f"{type(outcome.error).__name__}: {outcome.error}")
                summary.shards_failed.append(failure)
                per_shard[failure.shard] = failure
            save()
            advance(1)
    summary.shards_failed.sort(key=lambda f: f.shard)
    summary.first_error = _first_error(per_shard)
    save()
    return summary


def _summary_json(summary: RunSummary) -> dict:
    d = asdict(summary)
    if isinstance(d.get("grounding"), dict):
        d["grounding"].pop("j_and_f", None)  # per expression: in the shards' stats files
    return d


def _shard_json(outcome: ShardStats | ShardFailure) -> dict:
    d = asdict(outcome)
    if isinstance(d.get("grounding"), dict):
        # Each expression's J&F stays in the shard's stats file: run.json is rewritten after
        # every shard, and the deciles in its summary say what a reader needs.
        d["grounding"].pop("j_and_f", None)
    return d


def _first_error(per_shard: dict[int, ShardStats | ShardFailure]) -> str:
    for i in sorted(per_shard):
        outcome = per_shard[i]
        if isinstance(outcome, ShardFailure):
            return f"shard {i}: {outcome.error}"
        for failure in outcome.failures:
            if failure.reason in (VLM_ERROR, GROUNDER_ERROR):
                return f"{failure.video_id} object {failure.object_id}: {failure.detail}"
    return ""
