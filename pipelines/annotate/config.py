"""Settings of one annotation run. Everything that changes the output rows is here, and
stored in OUT/plan.json, so a rerun with other settings is refused instead of mixing rows."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .grounding import GroundingSettings


@dataclass(frozen=True)
class VLMSettings:
    backend: str = "openai"  # openai | transformers | lmdeploy
    model: str = ""
    base_url: str | None = None
    max_in_flight: int = 8  # requests in flight per worker
    timeout: float = 120.0  # seconds per request
    max_retries: int = 3
    backoff: float = 1.0  # seconds before the first retry of a request (openai); doubles each time
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = 0

    def public(self) -> dict:
        """What goes into plan.json and provenance: no URLs (they may carry credentials and
        change between reruns without changing the rows)."""
        d = asdict(self)
        d.pop("base_url")
        d.pop("max_in_flight")
        d.pop("timeout")
        d.pop("max_retries")
        d.pop("backoff")
        return d


# The stages of a run, by registered name (refsav.pipelines.annotate.registry), in order.
# `--no-check` takes check out.
DEFAULT_STAGES = ("object", "check", "scene", "video", "merge")


@dataclass(frozen=True)
class AnnotateConfig:
    vlm: VLMSettings
    checker: VLMSettings | None = None  # None: the describing model checks its own descriptions
    stages: tuple[str, ...] = DEFAULT_STAGES
    highlight: str = "contour"  # contour | tint | box | crop
    object_frames: int = 2  # stage 1: best frames per object
    video_frames: int = 8  # stage 3: frames sampled over the visible span
    masklets: str = "manual"  # manual | auto | both
    prompts_dir: str | None = None
    cache_path: str | None = None  # None: no request cache
    toolkit_version: str = ""
    # The grounding stage's grounder, scorer and policy (`--grounder`); None: no grounding.
    grounding: GroundingSettings | None = None

    def fingerprint(self) -> str:
        """Canonical JSON of the settings that determine the rows."""
        d = asdict(replace(self, grounding=None))
        d.pop("grounding")
        if self.grounding is not None:
            # Only with a grounder, so that plans written before grounding existed still resume.
            d["grounding"] = self.grounding.public()
        d["vlm"] = self.vlm.public()
        d["checker"] = self.checker.public() if self.checker else None
        for volatile in ("cache_path", "prompts_dir", "toolkit_version"):
            d.pop(volatile)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))
