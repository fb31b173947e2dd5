"""COCO run-length encoding, the mask format every refsav record uses.

`Rle` is the compressed form that SA-V, Ref-SAV and Sa2VA store in JSON:
`{"size": [H, W], "counts": str}`; the mask is flattened column-major and runs
alternate 0s and 1s starting with 0s. We validate `counts` ourselves before
handing it to pycocotools, whose C decoder trusts the run lengths and would
write past its buffer on a corrupt string.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as _coco

from .errors import SchemaError


@dataclass(frozen=True)
class Rle:
    size: tuple[int, int]  # (H, W)
    counts: str

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    def to_json(self) -> dict[str, Any]:
        return {"size": [int(self.size[0]), int(self.size[1])], "counts": self.counts}

    def to_coco(self) -> dict[str, Any]:
        return {"size": [int(self.size[0]), int(self.size[1])], "counts": self.counts.encode("ascii")}

    @classmethod
    def from_json(cls, obj: Any, *, expected_size: tuple[int, int] | None = None) -> "Rle":
        """Parse and validate a JSON/pickle RLE dict; errors name the sub-field."""
        if isinstance(obj, Rle):
            rle = obj
        else:
            if not isinstance(obj, dict):
                raise SchemaError(f"expected an RLE object {{size, counts}}, got {type(obj).__name__}")
            for key in ("size", "counts"):
                if key not in obj:
                    raise SchemaError(f"RLE is missing key '{key}'", field=key)
            size = obj["size"]
            if (
                not isinstance(size, (list, tuple))
                or len(size) != 2
                or not all(isinstance(v, (int, float)) and float(v).is_integer() and v >= 0 for v in size)
            ):
                raise SchemaError(f"RLE size must be [H, W] with non-negative integers, got {size!r}", field="size")
            h, w = int(size[0]), int(size[1])
            counts = obj["counts"]
            if isinstance(counts, bytes):  # pickled datasets (mask_dict.pkl) keep bytes
                counts = counts.decode("ascii", errors="replace")
            if isinstance(counts, list):  # uncompressed RLE: compress it
                if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
                    raise SchemaError(f"uncompressed RLE counts do not sum to H*W = {h * w}", field="counts")
                counts = _coco.frPyObjects({"size": [h, w], "counts": counts}, h, w)["counts"].decode("ascii")
            if not isinstance(counts, str):
                raise SchemaError(f"RLE counts must be a string, got {type(counts).__name__}", field="counts")
            rle = cls((h, w), counts)
            rle.check()
        if expected_size is not None and tuple(rle.size) != tuple(expected_size):
            raise SchemaError(
                f"RLE size {list(rle.size)} does not match the frame size {list(expected_size)} (H, W)",
                field="size",
            )
        return rle

    def check(self) -> None:
        """Raise SchemaError unless the runs cover exactly H*W pixels."""
        total = 0
        for run in run_lengths(self.counts):
            if run < 0:
                raise SchemaError("RLE counts contain a negative run (corrupt string)", field="counts")
            total += run
        if total != self.size[0] * self.size[1]:
            raise SchemaError(
                f"RLE counts cover {total} pixels but size {list(self.size)} has {self.size[0] * self.size[1]}",
                field="counts",
            )


def run_lengths(counts: str) -> list[int]:
    """Decode a compressed COCO counts string into run lengths.

    Each value is a little-endian base-32 number in chars offset by 48; bit 0x20
    continues, 0x10 on the last char sign-extends; from the third run on, values
    are deltas to the run two places back.
    """
    runs: list[int] = []
    pos, n = 0, len(counts)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise SchemaError("RLE counts string ends in the middle of a value", field="counts")
            c = ord(counts[pos]) - 48
            if c < 0 or c > 63:
                raise SchemaError(f"RLE counts has an invalid character {counts[pos]!r}", field="counts")
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            pos += 1
            shift += 1
            if not more and (c & 0x10):
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def encode(mask: np.ndarray) -> Rle:
    """Encode one (H, W) mask; any non-zero value is foreground."""
    if mask.ndim != 2:
        raise ValueError(f"encode expects an (H, W) mask, got shape {mask.shape}")
    m = np.asfortranarray(mask != 0, dtype=np.uint8)
    raw = _coco.encode(m)
    return Rle((int(mask.shape[0]), int(mask.shape[1])), raw["counts"].decode("ascii"))


def decode(rle: Rle) -> np.ndarray:
    """Decode to a bool (H, W) array."""
    return _coco.decode(rle.to_coco()).astype(bool)


def decode_many(rles: list[Rle]) -> np.ndarray:
    """Decode same-sized RLEs to a bool (N, H, W) stack."""
    if not rles:
        raise ValueError("decode_many needs at least one RLE")
    stack = _coco.decode([r.to_coco() for r in rles])  # (H, W, N)
    return np.moveaxis(stack, -1, 0).astype(bool)


def area(rle: Rle) -> int:
    return int(_coco.area(rle.to_coco()))


def empty(height: int, width: int) -> Rle:
    # All-zero mask: a single run of H*W zeros.
    return encode(np.zeros((height, width), dtype=np.uint8))
