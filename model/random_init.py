"""Random-weight Sa2VA checkpoints in the released layout (tests, demos, speed runs).

`write_random_checkpoint(out, size, base)` writes the same files a released
checkpoint has — config.json (released fields + a `refsav` block), tokenizer
files, model.safetensors (sharded when large) — with random values:

| size  | base        | shapes of                                                        |
|-------|-------------|------------------------------------------------------------------|
| tiny  | internvl    | a 2-layer InternViT (56 px tiles) + 2-layer Qwen2 (H=64), SAM 2.1 Hiera-T at 256 px |
| tiny  | qwen2.5-vl  | a 2-block Qwen2.5-VL ViT + 2-layer text model (H=64), SAM 2.1 Hiera-T at 256 px |
| tiny  | qwen3-vl    | a 2-block Qwen3-VL ViT (2 DeepStack mergers) + 2-layer text model (H=64), SAM 2.1 Hiera-T at 256 px |
| 1b    | internvl    | Sa2VA-1B: InternViT-300M + Qwen2.5-0.5B (H=896), SAM 2.0 Hiera-L at 1024 |
| 4b    | internvl    | Sa2VA-4B: InternViT-300M + Qwen2.5-3B (H=2048), SAM 2.0 Hiera-L at 1024 |
| 4b    | qwen2.5-vl  | Sa2VA-Qwen2_5-VL-3B: Qwen2.5-VL-3B (H=2048), SAM 2.0 Hiera-L at 1024 |

The LLM shapes follow the base models' published configs (vocabulary = the base
tokenizer's length + Sa2VA's 5 tokens). qwen3-vl has no 4b: docs/sa2va-checkpoints.md §1
gives only Sa2VA-Qwen3-VL-4B's LLM width (2560), not the layer, head and ViT shapes. The tokenizer, though, is a small BPE
trained locally in milliseconds: the real vocabularies cannot be downloaded here,
and speed does not depend on them. Nothing is instantiated in full: tensors are
generated one shard at a time, so a 4B checkpoint needs about one shard of RAM.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refsav.schemas.errors import RefsavError
from refsav.schemas.io import atomic_write_json

from .config import INTERNVL_SPECIAL_TOKENS, SA2VA_SPECIAL_TOKENS, QwenPixelSpec, Sa2VAConfig, Sam2Spec

SIZES = ("tiny", "1b", "4b")
BASES = ("internvl", "qwen2.5-vl", "qwen3-vl")
LAYOUTS = ("sa2va", "sa2va-i")  # released Sa2VA; Sa2VA-i's two-decoder layout

TINY_SAM2 = Sam2Spec("configs/sam2.1/sam2.1_hiera_t.yaml", 256)
CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

# Qwen2-VL's chat template without the default system prompt (what Sa2VA stores as `template`).
# Qwen3-VL's own template renders a user turn of images + text to the same string.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' or 'video' in c %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in c %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Please segment the red ball. Sure, [SEG].",
    "Could you please segment the cat on the left in this video? It is [SEG].",
    "What is the person doing? The person is walking a dog along the beach.",
    "the medium pink star that moves down and to the right and passes behind the yellow ball",
    "Please respond with a segmentation mask. Sure, it is <p>the car</p> [SEG].",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}<>-_/\\|@#$%^&*+=~`",
]

# ------------------------------------------------------------------------------ configs

_INTERNVIT_300M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
_QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                   num_key_value_heads=2, max_window_layers=21, tie_word_embeddings=True)
_QWEN25_3B = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, max_window_layers=70, tie_word_embeddings=True)
# Qwen2 tokenizer: 151643 tokens + 22 specials; InternVL adds 9, Sa2VA 5.
_INTERNVL_QWEN2_VOCAB = 151665 + len(INTERNVL_SPECIAL_TOKENS) + len(SA2VA_SPECIAL_TOKENS)
_QWEN25_VL_VOCAB = 151665 + len(SA2VA_SPECIAL_TOKENS)


def _internvit(hidden_size: int, num_hidden_layers: int, num_attention_heads: int, intermediate_size: int,
               image_size: int) -> dict[str, Any]:
    return {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
        "hidden_size": hidden_size, "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads, "intermediate_size": intermediate_size,
        "qkv_bias": True, "qk_normalization": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
        "image_size": image_size, "patch_size": 14, "num_channels": 3, "hidden_act": "gelu",
        "initializer_factor": 0.1, "initializer_range": 1e-10, "dropout": 0.0, "attention_dropout": 0.0,
        "drop_path_rate": 0.0, "use_flash_attn": False,
    }


def _qwen2_llm(vocab_size: int, **shape: Any) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": vocab_size,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
        "use_sliding_window": False, "sliding_window": 32768, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "use_cache": True, "initializer_range": 0.02,
        "max_window_layers": shape.pop("max_window_layers", shape["num_hidden_layers"]), **shape,
    }  # the tiny config overrides bos/eos with its own tokenizer's ids


def internvl_config(size: str, token_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """A released-style InternVL-family config.json for `size` (tiny: sized to `token_ids`)."""
    if size == "tiny":
        ids = token_ids or {}
        vision = _internvit(32, 2, 2, 64, image_size=56)
        llm = _qwen2_llm(len(ids), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         bos_token_id=ids.get("<|endoftext|>"), eos_token_id=ids.get("<|im_end|>"))
    elif size == "1b":
        vision = _internvit(**_INTERNVIT_300M, image_size=448)
        llm = _qwen2_llm(_INTERNVL_QWEN2_VOCAB, **_QWEN25_05B)
    elif size == "4b":
        vision = _internvit(**_INTERNVIT_300M, image_size=448)
        llm = _qwen2_llm(_INTERNVL_QWEN2_VOCAB, **_QWEN25_3B)
    else:
        raise RefsavError(f"unknown size {size!r}; expected one of {SIZES}", field="size")
    return {
        "architectures": ["Sa2VAChatModel"], "model_type": "sa2va_chat",
        "auto_map": {
            "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
            "AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
            "AutoModelForCausalLM": "modeling_sa2va_chat.Sa2VAChatModel",
        },
        "vision_config": vision, "llm_config": llm, "template": "qwen_chat",
        "select_layer": -1, "downsample_ratio": 0.5, "force_image_size": vision["image_size"],
        "ps_version": "v2", "dynamic_image_size": True, "use_thumbnail": True, "min_dynamic_patch": 1,
        "max_dynamic_patch": 12, "pad2square": False, "use_backbone_lora": 0, "use_llm_lora": 0,
        "hidden_size": llm["hidden_size"], "tie_word_embeddings": False,
    }


def _qwen_envelope(vision: dict[str, Any], text: dict[str, Any], token_ids: dict[str, int]) -> dict[str, Any]:
    """A released Sa2VA Qwen-family config.json around the VLM's vision and text configs."""
    return {
        "architectures": ["Sa2VAChatModelQwen"], "model_type": "sa2va_chat",
        "auto_map": {"AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfigQwen",
                     "AutoModel": "modeling_sa2va_qwen.Sa2VAChatModelQwen",
                     "AutoModelForCausalLM": "modeling_sa2va_qwen.Sa2VAChatModelQwen"},
        "vision_config": vision, "text_config": text, "template": QWEN_CHAT_TEMPLATE,
        "image_token_id": token_ids["<|image_pad|>"], "video_token_id": token_ids["<|video_pad|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"], "vision_end_token_id": token_ids["<|vision_end|>"],
        "tie_word_embeddings": False,
    }


def qwen25_vl_config(size: str, token_ids: dict[str, int]) -> dict[str, Any]:
    """A released-style Sa2VA-Qwen2.5-VL config.json for `size`."""
    if size == "tiny":
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      fullatt_block_indexes=[1])
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=len(token_ids),
                    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    elif size == "4b":  # Qwen2.5-VL-3B-Instruct
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                      fullatt_block_indexes=[7, 15, 23, 31])
        text = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                    num_key_value_heads=2, vocab_size=_QWEN25_VL_VOCAB,
                    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
    else:
        raise RefsavError(
            f"no released Sa2VA on Qwen2.5-VL has size {size!r}; use tiny or 4b (Sa2VA-Qwen2_5-VL-3B shapes)",
            field="size",
        )
    vision.update(model_type="qwen2_5_vl", hidden_act="silu", in_chans=3, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, tokens_per_second=2, window_size=112)
    text.update(model_type="qwen2_5_vl_text", hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0,
                max_position_embeddings=128000, use_sliding_window=False, sliding_window=32768,
                max_window_layers=text["num_hidden_layers"], attention_dropout=0.0, tie_word_embeddings=False,
                bos_token_id=token_ids["<|endoftext|>"], eos_token_id=token_ids["<|im_end|>"])
    return _qwen_envelope(vision, text, token_ids)


def qwen3_vl_config(size: str, token_ids: dict[str, int]) -> dict[str, Any]:
    """A released-style Sa2VA-Qwen3-VL config.json (tiny only, see the module docstring)."""
    if size != "tiny":
        raise RefsavError(
            f"no Qwen3-VL shapes for size {size!r}: only tiny (Sa2VA-Qwen3-VL-4B's layer, head and ViT "
            "shapes are not documented; see docs/sa2va-checkpoints.md §1)",
            field="size",
        )
    # Released Qwen3-VL configs carry the ViT's model_type as "qwen3_vl" and the text RoPE
    # as `rope_scaling` + `rope_theta` (transformers < 5 names); transformers 5 reads both.
    vision = dict(model_type="qwen3_vl", depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                  out_hidden_size=64, hidden_act="gelu_pytorch_tanh", in_channels=3, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1], initializer_range=0.02)
    # head_dim 16 → 8 rotary frequencies, split T/H/W like the released [24, 20, 20] of 64 (interleaved).
    text = dict(model_type="qwen3_vl_text", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=len(token_ids),
                hidden_act="silu", rms_norm_eps=1e-6, rope_theta=5000000.0,
                rope_scaling={"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True},
                max_position_embeddings=262144, attention_bias=False, attention_dropout=0.0,
                initializer_range=0.02, use_cache=True, tie_word_embeddings=False,
                bos_token_id=token_ids["<|endoftext|>"], eos_token_id=token_ids["<|im_end|>"])
    return _qwen_envelope(vision, text, token_ids)


# ------------------------------------------------------------------------------ tokenizer / processor


def train_tokenizer(special_tokens: tuple[str, ...], *, vocab_size: int = 400):
    """A byte-level BPE with the given special tokens, trained on a few sentences (< 0.1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in special_tokens if t not in ("<|im_end|>", "<|endoftext|>")],
    )


def qwen_processor(tokenizer, size: str, base: str = "qwen2.5-vl"):
    if base == "qwen3-vl":
        return _qwen3_processor(tokenizer)  # tiny only
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    # Sa2VA-Qwen's processor uses 512..2048 merged patches; tiny stays small for CPU tests.
    lo, hi = ((16 * 28 * 28, 64 * 28 * 28) if size == "tiny" else (512 * 28 * 28, 2048 * 28 * 28))
    image = Qwen2VLImageProcessor(min_pixels=lo, max_pixels=hi, patch_size=14, temporal_patch_size=2, merge_size=2)
    video = Qwen2VLVideoProcessor(min_pixels=lo, max_pixels=hi)
    return Qwen2_5_VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                               chat_template=QWEN_CHAT_TEMPLATE)


def _qwen3_processor(tokenizer):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    # Qwen3-VL: 16 px patches merged 2×2 (32 px per LLM token), mean = std = 0.5.
    # Tiny: 16..64 LLM tokens per image, as for the tiny Qwen2.5-VL.
    lo, hi = 16 * 32 * 32, 64 * 32 * 32
    half = [0.5, 0.5, 0.5]
    image = Qwen2VLImageProcessor(size={"shortest_edge": lo, "longest_edge": hi}, patch_size=16,
                                  temporal_patch_size=2, merge_size=2, image_mean=half, image_std=half)
    video = Qwen3VLVideoProcessor(size={"shortest_edge": lo, "longest_edge": hi}, patch_size=16,
                                  temporal_patch_size=2, merge_size=2, image_mean=half, image_std=half)
    return Qwen3VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                            chat_template=QWEN_CHAT_TEMPLATE)


# ------------------------------------------------------------------------------ values


def _generator(seed: int, name: str) -> torch.Generator:
    # Each tensor's values depend only on (seed, name), not on the write order.
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF_FFFF)


def random_value(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Initialisation in the spirit of transformers' `_init_weights`: norm weights
    at 1, biases at 0, InternViT layer scales at 0.1, everything else N(0, 0.02)."""
    parts = name.split(".")
    leaf, owner = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if leaf in ("ls1", "ls2"):
        return torch.full(shape, 0.1)
    norm_like = "norm" in owner or owner.startswith("ln_") or name.startswith("mlp1.0.")
    if norm_like and len(shape) == 1:
        return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
    if leaf == "bias":
        return torch.zeros(shape)
    return torch.randn(shape, generator=_generator(seed, name)) * 0.02


@dataclass(frozen=True)
class RandomCheckpoint:
    path: Path
    size: str
    base: str
    num_parameters: int
    files: tuple[Path, ...]


def write_random_checkpoint(
    out: str | Path,
    size: str = "tiny",
    base: str = "internvl",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int = 2 * 1024**3,
    layout: str = "sa2va",
) -> RandomCheckpoint:
    """Write a random-weight Sa2VA checkpoint folder in the released layout.

    `layout="sa2va-i"` writes the Sa2VA-i two-decoder layout instead: the checkpoint's
    decoder under `sam_mask_decoder_modified` and a second, differently initialised
    one standing in for Meta's original under `sam_mask_decoder`."""
    from dataclasses import replace

    from .checkpoint import Layout, build_model, released_names, save_tokenizer, split_fused, write_safetensors

    if size not in SIZES:
        raise RefsavError(f"unknown size {size!r}; expected one of {SIZES}", field="size")
    if base not in BASES:
        raise RefsavError(f"unknown base {base!r}; expected one of {BASES}", field="base")
    if layout not in LAYOUTS:
        raise RefsavError(f"unknown layout {layout!r}; expected one of {LAYOUTS}", field="layout")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)

    processor = None
    if base == "internvl":
        tokenizer = train_tokenizer(CHAT_TOKENS + INTERNVL_SPECIAL_TOKENS + SA2VA_SPECIAL_TOKENS)
        raw = internvl_config(size, tokenizer.get_vocab())
    else:
        tokenizer = train_tokenizer(CHAT_TOKENS + QWEN_VL_TOKENS + SA2VA_SPECIAL_TOKENS)
        make_config = qwen3_vl_config if base == "qwen3-vl" else qwen25_vl_config
        raw = make_config(size, tokenizer.get_vocab())
        processor = qwen_processor(tokenizer, size, base)
    raw["refsav"] = {"random_init": {"size": size, "base": base, "seed": seed}}
    if layout != "sa2va":
        raw["refsav"]["random_init"]["layout"] = layout
    if processor is not None and size == "tiny":
        # Inference passes the config's bounds to the processor: record the tiny ones
        # (released checkpoints have none and get Sa2VA's 512..2048·28² pixels).
        bounds = processor.image_processor.size
        spec = QwenPixelSpec(min_pixels=bounds.shortest_edge, max_pixels=bounds.longest_edge)
        raw["refsav"]["qwen_pixels"] = spec.to_json()
    if size == "tiny":
        raw["refsav"]["sam2"] = TINY_SAM2.to_json()
    cfg = Sa2VAConfig.from_released(raw)
    key_layout = replace(Layout.of(cfg), two_decoders=layout == "sa2va-i")

    tied = bool(cfg.text_config_dict().get("tie_word_embeddings", False))
    # The VLM skeleton lives on the meta device (shapes only); SAM-2 is built for real
    # and keeps the package's own initialisation (~1 GB fp32 for Hiera-L).
    torch.manual_seed(seed)
    skeleton = build_model(cfg, tokenizer, dtype=torch.float32, device="meta", tied=tied)
    if key_layout.two_decoders:
        original = skeleton.grounding_encoder.sam2_model.add_original_decoder()
        # The package's own initialisation again, from another seed, so the two decoders differ.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            for module in original.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    state = skeleton.state_dict()
    module_shapes = {k: tuple(v.shape) for k, v in state.items()}
    sam_state = {k: v for k, v in state.items() if k.startswith("grounding_encoder.")}
    del skeleton, state
    names = released_names(module_shapes, key_layout, tied=tied)

    def shape_of(name: str) -> tuple[int, ...]:
        kind, targets = names[name]
        if kind == "copy":
            return module_shapes[targets[0]]
        from .checkpoint import fuse

        return tuple(fuse(kind, [torch.empty(module_shapes[t], device="meta") for t in targets], key_layout).shape)

    def make(name: str) -> torch.Tensor:
        kind, targets = names[name]
        if targets[0] in sam_state:
            return sam_state[targets[0]]
        value = random_value(name, shape_of(name), seed)
        split_fused(kind, value, key_layout)  # the planned split must apply to what we write
        return value

    specs = [(name, shape_of(name), dtype) for name in names]
    files = write_safetensors(folder, specs, make, max_shard_bytes=max_shard_bytes)
    atomic_write_json(folder / "config.json", cfg.to_released(), indent=2)
    atomic_write_json(folder / "generation_config.json", {"_from_model_config": True}, indent=2)
    save_tokenizer(folder, tokenizer, processor)
    n_params = sum(int(torch.Size(s).numel()) for _, s, _ in specs)
    return RandomCheckpoint(folder, size, base, n_params, tuple(files))


__all__ = [
    "BASES", "LAYOUTS", "QWEN_CHAT_TEMPLATE", "RandomCheckpoint", "SIZES", "TINY_SAM2", "internvl_config", "qwen25_vl_config",
    "qwen3_vl_config", "qwen_processor", "random_value", "train_tokenizer", "write_random_checkpoint",
]
