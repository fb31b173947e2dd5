"""Sa2VA-i: a different inference procedure for the same Sa2VA checkpoints.

`PredictOptions(inference="sa2va-i")` makes `Sa2VA.predict` run this instead of the
official procedure (docs/sa2va-i.md):

1. Key frames: N indices spread evenly from the first frame to the last, truncated
   to integers (`key_frame_indices`); the LLM sees each distinct one once, in order.
2. Per [SEG]: every key frame is decoded on its own, without memory, by the
   checkpoint's fine-tuned decoder (best of three masks by predicted IoU), resized
   to the frame size and thresholded.
3. A fresh SAM-2 memory bank takes those binary masks as mask inputs and tracks
   forward from frame 0 with Meta's *original* mask decoder; a tracked frame whose
   object score is <= 0 is empty.

The original decoder comes with the model: loaded from `--sam2-original FILE`
(`refsav.model.checkpoint.attach_original_decoder`) or from a checkpoint in the
Sa2VA-i two-decoder layout. An image is step 2 alone.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from refsav.schemas.errors import SchemaError

from .config import PredictOptions
from .preprocess import Frame, sam2_pixels, to_pil
from .sa2va import Sa2VA, Sa2VAPrediction, _Prefetch, _Video
from .sam2_wrapper import upsample_logits


def key_frame_indices(num_frames: int, n: int) -> tuple[int, ...]:
    """Sa2VA-i's key frames, repeats included: n evenly spaced points from 0 to
    num_frames - 1, truncated (not rounded) to integers. A video shorter than n
    frames repeats indices (3 frames, n = 5 → 0, 0, 1, 1, 2)."""
    if num_frames < 1:
        raise SchemaError("a video needs at least one frame", field="video")
    if n < 1:
        raise SchemaError("must be >= 1", field="num_key_frames")
    return tuple(int(i) for i in np.linspace(0, num_frames - 1, n).astype(np.int64))


def llm_key_frames(num_frames: int, n: int) -> tuple[int, ...]:
    """The frames the LLM sees (and that are decoded): the distinct key frames, in order."""
    return tuple(sorted(set(key_frame_indices(num_frames, n))))


def binary_mask_inputs(low_res: torch.Tensor, frame_hw: tuple[int, int], image_size: int,
                       threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A key frame's decoder logits (B, 1, 4h, 4w) → (its thresholded mask at the frame
    size (B, H, W) bool, the mask input SAM-2 is seeded with (B, 1, S, S) float 0/1).

    As Sa2VA-i: logits are resized straight to the frame, thresholded, then brought to
    S×S with antialiased bilinear and thresholded again at 0.5 (what
    `SAM2VideoPredictor.add_new_mask` does to a mask of another size)."""
    logits = F.interpolate(low_res.float(), size=tuple(frame_hw), mode="bilinear", align_corners=False)
    binary = (logits > threshold).float()
    if tuple(frame_hw) == (image_size, image_size):
        return binary[:, 0] > 0, binary
    seed = F.interpolate(binary, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return binary[:, 0] > 0, (seed >= 0.5).float()


@torch.no_grad()
def predict_sa2va_i(
    sa2va: Sa2VA,
    text: str,
    *,
    image: Frame | None = None,
    video: Sequence[Frame] | None = None,
    options: PredictOptions,
    answer: str | None = None,
    logits_processor: Any = None,
    on_event: Callable[[str, int], None] | None = None,
) -> Sa2VAPrediction:
    """`Sa2VA.predict` with the Sa2VA-i procedure. `on_event(stage, frame)`: see
    `GroundingEncoder.track_from_masks` (tests use it to tell frames apart)."""
    clip = _Video(video) if video is not None else None
    g = sa2va.ground(text, image=image, video=clip, options=options, answer=answer, logits_processor=logits_processor)
    n = g.seg_hidden.shape[0]
    prompts = sa2va.model.seg_prompts(g.seg_hidden)  # (n, 1, 256)
    embeddings = prompts[:, 0].float().cpu()
    if n == 0:
        return Sa2VAPrediction(g.text, (), embeddings, g.key_frames, g.answer_ids)
    enc = sa2va.model.grounding_encoder
    size = enc.image_size
    if image is not None:
        img = to_pil(image, where="image")
        ff = enc.encode(sa2va.sam2_image_pixels(img, options.sam2_norm)[None])
        feats, pos = ff.frame(0, n)
        decoded = enc.decode(feats, pos, ff.feat_sizes, prompts)
        masks, _ = binary_mask_inputs(decoded.low_res, (img.height, img.width), size, options.mask_threshold)
        masks = masks.cpu().numpy()[:, None]  # (n, 1, H, W)
        return Sa2VAPrediction(g.text, tuple(masks[k] for k in range(n)), embeddings, g.key_frames, g.answer_ids)

    keys = list(g.key_frames)

    def key_mask(i: int, feats, pos, feat_sizes) -> torch.Tensor:
        decoded = enc.decode(feats, pos, feat_sizes, prompts)  # the fine-tuned decoder, no memory
        return binary_mask_inputs(decoded.low_res, clip.size, size, options.mask_threshold)[1]

    out = np.zeros((n, len(clip), *clip.size), dtype=bool)
    order = keys + [i for i in range(len(clip)) if i not in set(keys)]
    with _Prefetch(lambda i: sam2_pixels(clip.pil(i), size, options.sam2_norm), order) as load:
        stream = enc.track_from_masks(
            len(clip), load, keys, key_mask, n, decoder="original", gate_absent_objects=True,
            memory_in_bf16=options.memory_in_bf16, backbone_batch=options.backbone_batch, on_event=on_event,
        )
        for i, low_res in stream:
            logits = upsample_logits(low_res, size, clip.size)
            out[:, i] = (logits > options.mask_threshold).cpu().numpy()
    return Sa2VAPrediction(g.text, tuple(out[k] for k in range(n)), embeddings, g.key_frames, g.answer_ids)


__all__ = ["binary_mask_inputs", "key_frame_indices", "llm_key_frames", "predict_sa2va_i"]
