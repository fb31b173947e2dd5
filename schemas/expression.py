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
                    ]
                ),
            ),
            ("ambiguous", pa.bool_()),
            ("ambiguous_with", pa.list_(pa.int64())),
            ("category", pa.string()),
            ("extra_answers", kv_list(pa.string())),
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
        if not 1 <= len(self.short_caps) <= 3:
            raise SchemaError(f"expected 1 to 3 short expressions, got {len(self.short_caps)}", field="short_caps")
        for i, cap in enumerate(self.short_caps):
            if not cap.strip():
                raise SchemaError("short expression is empty", field=f"short_caps[{i}]")
