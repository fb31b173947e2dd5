"""Sa2VA reference models on transformers' native VLM classes and Meta's `sam2`.

    from refsav.model import load_sa2va
    sa2va = load_sa2va("path/to/Sa2VA-1B")            # safetensors only, strict
    pred = sa2va.predict("<image>\\nPlease segment the cat.", video=frames)
    pred.text, pred.masks                               # one (T, H, W) masklet per [SEG]

Submodules import torch / transformers / sam2, so this package imports nothing
eagerly (the CLI stays fast): the names below load their module on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_LAZY = {
    "load_sa2va": "checkpoint",
    "Sa2VA": "sa2va",
    "PredictOptions": "config",
    "Sa2VAConfig": "config",
    "DeSa2VA": "desa2va",
    "load_heads": "desa2va",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = sorted(_LAZY)
