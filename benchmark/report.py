"""The one report shape every protocol family returns, so that `refsav score`, scores.json
and the leaderboard treat video, image and QA benchmarks alike."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .inputs import Issue


@dataclass(frozen=True)
class ScoreReport:
    protocol: str
    primary_metric: str  # the leaderboard's ranking key: "J&F", "cIoU", "accuracy", ...
    totals: dict[str, float]  # the headline numbers, x100 where the protocol reports percentages
    subsets: dict[str, dict[str, float]]  # per split/subset/category, same keys as totals
    items: list[Any]  # per-expression / per-sample / per-question results (frozen dataclasses)
    issues: list[Issue] = field(default_factory=list)
    item_kind: str = "expressions"  # the key under which scores.json lists `items`
