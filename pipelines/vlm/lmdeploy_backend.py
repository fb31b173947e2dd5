"""Backend around an in-process `lmdeploy.pipeline` (CUDA machines only).

lmdeploy is imported here, lazily, so that the rest of refsav installs and runs without it.
The pipeline batches the prompts of one call on the GPU, so requests that arrive while a
batch runs are gathered into the next one (up to `max_in_flight`) instead of being run one
by one. For a model shared by several processes, run `lmdeploy serve api_server` and use the
openai backend instead.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

from .base import GenerationConfig, VLMError, VLMRequest, VLMResponse
from .openai_backend import build_messages

INSTALL_HINT = "pip install 'refsav[lmdeploy]' on a CUDA machine"


class LMDeployBackend:
    name = "lmdeploy"

    def __init__(
        self,
        *,
        model: str,
        max_in_flight: int = 8,
        timeout: float = 120.0,
        backend_config=None,
        chat_template_config=None,
        **pipeline_kw,
    ):
        try:
            import lmdeploy
        except ImportError:
            raise VLMError(f"the lmdeploy backend needs lmdeploy, which is not installed: {INSTALL_HINT}") from None
        self.model = model
        self.max_in_flight = int(max_in_flight)
        self.timeout = float(timeout)
        self._config_cls = lmdeploy.GenerationConfig
        try:
            self._pipe = lmdeploy.pipeline(
                model, backend_config=backend_config, chat_template_config=chat_template_config, **pipeline_kw
            )
        except Exception as err:  # CUDA missing, unsupported model, bad path: all end here
            raise VLMError(f"lmdeploy could not load {model!r}: {type(err).__name__}: {' '.join(str(err).split())[:300]}") from None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._running: list = []  # the batch on the GPU now

    def _lmdeploy_config(self, cfg: GenerationConfig):
        wanted = {
            "max_new_tokens": cfg.max_tokens,
            "temperature": float(cfg.temperature),
            "top_p": float(cfg.top_p),
            "do_sample": not cfg.greedy,
            "random_seed": cfg.seed,
        }
        if cfg.greedy:
            wanted["top_k"] = 1  # greedy on lmdeploy versions that have no do_sample flag
        # Fields differ between lmdeploy versions: pass only those this one has.
        known = {f.name for f in dataclasses.fields(self._config_cls)} if dataclasses.is_dataclass(self._config_cls) else set(wanted)
        return self._config_cls(**{k: v for k, v in wanted.items() if k in known and v is not None})

    async def generate(self, request: VLMRequest) -> VLMResponse:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve(self._queue))
        answer: asyncio.Future = loop.create_future()
        self._queue.put_nowait((request, answer))
        try:
            return await asyncio.wait_for(answer, timeout=self.timeout)
        except asyncio.TimeoutError:
            raise VLMError(f"lmdeploy model {self.model}: no answer within {self.timeout:g} s") from None

    async def _serve(self, queue: asyncio.Queue) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_in_flight and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [(req, fut) for req, fut in batch if not fut.done()]  # timed out while queued
            if not batch:
                continue
            prompts = [build_messages(req) for req, _ in batch]
            configs = [self._lmdeploy_config(req.config) for req, _ in batch]
            self._running = batch
            start = time.perf_counter()
            try:
                outputs = await asyncio.to_thread(self._pipe, prompts, gen_config=configs)
            except Exception as err:
                failure = VLMError(f"lmdeploy model {self.model}: {type(err).__name__}: {err}")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(failure)
                continue
            seconds = time.perf_counter() - start
            for (_, fut), out in zip(batch, outputs):
                if not fut.done():
                    fut.set_result(VLMResponse(
                        text=out.text or "",
                        prompt_tokens=int(getattr(out, "input_token_len", 0) or 0),
                        completion_tokens=int(getattr(out, "generate_token_len", 0) or 0),
                        seconds=seconds,
                    ))

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        waiting = list(self._running)
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for _, fut in waiting:
            if not fut.done():
                fut.set_exception(VLMError(f"lmdeploy model {self.model}: backend closed"))
        close = getattr(self._pipe, "close", None)
        if callable(close):
            close()
