"""Sa2VA: a VLM whose [SEG] tokens prompt SAM-2.

    image/video ──► VLM (InternVL / Qwen2.5-VL / Qwen3-VL, transformers-native)
                     │  generates text; the last-layer hidden state at every
                     │  generated [SEG] is kept: (n_seg, H)
                     ▼
              text_hidden_fcs: Linear(H, H) → ReLU → Linear(H, 256)  → (n_seg, 256)
                     ▼
    frames ──► SAM-2 image encoder ──► mask decoder with the [SEG] embedding as an
               extra sparse prompt on the key frames; SAM-2's memory carries each
               object through the other frames ──► one mask / masklet per [SEG]

`Sa2VAModel` is the nn.Module (parameter names: `vlm.*` = the transformers VLM,
`text_hidden_fcs.*`, `grounding_encoder.sam2_model.*`). `Sa2VA` pairs it with its
tokenizer / processor and runs `predict`. Checkpoints: see `refsav.model.checkpoint`.

Extension points (a DeSa2VA-style head plugs in here):
* `Sa2VA.ground()` returns the [SEG] hidden states before any projection;
* `Sa2VAModel.seg_prompts()` maps them to SAM-2 prompt tokens (B, E, 256);
  override it to emit several tokens per object;
* `GroundingEncoder.decode()` decodes a frame from extra sparse tokens and/or
  point prompts (autograd on); `prompt_frame()` adds the memory encoder;
  `Sa2VA.track_masks()` tracks any prompt tokens through a video, and its
  `key_frame_decoder` lets a head decide the key-frame masks that seed the memory.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from refsav.schemas.errors import RefsavError, SchemaError

from .config import (
    IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN, SAM_PROMPT_DIM, SEG_TOKEN, PredictOptions, Sa2VAConfig,
    Sam2Norm,
)
from .preprocess import (
    Frame, image_token_string, internvl_frame_pixels, internvl_image_pixels, qwen_vl_image, sam2_pixels,
    select_key_frames, to_pil,
)
from .sam2_wrapper import GroundingEncoder, KeyFrameDecoder, upsample_logits


class Sa2VAModel(nn.Module):
    def __init__(self, config: Sa2VAConfig, vlm: nn.Module, grounding_encoder: GroundingEncoder):
        super().__init__()
        self.config = config
        self.vlm = vlm
        hidden = config.llm_hidden_size
        # Indices 0 and 2 carry weights, as in the released `text_hidden_fcs.{0,2}.*`.
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, SAM_PROMPT_DIM), nn.Dropout(0.0)
        )
        self.grounding_encoder = grounding_encoder

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_hidden_fcs[0].weight.dtype

    def final_norm(self) -> nn.Module:
        """The LLM's last norm: its output is the last-layer hidden state that
        `generate(output_hidden_states=True)` reports as `hidden_states[-1]`."""
        return self.vlm.model.language_model.norm

    def seg_prompts(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        """(n, H) [SEG] hidden states → (n, E=1, 256) SAM-2 sparse prompt tokens."""
        x = seg_hidden.to(device=self.device, dtype=self.dtype)
        return self.text_hidden_fcs(x).unsqueeze(1)


@contextlib.contextmanager
def capture_last_hidden(model: Sa2VAModel):
    """Collect the LLM's last-layer hidden states of every forward call, in order:
    the prompt (1, L, H) first, then (1, 1, H) per generated token. Cheaper than
    `output_hidden_states`, which keeps every layer."""
    store: list[torch.Tensor] = []
    handle = model.final_norm().register_forward_hook(lambda _m, _i, out: store.append(out.detach()))
    try:
        yield store
    finally:
        handle.remove()


def seg_rows(token_ids: Sequence[int], seg_id: int, start: int) -> list[int]:
    """Positions p >= start whose token is [SEG]: the rows of the hidden states
    (aligned with input positions) that feed the mask path."""
    return [p for p in range(start, len(token_ids)) if int(token_ids[p]) == seg_id]


@dataclass(frozen=True)
class Grounding:
    """The language half of a prediction."""

    text: str  # decoded answer, special tokens kept (e.g. "[SEG]", "<|im_end|>"), stripped
    answer_ids: tuple[int, ...]  # generated (or forced) tokens
    seg_hidden: torch.Tensor  # (n_seg, H) last-layer states at the [SEG] tokens
    key_frames: tuple[int, ...]  # frames shown to the LLM (video), (0,) for an image


@dataclass(frozen=True)
class Sa2VAPrediction:
    text: str
    masks: tuple[np.ndarray, ...]  # one (T, H, W) bool per [SEG]; T = 1 for an image
    seg_embeddings: torch.Tensor  # (n_seg, 256) float32 CPU: the SAM-2 prompts
    key_frames: tuple[int, ...]
    answer_ids: tuple[int, ...]


def append_answer(inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Prompt inputs + answer tokens: per-token tensors (attention mask, Qwen's
    modality ids) are extended as text tokens (mask 1, type 0)."""
    length = inputs["input_ids"].shape[1]
    full = dict(inputs)
    full["input_ids"] = torch.cat([inputs["input_ids"], answer_ids], dim=1)
    for key, value in inputs.items():
        if key == "input_ids" or value.dim() != 2 or value.shape[1] != length:
            continue
        fill = torch.ones_like if key == "attention_mask" else torch.zeros_like
        full[key] = torch.cat([value, fill(answer_ids).to(value.dtype)], dim=1)
    return full


class _Video:
    """Frames of a video, fetched on demand, checked to share one size."""

    def __init__(self, frames: Sequence[Frame]):
        if len(frames) == 0:
            raise SchemaError("a video needs at least one frame", field="video")
        self.frames = frames
        first = to_pil(frames[0], where="video[0]")
        self.size = (first.height, first.width)

    def __len__(self) -> int:
        return len(self.frames)

    def pil(self, i: int) -> Image.Image:
        img = to_pil(self.frames[i], where=f"video[{i}]")
        if (img.height, img.width) != self.size:
            raise SchemaError(
                f"frame size {img.height}x{img.width} differs from frame 0's {self.size[0]}x{self.size[1]}",
                field=f"video[{i}]",
            )
        return img


class _Prefetch:
    """Decode and resize the next few frames on worker threads while SAM-2 runs
    (PIL releases the GIL); at most `lookahead` frames are held ahead."""

    def __init__(self, fn, order: Sequence[int], lookahead: int = 4):
        self.fn, self.order, self.lookahead = fn, list(order), lookahead
        self.pos = 0
        self.pending: dict[int, Any] = {}
        self.pool = None

    def __enter__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sa2va-frames")
        return self

    def __exit__(self, *exc):
        for fut in self.pending.values():
            fut.cancel()
        self.pool.shutdown(wait=True)
        return False

    def __call__(self, i: int) -> torch.Tensor:
        for j in self.order[self.pos : self.pos + self.lookahead]:
            if j not in self.pending:
                self.pending[j] = self.pool.submit(self.fn, j)
        if self.pos < len(self.order) and self.order[self.pos] == i:
            self.pos += 1
        fut = self.pending.pop(i, None)
        return fut.result() if fut is not None else self.fn(i)


class Sa2VA:
    """Inference wrapper: model + tokenizer (+ processor for the Qwen family)."""

    def __init__(self, model: Sa2VAModel, tokenizer: Any, processor: Any = None):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.config = model.config
        vocab = tokenizer.get_vocab()
        if SEG_TOKEN not in vocab:
            raise RefsavError(f"tokenizer has no {SEG_TOKEN} token", field="tokenizer")
        self.seg_id = int(vocab[SEG_TOKEN])
        self.stop_ids = self._stop_ids(vocab)

    def _stop_ids(self, vocab: dict[str, int]) -> list[int]:
        """Token ids that end generation, as the official `predict_forward` of each family.

        InternVL family: the xtuner template's stop words plus the tokenizer's EOS (the
        official code passes both). Qwen family: the official code calls `generate`
        with neither, so the VL model's own generation config decides, which
        transformers builds from config.json's `eos_token_id`: `<|im_end|>` in the
        released checkpoints. `<|endoftext|>` is *not* a stop there, so an answer
        `[SEG]<|endoftext|><|im_end|>` runs to the `<|im_end|>`.
        """
        if self.config.family == "internvl":
            words = self.config.chat_template().stop_words
            ids = [vocab[w] for w in words if w in vocab]
            if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
                ids.append(int(self.tokenizer.eos_token_id))
            if not ids:
                raise RefsavError(f"tokenizer knows none of the stop words {words}", field="tokenizer")
            return ids
        eos = getattr(getattr(self.model.vlm, "generation_config", None), "eos_token_id", None)
        ids = [int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None]
        if not ids:
            # The official code would generate to max_new_tokens; stop at the chat turn's end instead.
            if "<|im_end|>" not in vocab:
                raise RefsavError("config.json gives no eos_token_id and the tokenizer has no <|im_end|>",
                                  field="eos_token_id")
            ids = [int(vocab["<|im_end|>"])]
        return ids

    # ------------------------------------------------------------------ inputs
    def llm_inputs(self, text: str, frames: Sequence[Image.Image], *, is_video: bool) -> dict[str, torch.Tensor]:
        """Tokenised prompt and pixels for the VLM (batch of one)."""
        if self.config.family == "internvl":
            return self._internvl_inputs(text, frames, is_video=is_video)
        return self._qwen_inputs(text, frames)

    def _internvl_inputs(self, text: str, frames: Sequence[Image.Image], *, is_video: bool) -> dict:
        spec = self.config.image_spec()
        out: dict[str, torch.Tensor] = {}
        if frames:
            if is_video:
                pixels = internvl_frame_pixels(frames, spec)  # (n_frames, 3, tile, tile)
                per_frame = [spec.tokens_per_tile] * len(frames)
            else:
                pixels = internvl_image_pixels(frames[0], spec)  # (n_tiles, 3, tile, tile)
                per_frame = [spec.tokens_per_tile * pixels.shape[0]]
            tokens = image_token_string(per_frame, start=IMG_START_TOKEN, context=IMG_CONTEXT_TOKEN, end=IMG_END_TOKEN)
            if "<image>" not in text:
                text = "<image>\n" + text
            text = text.replace("<image>", tokens)
            out["pixel_values"] = pixels.to(device=self.model.device, dtype=self.model.dtype)
        prompt = self.config.chat_template().instruction.format(input=text, round=1, bot_name="BOT")
        ids = torch.tensor([self.tokenizer.encode(prompt)], dtype=torch.long, device=self.model.device)
        out["input_ids"] = ids
        out["attention_mask"] = torch.ones_like(ids)
        return out

    def _qwen_inputs(self, text: str, frames: Sequence[Image.Image]) -> dict:
        if self.processor is None:
            raise RefsavError("the Qwen family needs its processor", field="processor")
        # As the released code: qwen_vl_utils' resize, then the processor with Sa2VA's
        # pixel bounds (not the saved processor's), which sets the image token count.
        shown = [qwen_vl_image(f) for f in frames]
        content: list[dict] = [{"type": "image", "image": f} for f in shown]
        content.append({"type": "text", "text": text.replace("<image>", "")})
        messages = [{"role": "user", "content": content}]
        prompt = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=self.config.template
        )
        enc = self.processor(
            text=[prompt], images=shown or None, return_tensors="pt",
            images_kwargs={"size": self.config.qwen_pixels.processor_size()},
        )
        out = {k: v.to(self.model.device) for k, v in enc.items() if isinstance(v, torch.Tensor)}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(self.model.dtype)
        return out

    # ------------------------------------------------------------------ language
    @torch.no_grad()
    def ground(
        self,
        text: str,
        *,
        image: Frame | None = None,
        video: Sequence[Frame] | None = None,
        options: PredictOptions = PredictOptions(),
        answer: str | None = None,
        logits_processor: Any = None,
    ) -> Grounding:
        """Run the VLM. With `answer`, the answer is forced (teacher forcing: one
        forward pass over prompt + answer) instead of generated."""
        frames, key_frames, is_video = self._visual_inputs(image, video, options)
        inputs = self.llm_inputs(text, frames, is_video=is_video)
        prompt_len = int(inputs["input_ids"].shape[1])
        vlm = self.model.vlm
        with capture_last_hidden(self.model) as states:
            if answer is not None:
                ans = torch.tensor(
                    [self.tokenizer.encode(answer, add_special_tokens=False)], dtype=torch.long, device=self.model.device
                )
                full = append_answer(inputs, ans)
                vlm(**full, use_cache=False, logits_to_keep=1)
                sequence = full["input_ids"][0].tolist()
                hidden = torch.cat(states, dim=1)[0]  # (L + A, H), row p = state at input position p
            else:
                from transformers import GenerationConfig

                gen = GenerationConfig(
                    max_new_tokens=options.max_new_tokens, do_sample=False, num_beams=1,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0],
                )
                out = vlm.generate(**inputs, generation_config=gen, logits_processor=logits_processor)
                sequence = out[0].tolist()
                # Prompt states (1, L, H), then one (1, 1, H) per fed-back token: rows
                # align with input positions 0 .. len(sequence) - 2 (the last token is
                # never fed back).
                hidden = torch.cat(states, dim=1)[0]
        answer_ids = tuple(sequence[prompt_len:])
        rows = seg_rows(sequence[: hidden.shape[0]], self.seg_id, prompt_len)
        seg_hidden = hidden[rows].float() if rows else hidden.new_zeros((0, hidden.shape[-1])).float()
        text_out = self.tokenizer.decode(list(answer_ids), skip_special_tokens=False).strip()
        return Grounding(text=text_out, answer_ids=answer_ids, seg_hidden=seg_hidden, key_frames=key_frames)

    def _visual_inputs(self, image, video, options: PredictOptions):
        if (image is None) == (video is None):
            raise RefsavError("give exactly one of image or video", field="image/video")
        if image is not None:
            return [to_pil(image, where="image")], (0,), False
        clip = video if isinstance(video, _Video) else _Video(video)
        if options.inference == "sa2va-i":
            from .sa2va_i import llm_key_frames

            keys = llm_key_frames(len(clip), options.num_key_frames)
        else:
            keys = select_key_frames(len(clip), options.key_frames, options.num_key_frames)
        return [clip.pil(i) for i in keys], keys, True

    # ------------------------------------------------------------------ masks
    def sam2_image_pixels(self, img: Image.Image, norm: Sam2Norm = "official", *,
                          video_frame: bool = False) -> torch.Tensor:
        """An image → SAM-2 input (3, S, S). With "official" normalisation under a bf16
        model a still image is normalised in bf16, as the released image path does;
        video frames (`video_frame`) are normalised in float32 there and here."""
        enc = self.model.grounding_encoder
        in_bf16 = enc.compute_dtype == torch.bfloat16 and not video_frame
        return sam2_pixels(img, enc.image_size, norm, arithmetic=torch.bfloat16 if in_bf16 else torch.float32)

    @torch.no_grad()
    def segment_image(self, image: Frame, prompts: torch.Tensor, *, threshold: float = 0.0,
                      norm: Sam2Norm = "official", video_frame: bool = False) -> np.ndarray:
        """(n, E, 256) prompts → (n, H, W) bool masks on one image (normalised as a video
        frame if `video_frame`: then equal to a video's key-frame masks)."""
        img = to_pil(image, where="image")
        enc = self.model.grounding_encoder
        ff = enc.encode(self.sam2_image_pixels(img, norm, video_frame=video_frame)[None])
        feats, pos = ff.frame(0, prompts.shape[0])
        out = enc.prompt_frame(feats, pos, ff.feat_sizes, prompts, run_mem_encoder=False)
        logits = upsample_logits(out["pred_masks"], enc.image_size, (img.height, img.width))
        return (logits > threshold).cpu().numpy()

    def track_masks(
        self,
        video: Sequence[Frame],
        prompts: torch.Tensor,  # (n, E, 256)
        key_frames: Sequence[int],
        options: PredictOptions = PredictOptions(),
        *,
        key_frame_decoder: KeyFrameDecoder | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (frame index, (n, H, W) bool masks) for every frame, in order,
        holding only a bounded number of frames' SAM-2 state at a time.
        `key_frame_decoder`: see `GroundingEncoder.track` (DeSa2VA's fused masks)."""
        clip = video if isinstance(video, _Video) else _Video(video)
        enc = self.model.grounding_encoder
        keys = sorted(set(key_frames))
        order = keys + [i for i in range(len(clip)) if i not in set(keys)]  # the order `track` reads frames in
        with _Prefetch(lambda i: sam2_pixels(clip.pil(i), enc.image_size, options.sam2_norm), order) as load:
            stream = enc.track(
                len(clip), load, prompts, keys,
                memory_in_bf16=options.memory_in_bf16, backbone_batch=options.backbone_batch,
                key_frame_decoder=key_frame_decoder,
            )
            for i, low_res in stream:
                logits = upsample_logits(low_res, enc.image_size, clip.size)
                yield i, (logits > options.mask_threshold).cpu().numpy()

    # ------------------------------------------------------------------ all together
    @torch.no_grad()
    def predict(
        self,
        text: str,
        *,
        image: Frame | None = None,
        video: Sequence[Frame] | None = None,
        options: PredictOptions = PredictOptions(),
        answer: str | None = None,
        logits_processor: Any = None,
    ) -> Sa2VAPrediction:
        """Answer `text` about an image or a video; one mask (image) or masklet
        (video: every frame goes through SAM-2) per [SEG] in the answer."""
        if options.inference == "sa2va-i":
            from .sa2va_i import predict_sa2va_i

            return predict_sa2va_i(self, text, image=image, video=video, options=options, answer=answer,
                                   logits_processor=logits_processor)
        clip = _Video(video) if video is not None else None
        g = self.ground(text, image=image, video=clip, options=options, answer=answer,
                        logits_processor=logits_processor)
        n = g.seg_hidden.shape[0]
        prompts = self.model.seg_prompts(g.seg_hidden)  # (n, 1, 256)
        embeddings = prompts[:, 0].float().cpu()
        if n == 0:
            return Sa2VAPrediction(g.text, (), embeddings, g.key_frames, g.answer_ids)
        if image is not None:
            masks = self.segment_image(image, prompts, threshold=options.mask_threshold,
                                       norm=options.sam2_norm)[:, None]  # (n, 1, H, W)
        else:
            masks = np.zeros((n, len(clip), *clip.size), dtype=bool)
            for i, frame_masks in self.track_masks(clip, prompts, g.key_frames, options):
                masks[:, i] = frame_masks
        return Sa2VAPrediction(g.text, tuple(masks[k] for k in range(n)), embeddings, g.key_frames, g.answer_ids)


__all__ = ["Grounding", "Sa2VA", "Sa2VAModel", "Sa2VAPrediction", "append_answer", "capture_last_hidden", "seg_rows"]
