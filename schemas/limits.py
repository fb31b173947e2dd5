"""Sizes refsav refuses to read from a ground-truth file, so that a corrupt or hostile file
fails with one line instead of asking for gigabytes.

A frame of the benchmarks refsav scores is at most 4K (SA-V, MeViS and ReVOS are well
under); 8K UHD (7680x4320) still fits.  A frame that passes these limits decodes to at
most 40 MB of booleans.  docs/formats-benchmarks.md lists them.
"""
from __future__ import annotations

from .errors import SchemaError

MAX_FRAME_SIDE = 8192  # pixels, height or width
MAX_FRAME_PIXELS = 40_000_000  # height x width


def check_frame_size(height: int, width: int, *, file=None, record=None, field=None) -> tuple[int, int]:
    """(height, width) when both are positive and within the limits; else a SchemaError."""
    if height <= 0 or width <= 0:
        raise SchemaError(f"frame size {height}x{width} is not positive", file=file, record=record, field=field)
    if height > MAX_FRAME_SIDE or width > MAX_FRAME_SIDE or height * width > MAX_FRAME_PIXELS:
        raise SchemaError(
            f"frame size {height}x{width} is above refsav's limit ({MAX_FRAME_SIDE} pixels a side, "
            f"{MAX_FRAME_PIXELS:,} pixels a frame)",
            file=file, record=record, field=field,
        )
    return height, width


__all__ = ["MAX_FRAME_PIXELS", "MAX_FRAME_SIDE", "check_frame_size"]
