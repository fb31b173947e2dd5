"""Build transformers' native VLM classes from a released Sa2VA config.

No remote code: the InternVL family runs on `InternVLForConditionalGeneration`
(InternViT → `InternVLVisionModel`, `mlp1` → `multi_modal_projector`, the LLM
through `AutoModel`), the Qwen family on `Qwen2_5_VLForConditionalGeneration`
or `Qwen3VLForConditionalGeneration`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping

import torch
from torch import nn

from refsav.schemas.errors import SchemaError

from .config import Sa2VAConfig

# Keys of a saved config dict that are bookkeeping, not model settings.
_CONFIG_NOISE = (
    "architectures", "auto_map", "_name_or_path", "transformers_version", "torch_dtype", "dtype",
    "attn_implementation", "_attn_implementation", "use_flash_attn", "_commit_hash",
)


def _clean(d: Mapping[str, Any], *extra: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in _CONFIG_NOISE and k not in extra}


def internvl_vision_config(vc: Mapping[str, Any]):
    """InternViT's `vision_config` (model_type `intern_vit_6b`) → `InternVLVisionConfig`
    (renames from transformers' `convert_internvl_weights_to_hf.py`, docs/sa2va-checkpoints.md §7)."""
    from transformers import InternVLVisionConfig

    dropout = float(vc.get("attention_dropout", 0.0))
    return InternVLVisionConfig(
        hidden_size=int(vc["hidden_size"]),
        num_hidden_layers=int(vc["num_hidden_layers"]),
        num_attention_heads=int(vc["num_attention_heads"]),
        intermediate_size=int(vc["intermediate_size"]),
        attention_bias=bool(vc.get("qkv_bias", True)),
        use_qk_norm=bool(vc.get("qk_normalization", False)),
        norm_type=str(vc.get("norm_type", "layer_norm")),
        layer_norm_eps=float(vc.get("layer_norm_eps", 1e-6)),
        image_size=int(vc.get("image_size", 448)),
        patch_size=int(vc.get("patch_size", 14)),
        hidden_act=str(vc.get("hidden_act", "gelu")),
        attention_dropout=dropout,
        projection_dropout=dropout,
        hidden_dropout_prob=float(vc.get("dropout", 0.0)),
        use_absolute_position_embeddings=True,
        use_mean_pooling=True,  # InternViT has no final norm: the HF tower's is then Identity
        use_mask_token=False,
    )


def llm_text_config(llm: Mapping[str, Any]):
    """The `llm_config` dict → a transformers text config. InternLM2 becomes Llama
    (its fused `wqkv` is split by the checkpoint mapping)."""
    from transformers import CONFIG_MAPPING, LlamaConfig

    arch = str((llm.get("architectures") or [""])[0])
    model_type = str(llm.get("model_type", ""))
    if arch == "InternLM2ForCausalLM" or model_type == "internlm2":
        return LlamaConfig(
            vocab_size=int(llm["vocab_size"]),
            hidden_size=int(llm["hidden_size"]),
            intermediate_size=int(llm["intermediate_size"]),
            num_hidden_layers=int(llm["num_hidden_layers"]),
            num_attention_heads=int(llm["num_attention_heads"]),
            num_key_value_heads=int(llm.get("num_key_value_heads") or llm["num_attention_heads"]),
            rms_norm_eps=float(llm.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(llm.get("max_position_embeddings", 32768)),
            rope_theta=float(llm.get("rope_theta", 1e6)),
            rope_scaling=llm.get("rope_scaling"),
            attention_bias=bool(llm.get("bias", False)),
            mlp_bias=False,
            tie_word_embeddings=False,
        )
    if model_type not in CONFIG_MAPPING:
        raise SchemaError(f"LLM model_type {model_type!r} is not a transformers model", field="llm_config.model_type")
    return CONFIG_MAPPING[model_type](**_clean(llm, "model_type", "tie_word_embeddings"), tie_word_embeddings=False)


def build_vlm_config(cfg: Sa2VAConfig, *, image_token_id: int | None = None):
    """The transformers config of the VLM inside a Sa2VA checkpoint."""
    if cfg.family == "internvl":
        from transformers import InternVLConfig

        if image_token_id is None:
            raise ValueError("the InternVL family needs the <IMG_CONTEXT> id from the tokenizer")
        raw = cfg.raw
        return InternVLConfig(
            vision_config=internvl_vision_config(raw["vision_config"]).to_dict(),
            text_config=llm_text_config(raw["llm_config"]).to_dict(),
            image_token_id=int(image_token_id),
            downsample_ratio=float(raw.get("downsample_ratio", 0.5)),
            vision_feature_layer=int(raw.get("select_layer", -1)),
            vision_feature_select_strategy="default",  # drop CLS
            projector_hidden_act="gelu",
            tie_word_embeddings=False,
        )
    drop = ("model_type", "template", "refsav", "tie_word_embeddings")
    body = _clean(cfg.raw, *drop)
    if isinstance(body.get("text_config"), Mapping):
        body["text_config"] = _clean(body["text_config"], "tie_word_embeddings")
    if cfg.family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig(**body, tie_word_embeddings=False)
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(**body, tie_word_embeddings=False)


def vlm_class(cfg: Sa2VAConfig) -> type[nn.Module]:
    if cfg.family == "internvl":
        from transformers import InternVLForConditionalGeneration

        return InternVLForConditionalGeneration
    if cfg.family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Create parameters directly in `dtype` (no fp32 copy first: 4B in fp32 is 16 GB)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_vlm(vlm_config, cls: type[nn.Module], *, dtype: torch.dtype, initialize: bool) -> nn.Module:
    """Instantiate the VLM. With `initialize=False` the parameters are left
    uninitialised (the loader overwrites every one of them and refuses otherwise)."""
    from transformers.initialization import no_init_weights

    vlm_config._attn_implementation = "sdpa"
    ctx = contextlib.nullcontext() if initialize else no_init_weights()
    with ctx, default_dtype(dtype):
        model = cls(vlm_config)
    return model.eval()


def tie_lm_head(vlm: nn.Module) -> None:
    """Share the input embedding with the output head (released checkpoints whose
    base LLM ties them, e.g. Sa2VA-1B, store no `lm_head.weight`)."""
    vlm.lm_head.weight = vlm.get_input_embeddings().weight


__all__ = [
    "build_vlm", "build_vlm_config", "default_dtype", "internvl_vision_config", "llm_text_config",
    "tie_lm_head", "vlm_class",
]
