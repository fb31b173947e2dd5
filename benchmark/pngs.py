"""Reading one predicted mask PNG of a submission, checked before it is decoded.

The IHDR chunk (the first 33 bytes of every PNG) says how large the image is, so a file
that claims 100000 x 100000 pixels in 1 KB is refused from its header, before the
decoder allocates anything, and a mask of the wrong size is reported without being
decoded at all. Whatever the decoder still raises for a corrupt file becomes a
per-frame problem: that frame scores as empty and the others are read.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

from .files import EntryError, ReadOnlyFiles

SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER_BYTES = 33  # signature, IHDR length and type, 13 bytes of IHDR, CRC
COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    colour_type: int  # 0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA


def read_header(head: bytes) -> PngHeader:
    """The IHDR fields of a PNG's first 33 bytes; ValueError if they are not a PNG header."""
    if len(head) < HEADER_BYTES or not head.startswith(SIGNATURE):
        raise ValueError("not a PNG file")
    length, kind = struct.unpack(">I4s", head[8:16])
    if kind != b"IHDR" or length != 13:
        raise ValueError("PNG does not start with an IHDR chunk")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if width == 0 or height == 0 or colour not in COLOUR_TYPES:
        raise ValueError(f"PNG header is invalid ({width}x{height}, colour type {colour})")
    return PngHeader(width, height, depth, colour)


@dataclass(frozen=True)
class MaskRead:
    mask: np.ndarray | None  # bool (H, W); None: the frame scores as empty
    problems: list[tuple[str, str]]  # (Issue kind, message)


def read_mask_png(files: ReadOnlyFiles, rel: str, size: tuple[int, int], max_pixels: int) -> MaskRead:
    """One predicted mask of ``size`` (H, W): any non-zero colour value is foreground."""
    try:
        header = read_header(files.read_head(rel, HEADER_BYTES))
    except EntryError as err:
        return MaskRead(None, [("corrupt_file", f"{err.message}; scored as empty")])
    except ValueError as err:
        return MaskRead(None, [("corrupt_file", f"cannot read PNG ({err}); scored as empty")])
    pixels = header.width * header.height
    if pixels > max_pixels:
        return MaskRead(None, [("too_large", f"PNG claims {header.width}x{header.height} = {pixels} pixels, over the "
                                             f"limit of {max_pixels} (limit 'image_pixels'); scored as empty")])
    h, w = size
    if (header.height, header.width) != (h, w):
        return MaskRead(None, [("wrong_size", f"mask is {header.height}x{header.width}, GT is {h}x{w}; scored as empty")])
    try:
        data = files.read(rel)
    except EntryError as err:
        return MaskRead(None, [("corrupt_file", f"{err.message}; scored as empty")])
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            if img.size != (w, h):  # the header read above and PIL's must agree
                raise ValueError(f"decoded size {img.size[1]}x{img.size[0]} differs from the header")
            img.load()
            arr = np.asarray(img)
            palette = img.getpalette() if img.mode in ("P", "PA") else None
            mode = img.mode
    except Exception as err:  # PIL raises many unrelated types for a corrupt file
        return MaskRead(None, [("corrupt_file", f"cannot read PNG ({type(err).__name__}: {err}); scored as empty")])
    if arr.shape[:2] != (h, w):
        return MaskRead(None, [("corrupt_file", f"decoded shape {arr.shape} is not {h}x{w}; scored as empty")])
    problems: list[tuple[str, str]] = []
    alpha = None
    if arr.ndim == 3:
        if mode in ("RGBA", "LA", "PA"):
            alpha = arr[..., -1]
        # Colour channels only: RGB(A) masks are foreground wherever any colour channel is set.
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    mask = arr != 0
    if alpha is not None and not mask.any() and alpha.min() != alpha.max():
        problems.append(("alpha_only", f"{mode} mask whose foreground is only in the alpha channel; the colour "
                                       "channels are scored, so it is empty"))
    if palette is not None:
        entries = len(palette) // 3
        top = int(arr.max()) if arr.size else 0
        if top >= entries:
            problems.append(("palette_index", f"pixel index {top} is beyond the {entries}-entry palette; "
                                              "any non-zero index counts as foreground"))
    values = np.unique(arr)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        problems.append(("non_binary", f"values {values[:5].tolist()}...; any non-zero counts as foreground"))
    return MaskRead(mask, problems)
