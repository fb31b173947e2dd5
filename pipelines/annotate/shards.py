"""A shard of videos: the unit of work, of output, and of recovery.

Output of shard i of n (datatrove-style: data, stats, then the completion marker last):

    OUT/data/train-0000i-of-0000n.parquet   Expression rows, sorted by (video_id, object_id)
    OUT/stats/shard-0000i.json              counts, drop reasons, VLM calls/tokens/seconds
    OUT/markers/shard-0000i.done            written last: the shard is complete

Every file is written to a temporary name and renamed, so a reader never sees half a
shard, and a killed run leaves either a whole shard or none. A shard without its marker
is simply redone; with the request cache its VLM answers come back for free and its rows
come out the same.

A shard where objects failed on the VLM (reason `vlm_error`: server errors, timeouts,
malformed answers, after the request's retries) is written whole, marker included, but
counts as unfinished: the next run redoes it. Its good answers come from the cache, only
the failed requests reach the server again, and the objects a stage dropped for what the
model said (a failed check, an empty description) are dropped again, from cached answers.
A shard whose every object was dropped is a Parquet file with the schema and no row group,
which `datasets` reads as zero rows (an empty row group would break loading the folder).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from refsav.schemas.errors import SchemaError
from refsav.schemas.expression import Expression, FileHash
from refsav.schemas.io import atomic_write_json, sha256_file, write_parquet

from .annotator import Annotator, flag_ambiguous
from .config import AnnotateConfig
from .grounding import GROUNDER_ERROR, GROUNDING_FAILED, GroundingRunner, GroundingStats, shard_grounding_stats
from .inputs import VideoInput
from .prompts import PromptSet
from .records import VLM_ERROR, DroppedObject, Meter, SkippedVideo
from .stage import ObjectContext, Stage

SPLIT = "train"
# Videos rendered at once per worker: decoded 1080p frames are large, their JPEGs are not.
RENDER_AHEAD = 2


@dataclass(frozen=True)
class ShardTask:
    index: int
    total: int
    videos: tuple[VideoInput, ...]
    input_root: str
    out_dir: str
    config: AnnotateConfig
    # Resolved once by the run, so that workers need neither the registry nor the prompt
    # files, and every shard uses the templates the plan recorded.
    stages: tuple[Stage, ...]
    prompts: PromptSet

    @property
    def data_path(self) -> Path:
        return Path(self.out_dir) / "data" / f"{SPLIT}-{self.index:05d}-of-{self.total:05d}.parquet"

    @property
    def stats_path(self) -> Path:
        return Path(self.out_dir) / "stats" / f"shard-{self.index:05d}.json"

    @property
    def marker_path(self) -> Path:
        return Path(self.out_dir) / "markers" / f"shard-{self.index:05d}.done"


@dataclass(frozen=True)
class ShardStats:
    shard: int
    videos: int = 0
    videos_skipped: list[SkippedVideo] = field(default_factory=list)
    objects_seen: int = 0
    objects_kept: int = 0
    objects_dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    failures: list[DroppedObject] = field(default_factory=list)
    ambiguous: int = 0
    vlm: Meter = field(default_factory=Meter)
    render_seconds: float = 0.0
    seconds: float = 0.0
    resumed: bool = False  # True when this run found the shard already complete
    grounding: GroundingStats | None = None  # None: no grounder in this run

    @property
    def vlm_errors(self) -> int:
        """Objects that failed on the VLM or the grounder: a rerun asks again for them."""
        return self.objects_dropped.get(VLM_ERROR, 0) + self.objects_dropped.get(GROUNDER_ERROR, 0)

    @classmethod
    def from_json(cls, d: dict) -> "ShardStats":
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in d.items() if k in known}
        values["videos_skipped"] = [SkippedVideo(**s) for s in values.get("videos_skipped", [])]
        values["failures"] = [DroppedObject(**f) for f in values.get("failures", [])]
        values["vlm"] = Meter(**values.get("vlm", {}))
        if values.get("grounding") is not None:
            values["grounding"] = GroundingStats.from_json(values["grounding"])
        return cls(**values)


def finished_stats(task: ShardTask) -> ShardStats | None:
    """The stats of a shard that needs no more work: complete on disk, no object failed on the VLM."""
    if not (task.marker_path.exists() and task.data_path.exists() and task.stats_path.exists()):
        return None
    try:
        stats = ShardStats.from_json(json.loads(task.stats_path.read_text()))
    except (ValueError, TypeError):  # unreadable stats: redo the shard rather than trust it
        return None
    return None if stats.vlm_errors else stats


def run_shard(task: ShardTask) -> ShardStats:
    """Annotate one shard, or return its stats when it needs no more work."""
    done = finished_stats(task)
    if done is not None:
        return dataclasses.replace(done, resumed=True)
    start = time.perf_counter()
    rows, stats = asyncio.run(_annotate_shard(task))
    stats = dataclasses.replace(stats, seconds=round(time.perf_counter() - start, 3))
    write_parquet(task.data_path, rows, Expression)
    atomic_write_json(task.stats_path, asdict(stats), indent=1)
    atomic_write_json(task.marker_path, {"rows": len(rows), "sha256": sha256_file(task.data_path),
                                         VLM_ERROR: stats.vlm_errors})
    return stats


async def _all_or_nothing(*aws) -> list:
    """`asyncio.gather`, except that when one fails the others are cancelled (and awaited)
    instead of running on against backends that are being closed."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _relative(path: str, root: str) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:  # another drive on Windows
        return path


async def _annotate_shard(task: ShardTask) -> tuple[list[Expression], ShardStats]:
    from ..vlm.base import GenerationConfig, make_backend

    config = task.config
    meter = Meter()
    describer = _backend(config.vlm, config.cache_path, make_backend)
    checker = _backend(config.checker, config.cache_path, make_backend) if config.checker else describer
    gen = GenerationConfig(max_tokens=config.vlm.max_tokens, temperature=config.vlm.temperature, seed=config.vlm.seed)
    grounding = None
    if config.grounding is not None:
        from ..vlm.cache import RequestCache

        grounding = GroundingRunner(config.grounding, RequestCache(config.cache_path) if config.cache_path else None)
    annotator = Annotator(task.stages, task.prompts, {"describer": describer, "checker": checker}, gen, meter,
                          config.toolkit_version, grounding)
    render_slots = asyncio.Semaphore(RENDER_AHEAD)
    rows: list[Expression] = []
    skipped: list[SkippedVideo] = []
    failures: list[DroppedObject] = []
    seen = 0
    render_seconds = 0.0
    # The shard's first video renders alone, so that its requests start as soon as possible:
    # until then the server gets nothing from this worker (the previous shard has drained).
    first_rendered = asyncio.Event()

    async def one_video(video: VideoInput) -> None:
        nonlocal seen, render_seconds
        first = video is task.videos[0]
        if not first:
            await first_rendered.wait()
        try:
            async with render_slots:
                t0 = time.perf_counter()
                prepared = await asyncio.to_thread(prepare_video, video, task.input_root, config)
                render_seconds += time.perf_counter() - t0
        finally:
            if first:
                first_rendered.set()
        if isinstance(prepared, SkippedVideo):
            skipped.append(prepared)
            return
        objects, not_annotatable = prepared
        seen += len(objects) + len(not_annotatable)
        results = list(not_annotatable) + list(await _all_or_nothing(*(annotator.annotate(o) for o in objects)))
        failures.extend(r for r in results if isinstance(r, DroppedObject))
        kept = [r for r in results if isinstance(r, Expression)]
        # With a grounder, the grounding stage has decided ambiguity from the masks.
        rows.extend(kept if grounding is not None else flag_ambiguous(kept))

    try:
        await _all_or_nothing(*(one_video(v) for v in task.videos))
    finally:
        try:
            await describer.aclose()
            if checker is not describer:
                await checker.aclose()
        finally:
            if grounding is not None and grounding.cache is not None:
                grounding.cache.close()
    rows.sort(key=lambda e: (e.video_id, e.object_id))
    meter.seconds = round(meter.seconds, 3)
    return rows, ShardStats(
        shard=task.index,
        videos=len(task.videos),
        videos_skipped=sorted(skipped, key=lambda s: s.video_id),
        objects_seen=seen,
        objects_kept=len(rows),
        objects_dropped=dict(Counter(f.reason for f in failures)),
        failures=sorted(failures, key=lambda f: (f.video_id, f.object_id)),
        ambiguous=sum(e.ambiguous for e in rows),
        vlm=meter,
        render_seconds=round(render_seconds, 3),
        grounding=None if grounding is None else shard_grounding_stats(
            rows, sum(f.reason == GROUNDING_FAILED for f in failures), grounding.meter),
    )


def _backend(settings, cache_path, make_backend):
    extra = {"backoff_base": settings.backoff} if settings.backend == "openai" else {}
    return make_backend(
        settings.backend,
        model=settings.model,
        base_url=settings.base_url,
        max_in_flight=settings.max_in_flight,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
        cache_path=cache_path,
        **extra,
    )


def prepare_video(video: VideoInput, input_root: str, config: AnnotateConfig) -> SkippedVideo | tuple[list[ObjectContext], list[DroppedObject]]:
    """Read, check and render one video: the objects ready for the VLM, and those that are not.

    Runs in a worker thread. Any problem with the files is returned as a skip reason:
    one bad video must never stop the run.
    """
    from refsav.schemas.sav import read_sav_json

    from .render import render_video

    if not video.video_path:
        return SkippedVideo(video.video_id, "missing_video", "no .mp4 next to the annotation")
    if not video.annotation_paths:
        return SkippedVideo(video.video_id, "missing_annotation", "no _manual.json/_auto.json next to the video")
    try:
        annotations = [read_sav_json(p, video_path=video.video_path) for p in video.annotation_paths]
        inputs = tuple(FileHash(_relative(p, input_root), sha256_file(p))
                       for p in (video.video_path, *video.annotation_paths))
        return render_video(video.video_id, annotations, inputs, config)
    except SchemaError as err:
        return SkippedVideo(video.video_id, "bad_input", str(err))
    except OSError as err:
        return SkippedVideo(video.video_id, "bad_input", f"{video.video_path}: {err}")
