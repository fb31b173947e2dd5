"""The built-in stages: describe the object, check the description, place it in the scene,
follow it over time, merge the three into referring expressions.

Each owns its prompt template (prompts/<name>.v<N>.txt) and the placeholders it fills in.
"""
from __future__ import annotations

from .stage import Drop, Retry, Turn
from .text import MergedExpressions, ObjectAnswer, Verdict, clean, parse_merge, parse_object_answer, parse_verdict


class DescribeObject:
    """Stage 1, object level: category and description from the best crops."""

    name = "object"
    template = "object"
    fields = frozenset({"highlight", "n_images", "retry_hint"})
    backend = "describer"
    needs: tuple[str, ...] = ()

    async def run(self, turn: Turn) -> ObjectAnswer | Retry:
        crops = tuple(v.jpeg for v in turn.obj.views.object_views)
        prompt = turn.prompt.render(highlight=turn.obj.highlight, n_images=len(crops), retry_hint=turn.retry_hint)
        answer = parse_object_answer(await turn.ask(prompt, crops))
        if not answer.description:
            return Retry(self.name, "A previous answer was empty. Describe the highlighted object.", Drop("empty_description"))
        return answer


class CheckDescription:
    """Does the description fit the highlighted object? A rejected one is described again
    with the checker's objection (the retry must differ from the first request, which the
    request cache would replay at temperature 0)."""

    name = "check"
    template = "check"
    fields = frozenset({"highlight", "description"})
    backend = "checker"
    needs = ("object",)

    async def run(self, turn: Turn) -> Verdict | Retry:
        prompt = turn.prompt.render(highlight=turn.obj.highlight, description=turn.answers["object"].description)
        verdict = parse_verdict(await turn.ask(prompt, tuple(v.jpeg for v in turn.obj.views.object_views[:1])))
        if verdict.passed:
            return verdict
        if verdict.passed is False:
            code, why = "consistency_failed", verdict.reason
        else:
            code, why = "consistency_unclear", "the answer could not be verified"
        hint = f"A previous description was rejected: {why} Describe the highlighted object again, carefully."
        return Retry("object", hint, Drop(code, verdict.reason))


class PlaceInScene:
    """Stage 2, scene level: where the object is and what is around it, on the full frame."""

    name = "scene"
    template = "scene"
    fields = frozenset({"highlight", "object_description"})
    backend = "describer"
    needs = ("object",)

    async def run(self, turn: Turn) -> str:
        prompt = turn.prompt.render(highlight=turn.obj.highlight, object_description=turn.answers["object"].description)
        return clean(await turn.ask(prompt, (turn.obj.views.scene_view.jpeg,)))


class FollowOverTime:
    """Stage 3, video level: how the object moves, from frames over its visible span."""

    name = "video"
    template = "video"
    fields = frozenset({"highlight", "n_images", "object_description"})
    backend = "describer"
    needs = ("object",)

    async def run(self, turn: Turn) -> str:
        frames = tuple(v.jpeg for v in turn.obj.views.video_views)
        prompt = turn.prompt.render(highlight=turn.obj.highlight, n_images=len(frames),
                                    object_description=turn.answers["object"].description)
        return clean(await turn.ask(prompt, frames))


class MergeExpressions:
    """Text only: one long and one to three short referring expressions from the three levels."""

    name = "merge"
    template = "merge"
    fields = frozenset({"object_description", "scene_description", "video_description"})
    backend = "describer"
    needs = ("object", "scene", "video")

    async def run(self, turn: Turn) -> MergedExpressions:
        a = turn.answers
        description, scene, motion = a["object"].description, a["scene"], a["video"]
        prompt = turn.prompt.render(object_description=description, scene_description=scene, video_description=motion)
        return parse_merge(await turn.ask(prompt, ()), description, scene, motion)


BUILT_IN = (DescribeObject(), CheckDescription(), PlaceInScene(), FollowOverTime(), MergeExpressions())
