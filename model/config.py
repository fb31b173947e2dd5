"""Sa2VA configuration: what a released `config.json` says, as typed values.

A released Sa2VA checkpoint carries one `config.json` in one of two families
(see docs/sa2va-checkpoints.md §2):

* InternVL family (`Sa2VAChatModel`): `vision_config` (InternViT), `llm_config`
  (the causal LM), `template` (an xtuner template *name*), pixel-shuffle settings.
* Qwen family (`Sa2VAChatModelQwen`): a Qwen2.5-VL / Qwen3-VL config plus a
  `template` that is a Jinja chat template.

Neither says which SAM-2 is inside: the released code hard-codes SAM 2.0
Hiera-L at 1024 px. refsav's own random checkpoints (tests, benchmarks) use
other SAM-2 sizes and record them under a `refsav` block that the released
files do not have; its absence means "Hiera-L, 1024".
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from refsav.schemas.errors import RefsavError, SchemaError

Family = Literal["internvl", "qwen2.5-vl", "qwen3-vl"]
FAMILIES: tuple[str, ...] = ("internvl", "qwen2.5-vl", "qwen3-vl")
KeyFrameMode = Literal["first", "uniform"]
Sam2Norm = Literal["official", "exact"]
SAM2_NORMS: tuple[str, ...] = ("official", "exact")
# "official": Sa2VA's own predict_forward; "sa2va-i": the Sa2VA-i procedure (docs/sa2va-i.md).
InferenceMode = Literal["official", "sa2va-i"]
INFERENCE_MODES: tuple[str, ...] = ("official", "sa2va-i")
# Key frames when none are asked for: the official code takes the first 5; Sa2VA-i's
# evaluation spreads 5 (its demos use 12).
DEFAULT_NUM_KEY_FRAMES: dict[str, int] = {"official": 5, "sa2va-i": 5}

# Sa2VA adds these after the base model's own special tokens (docs/sa2va-checkpoints.md §4).
SA2VA_SPECIAL_TOKENS: tuple[str, ...] = ("[SEG]", "<p>", "</p>", "<vp>", "</vp>")
INTERNVL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
)
SEG_TOKEN = "[SEG]"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"

# Both the InternVL tiles and SAM-2's input use ImageNet statistics.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# SAM-2's input statistics as the official `preprocess_image` really applies them: it
# builds the tensors in bfloat16 whatever the model dtype, which rounds each value to
# 8 significant bits (docs/sa2va-checkpoints.md §6). Exact values shift every
# normalised pixel by up to 0.01 and change some mask pixels.
SAM2_OFFICIAL_MEAN: tuple[float, float, float] = (0.484375, 0.455078125, 0.40625)
SAM2_OFFICIAL_STD: tuple[float, float, float] = (0.228515625, 0.2236328125, 0.224609375)

# Width of the SAM-2 prompt tokens; text_hidden_fcs ends here.
SAM_PROMPT_DIM = 256


@dataclass(frozen=True)
class ChatTemplate:
    """An xtuner-style template: Sa2VA's `predict_forward` uses only INSTRUCTION."""

    name: str
    instruction: str  # contains "{input}"
    stop_words: tuple[str, ...]


TEMPLATES: Mapping[str, ChatTemplate] = {
    "internlm2_chat": ChatTemplate(
        "internlm2_chat", "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n", ("<|im_end|>",)
    ),
    "qwen_chat": ChatTemplate(
        "qwen_chat",
        "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
        ("<|im_end|>", "<|endoftext|>"),
    ),
    "phi3_chat": ChatTemplate("phi3_chat", "<|user|>\n{input}<|end|>\n<|assistant|>\n", ("<|end|>",)),
}


@dataclass(frozen=True)
class Sam2Spec:
    """Which SAM-2 of Meta's `sam2` package to build, and at what input size.

    Released Sa2VA: SAM 2.0 Hiera-L (`configs/sam2/sam2_hiera_l.yaml`) at 1024.
    """

    config_name: str = "configs/sam2/sam2_hiera_l.yaml"
    image_size: int = 1024

    def __post_init__(self) -> None:
        # The YAML is handed to hydra's `instantiate`, which calls whatever `_target_` it
        # names: only the sam2 package's own model configs may be used, never a path
        # that config.json could point at a file of its choosing.
        if not re.fullmatch(r"configs/sam2(\.1)?/[A-Za-z0-9_+\-]+(\.[A-Za-z0-9_+\-]+)*\.yaml", self.config_name) \
                or ".." in self.config_name.split("/"):
            raise SchemaError(f"{self.config_name!r} is not one of the sam2 package's configs "
                              "(configs/sam2/<name>.yaml or configs/sam2.1/<name>.yaml)", field="refsav.sam2.config")
        # A frame is resized to image_size² before SAM-2: an absurd size would exhaust memory.
        if not (64 <= self.image_size <= 4096 and self.image_size % 32 == 0):
            raise SchemaError(f"image_size must be a multiple of 32 from 64 to 4096, got {self.image_size}",
                              field="refsav.sam2.image_size")

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config_name, "image_size": self.image_size}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> "Sam2Spec":
        if not raw:
            return cls()
        try:
            return cls(config_name=str(raw["config"]), image_size=int(raw["image_size"]))
        except SchemaError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"bad SAM-2 spec {dict(raw)!r}: {exc}", field="refsav.sam2") from None


@dataclass(frozen=True)
class InternVLImageSpec:
    """How InternVL-family inputs are cut into tiles (docs/sa2va-checkpoints.md §6: hard-coded at inference)."""

    tile_size: int = 448  # vision_config.image_size / force_image_size
    patch_size: int = 14
    downsample_ratio: float = 0.5
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True

    @property
    def tokens_per_tile(self) -> int:
        # (448/14)^2 = 1024 patches, pixel shuffle by 0.5 → 256 tokens.
        side = self.tile_size // self.patch_size
        return int(side * self.downsample_ratio) ** 2


@dataclass(frozen=True)
class QwenPixelSpec:
    """Pixel bounds for one Qwen-family image (or video key frame) at inference.

    The released Sa2VA Qwen code (docs/sa2va-checkpoints.md §6; the Qwen3-VL `Sa2VAChatModelQwen` too) sets
    `min_pixels = 512·28·28`, `max_pixels = 2048·28·28` and passes them to the
    processor call, whatever the checkpoint's saved processor says; so these, not
    the saved processor's defaults, are the default here. The image processor
    rounds each side to its own factor (patch × merge: 28 for Qwen2.5-VL, 32 for
    Qwen3-VL, whose patch is 16). The released Qwen3-VL code passes the same
    28-based pixel counts, so the bounds are identical and only the rounding factor
    differs (512·28·28 pixels is ~392 tokens there, not 512). refsav's tiny random
    checkpoints record smaller bounds under `refsav.qwen_pixels` so CPU tests stay
    small; released files have no such block.
    """

    min_pixels: int = 512 * 28 * 28
    max_pixels: int = 2048 * 28 * 28

    def __post_init__(self) -> None:
        if not 0 < self.min_pixels <= self.max_pixels:
            raise SchemaError(
                f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}",
                field="refsav.qwen_pixels",
            )

    def processor_size(self) -> dict[str, int]:
        """The `size` a transformers Qwen2-VL image processor takes (5.x names)."""
        return {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}

    def to_json(self) -> dict[str, Any]:
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> "QwenPixelSpec":
        if not raw:
            return cls()
        try:
            return cls(min_pixels=int(raw["min_pixels"]), max_pixels=int(raw["max_pixels"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"bad Qwen pixel bounds {dict(raw)!r}: {exc}", field="refsav.qwen_pixels") from None


@dataclass(frozen=True)
class Sa2VAConfig:
    """A released `config.json`, parsed.

    `raw` is kept verbatim (deep-copied) so a checkpoint written back carries every
    field the base model had, even those refsav does not interpret.
    """

    family: Family
    raw: Mapping[str, Any]
    template: str  # InternVL: xtuner template name; Qwen: Jinja chat template
    sam2: Sam2Spec = field(default_factory=Sam2Spec)
    qwen_pixels: QwenPixelSpec = field(default_factory=QwenPixelSpec)  # Qwen family only

    @property
    def llm_hidden_size(self) -> int:
        return int(self.text_config_dict()["hidden_size"])

    def text_config_dict(self) -> dict[str, Any]:
        if self.family == "internvl":
            return dict(self.raw["llm_config"])
        text = self.raw.get("text_config")
        if text:
            return dict(text)
        return dict(self.raw)  # flat pre-v5 Qwen2.5-VL configs keep text fields at the top

    def llm_architecture(self) -> str:
        if self.family != "internvl":
            return self.family
        archs = self.raw["llm_config"].get("architectures") or [""]
        return str(archs[0])

    def chat_template(self) -> ChatTemplate:
        """The xtuner template (InternVL family only)."""
        name = self.template.replace("-", "_")
        if name not in TEMPLATES:
            raise SchemaError(
                f"unknown template {self.template!r}; expected one of {sorted(TEMPLATES)}", field="template"
            )
        return TEMPLATES[name]

    def image_spec(self) -> InternVLImageSpec:
        vc = self.raw["vision_config"]
        size = self.raw.get("force_image_size") or vc.get("image_size", 448)
        return InternVLImageSpec(
            tile_size=int(size),
            patch_size=int(vc.get("patch_size", 14)),
            downsample_ratio=float(self.raw.get("downsample_ratio", 0.5)),
        )

    def to_released(self) -> dict[str, Any]:
        out = copy.deepcopy(dict(self.raw))
        # Only non-default settings are written, so a released file round-trips unchanged.
        settings = (("sam2", self.sam2, Sam2Spec()), ("qwen_pixels", self.qwen_pixels, QwenPixelSpec()))
        for key, value, default in settings:
            if value != default:
                out.setdefault("refsav", {})[key] = value.to_json()
            else:
                out.get("refsav", {}).pop(key, None)
        if "refsav" in out and not out["refsav"]:
            del out["refsav"]
        return out

    @classmethod
    def from_released(cls, raw: Mapping[str, Any], *, file: str | None = None) -> "Sa2VAConfig":
        """Parse a released `config.json` (already decoded). Raises SchemaError."""
        try:
            return _parse(raw)
        except SchemaError as err:
            raise err.at(file=file) from None


def detect_family(raw: Mapping[str, Any]) -> Family:
    if "llm_config" in raw:
        return "internvl"
    kinds = {
        str((raw.get(k) or {}).get("model_type", "")) for k in ("text_config", "vision_config")
    } | {str(raw.get("model_type", ""))}
    archs = " ".join(raw.get("architectures") or [])
    if any(k.startswith("qwen3_vl") for k in kinds) or "Qwen3VL" in archs:
        return "qwen3-vl"
    if any(k.startswith("qwen2_5_vl") for k in kinds) or "vision_config" in raw:
        return "qwen2.5-vl"
    raise SchemaError("neither `llm_config` (InternVL family) nor a Qwen-VL `vision_config`", field="llm_config")


def _parse(raw: Mapping[str, Any]) -> Sa2VAConfig:
    if not isinstance(raw, Mapping):
        raise SchemaError("config.json must hold a JSON object")
    family = detect_family(raw)
    template = raw.get("template")
    if not isinstance(template, str) or not template:
        raise SchemaError("missing or empty", field="template")
    sam2 = Sam2Spec.from_json((raw.get("refsav") or {}).get("sam2"))
    qwen_pixels = QwenPixelSpec.from_json((raw.get("refsav") or {}).get("qwen_pixels"))
    cfg = Sa2VAConfig(family=family, raw=copy.deepcopy(dict(raw)), template=template, sam2=sam2,
                      qwen_pixels=qwen_pixels)
    if family == "internvl":
        for key in ("vision_config", "llm_config"):
            if not isinstance(raw.get(key), Mapping):
                raise SchemaError("missing or not an object", field=key)
        if str(raw.get("ps_version", "v2")) == "v1":
            raise SchemaError("ps_version 'v1' pixel shuffle is not supported (InternVL2.5/3 use 'v2')",
                              field="ps_version")
        cfg.chat_template()  # fail early on an unknown template name
        if "hidden_size" not in raw["llm_config"]:
            raise SchemaError("missing", field="llm_config.hidden_size")
    elif "hidden_size" not in cfg.text_config_dict():
        raise SchemaError("missing", field="text_config.hidden_size")
    return cfg


@dataclass(frozen=True)
class PredictOptions:
    """Inference settings. Defaults reproduce the official `predict_forward`."""

    max_new_tokens: int = 2048
    key_frames: KeyFrameMode = "first"  # official: the first `num_key_frames` frames
    num_key_frames: int = 5
    mask_threshold: float = 0.0  # on logits; sigmoid > 0.5 in the official code
    # SAM-2 memory bank entries are stored in bf16 by the official predictor.
    memory_in_bf16: bool = True
    # Frames per image-encoder batch; features are dropped after use, so at most
    # this many frames' features are alive at once.
    backbone_batch: int = 1
    # SAM-2 input normalisation: "official" = the bf16-rounded ImageNet statistics (and,
    # for a still image under bf16, bf16 arithmetic) of the released code; "exact" =
    # float32 ImageNet statistics and arithmetic.
    sam2_norm: Sam2Norm = "official"
    # "sa2va-i": key frames spread by Sa2VA-i's own rule (`key_frames` is not used),
    # decoded by the fine-tuned decoder, tracked by the original SAM-2 decoder; the
    # model must then carry that decoder (refsav.model.sa2va_i).
    inference: InferenceMode = "official"
    # Prompts of one image / video generated together by `Sa2VA.ground_batch` /
    # `predict_batch` (left-padded). Changes speed and memory, not the results.
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.key_frames not in ("first", "uniform"):
            raise RefsavError(f"must be 'first' or 'uniform', got {self.key_frames!r}", field="key_frames")
        if self.num_key_frames < 1:
            raise RefsavError("must be >= 1", field="num_key_frames")
        if self.max_new_tokens < 0:
            raise RefsavError("must be >= 0", field="max_new_tokens")
        if self.batch_size < 1:
            raise RefsavError("must be >= 1", field="batch_size")
        if self.backbone_batch < 1:
            raise RefsavError("must be >= 1", field="backbone_batch")
        if self.sam2_norm not in SAM2_NORMS:
            raise RefsavError(f"must be one of {SAM2_NORMS}, got {self.sam2_norm!r}", field="sam2_norm")
        if self.inference not in INFERENCE_MODES:
            raise RefsavError(f"must be one of {INFERENCE_MODES}, got {self.inference!r}", field="inference")


__all__ = [
    "ChatTemplate", "DEFAULT_NUM_KEY_FRAMES", "FAMILIES", "Family", "IMAGENET_MEAN", "INFERENCE_MODES",
    "InferenceMode", "IMAGENET_STD", "IMG_CONTEXT_TOKEN",
    "IMG_END_TOKEN", "IMG_START_TOKEN", "INTERNVL_SPECIAL_TOKENS", "InternVLImageSpec", "KeyFrameMode",
    "PredictOptions", "QwenPixelSpec", "SA2VA_SPECIAL_TOKENS", "SAM2_NORMS", "SAM2_OFFICIAL_MEAN", "SAM2_OFFICIAL_STD",
    "SAM_PROMPT_DIM", "SEG_TOKEN", "Sa2VAConfig", "Sam2Norm", "Sam2Spec",
    "TEMPLATES", "detect_family",
]
