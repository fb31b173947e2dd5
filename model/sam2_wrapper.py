"""SAM-2 as Sa2VA's grounding encoder, built from Meta's `sam2` package.

Sa2VA changes SAM-2 in one place: the mask head takes the projected [SEG] state
as a third sparse prompt token, after the two "not-a-point" padding tokens that
SAM-2 uses when no click is given (docs/sa2va-checkpoints.md §6). Everything else — Hiera image
encoder, memory attention, memory encoder, prompt encoder, mask decoder — is the
package's own modules, loaded with the package's own parameter names.

`Sa2VASam2` subclasses `SAM2Base` and overrides only `_forward_sam_heads` (extra
sparse tokens; no forcing of low-object-score masks to "empty", which Sa2VA
disabled). `GroundingEncoder` drives it over an image or a video:

* the image encoder runs once per frame, and its features are shared by every
  [SEG] object of the call (objects are the batch dimension);
* frames are streamed: only `backbone_batch` frames' features are alive at once,
  and memory-bank entries older than SAM-2 can attend to are dropped, so memory
  stays flat in the video length (the official predictor keeps every 1024-px
  frame on the GPU).

`GroundingEncoder.decode` is the one place that runs SAM-2's mask head on a
memory-less frame; it keeps autograd on so trainable prompt heads (DeSa2VA) use it
directly, and `prompt_frame` (no_grad, plus the memory encoder) is built on it.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refsav.schemas.errors import RefsavError

from .config import SAM_PROMPT_DIM, Sam2Spec

try:  # the import also sets up hydra's config search path for the package
    from sam2.modeling.sam2_base import NO_OBJ_SCORE, SAM2Base
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("refsav's model/ needs Meta's `sam2` package: pip install sam2") from exc


DecoderRole = Literal["fine_tuned", "original"]


class Sa2VASam2(SAM2Base):
    """SAM2Base whose mask head accepts extra sparse prompt tokens, and which can
    hold a second mask decoder.

    `sam_mask_decoder` is always the decoder of the Sa2VA checkpoint (fine-tuned with
    the [SEG] prompts). Sa2VA-i also needs Meta's original decoder for propagation:
    `add_original_decoder()` adds it as `original_mask_decoder`, and `using("original")`
    routes the mask head *and* the high-resolution feature projections (conv_s0 /
    conv_s1, which live in the decoder) to it for the duration of a call.
    """

    def __init__(self, *args, mask_absent_objects: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        # Meta's SAM-2 sets masks to NO_OBJ_SCORE where the object-score head says
        # "absent"; Sa2VA commented that out, so masks are never forced empty.
        self.mask_absent_objects = mask_absent_objects
        self.original_mask_decoder: nn.Module | None = None
        self.decoder_role: DecoderRole = "fine_tuned"

    def add_original_decoder(self) -> nn.Module:
        """Register a second decoder of the same shape (values: a copy of the fine-tuned
        one until weights are loaded into it)."""
        if self.original_mask_decoder is None:
            self.original_mask_decoder = copy.deepcopy(self.sam_mask_decoder)
        return self.original_mask_decoder

    def active_mask_decoder(self) -> nn.Module:
        if self.decoder_role == "fine_tuned":
            return self.sam_mask_decoder
        if self.original_mask_decoder is None:
            raise RefsavError("no original SAM-2 mask decoder loaded (give --sam2-original FILE, or a checkpoint "
                              "in the Sa2VA-i two-decoder layout)", field="sam2_original")
        return self.original_mask_decoder

    @contextlib.contextmanager
    def using(self, role: DecoderRole, *, mask_absent_objects: bool | None = None):
        """Run the block with `role`'s decoder (and optionally object-score gating).
        Module state, so not for concurrent calls on one model."""
        before = (self.decoder_role, self.mask_absent_objects)
        self.decoder_role = role
        self.active_mask_decoder()  # fail before any work if it is missing
        if mask_absent_objects is not None:
            self.mask_absent_objects = mask_absent_objects
        try:
            yield self
        finally:
            self.decoder_role, self.mask_absent_objects = before

    def backbone(self, img_batch: torch.Tensor) -> dict:
        """Image encoder output before the decoder's high-resolution projections."""
        return self.image_encoder(img_batch)

    def project(self, backbone_out: dict) -> dict:
        """The active decoder's conv_s0 / conv_s1 on the two finest levels (a new dict:
        the same backbone output can be projected for both decoders)."""
        out = {**backbone_out, "backbone_fpn": list(backbone_out["backbone_fpn"])}
        if self.use_high_res_features_in_sam:
            decoder = self.active_mask_decoder()
            out["backbone_fpn"][0] = decoder.conv_s0(out["backbone_fpn"][0])
            out["backbone_fpn"][1] = decoder.conv_s1(out["backbone_fpn"][1])
        return out

    def forward_image(self, img_batch: torch.Tensor):
        return self.project(self.backbone(img_batch))

    def _forward_sam_heads(
        self,
        backbone_features: torch.Tensor,  # (B, 256, h, w), h = w = image_size / 16
        point_inputs: dict | None = None,  # point_coords (B, P, 2) px, point_labels (B, P)
        mask_inputs: torch.Tensor | None = None,  # (B, 1, H, W)
        high_res_features: list[torch.Tensor] | None = None,  # (B, 32, 4h, 4w), (B, 64, 2h, 2w)
        multimask_output: bool = False,
        extra_sparse_prompts: torch.Tensor | None = None,  # (B, E, 256): the [SEG] embeddings
    ):
        B = backbone_features.size(0)
        device = backbone_features.device
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        else:
            # One padding point; the prompt encoder pads once more (no box), which
            # gives the two "not-a-point" tokens the released model was trained with.
            coords = torch.zeros(B, 1, 2, device=device)
            labels = -torch.ones(B, 1, dtype=torch.int32, device=device)

        mask_prompt = None
        if mask_inputs is not None:
            mask_prompt = mask_inputs
            if mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
                mask_prompt = F.interpolate(
                    mask_inputs.float(), size=self.sam_prompt_encoder.mask_input_size,
                    mode="bilinear", align_corners=False, antialias=True,
                )

        # sparse: (B, P+1, 256); dense: (B, 256, h, w)
        sparse, dense = self.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
        if extra_sparse_prompts is not None:
            if extra_sparse_prompts.shape[0] != B or extra_sparse_prompts.shape[-1] != sparse.shape[-1]:
                raise ValueError(
                    f"extra sparse prompts {tuple(extra_sparse_prompts.shape)} do not fit batch {B} × {sparse.shape[-1]}"
                )
            sparse = torch.cat([sparse, extra_sparse_prompts.to(sparse.dtype)], dim=1)  # (B, P+1+E, 256)

        # multimasks: (B, M, 4h, 4w) with M = 3 or 1; ious: (B, M); tokens: (B, M, 256); obj: (B, 1)
        low_res_multimasks, ious, sam_output_tokens, object_score_logits = self.active_mask_decoder()(
            image_embeddings=backbone_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res_features,
        )
        is_obj_appearing = object_score_logits > 0 if self.pred_obj_scores else None
        if self.mask_absent_objects and is_obj_appearing is not None:
            low_res_multimasks = torch.where(is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE)

        low_res_multimasks = low_res_multimasks.float()
        high_res_multimasks = F.interpolate(
            low_res_multimasks, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        sam_output_token = sam_output_tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)  # keep the mask with the highest predicted IoU
            rows = torch.arange(B, device=device)
            low_res_masks = low_res_multimasks[rows, best].unsqueeze(1)
            high_res_masks = high_res_multimasks[rows, best].unsqueeze(1)
            if sam_output_tokens.size(1) > 1:
                sam_output_token = sam_output_tokens[rows, best]
        else:
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks

        obj_ptr = self.obj_ptr_proj(sam_output_token)  # (B, 256)
        if is_obj_appearing is not None:
            weight = object_score_logits.sigmoid() if self.soft_no_obj_ptr else is_obj_appearing.float()
            if self.fixed_no_obj_ptr:
                obj_ptr = weight * obj_ptr
            obj_ptr = obj_ptr + (1 - weight) * self.no_obj_ptr
        return (
            low_res_multimasks, high_res_multimasks, ious, low_res_masks, high_res_masks, obj_ptr,
            object_score_logits,
        )


def build_sam2(spec: Sam2Spec) -> Sa2VASam2:
    """Instantiate SAM-2 from one of the package's YAML configs, with Sa2VA's settings
    (docs/sa2va-checkpoints.md §3): dynamic multimask via stability on, no mask binarisation for
    memory, no hole filling, masks never forced empty. Weights stay random."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from refsav.schemas.errors import SchemaError

    root = Path(str(importlib.resources.files("sam2"))).resolve()
    path = (root / spec.config_name).resolve()
    # Sam2Spec admits only package-relative names; this also refuses a link out of the package.
    if not path.is_file() or not path.is_relative_to(root):
        raise SchemaError(f"the sam2 package has no config {spec.config_name!r}", field="refsav.sam2.config")
    cfg = OmegaConf.load(str(path))
    m = cfg.model
    m._target_ = f"{__name__}.Sa2VASam2"
    m.image_size = spec.image_size
    m.binarize_mask_from_pts_for_mem_enc = False
    m.sam_mask_decoder_extra_args = {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    m.compile_image_encoder = False
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True).eval()


@dataclass
class FrameFeatures:
    """Image-encoder output for N frames, flattened the way SAM2Base consumes it."""

    vision_feats: list[torch.Tensor]  # per level: (h_l*w_l, N, C_l), finest first
    vision_pos: list[torch.Tensor]  # per level: (h_l*w_l, N, 256)
    feat_sizes: list[tuple[int, int]]  # per level: (h_l, w_l)

    def frame(self, j: int, batch: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Frame j's features viewed (not copied) as a batch of `batch` objects."""
        feats = [x[:, j : j + 1].expand(-1, batch, -1) for x in self.vision_feats]
        pos = [x[:, j : j + 1].expand(-1, batch, -1) for x in self.vision_pos]
        return feats, pos


@dataclass(frozen=True)
class DecodedFrame:
    """SAM-2's mask head on one frame, for B objects (float32 logits)."""

    low_res: torch.Tensor  # (B, 1, 4h, 4w) mask logits
    high_res: torch.Tensor  # (B, 1, S, S) the same, bilinear to the SAM frame
    obj_ptr: torch.Tensor  # (B, 256) object pointer for later frames' memory attention
    object_score_logits: torch.Tensor  # (B, 1) "object present" logit


# (feats, pos, feat_sizes) of one frame, batched by object → its decoded masks.
KeyFrameDecoder = Callable[[list, list, list], DecodedFrame]


class GroundingEncoder(nn.Module):
    """SAM-2 plus the drivers Sa2VA needs. Parameter names: `sam2_model.*` (the
    released `grounding_encoder.sam2_model.*` minus the `.g_weight` rename)."""

    def __init__(self, spec: Sam2Spec, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec = spec
        self.sam2_model = build_sam2(spec)
        # SAM-2's weights stay float32 and run under autocast in `compute_dtype`
        # (Meta's recipe): its code builds float32 tensors internally, and norms
        # want float32 parameters. The released code stores them in bf16 instead;
        # the difference is within bf16 rounding.
        self.compute_dtype = compute_dtype
        # Filled by `track`: frames processed and the largest number of non-key
        # frames held in the memory bank at once (bounded unless keep_all_memory).
        self.last_track_stats: dict[str, int] = {}

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=next(self.parameters()).device.type, dtype=self.compute_dtype)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> FrameFeatures:
        """pixels (N, 3, S, S), normalised → features of the N frames."""
        p = next(self.parameters())
        with self._autocast():
            out = self.sam2_model.forward_image(pixels.to(device=p.device, dtype=p.dtype))
            _, feats, pos, sizes = self.sam2_model._prepare_backbone_features(out)
        return FrameFeatures(list(feats), list(pos), list(sizes))

    def decode(
        self,
        feats: list[torch.Tensor],  # per level (h_l*w_l, B, C_l), finest first
        pos: list[torch.Tensor],  # per level (h_l*w_l, B, 256)
        feat_sizes: list[tuple[int, int]],
        prompts: torch.Tensor | None,  # (B, E, 256) extra sparse tokens, e.g. [SEG] embeddings
        point_inputs: dict | None = None,  # optional clicks (B, P, 2)/(B, P), in S×S pixels
    ) -> DecodedFrame:
        """Decode one frame without memory (a Sa2VA key frame, or an image).

        No `torch.no_grad` and no memory encoder: gradients reach `prompts` and the
        point coordinates through the frozen prompt encoder and mask decoder, which
        is what trainable prompt heads (DeSa2VA) need. `prompt_frame` is this plus
        the memory encoder, under no_grad.
        """
        sam = self.sam2_model
        with self._autocast():
            high_res = None
            if len(feats) > 1:
                high_res = [
                    x.permute(1, 2, 0).reshape(x.size(1), x.size(2), *s) for x, s in zip(feats[:-1], feat_sizes[:-1])
                ]
            # With directly_add_no_mem_embed this is feats + no_mem_embed (B, 256, h, w).
            pix = sam._prepare_memory_conditioned_features(
                frame_idx=0, is_init_cond_frame=True, current_vision_feats=feats[-1:],
                current_vision_pos_embeds=pos[-1:], feat_sizes=feat_sizes[-1:], output_dict={}, num_frames=1,
            )
            _, _, _, low, high, obj_ptr, obj_score = sam._forward_sam_heads(
                backbone_features=pix,
                point_inputs=point_inputs,
                mask_inputs=None,
                high_res_features=high_res,
                multimask_output=sam._use_multimask(True, point_inputs),
                extra_sparse_prompts=prompts,
            )
        return DecodedFrame(low, high, obj_ptr, obj_score)

    @torch.no_grad()
    def frame_output(
        self,
        feats: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        decoded: DecodedFrame,
        point_inputs: dict | None = None,
        run_mem_encoder: bool = True,
    ) -> dict:
        """SAM2Base's per-frame output dict for a decoded frame, with its memory
        (maskmem_features / maskmem_pos_enc) encoded from `decoded.high_res`."""
        out = {
            "point_inputs": point_inputs, "mask_inputs": None, "pred_masks": decoded.low_res,
            "pred_masks_high_res": decoded.high_res, "obj_ptr": decoded.obj_ptr,
            "object_score_logits": decoded.object_score_logits,
        }
        with self._autocast():
            self.sam2_model._encode_memory_in_output(
                feats, feat_sizes, point_inputs, run_mem_encoder, decoded.high_res, decoded.object_score_logits, out
            )
        return out

    @torch.no_grad()
    def prompt_frame(
        self,
        feats: list[torch.Tensor],
        pos: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        prompts: torch.Tensor | None,  # (B, E, 256) extra sparse tokens, e.g. [SEG] embeddings
        point_inputs: dict | None = None,  # optional clicks (B, P, 2)/(B, P), in S×S pixels
        run_mem_encoder: bool = True,
    ) -> dict:
        """One prompted frame without memory (a Sa2VA key frame, or an image):
        `decode` then `frame_output`. Returns SAM2Base's per-frame output dict:
        pred_masks (B, 1, 4h, 4w) logits, pred_masks_high_res (B, 1, S, S), obj_ptr
        (B, 256), object_score_logits (B, 1), maskmem_features / maskmem_pos_enc
        for the memory bank."""
        decoded = self.decode(feats, pos, feat_sizes, prompts, point_inputs)
        return self.frame_output(feats, feat_sizes, decoded, point_inputs, run_mem_encoder)

    def _history(self) -> int:
        """How many past non-key frames SAM-2 can still attend to (memories and pointers)."""
        sam = self.sam2_model
        return max(sam.num_maskmem - 1, sam.max_obj_ptrs_in_encoder - 1 if sam.use_obj_ptrs_in_encoder else 0)

    @torch.no_grad()
    def track(
        self,
        num_frames: int,
        load_frame: Callable[[int], torch.Tensor],  # i -> (3, S, S) normalised pixels
        prompts: torch.Tensor,  # (B, E, 256): one row of prompt tokens per object
        key_frames: Sequence[int],
        *,
        memory_in_bf16: bool = True,
        backbone_batch: int = 1,
        keep_all_memory: bool = False,
        key_frame_decoder: KeyFrameDecoder | None = None,
        encode_frames: Callable[[Sequence[int]], FrameFeatures] | None = None,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (frame index, low-res mask logits (B, 1, 4h, 4w)) for every frame in order.

        As in the official predictor, every key frame is prompted (no memory) before
        propagation; then each other frame attends to all key frames, the
        `num_maskmem - 1` previous frames and up to `max_obj_ptrs_in_encoder`
        object pointers. Entries older than that are dropped unless
        `keep_all_memory` (for tests that check the dropping changes nothing).

        `key_frame_decoder(feats, pos, feat_sizes) -> DecodedFrame` replaces how a
        key frame is decoded (default: `decode` with `prompts`); what it returns is
        both the key frame's output and what enters the memory bank. B is still
        `prompts.shape[0]`. DeSa2VA uses it to track its fused text/vision masks.

        `encode_frames(indices) -> FrameFeatures` replaces loading and encoding a chunk
        of frames (`load_frame` is then unused): several tracks of one video share
        one image-encoder pass per frame through it (`Sa2VA.track_batch`).
        """
        B = prompts.shape[0]
        key_set = self._key_set(key_frames, num_frames)
        run = _Run(self, memory_in_bf16)

        def encode(indices: Sequence[int]) -> FrameFeatures:
            if encode_frames is not None:
                return encode_frames(indices)
            return self.encode(torch.stack([load_frame(i) for i in indices]))

        key_masks: dict[int, torch.Tensor] = {}
        for a in range(0, len(key_set), backbone_batch):
            chunk = key_set[a : a + backbone_batch]
            ff = encode(chunk)
            for j, i in enumerate(chunk):
                feats, pos = ff.frame(j, B)
                if key_frame_decoder is None:
                    decoded = self.decode(feats, pos, ff.feat_sizes, prompts)
                else:
                    decoded = key_frame_decoder(feats, pos, ff.feat_sizes)
                out = self.frame_output(feats, ff.feat_sizes, decoded)
                key_masks[i] = out["pred_masks"]
                run.bank["cond_frame_outputs"][i] = run.compact(out)
            del ff
        yield from self._propagate(run, num_frames, encode, key_masks, B, backbone_batch=backbone_batch,
                                   keep_all_memory=keep_all_memory)

    @staticmethod
    def _key_set(key_frames: Sequence[int], num_frames: int) -> list[int]:
        key_set = sorted(set(int(k) for k in key_frames))
        if not key_set or key_set[0] < 0 or key_set[-1] >= num_frames:
            raise ValueError(f"key frames {key_frames} out of range for {num_frames} frames")
        return key_set

    @torch.no_grad()
    def track_from_masks(
        self,
        num_frames: int,
        load_frame: Callable[[int], torch.Tensor],  # i -> (3, S, S) normalised pixels
        key_frames: Sequence[int],
        key_mask: Callable[[int, list, list, list], torch.Tensor],
        batch: int,
        *,
        decoder: DecoderRole = "original",
        gate_absent_objects: bool = True,
        memory_in_bf16: bool = True,
        backbone_batch: int = 1,
        keep_all_memory: bool = False,
        on_event: Callable[[str, int], None] | None = None,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """SAM-2's video predictor seeded with mask inputs (Sa2VA-i's second stage).

        For each key frame i, `key_mask(i, feats, pos, feat_sizes)` gets the frame's
        features as the *fine-tuned* decoder projects them (batched by `batch`
        objects) and returns its binary mask inputs (batch, 1, S, S). Each mask then
        enters a fresh memory bank the way `SAM2VideoPredictor.add_new_mask` +
        `propagate_in_video` put it there: the mask is the key frame's output (logits
        ±10, downsampled to 4h×4w), its object pointer comes from `decoder` with the
        mask as dense prompt, and its memory is encoded from that low-res output
        upsampled to S×S. Every other frame is tracked forward with `decoder` (its
        own conv_s0/s1 projections too) and, with `gate_absent_objects`, comes out
        empty (NO_OBJ_SCORE) where its object score is <= 0.

        Key frames are encoded once: the image encoder's output is projected for each
        decoder. `on_event(stage, frame)` is called before each step ("key_mask",
        "seed", "propagate"), for tests and profiling. Yields like `track`.
        """
        sam = self.sam2_model
        key_set = self._key_set(key_frames, num_frames)
        run = _Run(self, memory_in_bf16)
        mode = lambda: sam.using(decoder, mask_absent_objects=gate_absent_objects)  # noqa: E731
        with mode():
            pass  # a missing decoder fails here, before any frame is read

        key_masks: dict[int, torch.Tensor] = {}
        for a in range(0, len(key_set), backbone_batch):
            chunk = key_set[a : a + backbone_batch]
            pixels = torch.stack([load_frame(i) for i in chunk])
            p = next(self.parameters())
            with self._autocast():
                raw = sam.backbone(pixels.to(device=p.device, dtype=p.dtype))
                with sam.using("fine_tuned"):
                    tuned = FrameFeatures(*sam._prepare_backbone_features(sam.project(raw))[1:])
                with mode():
                    own = FrameFeatures(*sam._prepare_backbone_features(sam.project(raw))[1:])
            del raw
            for j, i in enumerate(chunk):
                if on_event:
                    on_event("key_mask", i)
                feats, pos = tuned.frame(j, batch)
                with sam.using("fine_tuned"):
                    masks = key_mask(i, feats, pos, tuned.feat_sizes)
                if on_event:
                    on_event("seed", i)
                feats, pos = own.frame(j, batch)
                with mode(), self._autocast():
                    out = sam.track_step(
                        frame_idx=i, is_init_cond_frame=True, current_vision_feats=feats,
                        current_vision_pos_embeds=pos, feat_sizes=own.feat_sizes, point_inputs=None,
                        mask_inputs=masks.to(feats[-1].device, torch.float32), output_dict=run.bank,
                        num_frames=num_frames, run_mem_encoder=False,
                    )
                    # The predictor's pre-flight encodes a mask-input frame's memory from
                    # its low-res output brought back to S×S, not from the ±10 input.
                    high = F.interpolate(out["pred_masks"], size=(self.image_size, self.image_size),
                                         mode="bilinear", align_corners=False)
                    out["maskmem_features"], out["maskmem_pos_enc"] = sam._encode_new_memory(
                        feats, own.feat_sizes, high, out["object_score_logits"], is_mask_from_pts=True)
                key_masks[i] = out["pred_masks"]
                run.bank["cond_frame_outputs"][i] = run.compact(out)
            del tuned, own
        def encode(indices: Sequence[int]) -> FrameFeatures:
            with mode():
                return self.encode(torch.stack([load_frame(i) for i in indices]))

        yield from self._propagate(run, num_frames, encode, key_masks, batch, backbone_batch=backbone_batch,
                                   keep_all_memory=keep_all_memory, on_event=on_event, mode=mode)

    def _propagate(self, run: "_Run", num_frames: int, encode: Callable[[Sequence[int]], FrameFeatures],
                   key_masks: dict[int, torch.Tensor], B: int, *, backbone_batch: int, keep_all_memory: bool,
                   mode=contextlib.nullcontext,
                   on_event: Callable[[str, int], None] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield every frame in order: key frames' stored outputs, the others tracked
        with the memory bank (entries SAM-2 can no longer attend to are dropped).
        `encode(indices)` gives the features of a chunk of non-key frames."""
        sam = self.sam2_model
        bank = run.bank

        others = [i for i in range(num_frames) if i not in key_masks]
        chunks = iter([others[a : a + backbone_batch] for a in range(0, len(others), backbone_batch)])
        slot: dict[int, int] = {}
        ff = None
        history = self._history()
        stats = self.last_track_stats = {"frames": 0, "max_bank_entries": 0}
        for i in range(num_frames):
            stats["frames"] = i + 1
            if i in key_masks:
                yield i, key_masks.pop(i)
                continue
            if i not in slot:
                chunk = next(chunks)
                ff = None  # drop the previous chunk's features before computing the next
                ff = encode(chunk)
                slot = {idx: j for j, idx in enumerate(chunk)}
            feats, pos = ff.frame(slot[i], B)
            if on_event:
                on_event("propagate", i)
            with mode(), self._autocast():
                out = sam.track_step(
                    frame_idx=i, is_init_cond_frame=False, current_vision_feats=feats,
                    current_vision_pos_embeds=pos, feat_sizes=ff.feat_sizes, point_inputs=None,
                    mask_inputs=None, output_dict=bank, num_frames=num_frames, run_mem_encoder=True,
                )
            bank["non_cond_frame_outputs"][i] = run.compact(out)
            if not keep_all_memory:
                for old in [t for t in bank["non_cond_frame_outputs"] if t <= i - history]:
                    del bank["non_cond_frame_outputs"][old]
            stats["max_bank_entries"] = max(stats["max_bank_entries"], len(bank["non_cond_frame_outputs"]))
            yield i, out["pred_masks"]


class _Run:
    """One tracking run's memory bank, in the layout SAM2Base reads."""

    def __init__(self, encoder: GroundingEncoder, memory_in_bf16: bool):
        self.bank: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        self.memory_in_bf16 = memory_in_bf16
        self._pos_enc: list = []

    def compact(self, out: dict) -> dict:
        # What later frames read from the bank: memory features, their position
        # encoding (identical for every frame, so shared), object pointer, score.
        mem = out["maskmem_features"]
        if self.memory_in_bf16:
            mem = mem.to(torch.bfloat16)
        if not self._pos_enc:
            self._pos_enc.append(out["maskmem_pos_enc"])
        return {
            "maskmem_features": mem, "maskmem_pos_enc": self._pos_enc[0],
            "obj_ptr": out["obj_ptr"], "object_score_logits": out["object_score_logits"],
        }


def upsample_logits(low_res: torch.Tensor, image_size: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 1, 4h, 4w) logits → (B, H, W): first to the S×S SAM frame, then to the
    original size, both bilinear (the official code's two steps)."""
    x = F.interpolate(low_res.float(), size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = F.interpolate(x, size=tuple(out_hw), mode="bilinear", align_corners=False)
    return x[:, 0]


__all__ = [
    "DecodedFrame", "FrameFeatures", "GroundingEncoder", "KeyFrameDecoder", "SAM_PROMPT_DIM", "Sa2VASam2",
    "build_sam2", "upsample_logits",
]
