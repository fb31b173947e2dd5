"""Backend for any OpenAI-compatible chat-completions server.

lmdeploy's api_server, vLLM, SGLang and `transformers serve` all accept the same request:
a user message whose content is the images as base64 data URLs followed by the text.
Retrying is ours alone (the client's own retries are switched off) so that the bound on
attempts and the backoff are the ones configured here.

What is retried: timeouts, refused or dropped connections, HTTP 408/429/5xx, and malformed
answers (a body that is not JSON, no choices, a message without content). A server under
load produces all of these now and then, and the next attempt usually gets through. Other
HTTP 4xx mean the request itself is wrong and are not retried.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
from urllib.parse import urlsplit

from .base import GenerationConfig, VLMError, VLMRequest, VLMResponse, backoff_delay

# 408/429 and server-side failures are worth another try; any other 4xx means the request
# itself is wrong and would fail the same way again.
RETRY_STATUS = frozenset({408, 429})


def is_retryable_status(status: int) -> bool:
    return status in RETRY_STATUS or status >= 500


def build_messages(request: VLMRequest) -> list[dict]:
    """The chat messages of a request: optional system text, then one user turn whose
    content parts are the images (data URLs, in order) followed by the prompt."""
    content: list[dict] = [
        {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(img).decode('ascii')}"}}
        for img, mime in zip(request.images, request.image_mimes)
    ]
    content.append({"type": "text", "text": request.prompt})
    messages: list[dict] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": content})
    return messages


def sampling_params(config: GenerationConfig) -> dict:
    params: dict = {"max_tokens": config.max_tokens, "temperature": float(config.temperature), "top_p": float(config.top_p)}
    if config.seed is not None:
        params["seed"] = config.seed
    return params


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_in_flight: int = 8,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        extra_body: dict | None = None,
    ):
        from openai import AsyncOpenAI

        self.model = model
        self.base_url = base_url
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.extra_body = dict(extra_body or {})
        # Local servers ignore the key but the client refuses to start without one.
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._client = AsyncOpenAI(base_url=base_url, api_key=key, timeout=self.timeout, max_retries=0)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._rng = random.Random()

    @property
    def where(self) -> str:
        """The server, for error messages."""
        return _where(str(self._client.base_url))

    async def generate(self, request: VLMRequest) -> VLMResponse:
        import openai

        messages = build_messages(request)
        params = sampling_params(request.config)
        reason = ""
        # A request waiting out its backoff keeps its slot: a struggling server then never
        # sees more than max_in_flight requests from this backend.
        async with self._slots:
            for attempt in range(self.max_retries + 1):
                if attempt:
                    await asyncio.sleep(backoff_delay(attempt - 1, base=self.backoff_base, cap=self.backoff_max,
                                                      jitter=self._rng.random()))
                start = time.perf_counter()
                try:
                    # The client's timeout bounds each socket operation; wait_for bounds the whole request.
                    completion = await asyncio.wait_for(
                        self._client.chat.completions.create(
                            model=self.model, messages=messages, extra_body=self.extra_body or None, **params
                        ),
                        timeout=self.timeout,
                    )
                except (asyncio.TimeoutError, openai.APITimeoutError):
                    reason = f"no answer within {self.timeout:g} s"
                    continue
                except openai.APIConnectionError as err:
                    reason = f"connection failed ({_cause(err)})"
                    continue
                except openai.APIStatusError as err:
                    reason = f"HTTP {err.status_code}: {_status_detail(err)}"
                    if is_retryable_status(err.status_code):
                        continue
                    raise VLMError(f"{self.where}: model {self.model}: {reason}") from None
                except (json.JSONDecodeError, UnicodeDecodeError, openai.APIResponseValidationError) as err:
                    reason = f"malformed answer ({type(err).__name__}: {_one_line(err)})"
                    continue
                except openai.OpenAIError as err:
                    raise VLMError(f"{self.where}: model {self.model}: {type(err).__name__}: {_one_line(err)}") from None
                try:
                    return _to_response(completion, time.perf_counter() - start)
                except MalformedAnswer as err:
                    reason = f"malformed answer ({err})"
        attempts = self.max_retries + 1
        raise VLMError(f"{self.where}: model {self.model}: gave up after {attempts} attempt{'s' * (attempts > 1)}: {reason}")

    async def aclose(self) -> None:
        await self._client.close()


class MalformedAnswer(Exception):
    """A 200 answer that holds no text: retried like a server error."""


def _to_response(completion, seconds: float) -> VLMResponse:
    if isinstance(completion, str):  # the client hands back the body when it is not JSON
        raise MalformedAnswer(f"not a chat completion: {_one_line(completion)[:80]!r}")
    choices = getattr(completion, "choices", None)
    if not choices:
        raise MalformedAnswer("no choices")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise MalformedAnswer("a choice without a message")
    # An empty text is never an answer to an annotation prompt, and caching it would make the
    # object's description empty on every rerun: a failed attempt, not a content problem.
    if not isinstance(message.content, str) or not message.content:
        raise MalformedAnswer("a message without content")
    usage = getattr(completion, "usage", None)
    return VLMResponse(
        text=message.content,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        seconds=seconds,
    )


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]


def _cause(err: BaseException) -> str:
    # The client's own message is a bare "Connection error."; the cause says which.
    inner = err.__cause__ or err.__context__
    text = f"{type(inner).__name__}: {inner}" if inner is not None else str(err)
    return " ".join(text.split())[:200]


def _status_detail(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        detail = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
        text = str(detail)
    else:
        text = str(getattr(err, "message", "") or err)
    return " ".join(text.split())[:300]


def _where(base_url: str) -> str:
    """A server URL for messages: without credentials or query, which may hold secrets."""
    url = urlsplit(base_url)
    host = url.hostname or ""
    if url.port:
        host = f"{host}:{url.port}"
    return f"{url.scheme}://{host}{url.path}".rstrip("/")


def check_server(base_url: str, *, timeout: float = 10.0, api_key: str | None = None) -> None:
    """Fail fast, with one line, when nothing answers at `base_url`: one GET {base_url}/models.

    Any HTTP answer counts as reachable, even an error status (some servers have no
    /models; a server that rejects the key says so on every request anyway). Only a refused,
    dropped or silent connection raises `VLMError`: without this check every object would
    first wait out its retries.
    """
    import openai

    where = _where(base_url)
    client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                           timeout=timeout, max_retries=0)
    try:
        client.models.list()
    except openai.APITimeoutError:
        raise VLMError(f"the VLM server at {where} did not answer GET /models within {timeout:g} s") from None
    except openai.APIConnectionError as err:
        raise VLMError(f"cannot reach the VLM server at {where}: {_cause(err)}") from None
    except Exception:  # noqa: BLE001 - it answered, if strangely: the requests will tell more
        pass
    finally:
        client.close()
