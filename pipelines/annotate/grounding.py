"""The grounding stage: segment each expression back into the video and score it.

A generated expression is only useful if it picks out *its* object. After `merge`, the
`grounding` stage (enabled by `refsav annotate --grounder`) hands the long expression and
each short one to a referring segmentation model, scores every predicted masklet against
the object's own masklet and against every other masklet of the video, and decides:

- the object is dropped (`grounding_failed`) when the long expression's J&F is below
  `min_grounding`;
- a short expression whose own J&F is below `min_grounding` is removed from the row,
  and recorded with `kept=False`;
- the object is `ambiguous` when another object's masklet scores within
  `ambiguity_margin` of the long expression's own J&F, or above it (this replaces the
  text heuristic of `text.ambiguity` whenever a grounder is set).

This module never imports a model or the benchmark: the application layer
(`refsav.grounding`) supplies a `GrounderSpec` (picklable: Dask workers build the grounder
from it, and unpickling imports its module there) and a `Scorer` (the benchmark's own J&F).
The policy itself is the pure functions `grounding_frames`, `score_against` and `decide`.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from refsav.schemas import rle as rle_ops
from refsav.schemas.errors import RefsavError
from refsav.schemas.expression import Confusable, GrounderIdentity, Grounding, GroundingScore
from refsav.schemas.rle import Rle

from .stage import Drop, Turn

if TYPE_CHECKING:
    from refsav.schemas.video import Masklet

    from ..vlm.cache import RequestCache
    from .stage import ObjectContext

# The drop reason of an object whose long expression does not segment its own masklet.
GROUNDING_FAILED = "grounding_failed"
# The drop reason of an object whose grounder call failed (server down, model error):
# like `vlm_error` it says nothing about the object, and a rerun asks again.
GROUNDER_ERROR = "grounder_error"
# Bumped when the way a grounding request is turned into model input changes.
CACHE_KEY_VERSION = 1

DEFAULT_MIN_GROUNDING = 0.5
DEFAULT_AMBIGUITY_MARGIN = 0.1
DEFAULT_MARGIN = 2  # annotated frames before and after the visible span


class GrounderError(RefsavError):
    """A grounder call failed (unreachable server, model error); the object gets no row this run."""


# ----------------------------------------------------------------------------- interfaces


@dataclass(frozen=True)
class GroundingRequest:
    """Segment each text in these frames of one video."""

    video_id: str
    frames: tuple[int, ...]  # frame indices in the video, increasing
    images: np.ndarray  # (len(frames), H, W, 3) uint8 RGB, decoded by the pipeline
    texts: tuple[str, ...]  # the referring expressions, as written in the row


class Grounder(Protocol):
    """A referring segmentation model, seen from the pipeline. Called from worker threads,
    at most `concurrency` calls at once per process (1 for a model in this process: it is
    not thread-safe)."""

    concurrency: int

    def segment(self, request: GroundingRequest) -> list[list[Rle]]:
        """One masklet per text, in order: one RLE of (H, W) per requested frame (an
        empty mask where the model found nothing). Raises GrounderError on failure."""
        ...


class GrounderSpec(Protocol):
    """How to build a grounder; picklable, so that every worker builds its own."""

    needs_gpu: bool  # the Dask tasks then hold one GPU each

    def identity(self) -> tuple[str, str, str, str]:
        """(model, sha256, endpoint without credentials, inference mode) for provenance."""
        ...

    def options(self) -> dict[str, Any]:
        """What the model is asked with (predict options, a forced answer): JSON values.
        Part of the plan and of every cache key."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the model's answers across machines: a weights hash or a served
        model id, never a path or a URL. Part of the plan and of every cache key."""
        ...

    def check(self) -> None:
        """Fail now with one line (RefsavError) when the grounder cannot be used from here."""
        ...

    def build(self) -> Grounder:
        """The grounder of this process (built once per process and spec)."""
        ...


@dataclass(frozen=True)
class MaskScore:
    j: float  # region similarity, mean over frames
    f: float  # boundary accuracy, mean over frames

    @property
    def j_and_f(self) -> float:
        return (self.j + self.f) / 2


class Scorer(Protocol):
    """J and F of a predicted masklet against a ground-truth one, frame by frame (same frames)."""

    def __call__(self, pred: Sequence[Rle], gt: Sequence[Rle]) -> MaskScore:
        ...


@dataclass(frozen=True)
class GroundingSettings:
    grounder: GrounderSpec
    scorer: Scorer
    min_grounding: float = DEFAULT_MIN_GROUNDING
    ambiguity_margin: float = DEFAULT_AMBIGUITY_MARGIN
    margin: int = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_grounding <= 1.0:
            raise RefsavError(f"--min-grounding must lie in [0, 1], got {self.min_grounding}")
        if not 0.0 <= self.ambiguity_margin <= 1.0:
            raise RefsavError(f"--ambiguity-margin must lie in [0, 1], got {self.ambiguity_margin}")
        if self.margin < 0:
            raise RefsavError(f"--grounding-margin must be >= 0, got {self.margin}")

    def policy(self) -> dict[str, Any]:
        return {"min_grounding": float(self.min_grounding), "ambiguity_margin": float(self.ambiguity_margin),
                "margin": int(self.margin)}

    def public(self) -> dict[str, Any]:
        """What goes into plan.json: everything that shapes the rows, no path or URL."""
        return {"model": self.grounder.fingerprint(), "options": self.grounder.options(), **self.policy()}

    def identity(self) -> GrounderIdentity:
        model, sha256, endpoint, inference = self.grounder.identity()
        settings = json.dumps(self.public(), sort_keys=True, separators=(",", ":"))
        return GrounderIdentity(model=model, sha256=sha256, endpoint=endpoint, inference=inference, settings=settings)


# ----------------------------------------------------------------------------- the policy


def grounding_frames(masklet: Masklet, margin: int) -> list[int]:
    """The annotated frames over the object's visible span, plus `margin` annotated frames
    before and after it (a prediction that starts too early, or lasts too long, then
    costs); [] for an object that is never visible."""
    visible = [i for i, r in enumerate(masklet.rles) if rle_ops.area(r) > 0]
    if not visible:
        return []
    lo = max(0, visible[0] - margin)
    hi = min(len(masklet.frame_indices) - 1, visible[-1] + margin)
    return list(masklet.frame_indices[lo : hi + 1])


def masks_at(masklet: Masklet, frames: Sequence[int], size: tuple[int, int]) -> list[Rle]:
    """The masklet's masks at `frames`; an empty mask where it has none (not annotated there)."""
    by_frame = dict(zip(masklet.frame_indices, masklet.rles))
    empty = None
    out = []
    for f in frames:
        r = by_frame.get(f)
        if r is None:
            empty = empty or rle_ops.empty(*size)
            r = empty
        out.append(r)
    return out


@dataclass(frozen=True)
class Candidate:
    """An expression's predicted masklet, with what the policy needs to judge it."""

    text: str
    kind: str  # "long" | "short"
    own: MaskScore
    others: dict[int, MaskScore]  # by object id


def score_against(scorer: Scorer, text: str, kind: str, pred: Sequence[Rle], own: Sequence[Rle],
                  others: dict[int, Sequence[Rle]]) -> Candidate:
    return Candidate(text, kind, scorer(pred, own), {oid: scorer(pred, gt) for oid, gt in others.items()})


def _clip(x: float) -> float:
    # J and F are fractions; the clip only guards against float noise at the ends.
    return min(1.0, max(0.0, float(x)))


def _best_other(c: Candidate) -> tuple[int | None, float | None]:
    if not c.others:
        return None, None
    oid = min(c.others, key=lambda k: (-c.others[k].j_and_f, k))  # highest score, then lowest id
    return oid, _clip(c.others[oid].j_and_f)


@dataclass(frozen=True)
class Decision:
    """What grounding decided for one object."""

    grounding: Grounding
    short_caps: list[str]  # the short expressions kept, in order
    ambiguous_with: list[int]  # other objects as well grounded as this one (sorted ids)
    drop: Drop | None  # grounding_failed, or None: the row stands

    @property
    def long_score(self) -> float:
        return self.grounding.scores[0].j_and_f


def decide(frames: Sequence[int], long: Candidate, shorts: Sequence[Candidate], *, min_grounding: float,
           ambiguity_margin: float) -> Decision:
    scores = []
    kept_shorts = []
    for c in (long, *shorts):
        oid, other = _best_other(c)
        kept = c.kind == "long" or c.own.j_and_f >= min_grounding
        if c.kind == "short" and kept:
            kept_shorts.append(c.text)
        scores.append(GroundingScore(text=c.text, kind=c.kind, j_and_f=_clip(c.own.j_and_f), j=_clip(c.own.j),
                                     f=_clip(c.own.f), kept=kept, best_other_id=oid, best_other_j_and_f=other))
    own = long.own.j_and_f
    confusable = sorted(((oid, s.j_and_f) for oid, s in long.others.items() if s.j_and_f >= own - ambiguity_margin),
                        key=lambda t: (-t[1], t[0]))
    grounding = Grounding(frames=list(frames), scores=scores,
                          confusable_with=[Confusable(oid, _clip(v)) for oid, v in confusable])
    drop = None
    if own < min_grounding:
        drop = Drop(GROUNDING_FAILED, f"the long expression's J&F {own:.3f} is below {min_grounding}")
    return Decision(grounding, kept_shorts, sorted(oid for oid, _ in confusable), drop)


# ----------------------------------------------------------------------------- running it


def cache_key(fingerprint: dict[str, Any], video_sha256: str, frames: Sequence[int], text: str) -> str:
    """SHA-256 over everything that determines a predicted masklet: the model and how it is
    asked (`GroundingSettings.public()` without the policy), the video's content, the frames
    and the expression."""
    payload = {"v": CACHE_KEY_VERSION, "grounder": fingerprint, "video": video_sha256,
               "frames": [int(f) for f in frames], "text": text}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _encode_masklet(rles: Sequence[Rle]) -> str:
    return json.dumps([r.to_json() for r in rles], separators=(",", ":"))


def _decode_masklet(text: str, n: int, size: tuple[int, int]) -> list[Rle] | None:
    """A cached masklet, or None when the entry does not fit (then the grounder is asked again)."""
    from refsav.schemas.errors import SchemaError
    from refsav.schemas.io import parse_json

    try:
        raw = parse_json(text, file="grounding cache")
        if not isinstance(raw, list) or len(raw) != n:
            return None
        return [Rle.from_json(r, expected_size=size) for r in raw]
    except SchemaError:
        return None


_BUILT: dict[Any, tuple[Grounder, threading.Semaphore]] = {}
_BUILT_LOCK = threading.Lock()


def grounder_of(spec: GrounderSpec) -> tuple[Grounder, threading.Semaphore]:
    """This process's grounder for `spec`, built once (a model is loaded once per worker),
    with the semaphore that bounds its calls across every shard the process runs."""
    key = pickle_key(spec)
    with _BUILT_LOCK:
        if key not in _BUILT:
            grounder = spec.build()
            _BUILT[key] = (grounder, threading.Semaphore(max(1, int(grounder.concurrency))))
        return _BUILT[key]


def pickle_key(spec: GrounderSpec) -> bytes:
    import pickle

    return pickle.dumps(spec)


@dataclass
class GroundingMeter:
    """Grounder usage of one shard (stats JSON) or one run (run.json)."""

    calls: int = 0  # segment calls answered by the grounder
    expressions: int = 0  # expressions segmented by those calls
    cache_hits: int = 0  # expressions answered from the cache
    failed_calls: int = 0
    seconds: float = 0.0

    def add(self, other: "GroundingMeter") -> None:
        self.calls += other.calls
        self.expressions += other.expressions
        self.cache_hits += other.cache_hits
        self.failed_calls += other.failed_calls
        self.seconds = round(self.seconds + other.seconds, 3)


class GroundingRunner:
    """Grounds the objects of one shard: cache, frame decoding, grounder calls off the
    event loop, then the policy."""

    def __init__(self, settings: GroundingSettings, cache: RequestCache | None) -> None:
        self.settings = settings
        self.cache = cache
        self.meter = GroundingMeter()
        self._fingerprint = {"model": settings.grounder.fingerprint(), "options": settings.grounder.options()}
        self._grounder: tuple[Grounder, threading.Semaphore] | None = None
        self._admit: asyncio.Semaphore | None = None
        self._frames = _FrameStore()

    def _get_grounder(self) -> tuple[Grounder, threading.Semaphore]:
        if self._grounder is None:
            self._grounder = grounder_of(self.settings.grounder)
        return self._grounder

    async def ground(self, obj: ObjectContext, long: str, shorts: Sequence[str]) -> Decision:
        s = self.settings
        size = (obj.video.height, obj.video.width)
        frames = grounding_frames(obj.masklet, s.margin)
        texts = list(dict.fromkeys([long, *shorts]))
        predicted = await self._segment(obj, tuple(frames), texts, size)
        own = masks_at(obj.masklet, frames, size)
        others = {m.object_id: masks_at(m, frames, size) for m in obj.others}
        # An object that shows nowhere on these frames cannot be confused with this one.
        others = {oid: r for oid, r in others.items() if any(rle_ops.area(x) > 0 for x in r)}

        def judge() -> Decision:
            long_c = score_against(s.scorer, long, "long", predicted[long], own, others)
            short_c = [score_against(s.scorer, t, "short", predicted[t], own, others) for t in shorts]
            return decide(frames, long_c, short_c, min_grounding=s.min_grounding,
                          ambiguity_margin=s.ambiguity_margin)

        return await asyncio.to_thread(judge)

    async def _segment(self, obj: ObjectContext, frames: tuple[int, ...], texts: list[str],
                       size: tuple[int, int]) -> dict[str, list[Rle]]:
        video_sha = obj.input_files[0].sha256 if obj.input_files else obj.video.path
        keys = {t: cache_key(self._fingerprint, video_sha, frames, t) for t in texts}
        out: dict[str, list[Rle]] = {}
        if self.cache is not None:
            for t in texts:
                hit = await asyncio.to_thread(self.cache.get_grounding, keys[t])
                masklet = _decode_masklet(hit, len(frames), size) if hit is not None else None
                if masklet is not None:
                    out[t] = masklet
                    self.meter.cache_hits += 1
        missing = tuple(t for t in texts if t not in out)
        if not missing:
            return out
        grounder, _ = await asyncio.to_thread(self._get_grounder)  # a model loads off the event loop
        if self._admit is None:
            self._admit = asyncio.Semaphore(max(1, int(grounder.concurrency)))
        # Admitted before the frames are decoded: a shard's objects would otherwise all hold
        # their decoded frames at once while they wait for the grounder.
        async with self._admit:
            try:
                answers, seconds = await asyncio.to_thread(self._call, obj, frames, missing, size)
            except GrounderError:
                self.meter.failed_calls += 1
                raise
        # Counted here, on the event loop: the calls run on several threads.
        self.meter.calls += 1
        self.meter.expressions += len(missing)
        self.meter.seconds += seconds
        for t, masklet in zip(missing, answers):
            out[t] = masklet
            if self.cache is not None:
                await asyncio.to_thread(self.cache.put_grounding, keys[t], _encode_masklet(masklet))
        return out

    def _call(self, obj: ObjectContext, frames: tuple[int, ...], texts: tuple[str, ...],
              size: tuple[int, int]) -> tuple[list[list[Rle]], float]:
        """In a worker thread: decode the frames, then one grounder call under the semaphore;
        the masklets and the seconds the call took."""
        import time

        from refsav.schemas.errors import SchemaError

        try:
            images = self._frames.get(obj, frames, self.settings.margin) if frames else np.zeros((0, *size, 3), np.uint8)
        except SchemaError as err:
            raise GrounderError(f"cannot decode the frames to ground: {err}") from None
        grounder, slots = self._get_grounder()
        t0 = time.perf_counter()
        with slots:
            try:
                answers = grounder.segment(GroundingRequest(obj.video_id, frames, images, texts)) if frames else \
                    [[] for _ in texts]
            except GrounderError:
                raise
            except Exception as err:  # a model fault: one object's failure, said in one line
                raise GrounderError(f"the grounder failed: {type(err).__name__}: {err}") from None
        seconds = time.perf_counter() - t0
        if len(answers) != len(texts) or any(len(a) != len(frames) for a in answers):
            raise GrounderError(f"the grounder answered {len(answers)} masklets for {len(texts)} expressions "
                                f"of {len(frames)} frames")
        for a in answers:
            for r in a:
                if tuple(r.size) != size:
                    raise GrounderError(f"the grounder answered masks of {list(r.size)}, the video is {list(size)}")
        return answers, seconds


class _FrameStore:
    """Decoded frames of the last video grounded, shared by its objects.

    The first object of a video to need the grounder decodes the frames of every object
    of the video (the union of their spans and margins), so that the video is decoded
    once, not once per object. One video is kept: at 1080p its annotated frames take
    hundreds of MB. Two objects missing at once both decode (wasted work, same frames).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: str | None = None
        self._frames: dict[int, np.ndarray] = {}

    def get(self, obj: ObjectContext, frames: Sequence[int], margin: int) -> np.ndarray:
        from refsav.schemas.media import decode_frames

        path = obj.video.path
        with self._lock:
            if path == self._path and all(f in self._frames for f in frames):
                return np.stack([self._frames[f] for f in frames])
        wanted = set(frames)
        for m in (obj.masklet, *obj.others):
            wanted.update(grounding_frames(m, margin))
        decoded = decode_frames(path, sorted(wanted))
        with self._lock:
            self._path, self._frames = path, decoded
        return np.stack([decoded[f] for f in frames])


class GroundExpressions:
    """After merge: segment the long and short expressions back into the video and keep,
    trim, flag or drop the object (see the module docstring)."""

    name = "grounding"
    template = None
    fields: frozenset[str] = frozenset()
    backend = "grounder"
    needs = ("merge",)

    async def run(self, turn: Turn) -> Decision | Drop:
        if turn.grounding is None:
            raise RefsavError("the grounding stage needs a grounder: pass --grounder")
        merged = turn.answers["merge"]
        try:
            decision = await turn.grounding.ground(turn.obj, merged.long, list(merged.short))
        except GrounderError as err:
            return Drop(GROUNDER_ERROR, str(err)[:500])
        return decision.drop or decision


def deciles(values: Sequence[float]) -> list[float]:
    """Minimum, the nine deciles and the maximum (11 values); [] without values."""
    if not values:
        return []
    return [round(float(q), 6) for q in np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, 11))]


@dataclass
class GroundingStats:
    """What grounding did in one shard (stats JSON), or in a whole run (run.json, without
    the per-expression values)."""

    grounded: int = 0  # objects whose expressions were segmented and scored
    dropped: int = 0  # of them, dropped as grounding_failed
    flagged_ambiguous: int = 0  # kept rows flagged because another masklet scored as well
    shorts_removed: int = 0  # short expressions of kept rows removed for failing on their own
    deciles: list[float] = field(default_factory=list)  # J&F of kept expressions: min, 10 %, ..., 90 %, max
    grounder: GroundingMeter = field(default_factory=GroundingMeter)
    j_and_f: list[float] | None = None  # J&F of each kept expression (long and kept shorts); shard stats only

    @classmethod
    def from_json(cls, d: dict) -> "GroundingStats":
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in d.items() if k in known}
        values["grounder"] = GroundingMeter(**values.get("grounder", {}))
        return cls(**values)

    def add(self, other: "GroundingStats", *, usage: bool = True) -> None:
        """Counts of another shard; its grounder usage too unless `usage` is False (a
        resumed shard's calls belong to the run that made it)."""
        self.grounded += other.grounded
        self.dropped += other.dropped
        self.flagged_ambiguous += other.flagged_ambiguous
        self.shorts_removed += other.shorts_removed
        if usage:
            self.grounder.add(other.grounder)


def shard_grounding_stats(rows: Sequence[Any], dropped: int, meter: GroundingMeter) -> GroundingStats:
    """The grounding stats of a shard's rows (`Expression`s) and its grounding_failed count."""
    values = [sc.j_and_f for e in rows if e.grounding is not None for sc in e.grounding.scores if sc.kept]
    grounded_rows = [e for e in rows if e.grounding is not None]
    meter.seconds = round(meter.seconds, 3)
    return GroundingStats(
        grounded=len(grounded_rows) + dropped,
        dropped=dropped,
        flagged_ambiguous=sum(bool(e.grounding.confusable_with) for e in grounded_rows),
        shorts_removed=sum(not sc.kept for e in grounded_rows for sc in e.grounding.scores),
        deciles=deciles(values),
        grounder=meter,
        j_and_f=values,
    )
