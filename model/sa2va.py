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
import torch.nn.functional as F
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


@dataclass(frozen=True)
class VisualContext:
    """What every prompt about one image or video shares: the frames the LLM sees and
    the vision tower's output for them, computed once (`Sa2VA.visual_context`)."""

    frames: tuple[Image.Image, ...]  # key frames (video) or the image
    key_frames: tuple[int, ...]
    is_video: bool
    features: Any  # the VLM's `get_image_features` output, as `mm_encoder_outputs["image"]` takes it
    tokens_per_frame: tuple[int, ...]  # InternVL: LLM tokens per key frame / per image
    qwen_images: tuple[Image.Image, ...]  # Qwen: the frames after `qwen_vl_image`


def _pooled(output: Any) -> Any:
    """Keep only what the LLM consumes of a vision tower output (the projected features,
    and Qwen3-VL's DeepStack features), not the ViT's last hidden state."""
    keep = {k: getattr(output, k) for k in ("pooler_output", "deepstack_features") if getattr(output, k, None) is not None}
    return type(output)(**keep)


def _repeat_features(output: Any, n: int) -> Any:
    """Image features of one prompt → those of n prompts with the same images: the model
    scatters them over the image tokens of the whole batch in row-major order.
    InternVL: a (frames, tokens, H) tensor; Qwen: a tuple with one tensor per image
    (and DeepStack: a list over layers of such tuples)."""
    if n == 1:
        return output

    def rep(x):
        return torch.cat([x] * n) if isinstance(x, torch.Tensor) else tuple(x) * n

    keep = {"pooler_output": rep(output.pooler_output)}
    if getattr(output, "deepstack_features", None) is not None:
        keep["deepstack_features"] = [rep(layer) for layer in output.deepstack_features]
    return type(output)(**keep)


def _left_padded(rows: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch of one-prompt inputs: per-token tensors left-padded (ids with `pad_id`,
    attention mask and modality ids with 0), per-image ones (Qwen's grid) concatenated."""
    length = max(int(r["input_ids"].shape[1]) for r in rows)
    batch: dict[str, torch.Tensor] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        per_token = not key.endswith("_grid_thw") and values[0].dim() == 2
        if per_token and all(v.shape[1] == r["input_ids"].shape[1] for v, r in zip(values, rows)):
            fill = pad_id if key == "input_ids" else 0
            batch[key] = torch.cat([F.pad(v, (length - v.shape[1], 0), value=fill) for v in values])
        else:
            batch[key] = torch.cat(values)
    return batch


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


class _SharedFrames:
    """`encode_frames` for several SAM-2 tracks of one video run in lockstep: a chunk
    of frames is loaded and encoded on its first request, and dropped once every
    track has read it (the key frames first, then each chunk in turn)."""

    def __init__(self, encoder: GroundingEncoder, load, users: int):
        self.encoder, self.load, self.users = encoder, load, users
        self.cache: dict[tuple[int, ...], list] = {}  # indices -> [features, reads left]

    def __call__(self, indices: Sequence[int]):
        key = tuple(int(i) for i in indices)
        entry = self.cache.get(key)
        if entry is None:
            entry = self.cache[key] = [self.encoder.encode(torch.stack([self.load(i) for i in key])), self.users]
        entry[1] -= 1
        if entry[1] == 0:
            del self.cache[key]
        return entry[0]


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
            pixels, per_frame = self._internvl_pixels(frames, is_video=is_video)
            out = self._internvl_prompt(text, per_frame)
            if pixels is not None:
                out = {"pixel_values": pixels, **out}
            return out
        return self._qwen_prompt(text, [qwen_vl_image(f) for f in frames])

    def _internvl_pixels(self, frames: Sequence[Image.Image], *, is_video: bool):
        """(pixels, LLM tokens per frame): tiles of an image, or one tile per video key frame."""
        if not frames:
            return None, []
        spec = self.config.image_spec()
        if is_video:
            pixels = internvl_frame_pixels(frames, spec)  # (n_frames, 3, tile, tile)
            per_frame = [spec.tokens_per_tile] * len(frames)
        else:
            pixels = internvl_image_pixels(frames[0], spec)  # (n_tiles, 3, tile, tile)
            per_frame = [spec.tokens_per_tile * pixels.shape[0]]
        return pixels.to(device=self.model.device, dtype=self.model.dtype), per_frame

    def _internvl_prompt(self, text: str, per_frame: Sequence[int]) -> dict[str, torch.Tensor]:
        if per_frame:
            tokens = image_token_string(per_frame, start=IMG_START_TOKEN, context=IMG_CONTEXT_TOKEN, end=IMG_END_TOKEN)
            if "<image>" not in text:
                text = "<image>\n" + text
            text = text.replace("<image>", tokens)
        prompt = self.config.chat_template().instruction.format(input=text, round=1, bot_name="BOT")
        ids = torch.tensor([self.tokenizer.encode(prompt)], dtype=torch.long, device=self.model.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def _qwen_prompt(self, text: str, shown: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """`shown`: the frames after `qwen_vl_image`."""
        if self.processor is None:
            raise RefsavError("the Qwen family needs its processor", field="processor")
        # As the released code: qwen_vl_utils' resize, then the processor with Sa2VA's
        # pixel bounds (not the saved processor's), which sets the image token count.
        content: list[dict] = [{"type": "image", "image": f} for f in shown]
        content.append({"type": "text", "text": text.replace("<image>", "")})
        messages = [{"role": "user", "content": content}]
        prompt = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=self.config.template
        )
        enc = self.processor(
            text=[prompt], images=list(shown) or None, return_tensors="pt",
            images_kwargs={"size": self.config.qwen_pixels.processor_size()},
        )
        out = {k: v.to(self.model.device) for k, v in enc.items() if isinstance(v, torch.Tensor)}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(self.model.dtype)
        return out

    def visual_context(
        self, *, image: Frame | None = None, video: Sequence[Frame] | None = None,
        options: PredictOptions = PredictOptions(),
    ) -> "VisualContext":
        """Run the vision tower once on what the LLM will see of `image` / `video`; every
        prompt of `ground_batch` about that media reuses it (their key frames are the same)."""
        frames, key_frames, is_video = self._visual_inputs(image, video, options)
        base = self.model.vlm.model
        if self.config.family == "internvl":
            pixels, per_frame = self._internvl_pixels(frames, is_video=is_video)
            features = _pooled(base.get_image_features(pixel_values=pixels, return_dict=True))
            return VisualContext(tuple(frames), key_frames, is_video, features, tuple(per_frame), ())
        shown = tuple(qwen_vl_image(f) for f in frames)
        enc = self._qwen_prompt("", shown)
        features = _pooled(base.get_image_features(enc["pixel_values"], enc["image_grid_thw"], return_dict=True))
        return VisualContext(tuple(frames), key_frames, is_video, features, (), shown)

    def _prompt_inputs(self, text: str, ctx: "VisualContext") -> dict[str, torch.Tensor]:
        """`llm_inputs` of one prompt without the pixels (the context carries their features)."""
        if self.config.family == "internvl":
            return self._internvl_prompt(text, ctx.tokens_per_frame)
        out = self._qwen_prompt(text, ctx.qwen_images)
        out.pop("pixel_values", None)
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
        forward pass over prompt + answer) instead of generated. One prompt of
        `ground_batch`, which says how the [SEG] states are computed."""
        return self.ground_batch([text], image=image, video=video, options=options,
                                 answers=None if answer is None else [answer], logits_processor=logits_processor)[0]

    @torch.no_grad()
    def ground_batch(
        self,
        texts: Sequence[str],
        *,
        image: Frame | None = None,
        video: Sequence[Frame] | None = None,
        options: PredictOptions = PredictOptions(),
        answers: Sequence[str | None] | None = None,
        logits_processor: Any = None,
        context: "VisualContext | None" = None,
    ) -> list[Grounding]:
        """The language half for many prompts about one image or video.

        The vision tower runs once (`visual_context`, or the `context` given). Prompts
        whose answer is not forced (`answers[k] is None`) are generated greedily in
        left-padded batches of `options.batch_size`. Every [SEG] state then comes from
        one teacher-forced forward of that prompt alone over prompt + answer (the
        tokens fed back: all of a forced answer, all but the last generated token).

        Why a second pass: the states a batched `generate` reports differ from the
        unbatched ones in the last bits. On CPU, a matrix product with fewer than 4
        rows (one decoding step of a batch of one) takes another kernel than one with
        more, and attention over left padding sums in another order. The
        per-prompt pass has no padding and many rows, so its states, hence the masks,
        are the same bit for bit whatever the batch size; the generated tokens are
        the batch's (greedy argmax: equal unless two logits tie to the last bit).
        """
        texts = list(texts)
        if answers is None:
            answers = [None] * len(texts)
        answers = list(answers)
        if len(answers) != len(texts):
            raise RefsavError(f"{len(answers)} answers for {len(texts)} prompts", field="answers")
        if not texts:
            return []
        ctx = context if context is not None else self.visual_context(image=image, video=video, options=options)
        rows = [self._prompt_inputs(t, ctx) for t in texts]
        answer_ids: list[list[int]] = [
            [] if a is None else self.tokenizer.encode(a, add_special_tokens=False) for a in answers
        ]
        todo = [k for k, a in enumerate(answers) if a is None]
        for start in range(0, len(todo), options.batch_size):
            chunk = todo[start : start + options.batch_size]
            for k, ids in zip(chunk, self._generate([rows[k] for k in chunk], ctx, options, logits_processor)):
                answer_ids[k] = ids
        out = []
        for k, ids in enumerate(answer_ids):
            fed = ids if answers[k] is not None else ids[:-1]  # the last generated token is never fed back
            out.append(Grounding(
                text=self.tokenizer.decode(ids, skip_special_tokens=False).strip(),
                answer_ids=tuple(ids),
                seg_hidden=self._seg_states(rows[k], fed, ctx),
                key_frames=ctx.key_frames,
            ))
        return out

    def _generate(self, rows: list[dict], ctx: "VisualContext", options: PredictOptions,
                  logits_processor: Any) -> list[list[int]]:
        """Greedy answers of a batch of prompts, each up to and including its stop token."""
        from transformers import GenerationConfig

        if options.max_new_tokens == 0:
            return [[] for _ in rows]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        batch = _left_padded(rows, pad_id)
        length = batch["input_ids"].shape[1]
        batch["mm_encoder_outputs"] = {"image": _repeat_features(ctx.features, len(rows))}
        gen = GenerationConfig(
            max_new_tokens=options.max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=self.stop_ids, pad_token_id=pad_id,
        )
        out = self.model.vlm.generate(**batch, generation_config=gen, logits_processor=logits_processor)
        answers = []
        stops = set(self.stop_ids)
        for seq in out[:, length:].tolist():
            # A row that stopped early is filled with padding up to the longest one.
            end = next((p + 1 for p, t in enumerate(seq) if t in stops), len(seq))
            answers.append(seq[:end])
        return answers

    def _seg_states(self, row: dict[str, torch.Tensor], fed: Sequence[int], ctx: "VisualContext") -> torch.Tensor:
        """(n_seg, H) last-layer states at the [SEG] tokens of `fed`, from one forward of
        this prompt + `fed` (no padding, no cache)."""
        hidden_size = self.config.llm_hidden_size
        if self.seg_id not in fed:
            return torch.zeros((0, hidden_size), dtype=torch.float32, device=self.model.device)
        prompt_len = int(row["input_ids"].shape[1])
        full = append_answer(row, torch.tensor([list(fed)], dtype=torch.long, device=self.model.device))
        full["mm_encoder_outputs"] = {"image": ctx.features}
        with capture_last_hidden(self.model) as states:
            self.model.vlm(**full, use_cache=False, logits_to_keep=1)
        hidden = torch.cat(states, dim=1)[0]  # (L + A, H): row p = state at input position p
        rows = seg_rows(full["input_ids"][0].tolist(), self.seg_id, prompt_len)
        return hidden[rows].float()

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

    def track_batch(
        self,
        video: Sequence[Frame],
        groundings: Sequence[Grounding],
        options: PredictOptions = PredictOptions(),
        *,
        first_seg_only: bool = False,
        one_sam2_batch: bool = False,
    ) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Track the [SEG] objects of several groundings of one video (from `ground_batch`)
        in one pass over the frames: each frame is read, resized and encoded once for
        all of them.

        Yields (frame index, [(n_k, H, W) bool per grounding k]) for every frame in
        order; n_k is its number of [SEG] (at most 1 with `first_seg_only`, as ref-VOS
        evaluation keeps only the first). Each grounding's prompts are its own
        `seg_prompts`, as `predict` computes them. With no object at all, SAM-2 does
        not run and every frame yields empty arrays.

        By default each grounding's objects form their own SAM-2 batch, as in `predict`,
        fed by the shared image features: the masks are then those of `predict` bit for
        bit. `one_sam2_batch` puts every object of the video into one batch instead
        (fewer, larger kernel calls, for GPUs). Its masks agree with one grounding at
        a time except for pixels whose logit lies within float rounding of the
        threshold: on CPU a matrix product with fewer than 4 rows uses another kernel
        than one with more, which changes the last bits (a few pixels per million
        measured). The per-object work (memory attention, mask decoder, memory encoder)
        is the same amount either way.
        """
        if options.inference != "official":
            raise RefsavError("track_batch tracks the official way; Sa2VA-i goes through predict",
                              field="inference")
        clip = video if isinstance(video, _Video) else _Video(video)
        counts, prompts = [], []
        for g in groundings:
            n = g.seg_hidden.shape[0]
            if n:
                p = self.model.seg_prompts(g.seg_hidden)  # all rows, as `predict`: the same numbers
                prompts.append(p[:1] if first_seg_only else p)
            counts.append(min(n, 1) if first_seg_only else n)
        if not prompts:
            for i in range(len(clip)):
                yield i, [np.zeros((0, *clip.size), dtype=bool) for _ in counts]
            return
        keys = {g.key_frames for g, n in zip(groundings, counts) if n}
        if len(keys) != 1:
            raise RefsavError(f"groundings of one batch must share their key frames, got {sorted(keys)}",
                              field="key_frames")
        key_frames = next(iter(keys))
        bounds = np.cumsum([0, *counts])
        if one_sam2_batch:
            for i, masks in self.track_masks(clip, torch.cat(prompts), key_frames, options):
                yield i, [masks[bounds[k] : bounds[k + 1]] for k in range(len(counts))]
            return
        enc = self.model.grounding_encoder
        keys_sorted = sorted(set(key_frames))
        order = keys_sorted + [i for i in range(len(clip)) if i not in set(keys_sorted)]
        with _Prefetch(lambda i: sam2_pixels(clip.pil(i), enc.image_size, options.sam2_norm), order) as load:
            shared = _SharedFrames(enc, load, users=len(prompts))
            streams = [
                enc.track(len(clip), load, p, keys_sorted, memory_in_bf16=options.memory_in_bf16,
                          backbone_batch=options.backbone_batch, encode_frames=shared)
                for p in prompts
            ]
            owner = [k for k, n in enumerate(counts) if n]  # grounding of each stream
            for i in range(len(clip)):
                frame = [np.zeros((0, *clip.size), dtype=bool) for _ in counts]
                for k, stream in zip(owner, streams):
                    j, low_res = next(stream)
                    assert j == i, (j, i)
                    logits = upsample_logits(low_res, enc.image_size, clip.size)
                    frame[k] = (logits > options.mask_threshold).cpu().numpy()
                yield i, frame

    @torch.no_grad()
    def predict_batch(
        self,
        texts: Sequence[str],
        *,
        image: Frame | None = None,
        video: Sequence[Frame] | None = None,
        options: PredictOptions = PredictOptions(),
        answers: Sequence[str | None] | None = None,
        logits_processor: Any = None,
    ) -> list[Sa2VAPrediction]:
        """`predict` for many prompts about one image or video, in one pass.

        The batched API (the server and `refsav predict` use it): the vision tower runs
        once on the key frames, the LLM generates `options.batch_size` answers at a
        time (`ground_batch`), and SAM-2 reads and encodes each frame once for every
        [SEG] of every answer (`track_batch`; an image is encoded once). Returns one
        `Sa2VAPrediction` per prompt, in order; `answers[k]` forces prompt k's answer
        as `predict(answer=...)` does.

        Results equal `predict` called once per prompt: bit for bit with forced
        answers; with generated ones the tokens are the same and the [SEG] states may
        differ from `predict`'s before batching in the last float bits (see
        `ground_batch`). Whole masklets of every object are returned: for long videos
        stream `ground_batch` + `track_batch` instead.
        """
        if video is not None and options.inference == "sa2va-i":
            # Sa2VA-i tracks each prompt from its own key masks with the other decoder;
            # track_batch shares official-mode memory banks, so go one prompt at a time.
            forced = [None] * len(texts) if answers is None else list(answers)
            return [self.predict(t, video=video, options=options, answer=a, logits_processor=logits_processor)
                    for t, a in zip(texts, forced)]
        clip = _Video(video) if video is not None else None
        groundings = self.ground_batch(texts, image=image, video=clip, options=options, answers=answers,
                                       logits_processor=logits_processor)
        prompts = [self.model.seg_prompts(g.seg_hidden) for g in groundings]  # (n_k, 1, 256) each
        counts = [p.shape[0] for p in prompts]
        if image is not None:
            img = to_pil(image, where="image")
            masks = [np.zeros((n, 1, img.height, img.width), dtype=bool) for n in counts]
            if sum(counts):
                # One image-encoder pass; each prompt's objects decoded as `segment_image` does.
                enc = self.model.grounding_encoder
                ff = enc.encode(self.sam2_image_pixels(img, options.sam2_norm)[None])
                for k, p in enumerate(prompts):
                    if counts[k]:
                        feats, pos = ff.frame(0, counts[k])
                        out = enc.prompt_frame(feats, pos, ff.feat_sizes, p, run_mem_encoder=False)
                        logits = upsample_logits(out["pred_masks"], enc.image_size, (img.height, img.width))
                        masks[k] = (logits > options.mask_threshold).cpu().numpy()[:, None]
        else:
            masks = [np.zeros((n, len(clip), *clip.size), dtype=bool) for n in counts]
            for i, per_grounding in self.track_batch(clip, groundings, options):
                for m, frame_masks in zip(masks, per_grounding):
                    m[:, i] = frame_masks
        return [
            Sa2VAPrediction(g.text, tuple(m[j] for j in range(m.shape[0])), p[:, 0].float().cpu(), g.key_frames,
                            g.answer_ids)
            for g, p, m in zip(groundings, prompts, masks)
        ]

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


__all__ = [
    "Grounding", "Sa2VA", "Sa2VAModel", "Sa2VAPrediction", "VisualContext", "append_answer", "capture_last_hidden",
    "seg_rows",
]
