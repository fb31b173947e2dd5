"""What an annotation run reports besides its rows: in OUT/stats/shard-*.json and OUT/run.json.

The JSON files hold these records as `dataclasses.asdict` writes them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..vlm.base import VLMResponse

# The drop reason of an object whose VLM request failed after its retries (server error,
# timeout, malformed answer). Unlike the reasons a stage gives, it says nothing about the
# object: a rerun asks again, and a run that ends with any exits non-zero.
VLM_ERROR = "vlm_error"


@dataclass(frozen=True)
class SkippedVideo:
    """A video that could not be read: no row for any of its objects."""

    video_id: str
    reason: str  # missing_video | missing_annotation | bad_input
    detail: str = ""


@dataclass(frozen=True)
class DroppedObject:
    """An object without a row: not visible, a duplicate id, or dropped by a stage."""

    video_id: str
    object_id: int
    reason: str  # a short stable code: counted in the stats
    detail: str = ""


@dataclass(frozen=True)
class ShardFailure:
    """A shard whose task raised: it has no marker, and the next run redoes it."""

    shard: int
    error: str  # "<exception type>: <message>"


@dataclass
class Meter:
    """VLM usage: of one shard in its stats JSON, of one run in run.json."""

    calls: int = 0  # requests answered by a server or model
    cache_hits: int = 0
    failed_calls: int = 0  # requests that failed after all retries
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # summed request latency (overlapping requests add up)

    def record(self, response: VLMResponse) -> None:
        if response.cached:
            self.cache_hits += 1
            return
        self.calls += 1
        self.prompt_tokens += response.prompt_tokens
        self.completion_tokens += response.completion_tokens
        self.seconds += response.seconds

    def add(self, other: "Meter") -> None:
        self.calls += other.calls
        self.cache_hits += other.cache_hits
        self.failed_calls += other.failed_calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.seconds = round(self.seconds + other.seconds, 3)
