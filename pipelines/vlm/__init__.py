"""VLM backends for the annotation pipeline: one request/response contract (`base`), three
backends (OpenAI-compatible servers, in-process transformers, in-process lmdeploy) and a
SQLite answer cache. Backends are imported lazily by `make_backend`, so importing this
package needs neither openai, torch nor lmdeploy."""
from .base import (
    BACKENDS,
    GenerationConfig,
    VLMBackend,
    VLMError,
    VLMRequest,
    VLMResponse,
    make_backend,
)
from .cache import CachedBackend, RequestCache

__all__ = [
    "BACKENDS",
    "CachedBackend",
    "GenerationConfig",
    "RequestCache",
    "VLMBackend",
    "VLMError",
    "VLMRequest",
    "VLMResponse",
    "make_backend",
]
