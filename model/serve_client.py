"""A `refsav serve` server seen as a model: `RemoteSa2VA.predict` reads like `Sa2VA.predict`.

`refsav predict --server URL` uses it in place of a loaded checkpoint, so every protocol,
the resume logic and the Dask workers work unchanged. Frames travel as lossless PNG data
URLs (the server decodes them to the same pixels), through the `openai` client; the
answer's `refsav` extension field is checked like any untrusted input.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from refsav.schemas.errors import RefsavError, SchemaError

EXTENSION = "refsav"
# PredictOptions fields a request can carry: max_new_tokens as max_tokens, the rest in the extension.
SENT_OPTIONS = ("key_frames", "num_key_frames", "sam2_norm", "inference")


@dataclass(frozen=True)
class RemotePrediction:
    """What the server answered; `text` and `masks` read like `Sa2VAPrediction`'s."""

    text: str
    masks: tuple[np.ndarray, ...]  # one (T, H, W) bool masklet per [SEG]
    key_frames: tuple[int, ...]
    finish_reason: str
    batch_size: int  # requests the server took together with this one


@dataclass(frozen=True)
class ServedModel:
    id: str
    dtype: str
    device: str


def _client(url: str, api_key: str | None, timeout: float):
    from openai import OpenAI

    base = url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    # The openai client insists on a key; a server without --api-key ignores it.
    return OpenAI(base_url=base, api_key=api_key or "none", timeout=timeout, max_retries=2)


def _call(fn, url: str):
    """Run an openai client call; a failure becomes one line naming the server."""
    import openai

    try:
        return fn()
    except openai.APIStatusError as err:
        body = err.body if isinstance(err.body, dict) else {}
        message = body.get("message") if isinstance(body.get("message"), str) else str(err)
        raise RefsavError(f"the server answered {err.status_code}: {message}", file=url) from None
    except openai.APIConnectionError as err:
        raise RefsavError(f"cannot reach the server ({err.__cause__ or err})", file=url) from None


def served_model(url: str, name: str | None = None, api_key: str | None = None,
                 timeout: float = 30.0) -> ServedModel:
    """The model a server holds: `name` if it has it, else its only one."""
    page = _call(lambda: _client(url, api_key, timeout).models.list(), url)
    cards = list(page.data)
    ids = [c.id for c in cards]
    if name is not None and name not in ids:
        raise RefsavError(f"the server holds {', '.join(ids) or 'no model'}, not {name!r}", file=url, field="model")
    if name is None and len(cards) != 1:
        raise RefsavError(f"the server holds {len(cards)} models; name one with --model", file=url, field="model")
    card = cards[ids.index(name) if name is not None else 0]
    extra = (card.model_extra or {}).get(EXTENSION) or {}
    return ServedModel(card.id, str(extra.get("dtype", "unknown")), str(extra.get("device", "unknown")))


def remote_spec(spec_cls, server: str, model, api_key: str | None, protocol: str, key_frames: str | None,
                num_key_frames: int | None, max_new_tokens: int, force_answer: str | None, desa2va_heads,
                sam2_norm: str, inference: str = "official", sam2_original=None):
    """The `RunSpec` of `refsav predict --server`: the served model's id and dtype go in
    run.json (a resumed run against a server holding another model is refused); the
    server is asked now, before OUT is touched."""
    from .config import DEFAULT_NUM_KEY_FRAMES

    if desa2va_heads is not None:
        raise RefsavError("with --server the heads are the server's: start it with refsav serve --desa2va-heads",
                          field="desa2va_heads")
    if sam2_original is not None:
        raise RefsavError("with --server the SAM-2 file is the server's: start it with refsav serve --sam2-original",
                          field="sam2_original")
    if inference == "sa2va-i" and key_frames is not None:
        raise RefsavError("sa2va-i spreads its key frames from the first frame to the last; drop --key-frames "
                          "(--num-key-frames sets how many)", field="key_frames")
    if not server.startswith(("http://", "https://")):
        raise RefsavError("expected an http:// or https:// URL", field="server")
    card = served_model(server, str(model) if model is not None else None, api_key)
    # device "server": the Dask executor must not reserve a GPU for a client.
    return spec_cls(card.id, protocol, card.dtype, "server", key_frames or "first",
                    num_key_frames or DEFAULT_NUM_KEY_FRAMES[inference], max_new_tokens, force_answer, None, None,
                    sam2_norm, False, inference=inference, server=server.rstrip("/"), api_key=api_key)


def data_url(frame: Any) -> str:
    """A frame (PIL image or (H, W, 3) uint8 array) as a PNG data URL: lossless, so the
    server sees the caller's pixels exactly. Level 1: the bytes only cross a network."""
    from PIL import Image

    img = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame, dtype=np.uint8), "RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_answer(body: Any, frames: int, url: str) -> RemotePrediction:
    """A chat completion from the server → `RemotePrediction`; anything malformed is one line."""
    from refsav.schemas import rle as rle_ops

    try:
        choice = body.choices[0]
        text = choice.message.content or ""
        ext = (body.model_extra or {}).get(EXTENSION)
        if not isinstance(ext, dict):
            raise SchemaError("the answer has no refsav field", field=EXTENSION)
        size = (int(ext["height"]), int(ext["width"]))
        if int(ext["frames"]) != frames:
            raise SchemaError(f"masks for {ext['frames']} frames, sent {frames}", field=f"{EXTENSION}.frames")
        masklets = []
        for k, masklet in enumerate(ext["masklets"]):
            if not isinstance(masklet, list) or len(masklet) != frames:
                raise SchemaError(f"expected {frames} RLEs", field=f"{EXTENSION}.masklets[{k}]")
            rles = [rle_ops.Rle.from_json(r, expected_size=size) for r in masklet]
            masklets.append(rle_ops.decode_many(rles))
        return RemotePrediction(text, tuple(masklets), tuple(int(i) for i in ext["key_frames"]),
                                str(choice.finish_reason), int(ext.get("batch_size", 0)))
    except SchemaError as err:
        raise err.at(file=url) from None
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise RefsavError(f"not a refsav serve answer ({type(err).__name__}: {err})", file=url) from None


class RemoteSa2VA:
    """A served model with `Sa2VA.predict`'s signature (no logits processor)."""

    def __init__(self, url: str, model_id: str, api_key: str | None = None, timeout: float = 3600.0):
        self.url, self.model_id = url, model_id
        self.client = _client(url, api_key, timeout)
        # predict passes the same frame list for every expression of a video: encode it once.
        self._encoded: tuple[Any, list[str]] | None = None

    def _urls(self, frames: Sequence[Any]) -> list[str]:
        if self._encoded is not None and self._encoded[0] is frames:
            return self._encoded[1]
        urls = [data_url(f) for f in frames]
        self._encoded = (frames, urls)  # holds `frames`, so its identity cannot be reused
        return urls

    def request(self, text: str, *, image: Any = None, video: Sequence[Any] | None = None, options=None,
                answer: str | None = None) -> dict:
        """The chat completion request `predict` sends (keyword arguments of `create`)."""
        from .config import PredictOptions

        options = options or PredictOptions()
        if (image is None) == (video is None):
            raise RefsavError("give exactly one of image or video", field="image/video")
        default = PredictOptions()
        unsent = [f for f in ("mask_threshold", "memory_in_bf16", "backbone_batch")
                  if getattr(options, f) != getattr(default, f)]
        if unsent:
            raise RefsavError(f"a server cannot be asked for {', '.join(unsent)}; these are server settings",
                              field=unsent[0])
        if image is not None:
            part = {"type": "image_url", "image_url": {"url": data_url(image)}}
        else:
            part = {"type": "video", "video": self._urls(video)}
        ext: dict[str, Any] = {k: getattr(options, k) for k in SENT_OPTIONS}
        if answer is not None:
            ext["answer"] = answer
        return {"model": self.model_id, "max_tokens": options.max_new_tokens,
                "messages": [{"role": "user", "content": [part, {"type": "text", "text": text}]}],
                "extra_body": {EXTENSION: ext}}

    def predict(self, text: str, *, image: Any = None, video: Sequence[Any] | None = None, options=None,
                answer: str | None = None) -> RemotePrediction:
        kw = self.request(text, image=image, video=video, options=options, answer=answer)
        body = _call(lambda: self.client.chat.completions.create(**kw), self.url)
        return parse_answer(body, 1 if image is not None else len(video), self.url)


__all__ = ["RemotePrediction", "RemoteSa2VA", "ServedModel", "data_url", "parse_answer", "remote_spec", "served_model"]
