"""The contract of an annotation stage: one step of describing one object.

A run annotates every object with a list of stages (AnnotateConfig.stages), in order. Each
stage gets a `Turn`: the object (video, masklet, the rendered views), the answers of the
stages before it, its own prompt template and `ask`, which sends a prompt and images to the
stage's VLM backend. It returns one of

- its answer (any value; built-in stages return the parsed text), kept under its name;
- `Drop(reason, detail)`: the object gets no row, and the reason is counted;
- `Retry(stage, hint, drop)`: start over from `stage` (itself or an earlier one), which
  sees `hint` in `turn.retry_hint`; when no attempt is left the object is dropped with
  `drop`. The attempts are counted per object, over all stages.

Stages are registered by name (refsav.pipelines.annotate.registry); a new one is a class
with the attributes of `Stage` and a `run` coroutine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

if TYPE_CHECKING:
    from refsav.schemas.expression import FileHash
    from refsav.schemas.video import Masklet, Video

    from ..visual.views import ObjectViews
    from .grounding import GroundingRunner
    from .prompts import PromptTemplate

# How the prompts name the visual cue; the colour is chosen per object by refsav.pipelines.visual
# so that it stands out against the object and its surroundings.
HIGHLIGHT_WORDS = {
    "contour": "a {colour} outline drawn around it",
    "tint": "a {colour} tint over it",
    "box": "a {colour} box around it",
    "crop": "darkening everything around it",
}

# The VLM clients a stage can ask: the describing model, or the model of the consistency
# check (the same one unless --check-model names another). "grounder": a stage that asks
# no VLM but the referring segmentation model of `Turn.grounding` (the grounding stage).
BACKENDS = ("describer", "checker", "grounder")


@dataclass(frozen=True)
class ObjectContext:
    """One object, ready for the stages."""

    video_id: str  # from the file name (the row's key), which the SA-V JSON need not repeat
    video: Video
    masklet: Masklet
    views: ObjectViews
    input_files: tuple[FileHash, ...]
    # Every other masklet of the video (manual, and auto with --masklets both), visible or
    # not: the grounding stage scores each expression against them too.
    others: tuple[Masklet, ...] = ()

    @property
    def object_id(self) -> int:
        return self.masklet.object_id

    @property
    def highlight(self) -> str:
        """How the images mark the object, in words for a prompt."""
        return HIGHLIGHT_WORDS[self.views.mode].format(colour=self.views.colour)


@dataclass(frozen=True)
class Drop:
    reason: str  # a short stable code: counted in the stats
    detail: str = ""


@dataclass(frozen=True)
class Retry:
    stage: str  # where to start over: this stage or an earlier one
    hint: str  # what that stage is told about the rejected attempt
    drop: Drop  # the outcome when no attempt is left


@dataclass(frozen=True)
class Answers:
    """The answers of the stages that have run for one object, in order."""

    items: tuple[tuple[str, Any], ...] = ()

    def __contains__(self, stage: str) -> bool:
        return any(name == stage for name, _ in self.items)

    def __getitem__(self, stage: str) -> Any:
        for name, value in self.items:
            if name == stage:
                return value
        raise KeyError(stage)

    def with_answer(self, stage: str, value: Any) -> "Answers":
        return Answers((*self.items, (stage, value)))

    def before(self, stage: str) -> "Answers":
        """The answers given before `stage` ran (all of them if it has not)."""
        names = [name for name, _ in self.items]
        return Answers(self.items[: names.index(stage)] if stage in names else self.items)


# Sends a prompt and its images (encoded JPEG/PNG, in order) to the stage's backend; the answer text.
Ask = Callable[[str, tuple[bytes, ...]], Awaitable[str]]


@dataclass(frozen=True)
class Turn:
    obj: ObjectContext
    answers: Answers  # of the stages before this one
    prompt: PromptTemplate | None  # this stage's template; None when it has none
    ask: Ask
    attempt: int = 1  # 1, then +1 each time a stage sent the object back
    retry_hint: str = ""  # the hint of the Retry that restarted at this stage; "" otherwise
    grounding: GroundingRunner | None = None  # the run's grounder; None without --grounder


class Stage(Protocol):
    name: str  # registry key; also the key of its answer
    template: str | None  # its prompt file: prompts/<template>.v<N>.txt (or in --prompts DIR); None: no prompt
    fields: frozenset[str]  # the placeholders its template may use
    backend: str  # one of BACKENDS
    needs: tuple[str, ...]  # stages whose answers it reads: they must come before it

    async def run(self, turn: Turn) -> Any:
        """Its answer, a `Drop` or a `Retry`."""
        ...
