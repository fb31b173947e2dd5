"""The per-object annotation: describe, check, place in the scene, follow over time, merge.

One coroutine per object; the VLM backend bounds how many requests are in flight, so a
shard's objects overlap their network waits while the CPU renders the next video.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone

from refsav.schemas.expression import Consistency, Expression, FileHash, Provenance

from ..visual.views import ObjectViews
from ..vlm.base import GenerationConfig, VLMBackend, VLMError, VLMRequest, VLMResponse
from .config import AnnotateConfig
from .prompts import PromptSet
from .text import Candidate, ambiguity, clean, parse_merge, parse_object_answer, parse_verdict

# How the prompts name the visual cue; the colour is chosen per object by refsav.pipelines.visual
# so that it stands out against the object and its surroundings.
HIGHLIGHT_WORDS = {
    "contour": "a {colour} outline drawn around it",
    "tint": "a {colour} tint over it",
    "box": "a {colour} box around it",
    "crop": "darkening everything around it",
}


@dataclass
class Meter:
    """VLM usage: of one shard in its stats JSON, of one run in run.json."""

    calls: int = 0  # requests answered by a server or model
    cache_hits: int = 0
    failed_calls: int = 0  # requests that failed after all retries
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # summed request latency (overlapping requests add up)

    def record(self, response: VLMResponse) -> None:
        if response.cached:
            self.cache_hits += 1
            return
        self.calls += 1
        self.prompt_tokens += response.prompt_tokens
        self.completion_tokens += response.completion_tokens
        self.seconds += response.seconds

    def add(self, other: "Meter") -> None:
        self.calls += other.calls
        self.cache_hits += other.cache_hits
        self.failed_calls += other.failed_calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.seconds = round(self.seconds + other.seconds, 3)


@dataclass(frozen=True)
class Kept:
    expression: Expression


@dataclass(frozen=True)
class Dropped:
    video_id: str
    object_id: int
    reason: str  # a short stable code: counted in the stats
    detail: str = ""


@dataclass(frozen=True)
class ObjectContext:
    video_id: str
    object_id: int
    views: ObjectViews
    input_files: tuple[FileHash, ...]


@dataclass(frozen=True)
class Annotator:
    config: AnnotateConfig
    prompts: PromptSet
    describer: VLMBackend
    checker: VLMBackend
    meter: Meter

    @property
    def gen(self) -> GenerationConfig:
        v = self.config.vlm
        return GenerationConfig(max_tokens=v.max_tokens, temperature=v.temperature, seed=v.seed)

    async def _ask(self, backend: VLMBackend, prompt: str, images: tuple[bytes, ...]) -> str:
        try:
            response = await backend.generate(VLMRequest(prompt=prompt, images=images, config=self.gen))
        except VLMError:
            self.meter.failed_calls += 1
            raise
        self.meter.record(response)
        return response.text

    async def annotate(self, obj: ObjectContext) -> Kept | Dropped:
        try:
            return await self._annotate(obj)
        except VLMError as err:
            return Dropped(obj.video_id, obj.object_id, "vlm_error", str(err)[:500])

    async def _annotate(self, obj: ObjectContext) -> Kept | Dropped:
        views = obj.views
        highlight = HIGHLIGHT_WORDS[views.mode].format(colour=views.colour)
        p = self.prompts
        crops = tuple(v.jpeg for v in views.object_views)
        answer, verdict, attempts, retry_hint = None, None, 0, ""
        for attempts in (1, 2):
            text = await self._ask(self.describer, p.object.render(highlight=highlight, n_images=len(crops), retry_hint=retry_hint), crops)
            answer = parse_object_answer(text)
            if not answer.description:
                verdict = None
                retry_hint = "A previous answer was empty. Describe the highlighted object."
                continue
            if not self.config.check:
                break
            verdict = parse_verdict(await self._ask(
                self.checker, p.check.render(highlight=highlight, description=answer.description), crops[:1]))
            if verdict.passed:
                break
            # The retry must differ from the first request (which the cache would replay
            # at temperature 0): it carries the checker's objection.
            why = verdict.reason if verdict.passed is False else "the answer could not be verified"
            retry_hint = f"A previous description was rejected: {why} Describe the highlighted object again, carefully."
        if answer is None or not answer.description:
            return Dropped(obj.video_id, obj.object_id, "empty_description")
        if self.config.check and not (verdict and verdict.passed):
            code = "consistency_failed" if verdict and verdict.passed is False else "consistency_unclear"
            return Dropped(obj.video_id, obj.object_id, code, verdict.reason if verdict else "")
        scene = await self._ask(self.describer, p.scene.render(highlight=highlight, object_description=answer.description),
                                (views.scene_view.jpeg,))
        motion = await self._ask(self.describer, p.video.render(highlight=highlight, n_images=len(views.video_views),
                                                                object_description=answer.description),
                                 tuple(v.jpeg for v in views.video_views))
        scene, motion = clean(scene), clean(motion)
        merged = parse_merge(
            await self._ask(self.describer, p.merge.render(object_description=answer.description, scene_description=scene,
                                                           video_description=motion), ()),
            answer.description, scene, motion,
        )
        checker_id = self.checker.model if self.config.check and self.checker is not self.describer else ""
        expression = Expression(
            video_id=obj.video_id,
            object_id=obj.object_id,
            formated=merged.long,
            short_caps=merged.short,
            object_description=answer.description,
            scene_description=scene,
            video_description=motion,
            consistency=Consistency(passed=True, attempts=attempts, reason=verdict.reason if verdict else "not checked"),
            provenance=Provenance(
                model_id=self.describer.model,
                model_revision="",  # an OpenAI-compatible server does not say which revision it serves
                backend=self.describer.name,
                prompts=p.refs,
                generation_config=self.gen.to_json(),
                created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                toolkit_version=self.config.toolkit_version,
                input_files=list(obj.input_files),
                checker_model_id=checker_id,
            ),
            category=answer.category,
        )
        expression.validate()
        return Kept(expression)


def flag_ambiguous(kept: list[Kept]) -> list[Expression]:
    """The video's expressions with `ambiguous` set where the text does not single the object out."""
    collisions = ambiguity([Candidate(k.expression.object_id, k.expression.category, k.expression.formated,
                                      tuple(k.expression.short_caps)) for k in kept])
    out = []
    for k in kept:
        others = sorted(collisions[k.expression.object_id])
        out.append(dataclasses.replace(k.expression, ambiguous=bool(others), ambiguous_with=others))
    return out

