"""The stages a run can name in AnnotateConfig.stages, registered by name.

    register(MyStage())                     # then AnnotateConfig(stages=(..., "my_stage"))

The built-in stages (refsav.pipelines.annotate.stages) are registered here; a name is
registered once, so a run's stage list always means the same code.
"""
from __future__ import annotations

import re
from typing import Iterable

from refsav.schemas.errors import RefsavError

from .grounding import GroundExpressions
from .stage import BACKENDS, Stage
from .stages import BUILT_IN

NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # also a prompt file name: <name>.v<N>.txt
# Every stage list has these: the row's description and expressions are their answers.
REQUIRED = ("object", "merge")

_STAGES: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Make `stage` available by its name; returns it."""
    if not isinstance(stage.name, str) or not NAME.match(stage.name):
        raise RefsavError(f"stage name {stage.name!r} must be lower case letters, digits and _ (a letter first)")
    if stage.template is not None and not NAME.match(stage.template):
        raise RefsavError(f"stage {stage.name}: template name {stage.template!r} must be lower case letters, digits and _")
    if stage.backend not in BACKENDS:
        raise RefsavError(f"stage {stage.name}: backend must be one of {', '.join(BACKENDS)}, got {stage.backend!r}")
    if stage.name in _STAGES:
        raise RefsavError(f"an annotation stage named {stage.name!r} is already registered")
    _STAGES[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage:
    if name not in _STAGES:
        raise RefsavError(f"unknown annotation stage {name!r}; registered: {', '.join(_STAGES)}")
    return _STAGES[name]


def resolve(names: Iterable[str]) -> tuple[Stage, ...]:
    """The stages of a stage list, checked: registered, each once, each after the stages it needs."""
    stages: list[Stage] = []
    for name in names:
        stage = get_stage(name)
        if any(s.name == name for s in stages):
            raise RefsavError(f"stage {name!r} is listed twice")
        missing = [n for n in stage.needs if not any(s.name == n for s in stages)]
        if missing:
            raise RefsavError(f"stage {name!r} needs the answers of {', '.join(missing)}: list them before it")
        stages.append(stage)
    absent = [n for n in REQUIRED if not any(s.name == n for s in stages)]
    if absent:
        raise RefsavError(f"the stage list must include {', '.join(absent)}")
    return tuple(stages)


for _stage in BUILT_IN:
    register(_stage)
# Not in the default list: `refsav annotate --grounder` appends it after merge.
register(GroundExpressions())
