"""DeSa2VA: decoupled text / vision prompting of SAM-2 on top of a Sa2VA model.

No code or weights of DeSa2VA were published (docs/desa2va.md §1): the
public repository is Sa2VA renamed. This module is **our implementation of the
paper's description** (arXiv 2506.22880 abstract + architecture figure). Every
point the paper leaves open is decided here, and each decision is listed:

1. Decoupling. Two linear heads read the LLM's last-layer [SEG] hidden state
   (B, H): `text` and `vision`, each Linear(H, H) → ReLU → Linear(H, 256), the
   shape of Sa2VA's `text_hidden_fcs` (the paper gives no layer shapes). Both
   start as copies of `text_hidden_fcs`, so an untrained DeSa2VA is Sa2VA. The
   paper's abstract does not say "orthogonal" (a third-party summary does): the
   optional `orthogonality_loss` is provided but weighted 0 by default.
2. Text-derived points ("Text2pointer"). How text becomes points is not
   recoverable; we regress K points from the text-subspace token: Linear(256, 2K)
   → sigmoid → normalised (x, y), scaled to the S×S SAM frame, all with label 1
   (positive). SAM-2's positional encoding of coordinates is differentiable, so
   the point head trains through the frozen prompt encoder. The points and the
   text token (in the [SEG] slot) prompt SAM-2 → the text-driven mask.
3. Vision path: the vision token alone in the [SEG] slot, exactly Sa2VA's call →
   the vision-driven mask. The figure's "second, trainable SAM-2 decoder" is NOT
   built: the issue keeps SAM-2 frozen, so both paths share SAM-2's own decoder.
4. Dynamic fusion: a per-object scalar gate α = sigmoid(w·[t; v] + b) from the two
   subspace tokens (the paper does not say scalar, gate or per-pixel), applied in
   logit space: fused = α·vision + (1−α)·text. With α = 1 the fused mask is
   Sa2VA's mask bit for bit (tested; for prediction the heads run in the model's
   dtype, as Sa2VA runs `text_hidden_fcs`, so this holds in bf16 too).
5. Triple supervision: text, vision and fused logits are each scored against the
   ground-truth mask with Sa2VA's mask loss, BCE×2.0 + Dice×0.5, summed with
   weights 1/1/1. Our choice: the loss is dense over the S×S SAM frame (GT
   squash-resized like the image), not Sa2VA's 12,544 sampled points.
6. Not implemented: the "Real-Text" head and its point-labelled pre-training
   (needs point-labelled text we do not have) and the inference-time "Reprompt
   feedback" refinement.
7. Video (the paper gives no video procedure). Sa2VA prompts SAM-2 only on the key
   frames (no memory) and propagates through the other frames with SAM-2's
   memory. DeSa2VA does the same with the fused result: on every key frame both
   paths decode, and their low-res and S×S logits, object pointers and object
   scores are mixed with α like `fuse_logits`; that fused frame is the key
   frame's mask AND what SAM-2's memory encoder stores, so the fused prompt drives
   every propagated frame. One memory bank, one image-encoder pass per frame. At
   α = 1 every frame equals Sa2VA's masklet (tested). Images: each path's low-res
   logits are upsampled as Sa2VA does, then fused.

SAM-2 decoding is `GroundingEncoder.decode` (autograd on, no memory encoder), the
same code Sa2VA's `prompt_frame` runs, so the two cannot drift apart.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refsav.schemas.errors import SchemaError

from .config import SAM_PROMPT_DIM, PredictOptions, Sam2Norm
from .preprocess import Frame, to_pil
from .sam2_wrapper import DecodedFrame, FrameFeatures, upsample_logits

HEADS_FORMAT = "refsav-desa2va-heads/1"


@dataclass(frozen=True)
class DeSa2VAConfig:
    hidden_size: int  # the LLM's H
    num_points: int = 4  # K text-derived point prompts per object
    gate_bias: float = 0.0  # initial fusion logit: 0 → α = 0.5
    bce_weight: float = 2.0  # Sa2VA's mask-loss weights
    dice_weight: float = 0.5
    text_weight: float = 1.0  # triple supervision: text, vision, fused terms
    vision_weight: float = 1.0
    fused_weight: float = 1.0
    ortho_weight: float = 0.0  # the "orthogonal" reading of the decoupling; off by default

    def validate(self) -> None:
        if self.hidden_size < 1:
            raise SchemaError(f"must be positive, got {self.hidden_size}", field="hidden_size")
        if self.num_points < 1:
            raise SchemaError(f"must be positive, got {self.num_points}", field="num_points")


def check_fits(config: DeSa2VAConfig, llm_hidden_size: int) -> None:
    """Heads read the LLM's [SEG] state: their H must be the model's."""
    if config.hidden_size != llm_hidden_size:
        raise SchemaError(f"the heads were trained for hidden size {config.hidden_size}, "
                          f"the model's LLM has {llm_hidden_size}", field="hidden_size")


def _projection(hidden: int) -> nn.Sequential:
    # Same layout as Sa2VA's text_hidden_fcs (indices 0 and 2 carry weights), so
    # its state dict loads directly.
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, SAM_PROMPT_DIM), nn.Dropout(0.0))


@dataclass(frozen=True)
class HeadOutputs:
    text_token: torch.Tensor  # (B, 1, 256) text-subspace prompt token
    vision_token: torch.Tensor  # (B, 1, 256) vision-subspace prompt token
    points: torch.Tensor  # (B, K, 2) normalised (x, y) in [0, 1]
    alpha: torch.Tensor  # (B,) fusion weight of the vision path


class DecoupleHeads(nn.Module):
    """Every trainable parameter of DeSa2VA (the LLM and SAM-2 stay frozen)."""

    def __init__(self, config: DeSa2VAConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.text = _projection(config.hidden_size)  # (B, H) → (B, 256)
        self.vision = _projection(config.hidden_size)  # (B, H) → (B, 256)
        self.points = nn.Linear(SAM_PROMPT_DIM, 2 * config.num_points)  # (B, 256) → (B, 2K)
        self.gate = nn.Linear(2 * SAM_PROMPT_DIM, 1)  # (B, 512) → (B, 1)
        with torch.no_grad():
            self.gate.bias.fill_(config.gate_bias)

    def forward(self, seg_hidden: torch.Tensor) -> HeadOutputs:
        x = seg_hidden.to(self.text[0].weight.dtype)  # (B, H)
        t = self.text(x)  # (B, 256)
        v = self.vision(x)  # (B, 256)
        pts = torch.sigmoid(self.points(t)).view(x.shape[0], self.config.num_points, 2)  # (B, K, 2)
        alpha = torch.sigmoid(self.gate(torch.cat([t, v], dim=-1)))[:, 0]  # (B,)
        return HeadOutputs(t[:, None], v[:, None], pts, alpha)


# ----------------------------------------------------------------------------- losses (pure)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over all pixels of (B, ...) logits vs 0/1 targets."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="mean")


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Sa2VA's Dice: per mask 1 − (2·Σpt + ε) / (Σp + Σt + ε), p = sigmoid(logits); mean over B."""
    p = torch.sigmoid(logits.float()).flatten(1)  # (B, N)
    t = target.float().flatten(1)  # (B, N)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def mask_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 2.0, dice_weight: float = 0.5) -> torch.Tensor:
    return bce_weight * bce_loss(logits, target) + dice_weight * dice_loss(logits, target)


def fuse_logits(text_logits: torch.Tensor, vision_logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(B, h, w) × 2, α (B,) → α·vision + (1−α)·text, in logit space."""
    a = alpha.to(vision_logits.dtype).view(-1, *([1] * (vision_logits.dim() - 1)))
    return a * vision_logits + (1 - a) * text_logits


def orthogonality_loss(text_token: torch.Tensor, vision_token: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between the two subspace tokens (0 when orthogonal)."""
    return F.cosine_similarity(text_token.flatten(1), vision_token.flatten(1), dim=-1).pow(2).mean()


@dataclass(frozen=True)
class MaskLogits:
    text: torch.Tensor  # (B, S, S) logits on the SAM frame
    vision: torch.Tensor  # (B, S, S)
    fused: torch.Tensor  # (B, S, S)
    heads: HeadOutputs
    text_low: torch.Tensor  # (B, 1, 4h, 4w) SAM-2's low-res logits, for Sa2VA-identical upsampling
    vision_low: torch.Tensor  # (B, 1, 4h, 4w)


@dataclass(frozen=True)
class TripleLoss:
    text: torch.Tensor  # scalars
    vision: torch.Tensor
    fused: torch.Tensor
    ortho: torch.Tensor
    total: torch.Tensor


def triple_loss(out: MaskLogits, target: torch.Tensor, config: DeSa2VAConfig) -> TripleLoss:
    """target (B, S, S) 0/1 on the SAM frame."""
    lt = mask_loss(out.text, target, config.bce_weight, config.dice_weight)
    lv = mask_loss(out.vision, target, config.bce_weight, config.dice_weight)
    lf = mask_loss(out.fused, target, config.bce_weight, config.dice_weight)
    lo = orthogonality_loss(out.heads.text_token, out.heads.vision_token)
    total = config.text_weight * lt + config.vision_weight * lv + config.fused_weight * lf + config.ortho_weight * lo
    return TripleLoss(lt, lv, lf, lo, total)


# ----------------------------------------------------------------------------- SAM-2 decoding


def fuse_decoded(text: DecodedFrame, vision: DecodedFrame, alpha: torch.Tensor) -> DecodedFrame:
    """Both paths' decoded frame mixed with α (B,): masks in logit space, and the
    object pointer and score that SAM-2's memory reads. α = 1 gives `vision` exactly."""
    return DecodedFrame(
        fuse_logits(text.low_res, vision.low_res, alpha),
        fuse_logits(text.high_res, vision.high_res, alpha),
        fuse_logits(text.obj_ptr.float(), vision.obj_ptr.float(), alpha).to(vision.obj_ptr.dtype),
        fuse_logits(text.object_score_logits.float(), vision.object_score_logits.float(), alpha)
        .to(vision.object_score_logits.dtype),
    )


class DeSa2VA(nn.Module):
    """Frozen Sa2VA + trainable `DecoupleHeads`. `parameters()` are the heads only:
    the Sa2VA wrapper is held as a plain attribute, not a submodule."""

    def __init__(self, sa2va, heads: DecoupleHeads):
        super().__init__()
        self.sa2va = sa2va
        self.heads = heads
        self.config = heads.config

    @classmethod
    def from_sa2va(cls, sa2va, config: DeSa2VAConfig | None = None, *, seed: int = 0) -> "DeSa2VA":
        """Heads from a Sa2VA model: text and vision projections copy its
        `text_hidden_fcs`; the point and gate layers are random (seeded). Freezes
        (requires_grad=False) and eval()s the Sa2VA model in place."""
        cfg = config or DeSa2VAConfig(hidden_size=sa2va.config.llm_hidden_size)
        if cfg.hidden_size != sa2va.config.llm_hidden_size:
            raise SchemaError(f"heads need H={cfg.hidden_size}, the model has {sa2va.config.llm_hidden_size}",
                              field="hidden_size")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            heads = DecoupleHeads(cfg)
        src = sa2va.model.text_hidden_fcs.state_dict()
        heads.vision.load_state_dict(src)
        heads.text.load_state_dict(src)
        return cls.with_heads(sa2va, heads)

    @classmethod
    def with_heads(cls, sa2va, heads: DecoupleHeads, *, dtype: torch.dtype = torch.float32) -> "DeSa2VA":
        """Trained heads (e.g. `load_heads`) on a Sa2VA model: checks they were made
        for its hidden size, freezes and eval()s the model in place. Train in
        float32; for prediction pass the model's dtype, so that the vision head runs
        exactly as Sa2VA's `text_hidden_fcs` does (α = 1 then gives Sa2VA's masks
        bit for bit in bf16 too)."""
        check_fits(heads.config, sa2va.config.llm_hidden_size)
        sa2va.model.requires_grad_(False).eval()
        return cls(sa2va, heads.to(device=sa2va.model.device, dtype=dtype).eval())

    def frozen_parameters(self):
        return self.sa2va.model.named_parameters()

    def point_inputs(self, heads_out: HeadOutputs) -> dict:
        """The text path's K regressed points as SAM-2 clicks, all positive."""
        S = self.sa2va.model.grounding_encoder.image_size
        pts = heads_out.points
        # SAM's prompt encoder adds 0.5 and divides by S; coordinates are in frame pixels.
        return {"point_coords": pts * S - 0.5,
                "point_labels": torch.ones(pts.shape[0], pts.shape[1], dtype=torch.int32, device=pts.device)}

    def decode_paths(self, heads_out: HeadOutputs, feats: list[torch.Tensor], pos: list[torch.Tensor],
                     feat_sizes: list[tuple[int, int]]) -> tuple[DecodedFrame, DecodedFrame]:
        """Text path (text token + points) and vision path (vision token alone,
        Sa2VA's call) on one memory-less frame; autograd on."""
        enc = self.sa2va.model.grounding_encoder
        text = enc.decode(feats, pos, feat_sizes, heads_out.text_token, self.point_inputs(heads_out))
        vision = enc.decode(feats, pos, feat_sizes, heads_out.vision_token, None)
        return text, vision

    def forward_features(self, seg_hidden: torch.Tensor, ff: FrameFeatures, frame: int = 0,
                         heads_out: HeadOutputs | None = None) -> MaskLogits:
        """seg_hidden (B, H) objects on frame `frame` of `ff` → text/vision/fused logits (B, S, S)."""
        h = heads_out if heads_out is not None else self.heads(seg_hidden.to(self.sa2va.model.device))
        feats, pos = ff.frame(frame, h.text_token.shape[0])
        t, v = self.decode_paths(h, feats, pos, ff.feat_sizes)
        t_high, v_high = t.high_res[:, 0].float(), v.high_res[:, 0].float()
        return MaskLogits(t_high, v_high, fuse_logits(t_high, v_high, h.alpha), h,
                          t.low_res.float(), v.low_res.float())

    @torch.no_grad()
    def predict_image(self, text: str, image: Frame, *, answer: str = "Sure, [SEG].",
                      threshold: float = 0.0) -> "DeSa2VAPrediction":
        """One (H, W) bool mask per [SEG] of the (forced) answer, for each path."""
        g = self.sa2va.ground(text, image=image, answer=answer)
        return self._image_prediction(g.text, g.seg_hidden, image, threshold)

    def _image_prediction(self, text: str, seg_hidden: torch.Tensor, image: Frame,
                          threshold: float, norm: Sam2Norm = "official") -> "DeSa2VAPrediction":
        img = to_pil(image, where="image")
        if seg_hidden.shape[0] == 0:
            empty = np.zeros((0, img.height, img.width), dtype=bool)
            return DeSa2VAPrediction(text, empty, empty, empty, np.zeros(0, dtype=np.float32))
        enc = self.sa2va.model.grounding_encoder
        ff = enc.encode(self.sa2va.sam2_image_pixels(img, norm)[None])
        h = self.heads(seg_hidden)
        out = self.forward_features(seg_hidden, ff, heads_out=h)
        size = (img.height, img.width)
        # Upsample each path's low-res logits the way Sa2VA does, then fuse.
        t = upsample_logits(out.text_low, enc.image_size, size)
        v = upsample_logits(out.vision_low, enc.image_size, size)
        f = fuse_logits(t, v, h.alpha)
        return DeSa2VAPrediction(
            text, (f > threshold).cpu().numpy(), (t > threshold).cpu().numpy(), (v > threshold).cpu().numpy(),
            h.alpha.float().cpu().numpy(),
        )

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
    ) -> "FusedPrediction":
        """`Sa2VA.predict` with the fused masks: one mask (image) or masklet (video,
        decision 7 of the module docstring) per [SEG] of the answer."""
        from .sa2va import _Video

        clip = _Video(video) if video is not None else None
        g = self.sa2va.ground(text, image=image, video=clip, options=options, answer=answer,
                              logits_processor=logits_processor)
        n = g.seg_hidden.shape[0]
        if image is not None:
            p = self._image_prediction(g.text, g.seg_hidden, image, options.mask_threshold, options.sam2_norm)
            return FusedPrediction(g.text, tuple(m[None] for m in p.masks), p.alpha, g.key_frames, g.answer_ids)
        if n == 0:
            return FusedPrediction(g.text, (), np.zeros(0, dtype=np.float32), g.key_frames, g.answer_ids)
        h = self.heads(g.seg_hidden)

        def fused_key_frame(feats, pos, feat_sizes) -> DecodedFrame:
            return fuse_decoded(*self.decode_paths(h, feats, pos, feat_sizes), h.alpha)

        masks = np.zeros((n, len(clip), *clip.size), dtype=bool)
        # The vision tokens only give track its batch size; key frames come from the fused decoder.
        for i, frame_masks in self.sa2va.track_masks(clip, h.vision_token, g.key_frames, options,
                                                     key_frame_decoder=fused_key_frame):
            masks[:, i] = frame_masks
        return FusedPrediction(g.text, tuple(masks[k] for k in range(n)), h.alpha.float().cpu().numpy(),
                               g.key_frames, g.answer_ids)


@dataclass(frozen=True)
class DeSa2VAPrediction:
    text: str
    masks: np.ndarray  # (n_seg, H, W) bool, fused
    text_masks: np.ndarray  # (n_seg, H, W) bool, text-driven path
    vision_masks: np.ndarray  # (n_seg, H, W) bool, vision-driven path (= Sa2VA's mask at init)
    alpha: np.ndarray  # (n_seg,) fusion weight of the vision path


@dataclass(frozen=True)
class FusedPrediction:
    """What `DeSa2VA.predict` returns; `text` and `masks` read like `Sa2VAPrediction`'s."""

    text: str
    masks: tuple[np.ndarray, ...]  # one (T, H, W) bool fused masklet per [SEG]; T = 1 for an image
    alpha: np.ndarray  # (n_seg,) fusion weight of the vision path
    key_frames: tuple[int, ...]
    answer_ids: tuple[int, ...]


# ----------------------------------------------------------------------------- head checkpoints


def save_heads(path: str | Path, heads: DecoupleHeads) -> Path:
    """Head weights as one safetensors file, config in its metadata; written atomically."""
    from .checkpoint import save_safetensors

    tensors = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    meta = {"format": "pt", "refsav": HEADS_FORMAT, "config": json.dumps(asdict(heads.config), sort_keys=True)}
    return save_safetensors(Path(path), tensors, meta)


def load_heads(path: str | Path, hidden_size: int | None = None) -> DecoupleHeads:
    """Strict: every tensor present with its shape, nothing extra; with `hidden_size`
    (the model's LLM H), heads made for another model are refused too."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SchemaError("file not found", file=path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError
        raise SchemaError(f"not a readable safetensors file ({str(err).splitlines()[0]})", file=path) from None
    if meta.get("refsav") != HEADS_FORMAT:
        raise SchemaError(f"not a DeSa2VA heads file (format {meta.get('refsav')!r})", file=path, field="metadata")
    from refsav.schemas.io import parse_json

    from .checkpoint import count_nonfinite

    try:
        config = DeSa2VAConfig(**parse_json(meta["config"], file=path))
        config.validate()
        if hidden_size is not None:
            check_fits(config, hidden_size)
        # Shapes first, on a storage-free copy: a hostile hidden_size must not allocate.
        with torch.device("meta"):
            skeleton = DecoupleHeads(config)
    except SchemaError as err:
        raise err.at(file=path) from None
    except (KeyError, TypeError, ValueError) as err:
        raise SchemaError(f"bad config ({err})", file=path, field="metadata.config") from None
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    wrong = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if wrong:
        def shape(s):
            return "absent" if s is None else str(list(s))

        k = wrong[0]
        raise SchemaError(f"weights do not fit the config: {len(wrong)} tensor(s) differ, e.g. {k} is "
                          f"{shape(have.get(k))} in the file, {shape(want.get(k))} by the config", file=path)
    for key, value in sorted(tensors.items()):
        if not value.is_floating_point():
            raise SchemaError(f"tensor {key} is {str(value.dtype).removeprefix('torch.')}, not floating point",
                              file=path)
        nan, inf = count_nonfinite(value)
        if nan or inf:
            raise SchemaError(f"tensor {key} holds {nan} NaN and {inf} inf values", file=path)
    heads = DecoupleHeads(config)
    heads.load_state_dict(tensors, strict=True)
    return heads


__all__ = [
    "DeSa2VA", "DeSa2VAConfig", "DeSa2VAPrediction", "DecoupleHeads", "FusedPrediction", "HeadOutputs", "MaskLogits",
    "TripleLoss", "bce_loss", "check_fits", "dice_loss", "fuse_decoded", "fuse_logits", "load_heads", "mask_loss", "orthogonality_loss",
    "save_heads", "triple_loss",
]
