"""Versioned prompt templates, each owned by a stage.

A stage's template is a file `prompts/<template>.v<N>.txt`; its id is `<template>/v<N>` and
its content hash goes into every row's provenance, so an edited prompt is a new prompt even
when nobody bumps the version. `--prompts DIR` swaps in a user's own set.
"""
from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from refsav.schemas.errors import RefsavError, SchemaError
from refsav.schemas.expression import PromptRef

from .config import DEFAULT_STAGES
from .registry import get_stage

DEFAULT_DIR = Path(__file__).parent / "prompts"
_NAME = re.compile(r"^(?P<stage>[a-z][a-z0-9_]*)\.v(?P<version>\d+)\.txt$")


@dataclass(frozen=True)
class PromptTemplate:
    stage: str  # the template name, e.g. "object"
    version: int
    text: str
    path: str

    @property
    def template_id(self) -> str:
        return f"{self.stage}/v{self.version}"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def ref(self) -> PromptRef:
        return PromptRef(self.template_id, self.sha256)

    def render(self, **values: object) -> str:
        return self.text.format(**values).strip()


@dataclass(frozen=True)
class PromptSet:
    """The template of each stage that has one, by stage name, in stage order."""

    templates: dict[str, PromptTemplate]

    def __getitem__(self, stage: str) -> PromptTemplate:
        return self.templates[stage]

    def get(self, stage: str) -> PromptTemplate | None:
        return self.templates.get(stage)

    @property
    def refs(self) -> list[PromptRef]:
        return [t.ref for t in self.templates.values()]


def load_prompts(directory: str | Path | None = None, stages: Sequence[str] = DEFAULT_STAGES) -> PromptSet:
    """The newest version of each template in `directory` (default: the built-in set), for the
    default stages and then any other of `stages`.

    The default stages' templates are always loaded, so rows name the same templates with
    and without --no-check, and a --prompts folder that works for one works for the other.
    """
    directory = Path(directory) if directory else DEFAULT_DIR
    if not directory.is_dir():
        raise RefsavError("prompt folder not found", file=directory)
    names = (*DEFAULT_STAGES, *(n for n in stages if n not in DEFAULT_STAGES))
    wanted = [s for s in map(get_stage, names) if s.template is not None]
    newest: dict[str, PromptTemplate] = {}
    for path in sorted(directory.iterdir()):
        m = _NAME.match(path.name)
        if not m or m["stage"] not in {s.template for s in wanted}:
            continue
        t = PromptTemplate(m["stage"], int(m["version"]), path.read_text(encoding="utf-8"), str(path))
        if t.stage not in newest or t.version > newest[t.stage].version:
            newest[t.stage] = t
    missing = [s.template for s in wanted if s.template not in newest]
    if missing:
        raise SchemaError(f"no template for stage(s) {', '.join(missing)} (expected files like {missing[0]}.v1.txt)",
                          file=directory)
    for stage in wanted:
        t = newest[stage.template]
        used = {f for _, f, _, _ in string.Formatter().parse(t.text) if f}
        unknown = used - stage.fields
        if unknown:
            raise SchemaError(f"unknown placeholder(s) {', '.join(sorted(unknown))}; allowed: "
                              f"{', '.join(sorted(stage.fields))}", file=t.path)
    return PromptSet({s.name: newest[s.template] for s in wanted})
