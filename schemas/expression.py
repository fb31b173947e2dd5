"""`Expression`: one row of a refsav referring dataset, with its full provenance."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa

from .base import Record, kv_list
from .errors import SchemaError


@dataclass(frozen=True)
class PromptRef:
    template_id: str  # e.g. "object/v1"
    sha256: str  # of the template file's content, so an edited prompt is a new prompt


@dataclass(frozen=True)
class FileHash:
    path: str
    sha256: str


@dataclass(frozen=True)
class GrounderIdentity:
    """Which model grounded the expressions back to their masklets, and how."""

    model: str  # checkpoint folder (in-process) or the served model's id (`refsav serve`)
    sha256: str  # of the checkpoint's weights; "" for a server (it does not say)
    endpoint: str  # "in-process" or the server's base URL without credentials
    inference: str  # "official" | "sa2va-i"
    settings: str  # canonical JSON of the predict options and the grounding policy


@dataclass(frozen=True)
class Provenance:
    model_id: str
    model_revision: str
    backend: str  # "openai", "transformers", "lmdeploy", "synthetic"
    prompts: list[PromptRef]
    generation_config: str  # canonical JSON: its keys differ between backends
    created_at: str  # ISO 8601, UTC
    toolkit_version: str
    input_files: list[FileHash]
    checker_model_id: str = ""  # model of the consistency check, when different
    # The annotation stages that ran, in order (e.g. object, check, scene, video, merge).
    # [] in rows written before the list was recorded: their Parquet files lack the field.
    stages: list[str] = field(default_factory=list)
    # The grounding stage's model; None when no grounder ran (and in older rows).
    grounder: GrounderIdentity | None = None


@dataclass(frozen=True)
class GroundingScore:
    """One expression segmented by the grounder and scored against the masklets."""

    text: str
    kind: str  # "long" | "short"
    j_and_f: float  # against the object's own masklet, on the grounding frames
    j: float
    f: float
    kept: bool  # False: a short expression removed for failing on its own
    best_other_id: int | None  # the other object whose masklet it matches best; None if none
    best_other_j_and_f: float | None


@dataclass(frozen=True)
class Confusable:
    object_id: int
    j_and_f: float  # the long expression's mask against this object's masklet


@dataclass(frozen=True)
class Grounding:
    """What the grounding stage measured for one object (refsav.pipelines.annotate.grounding)."""

    frames: list[int]  # the annotated frames segmented and scored (visible span + margin)
    scores: list[GroundingScore]  # the long expression first, then each short one in order
    # Other objects scoring within the ambiguity margin of the object's own J&F, or above it.
    confusable_with: list[Confusable] = field(default_factory=list)

    def validate(self, long: str, short_caps: list[str]) -> None:
        if not self.scores or self.scores[0].kind != "long" or self.scores[0].text != long:
            raise SchemaError("the first score must be the long expression's", field="grounding.scores[0]")
        for i, sc in enumerate(self.scores):
            where = f"grounding.scores[{i}]"
            if sc.kind not in ("long", "short") or (i > 0 and sc.kind != "short"):
                raise SchemaError(f"kind must be long (first) or short, got {sc.kind!r}", field=f"{where}.kind")
            for name in ("j_and_f", "j", "f", "best_other_j_and_f"):
                v = getattr(sc, name)
                if v is not None and not 0.0 <= v <= 1.0:
                    raise SchemaError(f"must lie in [0, 1], got {v!r}", field=f"{where}.{name}")
        kept = [sc.text for sc in self.scores[1:] if sc.kept]
        if kept != list(short_caps):
            raise SchemaError("the kept short scores must be the row's short_caps, in order",
                              field="grounding.scores")


_SCORE = pa.struct([
    ("text", pa.string()), ("kind", pa.string()), ("j_and_f", pa.float64()), ("j", pa.float64()),
    ("f", pa.float64()), ("kept", pa.bool_()), ("best_other_id", pa.int64()), ("best_other_j_and_f", pa.float64()),
])
GROUNDING_ARROW = pa.struct([
    ("frames", pa.list_(pa.int64())),
    ("scores", pa.list_(_SCORE)),
    ("confusable_with", pa.list_(pa.struct([("object_id", pa.int64()), ("j_and_f", pa.float64())]))),
])
GROUNDER_ARROW = pa.struct([
    ("model", pa.string()), ("sha256", pa.string()), ("endpoint", pa.string()), ("inference", pa.string()),
    ("settings", pa.string()),
])


@dataclass(frozen=True)
class Consistency:
    passed: bool
    attempts: int  # descriptions generated before one passed (or the object was dropped)
    reason: str = ""  # the checker's explanation, kept for audits


@dataclass(frozen=True)
class Expression(Record):
    video_id: str
    object_id: int  # SA-V masklet id = column in the SA-V masklet lists
    formated: str  # the long expression; the field name (sic) is Ref-SAV's
    short_caps: list[str]
    object_description: str  # stage 1: object/part level
    scene_description: str  # stage 2: scene level
    video_description: str  # stage 3: video level
    consistency: Consistency
    provenance: Provenance
    ambiguous: bool = False  # could also refer to another object of the video
    ambiguous_with: list[int] = field(default_factory=list)
    category: str = ""  # stage 1's category word(s), lower case; "" when the model gave none
    # Answers of stages other than the built-in five, by stage name, as text (JSON for a
    # structured answer). {} in rows written before stages were pluggable.
    extra_answers: dict[str, str] = field(default_factory=dict)
    # Set by the grounding stage (`--grounder`); None (null, not zero) without one.
    grounding: Grounding | None = None

    ARROW_SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("video_id", pa.string()),
            ("object_id", pa.int64()),
            ("formated", pa.string()),
            ("short_caps", pa.list_(pa.string())),
            ("object_description", pa.string()),
            ("scene_description", pa.string()),
            ("video_description", pa.string()),
            (
                "consistency",
                pa.struct([("passed", pa.bool_()), ("attempts", pa.int32()), ("reason", pa.string())]),
            ),
            (
                "provenance",
                pa.struct(
                    [
                        ("model_id", pa.string()),
                        ("model_revision", pa.string()),
                        ("backend", pa.string()),
                        ("prompts", pa.list_(pa.struct([("template_id", pa.string()), ("sha256", pa.string())]))),
                        ("generation_config", pa.string()),
                        ("created_at", pa.string()),
                        ("toolkit_version", pa.string()),
                        ("input_files", pa.list_(pa.struct([("path", pa.string()), ("sha256", pa.string())]))),
                        ("checker_model_id", pa.string()),
                        ("stages", pa.list_(pa.string())),
                        ("grounder", GROUNDER_ARROW),
                    ]
                ),
            ),
            ("ambiguous", pa.bool_()),
            ("ambiguous_with", pa.list_(pa.int64())),
            ("category", pa.string()),
            ("extra_answers", kv_list(pa.string())),
            ("grounding", GROUNDING_ARROW),
        ]
    )

    @property
    def key(self) -> tuple[str, int]:
        return (self.video_id, self.object_id)

    def validate(self) -> None:
        if not self.video_id:
            raise SchemaError("video id is empty", field="video_id")
        if not self.formated.strip():
            raise SchemaError("long expression is empty", field="formated")
        # Grounding may remove every short expression (each failed on its own); the row
        # still stands on its long one.
        fewest = 0 if self.grounding is not None else 1
        if not fewest <= len(self.short_caps) <= 3:
            raise SchemaError(f"expected {fewest} to 3 short expressions, got {len(self.short_caps)}",
                              field="short_caps")
        for i, cap in enumerate(self.short_caps):
            if not cap.strip():
                raise SchemaError("short expression is empty", field=f"short_caps[{i}]")
        if self.grounding is not None:
            self.grounding.validate(self.formated, self.short_caps)
