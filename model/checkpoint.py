"""Released Sa2VA checkpoints ↔ refsav's modules.

Key names (docs/sa2va-checkpoints.md §3, §7):

    released                                         module (Sa2VAModel)
    vision_model.embeddings.class_embedding          vlm.model.vision_tower.embeddings.cls_token
    vision_model.encoder.layers.{i}.attn.qkv.*       vlm.model.vision_tower.encoder.layer.{i}.attention.{q,k,v}_proj.*  (split by rows)
    mlp1.{0,1,3}.*                                   vlm.model.multi_modal_projector.{layer_norm,linear_1,linear_2}.*
    language_model.model.*                           vlm.model.language_model.*   (InternLM2: renamed to Llama, wqkv split)
    language_model.lm_head.weight                    vlm.lm_head.weight           (absent → tied to the embeddings)
    model.{model.visual,visual}.*                    vlm.model.visual.*           (Qwen family, both transformers layouts)
    model.{model.language_model,model}.*             vlm.model.language_model.*
    model.lm_head.weight                             vlm.lm_head.weight
    grounding_encoder.sam2_model.*                   grounding_encoder.sam2_model.*  (`.g_weight` ↔ `.gamma`)
    Sa2VA-i two-decoder layout (docs/sa2va-i.md):
    grounding_encoder.sam2_model.sam_mask_decoder_modified.*   grounding_encoder.sam2_model.sam_mask_decoder.*  (fine-tuned)
    grounding_encoder.sam2_model.sam_mask_decoder.*            grounding_encoder.sam2_model.original_mask_decoder.*  (Meta's)
    text_hidden_fcs.{0,2}.*                          text_hidden_fcs.{0,2}.*

Loading is all-or-nothing: every module tensor must come from the checkpoint
and every checkpoint tensor must land somewhere, with the right shape, or
`CheckpointError` lists what is wrong (`strict=False` loads anyway and returns
the report). Weights are read from safetensors only; pickle files (`.bin`,
`.pt`, `.pth`) can run code when loaded and are refused unless `allow_pickle=True`,
whether found in the folder or listed in `model.safetensors.index.json`; even then
they go through `torch.load(weights_only=True)`, which refuses any object that is not
plain tensor data. Index entries must name files inside the checkpoint folder.
Every tensor that feeds a floating-point parameter must itself be floating point,
and tensors with NaN or infinite values are refused (both named in the error).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch

from refsav.schemas.errors import SchemaError
from refsav.schemas.io import atomic_path, atomic_write_json, read_json

from .config import IMG_CONTEXT_TOKEN, Sa2VAConfig

# ---------------------------------------------------------------------------- key mapping

SAM_PREFIX = "grounding_encoder.sam2_model."
# The Sa2VA-i layout: the fine-tuned decoder renamed, Meta's under the usual name.
SA2VA_I_TUNED = SAM_PREFIX + "sam_mask_decoder_modified."
MODULE_TUNED = SAM_PREFIX + "sam_mask_decoder."
MODULE_ORIGINAL = SAM_PREFIX + "original_mask_decoder."
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Checkpoint tensors that carry nothing we need (old LLM code saved RoPE tables).
IGNORABLE = (re.compile(r"\.rotary_emb\.inv_freq$"),)


@dataclass(frozen=True)
class Layout:
    """What the mapping needs to know about a checkpoint besides key names."""

    family: str  # "internvl" | "qwen2.5-vl" | "qwen3-vl"
    internlm2: bool = False  # InternVL family with an InternLM2 LLM (fused wqkv)
    num_heads: int = 0  # InternLM2 only: attention heads,
    num_kv_heads: int = 0  # key/value heads,
    head_dim: int = 0  # and head width, to split wqkv
    # Sa2VA-i layout: both SAM-2 mask decoders, the fine-tuned one under
    # `sam_mask_decoder_modified` (told by the weights, not by config.json).
    two_decoders: bool = False

    @classmethod
    def of(cls, cfg: Sa2VAConfig) -> "Layout":
        if cfg.family != "internvl" or cfg.llm_architecture() != "InternLM2ForCausalLM":
            return cls(cfg.family)
        llm = cfg.raw["llm_config"]
        heads = int(llm["num_attention_heads"])
        return cls(
            cfg.family, True, heads, int(llm.get("num_key_value_heads") or heads), int(llm["hidden_size"]) // heads
        )


# A released key maps to one module key ("copy") or to three ("qkv" / "wqkv" splits).
Target = tuple[str, tuple[str, ...]]  # (kind, module keys)

_VIT = "vlm.model.vision_tower."
_VIT_RULES = [  # (released regex, module template); applied to the text after "vision_model."
    (r"embeddings\.class_embedding", "embeddings.cls_token"),
    (r"embeddings\.position_embedding", "embeddings.position_embeddings"),
    (r"embeddings\.patch_embedding\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
    (r"encoder\.layers\.(\d+)\.ls([12])", r"encoder.layer.\1.lambda_\2"),
    (r"encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.(weight|bias)", r"encoder.layer.\1.attention.\2.\3"),
    (r"encoder\.layers\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layer.\1.attention.projection_layer.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"encoder.layer.\1.mlp.\2.\3"),
    (r"encoder\.layers\.(\d+)\.norm1\.(weight|bias)", r"encoder.layer.\1.layernorm_before.\2"),
    (r"encoder\.layers\.(\d+)\.norm2\.(weight|bias)", r"encoder.layer.\1.layernorm_after.\2"),
]
_PROJ = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_INTERNLM2_RULES = [  # InternLM2 → Llama names, on the text after "language_model.model."
    (r"tok_embeddings\.weight", "embed_tokens.weight"),
    (r"layers\.(\d+)\.attention\.wo\.weight", r"layers.\1.self_attn.o_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w1\.weight", r"layers.\1.mlp.gate_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w2\.weight", r"layers.\1.mlp.down_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w3\.weight", r"layers.\1.mlp.up_proj.weight"),
    (r"layers\.(\d+)\.attention_norm\.weight", r"layers.\1.input_layernorm.weight"),
    (r"layers\.(\d+)\.ffn_norm\.weight", r"layers.\1.post_attention_layernorm.weight"),
    (r"norm\.weight", "norm.weight"),
]


def _apply(rules, text: str) -> str | None:
    for pattern, template in rules:
        m = re.fullmatch(pattern, text)
        if m:
            return m.expand(template)
    return None


def map_released_key(key: str, layout: Layout) -> Target | None:
    """The module key(s) a released key feeds, or None if it feeds nothing."""
    if layout.two_decoders and key.startswith(SA2VA_I_TUNED):
        return "copy", (MODULE_TUNED + key[len(SA2VA_I_TUNED):],)
    if layout.two_decoders and key.startswith(MODULE_TUNED):
        return "copy", (MODULE_ORIGINAL + key[len(MODULE_TUNED):],)
    if key.startswith(SAM_PREFIX):
        rest = key[len(SAM_PREFIX):]
        return "copy", (SAM_PREFIX + re.sub(r"\.g_weight$", ".gamma", rest),)
    m = re.fullmatch(r"text_hidden_fcs\.([02])\.(weight|bias)", key)
    if m:
        return "copy", (key,)
    if layout.family == "internvl":
        return _map_internvl(key, layout)
    return _map_qwen(key)


def _map_internvl(key: str, layout: Layout) -> Target | None:
    if key.startswith("vision_model."):
        rest = key[len("vision_model."):]
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)", rest)
        if m:
            i, kind = m.groups()
            return "qkv", tuple(f"{_VIT}encoder.layer.{i}.attention.{p}_proj.{kind}" for p in "qkv")
        new = _apply(_VIT_RULES, rest)
        return ("copy", (_VIT + new,)) if new else None
    m = re.fullmatch(r"mlp1\.([013])\.(weight|bias)", key)
    if m:
        return "copy", (f"vlm.model.multi_modal_projector.{_PROJ[m.group(1)]}.{m.group(2)}",)
    if layout.internlm2:
        if key == "language_model.output.weight":
            return "copy", ("vlm.lm_head.weight",)
        if key.startswith("language_model.model."):
            rest = key[len("language_model.model."):]
            m = re.fullmatch(r"layers\.(\d+)\.attention\.wqkv\.weight", rest)
            if m:
                i = m.group(1)
                return "wqkv", tuple(f"vlm.model.language_model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkv")
            new = _apply(_INTERNLM2_RULES, rest)
            return ("copy", ("vlm.model.language_model." + new,)) if new else None
        return None
    if key == "language_model.lm_head.weight":
        return "copy", ("vlm.lm_head.weight",)
    if key.startswith("language_model.model."):
        return "copy", ("vlm.model.language_model." + key[len("language_model.model."):],)
    return None


def _map_qwen(key: str) -> Target | None:
    if key == "model.lm_head.weight":
        return "copy", ("vlm.lm_head.weight",)
    for prefix, target in (
        ("model.model.visual.", "vlm.model.visual."),  # transformers >= 4.52 layout
        ("model.model.language_model.", "vlm.model.language_model."),
        ("model.visual.", "vlm.model.visual."),  # older layout
        ("model.model.", "vlm.model.language_model."),
    ):
        if key.startswith(prefix):
            return "copy", (target + key[len(prefix):],)
    return None


def split_fused(kind: str, tensor: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, ...]:
    """Released fused tensor → (q, k, v), in module order."""
    if kind == "copy":
        return (tensor,)
    if kind == "qkv":  # InternViT: rows [0, C) = q, [C, 2C) = k, [2C, 3C) = v
        return tuple(torch.chunk(tensor, 3, dim=0))
    if kind == "wqkv":  # InternLM2: (n_kv, g + 2, d, H) with q = slots 0..g-1, k = g, v = g + 1
        g = layout.num_heads // layout.num_kv_heads
        w = tensor.reshape(layout.num_kv_heads, g + 2, layout.head_dim, tensor.shape[-1])
        return (
            w[:, :g].reshape(-1, tensor.shape[-1]),
            w[:, g].reshape(-1, tensor.shape[-1]),
            w[:, g + 1].reshape(-1, tensor.shape[-1]),
        )
    raise ValueError(kind)


def fuse(kind: str, parts: Sequence[torch.Tensor], layout: Layout) -> torch.Tensor:
    """Inverse of `split_fused`."""
    if kind == "qkv":
        return torch.cat(list(parts), dim=0)
    if kind == "wqkv":
        q, k, v = parts
        hidden = q.shape[-1]
        shape = (layout.num_kv_heads, -1, layout.head_dim, hidden)
        return torch.cat([q.reshape(shape), k.reshape(shape), v.reshape(shape)], dim=1).reshape(-1, hidden)
    raise ValueError(kind)


def released_names(module_keys: Iterable[str], layout: Layout, *, tied: bool) -> dict[str, Target]:
    """Released key → target for every module key (the inverse direction, for saving).

    Built by proposing a released name for each module key and keeping it only if
    the forward mapping sends it back to that key, so both directions stay in step.
    """
    keys = set(module_keys)
    out: dict[str, Target] = {}
    for key in sorted(keys):
        if tied and key == "vlm.lm_head.weight":
            continue
        for cand in _released_candidates(key, layout):
            target = map_released_key(cand, layout)
            if target and key in target[1] and all(t in keys for t in target[1]):
                out[cand] = target
                break
        else:
            raise KeyError(f"no released name for module key {key!r}")
    return out


def _released_candidates(key: str, layout: Layout) -> list[str]:
    if layout.two_decoders and key.startswith(MODULE_TUNED):
        return [SA2VA_I_TUNED + key[len(MODULE_TUNED):]]
    if layout.two_decoders and key.startswith(MODULE_ORIGINAL):
        return [MODULE_TUNED + key[len(MODULE_ORIGINAL):]]
    if key.startswith(SAM_PREFIX):
        return [re.sub(r"\.gamma$", ".g_weight", key)]
    if key.startswith("text_hidden_fcs."):
        return [key]
    if layout.family != "internvl":
        if key == "vlm.lm_head.weight":
            return ["model.lm_head.weight"]
        for prefix, released in (("vlm.model.visual.", "model.model.visual."),
                                 ("vlm.model.language_model.", "model.model.language_model.")):
            if key.startswith(prefix):
                return [released + key[len(prefix):]]
        return []
    if key.startswith(_VIT):
        rest = key[len(_VIT):]
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.attention\.[qkv]_proj\.(weight|bias)", rest)
        if m:
            return [f"vision_model.encoder.layers.{m.group(1)}.attn.qkv.{m.group(2)}"]
        inverse = [
            (r"embeddings\.cls_token", "embeddings.class_embedding"),
            (r"embeddings\.position_embeddings", "embeddings.position_embedding"),
            (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"embeddings.patch_embedding.\1"),
            (r"encoder\.layer\.(\d+)\.lambda_([12])", r"encoder.layers.\1.ls\2"),
            (r"encoder\.layer\.(\d+)\.attention\.(q_norm|k_norm)\.(weight|bias)", r"encoder.layers.\1.attn.\2.\3"),
            (r"encoder\.layer\.(\d+)\.attention\.projection_layer\.(weight|bias)", r"encoder.layers.\1.attn.proj.\2"),
            (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
            (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"encoder.layers.\1.norm1.\2"),
            (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"encoder.layers.\1.norm2.\2"),
        ]
        new = _apply(inverse, rest)
        return ["vision_model." + new] if new else []
    m = re.fullmatch(r"vlm\.model\.multi_modal_projector\.(layer_norm|linear_1|linear_2)\.(weight|bias)", key)
    if m:
        idx = {v: k for k, v in _PROJ.items()}[m.group(1)]
        return [f"mlp1.{idx}.{m.group(2)}"]
    if layout.internlm2:
        if key == "vlm.lm_head.weight":
            return ["language_model.output.weight"]
        rest = key[len("vlm.model.language_model."):]
        m = re.fullmatch(r"layers\.(\d+)\.self_attn\.[qkv]_proj\.weight", rest)
        if m:
            return [f"language_model.model.layers.{m.group(1)}.attention.wqkv.weight"]
        inverse = [(new_re, old) for old, new_re in [
            ("tok_embeddings.weight", r"embed_tokens\.weight"),
            (r"layers.\1.attention.wo.weight", r"layers\.(\d+)\.self_attn\.o_proj\.weight"),
            (r"layers.\1.feed_forward.w1.weight", r"layers\.(\d+)\.mlp\.gate_proj\.weight"),
            (r"layers.\1.feed_forward.w2.weight", r"layers\.(\d+)\.mlp\.down_proj\.weight"),
            (r"layers.\1.feed_forward.w3.weight", r"layers\.(\d+)\.mlp\.up_proj\.weight"),
            (r"layers.\1.attention_norm.weight", r"layers\.(\d+)\.input_layernorm\.weight"),
            (r"layers.\1.ffn_norm.weight", r"layers\.(\d+)\.post_attention_layernorm\.weight"),
            ("norm.weight", r"norm\.weight"),
        ]]
        new = _apply(inverse, rest)
        return ["language_model.model." + new] if new else []
    if key == "vlm.lm_head.weight":
        return ["language_model.lm_head.weight"]
    if key.startswith("vlm.model.language_model."):
        return ["language_model.model." + key[len("vlm.model.language_model."):]]
    return []


def to_released(state: Mapping[str, torch.Tensor], layout: Layout, *, tied: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """Module state dict → (released key, tensor), lazily (fused tensors are
    concatenated on the fly)."""
    for name, (kind, targets) in released_names(state.keys(), layout, tied=tied).items():
        if kind == "copy":
            yield name, state[targets[0]]
        else:
            yield name, fuse(kind, [state[t] for t in targets], layout)


# ---------------------------------------------------------------------------- weight files


class CheckpointError(SchemaError):
    """A checkpoint that does not fit the model, or that refsav will not open."""


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str  # as stored: a safetensors code ("F32", "BF16", "I8") or a torch dtype name
    floating: bool


def _safetensors_floating(code: str) -> bool:
    # Float codes are F16/F32/F64, BF16 and the F8_* / F6_* / F4 families.
    return code == "BF16" or code.startswith("F")


def _listed_path(folder: Path, name: object, index: Path) -> Path:
    """The file an index entry names, refused unless it is a relative path that
    stays inside the checkpoint folder (no `..`, no absolute path)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(f"weight_map lists {name!r}, not a file name", file=index, field="weight_map")
    text = name.replace("\\", "/")  # a Windows separator must not smuggle in a `..` or a root
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or re.match(r"[A-Za-z]:", text):
        raise CheckpointError(f"weight_map lists {name!r}, which is outside the checkpoint folder",
                              file=index, field="weight_map")
    return folder.joinpath(*path.parts)


def count_nonfinite(t: torch.Tensor, chunk: int = 1 << 24) -> tuple[int, int]:
    """(NaN count, ±inf count) of a floating tensor, in chunks so that the boolean
    masks never cost more than `chunk` bytes (an embedding table can be 10^9 values)."""
    flat = t.reshape(-1)
    nan = inf = 0
    for start in range(0, flat.numel(), chunk):
        part = flat[start:start + chunk]
        if bool(torch.isfinite(part).all()):
            continue
        nan += int(torch.isnan(part).sum())
        inf += int(torch.isinf(part).sum())
    return nan, inf


class WeightSource:
    """Tensors of a checkpoint folder, read one at a time (never the whole file)."""

    def __init__(self, folder: Path, *, allow_pickle: bool = False, device: str = "cpu"):
        self.folder = folder
        self.device = device
        self.index: dict[str, TensorInfo] = {}
        self._pickled: dict[str, torch.Tensor] = {}
        files = self._weight_files(folder, allow_pickle)
        for f in files:
            if f.suffix == ".safetensors":
                self._index_safetensors(f)
            else:
                self._index_pickle(f)

    @staticmethod
    def _weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            raw = read_json(index)
            weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError("missing or empty", file=index, field="weight_map")
            files = sorted({_listed_path(folder, v, index) for v in weight_map.values()})
            others = [f for f in files if f.suffix != ".safetensors" and f.suffix not in PICKLE_SUFFIXES]
            if others:
                raise CheckpointError(f"weight_map lists {others[0].name!r}, which is not a weight file "
                                      "(*.safetensors)", file=index, field="weight_map")
            pickles = [f for f in files if f.suffix in PICKLE_SUFFIXES]
        else:
            files = sorted(folder.glob("*.safetensors"))
            if files:
                return files
            files = pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
            if not files:
                raise CheckpointError("no weight files (*.safetensors)", file=folder)
        if pickles and not allow_pickle:
            where = "the index lists" if index.is_file() else "only"
            raise CheckpointError(
                f"{where} pickle weight files ({', '.join(p.name for p in pickles)}); pickle can run code when "
                "loaded, so refsav reads safetensors only (pass allow_pickle=True / --allow-pickle to load them "
                "anyway)",
                file=index if index.is_file() else folder,
            )
        if pickles:
            warnings.warn(f"loading pickle weights from {folder} (allow_pickle=True)", stacklevel=3)
        return files

    def _index_safetensors(self, path: Path) -> None:
        from safetensors import safe_open

        if not path.is_file():
            raise CheckpointError("listed in the index but missing", file=path)
        try:
            with safe_open(str(path), framework="pt") as fh:
                for key in fh.keys():
                    view = fh.get_slice(key)
                    code = str(view.get_dtype())
                    self._add(key, TensorInfo(path, tuple(view.get_shape()), code, _safetensors_floating(code)))
        except (OSError, RuntimeError, ValueError) as exc:  # safetensors raises SafetensorError(Exception)
            raise CheckpointError(f"unreadable safetensors file ({exc})", file=path) from None
        except Exception as exc:  # noqa: BLE001 - SafetensorError has no public import path
            raise CheckpointError(f"unreadable safetensors file ({exc})", file=path) from None

    def _index_pickle(self, path: Path) -> None:
        if not path.is_file():
            raise CheckpointError("listed in the index but missing", file=path)
        # weights_only=True refuses every object that is not plain tensor data, so even
        # an opted-in pickle never runs code; the opt-in is about reading the format at all.
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
            first = (str(exc).strip().splitlines() or [""])[0]
            raise CheckpointError(f"pickle file refused or unreadable ({type(exc).__name__}: {first})",
                                  file=path) from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"holds a {type(state).__name__}, not a state dict", file=path)
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                self._pickled[key] = value
                self._add(str(key), TensorInfo(path, tuple(value.shape), str(value.dtype).removeprefix("torch."),
                                               value.is_floating_point()))

    def _add(self, key: str, info: TensorInfo) -> None:
        if key in self.index:
            raise CheckpointError(f"tensor {key!r} appears in two files", file=info.file)
        self.index[key] = info

    def get(self, key: str) -> torch.Tensor:
        if key in self._pickled:
            return self._pickled[key]
        from safetensors import safe_open

        with safe_open(str(self.index[key].file), framework="pt", device=self.device) as fh:
            return fh.get_tensor(key)

    def iter_file_order(self, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield tensors grouped by file (each file opened once)."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.index[k].file, []).append(k)
        for path, names in by_file.items():
            if path.suffix != ".safetensors":
                for k in names:
                    yield k, self._pickled[k]
                continue
            with safe_open(str(path), framework="pt", device=self.device) as fh:
                for k in names:
                    yield k, fh.get_tensor(k)


# ---------------------------------------------------------------------------- load plan / report


@dataclass(frozen=True)
class LoadReport:
    loaded: int
    missing: tuple[str, ...] = ()  # module tensors no checkpoint tensor provides
    unexpected: tuple[str, ...] = ()  # checkpoint tensors that map to no module tensor
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()  # key, checkpoint, module shape
    ignored: tuple[str, ...] = ()  # known-harmless extras (old RoPE tables)
    tied: tuple[str, ...] = ()  # module tensors shared with another (lm_head ↔ embeddings)
    wrong_dtype: tuple[tuple[str, str], ...] = ()  # checkpoint key, its dtype: not floating point
    nonfinite: tuple[tuple[str, int, int], ...] = ()  # checkpoint key, NaN count, inf count (filled while loading)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.wrong_dtype or self.nonfinite)

    def summary(self) -> str:
        def few(items) -> str:
            items = list(items)
            head = ", ".join(str(i) for i in items[:3])
            return head + (f", … (+{len(items) - 3})" if len(items) > 3 else "")

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({few(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({few(self.unexpected)})")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} with the wrong shape ("
                         + few(f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched) + ")")
        if self.wrong_dtype:
            parts.append(f"{len(self.wrong_dtype)} not floating point (" + few(f"{k}: {d}" for k, d in self.wrong_dtype)
                         + ")")
        if self.nonfinite:
            parts.append(f"{len(self.nonfinite)} with non-finite values ("
                         + few(f"{k}: {n} NaN, {i} inf" for k, n, i in self.nonfinite) + ")")
        return "; ".join(parts) if parts else f"all {self.loaded} tensors matched"


@dataclass(frozen=True)
class LoadPlan:
    report: LoadReport
    targets: dict[str, Target] = field(default_factory=dict)  # released key → module key(s)


def plan_load(
    released: Mapping[str, tuple[int, ...]],
    module: Mapping[str, tuple[int, ...]],
    layout: Layout,
    *,
    tied: Sequence[str] = (),
    dtypes: Mapping[str, tuple[str, bool]] | None = None,
) -> LoadPlan:
    """Match checkpoint tensors to module tensors by name and shape, loading nothing.

    `dtypes` (checkpoint key → (dtype name, is floating point)): a tensor that is not
    floating point is refused, since every module tensor is (copying int8 codes into
    a float parameter would load quietly and give garbage)."""
    targets: dict[str, Target] = {}
    unexpected, ignored, mismatched, wrong_dtype = [], [], [], []
    covered: set[str] = set()
    for key, shape in released.items():
        target = map_released_key(key, layout)
        if target is None or not all(t in module for t in target[1]):
            (ignored if any(p.search(key) for p in IGNORABLE) else unexpected).append(key)
            continue
        kind, names = target
        if dtypes is not None and key in dtypes and not dtypes[key][1]:
            wrong_dtype.append((key, dtypes[key][0]))
        # Shapes after splitting, computed on a storage-free tensor.
        parts = split_fused(kind, torch.empty(shape, device="meta"), layout)
        for name, part in zip(names, parts):
            if tuple(part.shape) != tuple(module[name]):
                mismatched.append((name, tuple(part.shape), tuple(module[name])))
        covered.update(names)
        targets[key] = target
    missing = sorted(k for k in module if k not in covered and k not in tied)
    report = LoadReport(
        loaded=len(targets), missing=tuple(missing), unexpected=tuple(sorted(unexpected)),
        mismatched=tuple(mismatched), ignored=tuple(sorted(ignored)), tied=tuple(tied),
        wrong_dtype=tuple(sorted(wrong_dtype)),
    )
    return LoadPlan(report, targets)


# ---------------------------------------------------------------------------- load / save a model


def read_config(folder: Path) -> Sa2VAConfig:
    path = folder / "config.json"
    return Sa2VAConfig.from_released(read_json(path), file=str(path))


# Released key patterns of the repeated blocks, with the config field that counts them.
_LAYER_COUNTS = {
    "internvl": (("LLM", r"language_model\.model\.layers\.(\d+)\.", "text", "num_hidden_layers"),
                 ("vision", r"vision_model\.encoder\.layers\.(\d+)\.", "vision", "num_hidden_layers")),
    "qwen": (("LLM", r"model\.(?:model\.)?(?:language_model\.)?layers\.(\d+)\.", "text", "num_hidden_layers"),
             ("vision", r"model\.(?:model\.)?visual\.blocks\.(\d+)\.", "vision", "depth")),
}


def check_layer_counts(cfg: Sa2VAConfig, keys: Iterable[str], *, file: Path | None = None) -> None:
    """Refuse a config.json that asks for more LLM or vision layers than the weights
    hold, before anything is built: a hostile count (10^6 layers) would otherwise
    spend minutes and gigabytes constructing modules that the load then refuses."""
    keys = list(keys)
    groups = _LAYER_COUNTS["internvl" if cfg.family == "internvl" else "qwen"]
    for what, pattern, where, name in groups:
        section = cfg.text_config_dict() if where == "text" else dict(cfg.raw.get("vision_config") or {})
        if name not in section:
            continue  # transformers' default applies; the load plan still checks every tensor
        wanted = section[name]
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
            raise CheckpointError(f"{what} layer count {name} = {wanted!r} is not a positive integer", file=file)
        regex = re.compile(pattern)
        held = {int(m.group(1)) for k in keys if (m := regex.match(k))}
        if wanted > len(held):
            raise CheckpointError(f"config.json asks for {wanted} {what} layers ({name}), the weights hold "
                                  f"{len(held)}", file=file)


def _lm_head_key(layout: Layout) -> str:
    if layout.family != "internvl":
        return "model.lm_head.weight"
    return "language_model.output.weight" if layout.internlm2 else "language_model.lm_head.weight"


def _ties_embeddings(cfg: Sa2VAConfig) -> bool:
    text = cfg.text_config_dict()
    return bool(text.get("tie_word_embeddings", cfg.raw.get("tie_word_embeddings", False)))


def load_tokenizer(folder: Path, cfg: Sa2VAConfig):
    """The checkpoint's tokenizer (and processor for the Qwen family), no remote code."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # AutoTokenizer peeks at config.json and warns that `sa2va_chat` is not a
    # transformers model type, which is expected here.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return _load_tokenizer(folder, cfg, AutoTokenizer)
    finally:
        hf_logging.set_verbosity(level)


def _load_tokenizer(folder: Path, cfg: Sa2VAConfig, AutoTokenizer):
    if cfg.family == "internvl":
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 - transformers raises many types here
            raise CheckpointError(
                f"cannot load the tokenizer without remote code ({type(exc).__name__}: {exc})", file=folder
            ) from None
        return tok, None
    if cfg.family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLProcessor as Proc
    else:
        from transformers import Qwen3VLProcessor as Proc
    try:
        proc = Proc.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot load the processor ({type(exc).__name__}: {exc})", file=folder) from None
    return proc.tokenizer, proc


def build_model(cfg: Sa2VAConfig, tokenizer, *, dtype: torch.dtype, device: str | torch.device = "cpu",
                initialize: bool = False, tied: bool = False):
    """An Sa2VAModel with this config's shapes (weights uninitialised unless `initialize`)."""
    from .sa2va import Sa2VAModel
    from .sam2_wrapper import GroundingEncoder
    from .vlm import build_vlm, build_vlm_config, default_dtype, tie_lm_head, vlm_class

    image_token_id = None
    if cfg.family == "internvl":
        vocab = tokenizer.get_vocab()
        if IMG_CONTEXT_TOKEN not in vocab:
            raise CheckpointError(f"tokenizer has no {IMG_CONTEXT_TOKEN} token", field="tokenizer")
        image_token_id = vocab[IMG_CONTEXT_TOKEN]
    # SAM-2's Hiera cannot be built on the meta device (it reads tensor values while
    # building), so a meta skeleton still gets a real, package-initialised SAM-2 on CPU.
    sam_device = "cpu" if torch.device(device).type == "meta" else device
    with torch.device(sam_device):
        grounding = GroundingEncoder(cfg.sam2, compute_dtype=dtype)
    with torch.device(device):
        vlm = build_vlm(build_vlm_config(cfg, image_token_id=image_token_id), vlm_class(cfg), dtype=dtype,
                        initialize=initialize)
        if tied:
            tie_lm_head(vlm)
        with default_dtype(dtype):
            model = Sa2VAModel(cfg, vlm, grounding)
    return model.eval()


def load_sa2va(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    strict: bool = True,
):
    """Load a released (or refsav-written) Sa2VA checkpoint folder → `Sa2VA`.

    Raises CheckpointError (a SchemaError) if the weights and the model do not
    match one-to-one; with `strict=False` it loads what matches, warns, and the
    report is on `result.load_report`.
    """
    from .sa2va import Sa2VA

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError("not a folder", file=folder)
    cfg = read_config(folder)
    layout = Layout.of(cfg)
    source = WeightSource(folder, allow_pickle=allow_pickle, device="cpu")
    tokenizer, processor = load_tokenizer(folder, cfg)
    tied = _lm_head_key(layout) not in source.index and _ties_embeddings(cfg)
    check_layer_counts(cfg, source.index, file=folder / "config.json")
    if any(k.startswith(SA2VA_I_TUNED) for k in source.index):
        layout = replace(layout, two_decoders=True)
    try:
        model = build_model(cfg, tokenizer, dtype=dtype, device=device, tied=tied)
        if layout.two_decoders:
            model.grounding_encoder.sam2_model.add_original_decoder()
    except SchemaError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers' config validation, allocation, arithmetic
        # A config.json that transformers rejects (wrong types, zero heads) or whose sizes
        # cannot be allocated: one line, not a traceback from deep inside the library.
        text = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"cannot build the model this config describes ({type(exc).__name__}: {text})",
                              file=folder / "config.json") from None
    state = model.state_dict(keep_vars=True)
    module_shapes = {k: tuple(v.shape) for k, v in state.items()}
    plan = plan_load({k: v.shape for k, v in source.index.items()}, module_shapes, layout,
                     tied=("vlm.lm_head.weight",) if tied else (),
                     dtypes={k: (v.dtype, v.floating) for k, v in source.index.items()})
    if not plan.report.ok:
        if strict:
            raise CheckpointError(f"checkpoint does not match the model: {plan.report.summary()}", file=folder)
        warnings.warn(f"{folder}: partial load: {plan.report.summary()}", stacklevel=2)
    skip = {m[0] for m in plan.report.mismatched}
    wrong_dtype = {k for k, _ in plan.report.wrong_dtype}
    nonfinite = []
    with torch.no_grad():
        for key, tensor in source.iter_file_order(plan.targets):
            if key in wrong_dtype:
                continue
            nan, inf = count_nonfinite(tensor)
            if nan or inf:
                nonfinite.append((key, nan, inf))
            kind, names = plan.targets[key]
            for name, part in zip(names, split_fused(kind, tensor, layout)):
                if name not in skip:
                    state[name].copy_(part)
    report = replace(plan.report, nonfinite=tuple(sorted(nonfinite)))
    if nonfinite:
        # Found only while copying: the shape/dtype report above has already passed.
        if strict:
            raise CheckpointError(f"checkpoint holds non-finite weights: {report.summary()}", file=folder)
        warnings.warn(f"{folder}: non-finite weights loaded: {report.summary()}", stacklevel=2)
    sa2va = Sa2VA(model, tokenizer, processor)
    sa2va.load_report = report
    return sa2va


def save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """One safetensors file, landed atomically with the mode any new file gets under
    the umask (safetensors itself creates a private 0600 file)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        mode = tmp.stat().st_mode & 0o777  # atomic_path's umask-based mode
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))
        os.chmod(tmp, mode)
    return Path(path)


def write_safetensors(
    folder: Path,
    specs: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
    make: Callable[[str], torch.Tensor],
    *,
    max_shard_bytes: int = 2 * 1024**3,
) -> list[Path]:
    """Write tensors `make(name)` as HF-style (sharded) safetensors, one shard in
    memory at a time; each file lands atomically."""
    shards: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
    size = 0
    for spec in specs:
        nbytes = int(torch.Size(spec[1]).numel()) * torch.empty((), dtype=spec[2]).element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        tensors = {}
        for name, shape, dt in shard:
            t = make(name).to(dt).contiguous()
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"{name}: made {tuple(t.shape)}, planned {shape}")
            tensors[name] = t
            weight_map[name] = fname
            total += t.numel() * t.element_size()
        save_safetensors(folder / fname, tensors, {"format": "pt"})
        del tensors
    if n > 1:
        atomic_write_json(folder / "model.safetensors.index.json",
                          {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    return [folder / f for f in names]


def save_tokenizer(folder: Path, tokenizer, processor=None) -> None:
    """Tokenizer / processor files next to the weights (transformers writes them)."""
    if processor is not None:
        processor.save_pretrained(str(folder))
    else:
        tokenizer.save_pretrained(str(folder))


def save_released(sa2va, path: str | Path, *, dtype: torch.dtype | None = None,
                  max_shard_bytes: int = 2 * 1024**3) -> Path:
    """Write `sa2va` in the released layout: config.json, generation_config.json,
    tokenizer files, (sharded) model.safetensors."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model = sa2va.model
    cfg: Sa2VAConfig = model.config
    # A model carrying the original SAM-2 decoder is written in the Sa2VA-i layout.
    layout = replace(Layout.of(cfg), two_decoders=model.grounding_encoder.sam2_model.original_mask_decoder is not None)
    state = model.state_dict()
    tied = model.vlm.lm_head.weight is model.vlm.get_input_embeddings().weight
    names = released_names(state.keys(), layout, tied=tied)

    def make(name: str) -> torch.Tensor:
        kind, targets = names[name]
        if kind == "copy":
            return state[targets[0]].detach().cpu()
        return fuse(kind, [state[t].detach().cpu() for t in targets], layout)

    specs = []
    for name, (kind, targets) in names.items():
        shapes = [state[t].shape for t in targets]
        shape = tuple(shapes[0]) if kind == "copy" else tuple(fuse(kind, [torch.empty(s, device="meta") for s in shapes], layout).shape)
        specs.append((name, shape, dtype or state[targets[0]].dtype))
    write_safetensors(folder, specs, make, max_shard_bytes=max_shard_bytes)
    atomic_write_json(folder / "config.json", cfg.to_released(), indent=2)
    atomic_write_json(folder / "generation_config.json", {"_from_model_config": True}, indent=2)
    save_tokenizer(folder, sa2va.tokenizer, sa2va.processor)
    return folder


# ---------------------------------------------------------------------------- Meta's SAM-2 file (Sa2VA-i)

META_DECODER_PREFIX = "sam_mask_decoder."


def read_sam2_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Meta's SAM-2 checkpoint (`sam2_hiera_large.pt`: a dict whose `model` entry is a
    flat state dict) or its safetensors copy (`refsav model convert-sam2`) → that flat
    state dict. A torch file is read with `torch.load(weights_only=True)`, which refuses
    anything but plain tensor data, so a hostile pickle cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("SAM-2 file not found", file=path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # noqa: BLE001 - SafetensorError has no public import path
            raise CheckpointError(f"unreadable safetensors file ({' '.join(str(exc).split())[:200]})",
                                  file=path) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"SAM-2 file refused or unreadable ({type(exc).__name__}: {first})", file=path) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError("expected Meta's SAM-2 checkpoint: a dict of tensors under `model`", file=path)
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"entries that are not named tensors: {', '.join(bad[:3])}", file=path)
    return obj


def original_decoder_state(sam2_state: Mapping[str, torch.Tensor], decoder: torch.nn.Module, *,
                           file: Path | None = None) -> dict[str, torch.Tensor]:
    """The `sam_mask_decoder.*` tensors of a Meta SAM-2 state dict, checked one-to-one
    against `decoder` (names, shapes, floating point, finite)."""
    got = {k[len(META_DECODER_PREFIX):]: v for k, v in sam2_state.items() if k.startswith(META_DECODER_PREFIX)}
    want = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    wrong = [f"{k}: file {list(got[k].shape)} vs model {list(s)}" for k, s in want.items()
             if k in got and tuple(got[k].shape) != s]
    if missing or unexpected or wrong:
        parts = [f"{len(x)} {what} ({', '.join(x[:3])})" for x, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (wrong, "with the wrong shape")) if x]
        raise CheckpointError("the file's SAM-2 mask decoder does not fit this checkpoint's SAM-2 (a SAM 2.0 "
                              f"Hiera-L file for released Sa2VA): {'; '.join(parts)}", file=file)
    for k, v in got.items():
        if not v.is_floating_point():
            raise CheckpointError(f"sam_mask_decoder.{k} is {v.dtype}, not floating point", file=file)
        nan, inf = count_nonfinite(v)
        if nan or inf:
            raise CheckpointError(f"sam_mask_decoder.{k} holds {nan} NaN and {inf} inf values", file=file)
    return got


def attach_original_decoder(sa2va, path: str | Path) -> Path:
    """Give a loaded Sa2VA Meta's original mask decoder, from `--sam2-original FILE`
    (what Sa2VA-i tracks with). The checkpoint's own decoder stays the fine-tuned one.

    The rest of SAM-2 is frozen in Sa2VA, so the file's other tensors should equal the
    checkpoint's: names or shapes that differ mean another SAM-2 (e.g. 2.1 for 2.0) and
    are refused; differing values only warn."""
    path = Path(path)
    state = read_sam2_file(path)
    sam = sa2va.model.grounding_encoder.sam2_model
    decoder_state = original_decoder_state(state, sam.sam_mask_decoder, file=path)
    own = {re.sub(r"\.g_weight$", ".gamma", k): v for k, v in sam.state_dict().items()
           if not k.startswith(("sam_mask_decoder.", "original_mask_decoder."))}
    others = {k: v for k, v in state.items() if not k.startswith(META_DECODER_PREFIX)}
    foreign = sorted(k for k, v in others.items() if k not in own or tuple(own[k].shape) != tuple(v.shape))
    if foreign:
        raise CheckpointError(f"{len(foreign)} SAM-2 tensors do not exist in this checkpoint's SAM-2 or have another "
                              f"shape ({', '.join(foreign[:3])}): not the SAM-2 this Sa2VA was built on", file=path)
    differ = [k for k, v in others.items() if not torch.equal(own[k].detach().cpu().to(v.dtype), v)]
    if differ:
        warnings.warn(f"{path}: {len(differ)} of {len(others)} frozen SAM-2 tensors differ from the checkpoint's "
                      f"({', '.join(differ[:3])}); Sa2VA trains only the mask decoder, so this may be another SAM-2 "
                      "release", stacklevel=2)
    decoder = sam.add_original_decoder()
    ref = next(decoder.parameters())
    with torch.no_grad():
        decoder.load_state_dict({k: v.to(device=ref.device, dtype=ref.dtype) for k, v in decoder_state.items()},
                                strict=True)
    return path


def convert_sam2(src: str | Path, dst: str | Path) -> int:
    """Meta's SAM-2 `.pt` (read with weights_only) → one safetensors file of the same
    flat state dict; returns the tensor count."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError("the output must end in .safetensors", file=dst)
    state = read_sam2_file(src)
    if not any(k.startswith(META_DECODER_PREFIX) for k in state):
        raise CheckpointError("no sam_mask_decoder.* tensors: not a SAM-2 checkpoint", file=src)
    from refsav.schemas.io import sha256_file

    # safetensors refuses tensors that share storage; a copy of each is cheap next to the load.
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    save_safetensors(dst, tensors, {"format": "pt", "source": src.name, "source_sha256": sha256_file(src)})
    return len(tensors)


__all__ = [
    "CheckpointError", "attach_original_decoder", "convert_sam2", "original_decoder_state", "read_sam2_file",
    "LoadPlan", "LoadReport", "Layout", "WeightSource", "build_model", "fuse", "load_sa2va",
    "load_tokenizer", "map_released_key", "plan_load", "read_config", "released_names", "save_released",
    "count_nonfinite", "save_safetensors",
    "save_tokenizer", "split_fused", "to_released", "write_safetensors",
]
