"""Sa2VA reference models on transformers' native VLM classes and Meta's `sam2`.

    from refsav.model.checkpoint import load_sa2va
    sa2va = load_sa2va("path/to/Sa2VA-1B")            # safetensors only, strict
    pred = sa2va.predict("<image>\\nPlease segment the cat.", video=frames)
    pred.text, pred.masks                               # one (T, H, W) masklet per [SEG]

Submodules import torch / transformers / sam2, so this package imports nothing
eagerly (the CLI stays fast).
"""
