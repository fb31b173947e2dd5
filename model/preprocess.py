"""Pixel preprocessing for Sa2VA, as the official `predict_forward` does it (docs/sa2va-checkpoints.md §6).

Pure functions of PIL images / arrays. Two consumers:
* the LLM's vision encoder (InternVL tiles of 448 px, or whole frames for video),
* SAM-2 (every frame resized to a square `image_size`, aspect ratio ignored).

The Qwen family's LLM pixels come from its transformers processor; what happens
before it is `qwen_vl_image` (see there).
"""
from __future__ import annotations

from typing import Sequence, Union

import math

import numpy as np
import torch
from PIL import Image

from refsav.schemas.errors import RefsavError, SchemaError

from .config import (
    IMAGENET_MEAN, IMAGENET_STD, SAM2_NORMS, SAM2_OFFICIAL_MEAN, SAM2_OFFICIAL_STD, InternVLImageSpec, KeyFrameMode,
    QwenPixelSpec, Sam2Norm,
)

Frame = Union[Image.Image, np.ndarray]


def to_pil(frame: Frame, *, where: str = "frame") -> Image.Image:
    """An RGB PIL image from a PIL image or an (H, W, 3) uint8 array."""
    if isinstance(frame, Image.Image):
        return frame if frame.mode == "RGB" else frame.convert("RGB")
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise SchemaError(
            f"expected an (H, W, 3) uint8 RGB array or a PIL image, got {arr.dtype} {arr.shape}", field=where
        )
    return Image.fromarray(arr, mode="RGB")


def normalize(img: Image.Image) -> torch.Tensor:
    """RGB PIL → (3, H, W) float32, ImageNet-normalised (ToTensor + Normalize)."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def candidate_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """All (cols, rows) with min_num <= cols*rows <= max_num, by tile count.

    Equal-count grids keep the order InternVL's set iteration gives them; only
    equal-aspect grids can tie later, and those never share a tile count.
    """
    grids = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(grids, key=lambda g: g[0] * g[1])


def closest_grid(width: int, height: int, spec: InternVLImageSpec) -> tuple[int, int]:
    """InternVL's `find_closest_aspect_ratio`: the grid whose aspect is nearest
    W/H; on an exact tie the larger grid wins if the image has enough pixels."""
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(spec.min_tiles, spec.max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * spec.tile_size * spec.tile_size * cols * rows:
            best = (cols, rows)
    return best


def image_tiles(img: Image.Image, spec: InternVLImageSpec) -> list[Image.Image]:
    """InternVL `dynamic_preprocess`: resize to a grid of square tiles, row-major,
    then (if more than one tile) a thumbnail of the whole image last."""
    cols, rows = closest_grid(img.width, img.height, spec)
    s = spec.tile_size
    resized = img.resize((s * cols, s * rows), Image.BICUBIC)
    tiles = [
        resized.crop(((k % cols) * s, (k // cols) * s, (k % cols + 1) * s, (k // cols + 1) * s))
        for k in range(cols * rows)
    ]
    if spec.use_thumbnail and len(tiles) != 1:
        tiles.append(img.resize((s, s), Image.BICUBIC))
    return tiles


def internvl_image_pixels(img: Image.Image, spec: InternVLImageSpec) -> torch.Tensor:
    """An image → (n_tiles, 3, tile, tile)."""
    return torch.stack([normalize(t) for t in image_tiles(img, spec)])


def internvl_frame_pixels(frames: Sequence[Image.Image], spec: InternVLImageSpec) -> torch.Tensor:
    """Video key frames → (n_frames, 3, tile, tile): each frame squashed to one tile."""
    s = spec.tile_size
    return torch.stack([normalize(f.resize((s, s), Image.BICUBIC)) for f in frames])


def image_token_string(tokens_per_frame: Sequence[int], *, start: str, context: str, end: str) -> str:
    """`<img><IMG_CONTEXT>×n</img>\\n` per frame, joined and stripped (official code)."""
    return "".join(f"{start}{context * n}{end}\n" for n in tokens_per_frame).strip()


def sam2_statistics(norm: Sam2Norm) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of SAM-2's input normalisation: "official" = bf16-rounded, "exact" = ImageNet's."""
    if norm == "official":
        return SAM2_OFFICIAL_MEAN, SAM2_OFFICIAL_STD
    if norm == "exact":
        return IMAGENET_MEAN, IMAGENET_STD
    raise RefsavError(f"must be one of {SAM2_NORMS}, got {norm!r}", field="sam2_norm")


def sam2_pixels(img: Image.Image, image_size: int, norm: Sam2Norm = "official", *,
                arithmetic: torch.dtype = torch.float32) -> torch.Tensor:
    """A frame → (3, S, S) for SAM-2: squash-resize (bicubic), then (x / 255 - mean) / std.

    `norm` picks the statistics (`sam2_statistics`). `arithmetic` is the dtype the
    division and subtraction run in, and the dtype returned: the official code
    uses float32 for video frames but, for a still image, first casts the pixels to
    the model dtype (bf16) and normalises in it; "exact" always uses float32.
    """
    mean, std = sam2_statistics(norm)
    if norm == "exact":
        arithmetic = torch.float32
    resized = img.resize((image_size, image_size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).to(arithmetic) / 255.0
    x = x - torch.tensor(mean, dtype=arithmetic).view(3, 1, 1)
    return x / torch.tensor(std, dtype=arithmetic).view(3, 1, 1)


# qwen_vl_utils' own image bounds (`fetch_image` with its default image_patch_size 14):
# 4 .. 16384 merged 28-px patches. The released Sa2VA code calls
# `process_vision_info(messages)` without per-image bounds, so these apply, for
# Qwen3-VL as well.
QWEN_VL_UTILS_FACTOR = 28
QWEN_VL_UTILS_MIN_PIXELS = 4 * 28 * 28
QWEN_VL_UTILS_MAX_PIXELS = 16384 * 28 * 28
_MAX_ASPECT = 200  # both qwen_vl_utils and transformers refuse flatter images


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) → the Qwen-VL target size: both sides multiples of `factor`,
    area within [min_pixels, max_pixels], aspect ratio kept as far as rounding allows.

    Sides are rounded to the nearest multiple (at least one `factor`); if that area
    is too large both are scaled by sqrt(max/area) and floored (at least one
    `factor`), if too small scaled by sqrt(min/area) and ceiled. This is
    qwen_vl_utils' rule with transformers' floor guard (where qwen_vl_utils would
    floor a side to 0 and fail); it equals transformers' rule except for sides
    under factor/2 px, which transformers rounds to 0 first.
    """
    if min(height, width) < 1:
        raise SchemaError(f"image has an empty side: {height}x{width}", field="image")
    if max(height, width) / min(height, width) > _MAX_ASPECT:
        raise SchemaError(f"aspect ratio of {height}x{width} exceeds {_MAX_ASPECT}:1", field="image")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def qwen_vl_image(img: Image.Image) -> Image.Image:
    """What `qwen_vl_utils.process_vision_info` hands the processor for one image.

    The released Sa2VA Qwen code resizes twice: qwen_vl_utils first (PIL, to
    `smart_resize` with its own wide bounds and factor 28: for ordinary frames this
    only rounds the sides to multiples of 28), then the processor again with
    `QwenPixelSpec`'s bounds and its own factor. Reproducing the first step keeps
    the second one's input, hence the token count and pixels, the same as theirs.
    """
    h, w = smart_resize(img.height, img.width, QWEN_VL_UTILS_FACTOR, QWEN_VL_UTILS_MIN_PIXELS,
                        QWEN_VL_UTILS_MAX_PIXELS)
    # qwen_vl_utils calls `resize` without a filter: PIL's default for RGB is bicubic.
    return img.resize((w, h), Image.BICUBIC)


def qwen_token_grid(height: int, width: int, spec: QwenPixelSpec, factor: int) -> tuple[int, int]:
    """LLM image-token rows × columns for a (height, width) frame: both resizes of
    `qwen_vl_image`, the second with the processor's `factor` (patch × merge)."""
    h, w = smart_resize(height, width, QWEN_VL_UTILS_FACTOR, QWEN_VL_UTILS_MIN_PIXELS, QWEN_VL_UTILS_MAX_PIXELS)
    h, w = smart_resize(h, w, factor, spec.min_pixels, spec.max_pixels)
    return h // factor, w // factor


def select_key_frames(num_frames: int, mode: KeyFrameMode, k: int) -> tuple[int, ...]:
    """Frames the LLM sees; the same frames receive the [SEG] prompt in SAM-2.

    "first": frames 0..k-1 (official Sa2VA). "uniform": k frames spread evenly from
    the first to the last frame. Both always include frame 0, so forward tracking
    from the earliest key frame covers the whole video.
    """
    if num_frames < 1:
        raise SchemaError("a video needs at least one frame", field="video")
    k = min(k, num_frames)
    if mode == "first":
        return tuple(range(k))
    if mode == "uniform":
        if k == 1:
            return (0,)
        picks = np.linspace(0, num_frames - 1, k).round().astype(int)
        return tuple(sorted({int(i) for i in picks}))
    raise RefsavError(f"must be 'first' or 'uniform', got {mode!r}", field="key_frames")


__all__ = [
    "Frame", "candidate_grids", "closest_grid", "image_tiles", "image_token_string", "internvl_frame_pixels",
    "internvl_image_pixels", "normalize", "QWEN_VL_UTILS_FACTOR", "QWEN_VL_UTILS_MAX_PIXELS",
    "QWEN_VL_UTILS_MIN_PIXELS", "qwen_token_grid", "qwen_vl_image", "sam2_pixels", "sam2_statistics",
    "select_key_frames",
    "smart_resize", "to_pil",
]
