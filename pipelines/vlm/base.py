"""The contract between the annotation pipeline and a vision-language model.

A stage builds a `VLMRequest` (prompt, encoded images, generation settings) and awaits
`backend.generate(request)`; every backend answers with a `VLMResponse` or raises `VLMError`
once its bounded retries are spent. Three backends implement it (`make_backend`):

* ``openai``: any OpenAI-compatible server (lmdeploy api_server, vLLM, SGLang, `transformers serve`);
* ``transformers``: the model in this process, one generation at a time;
* ``lmdeploy``: an in-process lmdeploy pipeline (CUDA machines only).

`refsav.pipelines.vlm.cache.CachedBackend` wraps any of them with a SQLite answer cache keyed by
`VLMRequest.cache_key(model)`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

from refsav.schemas.errors import SchemaError

BACKENDS = ("openai", "transformers", "lmdeploy")
# Bumped whenever the way a request is turned into model input changes, so that old cache
# entries stop matching instead of answering a question that is no longer asked.
CACHE_KEY_VERSION = 1


@dataclass(frozen=True)
class GenerationConfig:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise SchemaError(f"must be a positive integer, got {self.max_tokens!r}", field="generation_config.max_tokens")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise SchemaError(f"must be a number >= 0, got {self.temperature!r}", field="generation_config.temperature")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise SchemaError(f"must be a number in (0, 1], got {self.top_p!r}", field="generation_config.top_p")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise SchemaError(f"must be an integer or null, got {self.seed!r}", field="generation_config.seed")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces, floats as floats): stored in provenance and
        hashed into cache keys, so `temperature=0` and `temperature=0.0` are the same config."""
        d = asdict(self)
        d["temperature"] = float(self.temperature)
        d["top_p"] = float(self.top_p)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # x == x rejects NaN


_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)


def image_mime(data: bytes) -> str | None:
    """The MIME type of encoded image bytes, from their signature; None if not JPEG/PNG/WebP."""
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class VLMRequest:
    prompt: str
    images: tuple[bytes, ...] = ()  # encoded JPEG/PNG, in order; sent before the text
    system: str | None = None
    config: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise SchemaError(f"must be a string, got {type(self.prompt).__name__}", field="prompt")
        if self.system is not None and not isinstance(self.system, str):
            raise SchemaError(f"must be a string or null, got {type(self.system).__name__}", field="system")
        if not isinstance(self.config, GenerationConfig):
            raise SchemaError(f"must be a GenerationConfig, got {type(self.config).__name__}", field="config")
        images = tuple(self.images)
        for i, img in enumerate(images):
            if not isinstance(img, (bytes, bytearray, memoryview)):
                raise SchemaError(f"must be encoded image bytes, got {type(img).__name__}", field=f"images[{i}]")
            if image_mime(bytes(img)) is None:
                raise SchemaError("not a JPEG, PNG or WebP image (unknown signature)", field=f"images[{i}]")
        object.__setattr__(self, "images", tuple(bytes(img) for img in images))

    @property
    def image_mimes(self) -> tuple[str, ...]:
        return tuple(image_mime(img) or "application/octet-stream" for img in self.images)

    def cache_key(self, model: str) -> str:
        """SHA-256 over everything that determines the answer: model, system, prompt, the
        SHA-256 of each image (in order) and the generation config."""
        payload = {
            "v": CACHE_KEY_VERSION,
            "model": model,
            "system": self.system,
            "prompt": self.prompt,
            "images": [hashlib.sha256(img).hexdigest() for img in self.images],
            "config": self.config.to_json(),
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class VLMResponse:
    text: str
    prompt_tokens: int  # 0 when the server does not report usage
    completion_tokens: int
    seconds: float  # wall time of the attempt that answered (no queueing, no failed attempts)
    cached: bool = False


class VLMError(Exception):
    """A request that could not be answered (after the backend's bounded retries).
    `str(err)` is always one line that says why."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@runtime_checkable
class VLMBackend(Protocol):
    name: str  # "openai" | "transformers" | "lmdeploy"
    model: str  # model id as reported in provenance

    async def generate(self, request: VLMRequest) -> VLMResponse: ...

    async def aclose(self) -> None: ...


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait before retry number `attempt` (0-based): exponential in the attempt,
    capped, scaled by `jitter` in [0, 1] into [50 %, 100 %] of that, so that many clients that
    failed together do not come back together, yet none retries immediately."""
    ceiling = min(cap, base * (2 ** attempt))
    return ceiling * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


def make_backend(
    kind: str,
    *,
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    max_in_flight: int = 8,
    timeout: float = 120.0,
    max_retries: int = 3,
    cache_path: str | None = None,
    **kw,
) -> VLMBackend:
    """Build a backend by name; with `cache_path`, wrap it in a SQLite answer cache.

    Extra keywords go to the backend's constructor (e.g. `backoff_base` for openai,
    `device`/`dtype` for transformers, `backend_config` for lmdeploy).
    """
    if kind not in BACKENDS:
        raise SchemaError(f"unknown VLM backend {kind!r}; expected one of {', '.join(BACKENDS)}", field="backend")
    if not isinstance(model, str) or not model:
        raise SchemaError("a model id is required", field="model")
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise SchemaError(f"must be a positive integer, got {max_in_flight!r}", field="max_in_flight")
    if not _is_number(timeout) or timeout <= 0:
        raise SchemaError(f"must be a positive number of seconds, got {timeout!r}", field="timeout")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise SchemaError(f"must be an integer >= 0, got {max_retries!r}", field="max_retries")

    backend: VLMBackend
    if kind == "openai":
        from .openai_backend import OpenAIBackend

        backend = OpenAIBackend(model=model, base_url=base_url, api_key=api_key, max_in_flight=max_in_flight,
                                timeout=timeout, max_retries=max_retries, **kw)
    elif kind == "transformers":
        from .transformers_backend import TransformersBackend

        backend = TransformersBackend(model=model, timeout=timeout, **kw)
    else:
        from .lmdeploy_backend import LMDeployBackend

        backend = LMDeployBackend(model=model, max_in_flight=max_in_flight, timeout=timeout, **kw)
    if cache_path is not None:
        from .cache import CachedBackend, RequestCache

        backend = CachedBackend(backend, RequestCache(cache_path))
    return backend


__all__ = [
    "BACKENDS",
    "GenerationConfig",
    "VLMBackend",
    "VLMError",
    "VLMRequest",
    "VLMResponse",
    "backoff_delay",
    "image_mime",
    "make_backend",
]
