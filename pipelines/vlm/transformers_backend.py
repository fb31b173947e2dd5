"""Backend that runs a Hugging Face image-text-to-text model in this process.

For small models, CPU runs and tests. Generation runs in a worker thread so the event loop
keeps serving other work, one generation at a time (a model is not safe to call from two
threads at once, and one CPU/GPU gains nothing from interleaving them). The request is
rendered exactly as `transformers serve` renders the openai backend's request, so both give
the same answer for the same model.
"""
from __future__ import annotations

import asyncio
import copy
import threading
import time
from io import BytesIO

from refsav.schemas.errors import SchemaError

from .base import VLMError, VLMRequest, VLMResponse


class TransformersBackend:
    name = "transformers"

    def __init__(
        self,
        *,
        model: str,
        device: str | None = None,
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
        timeout: float = 120.0,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model = model
        self.timeout = float(timeout)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
        try:
            self._processor = AutoProcessor.from_pretrained(model, **kwargs)
            self._model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype, **kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise SchemaError(f"cannot load image-text-to-text model {model!r}: {_one_line(err)}", field="model") from None
        self._model.to(self.device).eval()
        self._lock = threading.Lock()
        # Waiting requests queue here, not in worker threads: each would otherwise hold one of
        # the default executor's few threads that other stages need for their own work.
        self._turn = asyncio.Lock()

    def _messages(self, request: VLMRequest) -> list[dict]:
        from PIL import Image

        content: list[dict] = []
        for i, data in enumerate(request.images):
            try:
                image = Image.open(BytesIO(data))
                image.load()
            except Exception as err:  # PIL raises a zoo of types for broken files
                raise VLMError(f"model {self.model}: image {i} cannot be decoded: {_one_line(err)}") from None
            content.append({"type": "image", "image": image.convert("RGB")})
        content.append({"type": "text", "text": request.prompt})
        messages = []
        if request.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
        messages.append({"role": "user", "content": content})
        return messages

    def _generate_sync(self, request: VLMRequest) -> VLMResponse:
        import torch

        messages = self._messages(request)
        cfg = request.config
        with self._lock:
            start = time.perf_counter()
            inputs = self._processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            ).to(self.device)
            gen = copy.deepcopy(self._model.generation_config)
            gen.max_new_tokens = cfg.max_tokens
            gen.max_time = self.timeout
            gen.do_sample = not cfg.greedy
            if cfg.greedy:
                gen.temperature, gen.top_p, gen.top_k = None, None, None
            else:
                gen.temperature, gen.top_p = float(cfg.temperature), float(cfg.top_p)
            if cfg.seed is not None:
                torch.manual_seed(cfg.seed)
            with torch.inference_mode():
                sequences = self._model.generate(**inputs, generation_config=gen)
            seconds = time.perf_counter() - start
        prompt_len = inputs["input_ids"].shape[-1]
        generated = sequences[0, prompt_len:]
        if seconds >= self.timeout and len(generated) < cfg.max_tokens:
            # max_time stopped it early: a cut-off answer must not pass for a complete one.
            raise VLMError(f"model {self.model}: generation stopped at the {self.timeout:g} s timeout")
        text = self._processor.decode(generated, skip_special_tokens=True)
        return VLMResponse(text=text, prompt_tokens=int(prompt_len), completion_tokens=int(len(generated)), seconds=seconds)

    async def generate(self, request: VLMRequest) -> VLMResponse:
        try:
            async with self._turn:
                return await asyncio.to_thread(self._generate_sync, request)
        except VLMError:
            raise
        except Exception as err:  # a model failure must reach the caller as a VLMError, on one line
            raise VLMError(f"model {self.model}: generation failed: {type(err).__name__}: {_one_line(err)}") from None

    async def aclose(self) -> None:
        # Drop the weights now rather than when the backend object is collected.
        self._model = None
        self._processor = None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]
