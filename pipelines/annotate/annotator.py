"""One object through the run's stages, into an `Expression` row or a recorded drop.

One coroutine per object; the VLM backend bounds how many requests are in flight, so a
shard's objects overlap their network waits while the CPU renders the next video.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

from refsav.schemas.base import canonical_json
from refsav.schemas.errors import RefsavError
from refsav.schemas.expression import Consistency, Expression, Provenance

from ..vlm.base import GenerationConfig, VLMBackend, VLMError, VLMRequest
from .grounding import GroundingRunner
from .prompts import PromptSet
from .records import VLM_ERROR, DroppedObject, Meter
from .stage import Answers, Ask, Drop, ObjectContext, Retry, Stage, Turn
from .stages import BUILT_IN
from .text import Candidate, ambiguity

# Passes through the stages per object: a first one, and one more after a Retry.
MAX_ATTEMPTS = 2


class Annotator:
    def __init__(self, stages: tuple[Stage, ...], prompts: PromptSet, backends: dict[str, VLMBackend],
                 gen: GenerationConfig, meter: Meter, toolkit_version: str,
                 grounding: GroundingRunner | None = None) -> None:
        self.stages = stages
        self.prompts = prompts
        self.backends = backends  # by Stage.backend: "describer", "checker"
        self.gen = gen
        self.meter = meter
        self.toolkit_version = toolkit_version
        self.grounding = grounding
        self._ask = {name: self._asker(backend) for name, backend in backends.items()}
        self._ask["grounder"] = _no_vlm

    def _asker(self, backend: VLMBackend) -> Ask:
        async def ask(prompt: str, images: tuple[bytes, ...]) -> str:
            try:
                response = await backend.generate(VLMRequest(prompt=prompt, images=images, config=self.gen))
            except VLMError:
                self.meter.failed_calls += 1
                raise
            self.meter.record(response)
            return response.text

        return ask

    async def annotate(self, obj: ObjectContext) -> Expression | DroppedObject:
        try:
            outcome = await self._run_stages(obj)
        except VLMError as err:
            outcome = Drop(VLM_ERROR, str(err)[:500])
        if isinstance(outcome, Drop):
            return DroppedObject(obj.video_id, obj.object_id, outcome.reason, outcome.detail)
        answers, attempt = outcome
        return self._expression(obj, answers, attempt)

    async def _run_stages(self, obj: ObjectContext) -> tuple[Answers, int] | Drop:
        names = [s.name for s in self.stages]
        answers, attempt, i, hint = Answers(), 1, 0, ""
        while i < len(self.stages):
            stage = self.stages[i]
            turn = Turn(obj, answers, self.prompts.get(stage.name), self._ask[stage.backend], attempt, hint,
                        self.grounding)
            result = await stage.run(turn)
            if isinstance(result, Drop):
                return result
            if isinstance(result, Retry):
                if result.stage not in names[: i + 1]:
                    raise RefsavError(f"stage {stage.name!r} asked to start over from {result.stage!r}, "
                                      "which does not run before it")
                if attempt >= MAX_ATTEMPTS:
                    return result.drop
                attempt += 1
                i = names.index(result.stage)
                answers, hint = answers.before(result.stage), result.hint
                continue
            answers = answers.with_answer(stage.name, result)
            i += 1
            hint = ""
        return answers, attempt

    def _expression(self, obj: ObjectContext, answers: Answers, attempt: int) -> Expression:
        described, merged = answers["object"], answers["merge"]
        verdict = answers["check"] if "check" in answers else None
        uses_checker = any(s.backend == "checker" for s in self.stages)
        describer, checker = self.backends["describer"], self.backends["checker"]
        grounded = answers["grounding"] if "grounding" in answers else None
        expression = Expression(
            video_id=obj.video_id,
            object_id=obj.object_id,
            formated=merged.long,
            short_caps=grounded.short_caps if grounded else merged.short,
            object_description=described.description,
            scene_description=answers["scene"],
            video_description=answers["video"],
            consistency=Consistency(passed=True, attempts=attempt, reason=verdict.reason if verdict else "not checked"),
            provenance=Provenance(
                model_id=describer.model,
                model_revision="",  # an OpenAI-compatible server does not say which revision it serves
                backend=describer.name,
                prompts=self.prompts.refs,
                generation_config=self.gen.to_json(),
                created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                toolkit_version=self.toolkit_version,
                input_files=list(obj.input_files),
                checker_model_id=checker.model if uses_checker and checker is not describer else "",
                stages=[s.name for s in self.stages],
                grounder=self.grounding.settings.identity() if grounded else None,
            ),
            category=described.category,
            extra_answers={name: _as_text(value) for name, value in answers.items if name not in _BUILT_IN_NAMES},
            # Set here from what the grounder measured; without one, flag_ambiguous sets them
            # from the text once the video's rows are known.
            ambiguous=bool(grounded and grounded.ambiguous_with),
            ambiguous_with=list(grounded.ambiguous_with) if grounded else [],
            grounding=grounded.grounding if grounded else None,
        )
        expression.validate()
        return expression


_BUILT_IN_NAMES = frozenset(s.name for s in BUILT_IN) | {"grounding"}


async def _no_vlm(prompt: str, images: tuple[bytes, ...]) -> str:
    raise RefsavError("a stage with backend 'grounder' asks the grounder (turn.grounding), not a VLM")


def _as_text(answer: object) -> str:
    return answer if isinstance(answer, str) else canonical_json(answer)


def flag_ambiguous(expressions: list[Expression]) -> list[Expression]:
    """The video's expressions with `ambiguous` set where the text does not single the object out."""
    collisions = ambiguity([Candidate(e.object_id, e.category, e.formated, tuple(e.short_caps)) for e in expressions])
    out = []
    for e in expressions:
        others = sorted(collisions[e.object_id])
        out.append(dataclasses.replace(e, ambiguous=bool(others), ambiguous_with=others))
    return out
