"""JSON Schema for the files a submission may contain (`refsav schema`).

Record schemas are derived from the dataclasses themselves, so the JSON
contract cannot drift from the Parquet one; Sa2VA's `results.json` is described
by hand because it is an outside format.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .predictions import ImagePrediction, QAPrediction, VideoPrediction
from .rle import Rle

DRAFT = "https://json-schema.org/draft/2020-12/schema"

RLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "COCO compressed RLE; size is [H, W], counts is the column-major run string.",
    "required": ["size", "counts"],
    "properties": {
        "size": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
        "counts": {"type": "string"},
    },
}


def record_schema(cls: type) -> dict[str, Any]:
    """JSON Schema of one record dataclass."""
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        props[f.name] = _type_schema(hints[f.name])
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    schema = {"type": "object", "properties": props, "required": required}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    return schema


def _type_schema(tp: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Rle:
        return RLE_SCHEMA
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(a) for a in args]}
    if origin in (list, tuple):
        return {"type": "array", "items": _type_schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1])}
    if dataclasses.is_dataclass(tp):
        return record_schema(tp)
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    return {"type": simple[tp]}


def _document(title: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": DRAFT, "title": title, **body}


def submission_schemas() -> dict[str, dict[str, Any]]:
    """Every accepted submission file format, by name."""
    return {
        "video-results-json": _document(
            "Sa2VA-style results.json: one RLE per listed frame, per expression",
            {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["prediction_masks"],
                        "properties": {"prediction_masks": {"type": "array", "items": RLE_SCHEMA}},
                    },
                },
            },
        ),
        "video-prediction": _document("refsav video prediction record (JSON Lines or Parquet row)", record_schema(VideoPrediction)),
        "image-prediction": _document("refsav image prediction record (JSON Lines or Parquet row)", record_schema(ImagePrediction)),
        "qa-prediction": _document("refsav QA answer record (JSON Lines or Parquet row)", record_schema(QAPrediction)),
    }
