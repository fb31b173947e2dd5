"""DeSa2VA: decoupled text / vision prompting of SAM-2 on top of a Sa2VA model.

No code or weights of DeSa2VA were published (shared/reference/desa2va.md): the
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
   Sa2VA's mask bit for bit (tested).
5. Triple supervision: text, vision and fused logits are each scored against the
   ground-truth mask with Sa2VA's mask loss, BCE×2.0 + Dice×0.5, summed with
   weights 1/1/1. Our choice: the loss is dense over the S×S SAM frame (GT
   squash-resized like the image), not Sa2VA's 12,544 sampled points.
6. Not implemented: the "Real-Text" head and its point-labelled pre-training
   (needs point-labelled text we do not have) and the inference-time "Reprompt
   feedback" refinement.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from schemas.errors import SchemaError

from .config import SAM_PROMPT_DIM
from .preprocess import Frame, sam2_pixels, to_pil
from .sam2_wrapper import FrameFeatures, GroundingEncoder, upsample_logits

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


def decode_frame(
    enc: GroundingEncoder,
    feats: list[torch.Tensor],  # per level (h_l*w_l, B, C_l)
    pos: list[torch.Tensor],
    feat_sizes: list[tuple[int, int]],
    prompts: torch.Tensor,  # (B, E, 256)
    point_inputs: dict | None = None,  # point_coords (B, K, 2) px in S×S, point_labels (B, K)
) -> tuple[torch.Tensor, torch.Tensor]:
    """`GroundingEncoder.prompt_frame` without its no_grad and memory encoder, so
    gradients reach the prompts through the frozen decoder. Returns the low-res
    (B, 1, 4h, 4w) and S×S (B, 1, S, S) mask logits."""
    sam = enc.sam2_model
    with enc._autocast():
        high_res = None
        if len(feats) > 1:
            high_res = [x.permute(1, 2, 0).reshape(x.size(1), x.size(2), *s) for x, s in zip(feats[:-1], feat_sizes[:-1])]
        pix = sam._prepare_memory_conditioned_features(
            frame_idx=0, is_init_cond_frame=True, current_vision_feats=feats[-1:],
            current_vision_pos_embeds=pos[-1:], feat_sizes=feat_sizes[-1:], output_dict={}, num_frames=1,
        )
        _, _, _, low, high, _, _ = sam._forward_sam_heads(
            backbone_features=pix, point_inputs=point_inputs, mask_inputs=None, high_res_features=high_res,
            multimask_output=sam._use_multimask(True, point_inputs), extra_sparse_prompts=prompts,
        )
    return low.float(), high.float()


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
        sa2va.model.requires_grad_(False).eval()
        return cls(sa2va, heads.to(device=sa2va.model.device, dtype=torch.float32))

    def frozen_parameters(self):
        return self.sa2va.model.named_parameters()

    def forward_features(self, seg_hidden: torch.Tensor, ff: FrameFeatures, frame: int = 0,
                         heads_out: HeadOutputs | None = None) -> MaskLogits:
        """seg_hidden (B, H) objects on frame `frame` of `ff` → text/vision/fused logits (B, S, S)."""
        enc = self.sa2va.model.grounding_encoder
        h = heads_out if heads_out is not None else self.heads(seg_hidden.to(self.sa2va.model.device))
        B = h.text_token.shape[0]
        feats, pos = ff.frame(frame, B)
        S = enc.image_size
        # SAM's prompt encoder adds 0.5 and divides by S; coordinates are in frame pixels.
        points = {"point_coords": h.points * S - 0.5,
                  "point_labels": torch.ones(B, h.points.shape[1], dtype=torch.int32, device=h.points.device)}
        t_low, t_high = decode_frame(enc, feats, pos, ff.feat_sizes, h.text_token, points)
        v_low, v_high = decode_frame(enc, feats, pos, ff.feat_sizes, h.vision_token, None)
        return MaskLogits(t_high[:, 0], v_high[:, 0], fuse_logits(t_high[:, 0], v_high[:, 0], h.alpha), h, t_low, v_low)

    @torch.no_grad()
    def predict_image(self, text: str, image: Frame, *, answer: str = "Sure, [SEG].",
                      threshold: float = 0.0) -> "DeSa2VAPrediction":
        """One (H, W) bool mask per [SEG] of the (forced) answer, for each path."""
        g = self.sa2va.ground(text, image=image, answer=answer)
        img = to_pil(image, where="image")
        if g.seg_hidden.shape[0] == 0:
            empty = np.zeros((0, img.height, img.width), dtype=bool)
            return DeSa2VAPrediction(g.text, empty, empty, empty, np.zeros(0, dtype=np.float32))
        enc = self.sa2va.model.grounding_encoder
        ff = enc.encode(sam2_pixels(img, enc.image_size)[None])
        h = self.heads(g.seg_hidden)
        out = self.forward_features(g.seg_hidden, ff, heads_out=h)
        t_low, v_low = out.text_low, out.vision_low
        size = (img.height, img.width)
        # Upsample each path's low-res logits the way Sa2VA does, then fuse.
        t = upsample_logits(t_low, enc.image_size, size)
        v = upsample_logits(v_low, enc.image_size, size)
        f = fuse_logits(t, v, h.alpha)
        return DeSa2VAPrediction(
            g.text, (f > threshold).cpu().numpy(), (t > threshold).cpu().numpy(), (v > threshold).cpu().numpy(),
            h.alpha.float().cpu().numpy(),
        )


@dataclass(frozen=True)
class DeSa2VAPrediction:
    text: str
    masks: np.ndarray  # (n_seg, H, W) bool, fused
    text_masks: np.ndarray  # (n_seg, H, W) bool, text-driven path
    vision_masks: np.ndarray  # (n_seg, H, W) bool, vision-driven path (= Sa2VA's mask at init)
    alpha: np.ndarray  # (n_seg,) fusion weight of the vision path


# ----------------------------------------------------------------------------- head checkpoints


def save_heads(path: str | Path, heads: DecoupleHeads) -> Path:
    """Head weights as one safetensors file, config in its metadata; written atomically."""
    from safetensors.torch import save_file

    from schemas.io import atomic_path

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    meta = {"format": "pt", "refsav": HEADS_FORMAT, "config": json.dumps(asdict(heads.config), sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_heads(path: str | Path) -> DecoupleHeads:
    """Strict: every tensor present with its shape, nothing extra."""
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
    try:
        heads = DecoupleHeads(DeSa2VAConfig(**json.loads(meta["config"])))
    except (KeyError, TypeError, ValueError) as err:
        raise SchemaError(f"bad config ({err})", file=path, field="metadata.config") from None
    except SchemaError as err:
        raise err.at(file=path) from None
    try:
        heads.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise SchemaError(f"weights do not fit the config ({str(err).splitlines()[-1].strip()})", file=path) from None
    return heads


__all__ = [
    "DeSa2VA", "DeSa2VAConfig", "DeSa2VAPrediction", "DecoupleHeads", "HeadOutputs", "MaskLogits", "TripleLoss",
    "bce_loss", "decode_frame", "dice_loss", "fuse_logits", "load_heads", "mask_loss", "orthogonality_loss",
    "save_heads", "triple_loss",
]
