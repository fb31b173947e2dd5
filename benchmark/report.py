"""The one report shape every protocol family returns, so that `refsav score`, scores.json
and the leaderboard treat video, image and QA benchmarks alike, and the `Issue` every
family records for a problem with a submission (the item counts as 0, nothing is raised)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    kind: str  # missing_video, missing_expression, missing_frame, extra_*, wrong_size, non_binary, corrupt_file, unsafe_entry, ...
    where: str  # "<video>/<exp_id>[/<frame>]" or a file name
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.message}"


@dataclass(frozen=True)
class ScoreReport:
    protocol: str
    primary_metric: str  # the leaderboard's ranking key: "J&F", "cIoU", "accuracy", ...
    totals: dict[str, float]  # the headline numbers, x100 where the protocol reports percentages
    subsets: dict[str, dict[str, float]]  # per split/subset/category, same keys as totals
    items: list[Any]  # per-expression / per-sample / per-question results (frozen dataclasses)
    issues: list[Issue] = field(default_factory=list)
    item_kind: str = "expressions"  # the key under which scores.json lists `items`
