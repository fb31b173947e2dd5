"""Scorer output: per-item scores and leaderboard entries."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa

from .base import Record, kv_list
from .errors import SchemaError


@dataclass(frozen=True)
class ScoreRecord(Record):
    """Scores of one scored item (an expression, a sentence, a question) under a protocol."""

    protocol: str
    item_id: str  # e.g. "<video>/<exp_id>"
    subset: str  # e.g. "long", "short", "referring"; "" when the protocol has none
    metrics: dict[str, float]  # e.g. {"J": 87.1, "F": 90.3}

    ARROW_SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("protocol", pa.string()),
            ("item_id", pa.string()),
            ("subset", pa.string()),
            ("metrics", kv_list(pa.float64())),
        ]
    )


@dataclass(frozen=True)
class LeaderboardEntry(Record):
    benchmark: str  # e.g. "ref-sav-valid"
    protocol: str
    name: str  # submission / model name
    metrics: dict[str, float]
    primary_metric: str  # the column to rank by, e.g. "J&F"
    submission_sha256: str
    scorer_version: str
    created_at: str  # ISO 8601, UTC
    provenance: dict[str, str] = field(default_factory=dict)

    ARROW_SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("benchmark", pa.string()),
            ("protocol", pa.string()),
            ("name", pa.string()),
            ("metrics", kv_list(pa.float64())),
            ("primary_metric", pa.string()),
            ("submission_sha256", pa.string()),
            ("scorer_version", pa.string()),
            ("created_at", pa.string()),
            ("provenance", kv_list(pa.string())),
        ]
    )

    def validate(self) -> None:
        if self.primary_metric not in self.metrics:
            raise SchemaError(f"primary metric {self.primary_metric!r} is not among the metrics", field="primary_metric")
