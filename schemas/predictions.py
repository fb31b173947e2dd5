"""What models hand to the scorer: video masks, image masks, QA answers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from .base import RLE_STRUCT, Record
from .errors import SchemaError
from .rle import Rle


@dataclass(frozen=True)
class VideoPrediction(Record):
    """Masks for one referring expression of a video, one RLE per listed frame."""

    video_id: str
    expression_id: str
    frames: list[str]  # frame names as listed by the benchmark's meta file
    rles: list[Rle]
    text: str = ""  # the model's text answer, kept for debugging

    ARROW_SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("video_id", pa.string()),
            ("expression_id", pa.string()),
            ("frames", pa.list_(pa.string())),
            ("rles", pa.list_(RLE_STRUCT)),
            ("text", pa.string()),
        ]
    )

    def validate(self) -> None:
        if len(self.frames) != len(self.rles):
            raise SchemaError(f"{len(self.rles)} masks for {len(self.frames)} frames", field="rles")
        for i, r in enumerate(self.rles):
            if tuple(r.size) != tuple(self.rles[0].size):
                raise SchemaError(
                    f"mask size {list(r.size)} differs from the first frame's {list(self.rles[0].size)}",
                    field=f"rles[{i}].size",
                )


@dataclass(frozen=True)
class ImagePrediction(Record):
    """One referring-image sample (a sentence) and its predicted mask."""

    sample_id: str  # sentence id
    image_id: str
    rle: Rle
    no_target: bool | None = None  # gRefCOCO; None = infer "empty mask means no target"
    text: str = ""

    ARROW_SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("sample_id", pa.string()),
            ("image_id", pa.string()),
            ("rle", RLE_STRUCT),
            ("no_target", pa.bool_()),
            ("text", pa.string()),
        ]
    )


@dataclass(frozen=True)
class QAPrediction(Record):
    """A model's raw answer to one question; the scorer extracts options itself."""

    question_id: str
    prediction: str

    ARROW_SCHEMA: ClassVar[pa.Schema] = pa.schema([("question_id", pa.string()), ("prediction", pa.string())])
