"""Versioned prompt templates.

Each template is a file `prompts/<stage>.v<N>.txt`; its id is `<stage>/v<N>` and its
content hash goes into every row's provenance, so an edited prompt is a new prompt even
when nobody bumps the version. `--prompts DIR` swaps in a user's own set.
"""
from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

from refsav.schemas.errors import SchemaError
from refsav.schemas.expression import PromptRef

DEFAULT_DIR = Path(__file__).parent / "prompts"
STAGES = ("object", "check", "scene", "video", "merge")
_NAME = re.compile(r"^(?P<stage>[a-z]+)\.v(?P<version>\d+)\.txt$")

# The fields each stage fills in; a template that asks for anything else is a user mistake
# better caught before thousands of requests than in the middle of a run.
FIELDS = {
    "object": {"highlight", "n_images", "retry_hint"},
    "check": {"highlight", "description"},
    "scene": {"highlight", "object_description"},
    "video": {"highlight", "n_images", "object_description"},
    "merge": {"object_description", "scene_description", "video_description"},
}


@dataclass(frozen=True)
class PromptTemplate:
    stage: str
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
    object: PromptTemplate
    check: PromptTemplate
    scene: PromptTemplate
    video: PromptTemplate
    merge: PromptTemplate

    @property
    def refs(self) -> list[PromptRef]:
        return [getattr(self, s).ref for s in STAGES]


def load_prompts(directory: str | Path | None = None) -> PromptSet:
    """The newest version of each stage's template in `directory` (default: the built-in set)."""
    directory = Path(directory) if directory else DEFAULT_DIR
    if not directory.is_dir():
        raise SchemaError("prompt folder not found", file=directory)
    newest: dict[str, PromptTemplate] = {}
    for path in sorted(directory.iterdir()):
        m = _NAME.match(path.name)
        if not m or m["stage"] not in STAGES:
            continue
        t = PromptTemplate(m["stage"], int(m["version"]), path.read_text(encoding="utf-8"), str(path))
        if t.stage not in newest or t.version > newest[t.stage].version:
            newest[t.stage] = t
    missing = [s for s in STAGES if s not in newest]
    if missing:
        raise SchemaError(f"no template for stage(s) {', '.join(missing)} (expected files like {missing[0]}.v1.txt)",
                          file=directory)
    for t in newest.values():
        used = {f for _, f, _, _ in string.Formatter().parse(t.text) if f}
        unknown = used - FIELDS[t.stage]
        if unknown:
            raise SchemaError(f"unknown placeholder(s) {', '.join(sorted(unknown))}; allowed: "
                              f"{', '.join(sorted(FIELDS[t.stage]))}", file=t.path)
    return PromptSet(**newest)
