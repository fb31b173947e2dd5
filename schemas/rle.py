"""COCO run-length encoding, the mask format every refsav record uses.

`Rle` is the compressed form that SA-V, Ref-SAV and Sa2VA store in JSON:
`{"size": [H, W], "counts": str}`; the mask is flattened column-major and runs
alternate 0s and 1s starting with 0s. We validate `counts` ourselves before
handing it to pycocotools, whose C decoder trusts the run lengths and would
write past its buffer on a corrupt string.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as _coco

from .errors import SchemaError


#: Largest height or width: pycocotools keeps sizes in 32-bit integers, and H*W then
#: still fits the int64 arithmetic of the run decoder.
MAX_SIDE = (1 << 31) - 1


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
                or not all(_whole(v) for v in size)
            ):
                raise SchemaError(f"RLE size must be [H, W] with non-negative integers, got {size!r}", field="size")
            if any(v > MAX_SIDE for v in size):
                raise SchemaError(f"RLE size {size!r} is over {MAX_SIDE} pixels a side", field="size")
            h, w = int(size[0]), int(size[1])
            counts = obj["counts"]
            if isinstance(counts, bytes):  # pickled datasets (mask_dict.pkl) keep bytes
                counts = counts.decode("ascii", errors="replace")
            if isinstance(counts, list):  # uncompressed RLE: compress it
                if h * w >= 1 << 32:  # pycocotools counts runs in 32 bits
                    raise SchemaError(f"uncompressed RLE of {h}x{w} is over 2^32 pixels", field="size")
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


def _whole(v: Any) -> bool:
    """A non-negative whole number (an int, or a float such as 480.0); never converts a
    huge int to float, which raises OverflowError."""
    if isinstance(v, int):
        return v >= 0
    return isinstance(v, float) and v.is_integer() and v >= 0


# --------------------------------------------------------------------------- decoding counts
#
# One decoder serves every caller: ``parse_counts`` reads many strings in one vectorised
# pass (scorers decode a whole video's masks at once); ``run_lengths`` is that pass on
# one string, and redoes a string the fast pass cannot vouch for with exact integers.

#: A value of a counts string longer than this many characters is not decoded in int64:
#: 11 characters carry 55 bits, far more than any run length needs.
_MAX_VALUE_CHARS = 11
_MAX_VALUE = 1 << 40  # |value| above this cannot be a run (or a delta) of a real mask
#: The exact decoder refuses values longer than this many characters (continuation
#: characters are 'P'..'o'): 320 bits, far beyond any run, yet cheap to read exactly, so
#: that a corrupt string is still reported with its exact pixel count.
_MAX_EXACT_CHARS = 64
_OVERLONG_VALUE = re.compile(f"[P-o]{{{_MAX_EXACT_CHARS}}}")


def run_lengths(counts: str) -> list[int]:
    """Decode a compressed COCO counts string into run lengths.

    Each value is a little-endian base-32 number in chars offset by 48; bit 0x20
    continues, 0x10 on the last char sign-extends; from the third run on, values
    are deltas to the run two places back.
    """
    runs, _, ok = parse_counts([counts])
    if ok[0]:
        return runs.tolist()
    # Rare: a malformed string (raise), or values too large for int64 (decode them exactly).
    for ch in counts:
        if not 0 <= ord(ch) - 48 <= 63:
            raise SchemaError(f"RLE counts has an invalid character {ch!r}", field="counts")
    if (ord(counts[-1]) - 48) & 0x20:
        raise SchemaError("RLE counts string ends in the middle of a value", field="counts")
    if _OVERLONG_VALUE.search(counts):
        # Exact decoding is quadratic in a value's length: a million-character value would hang.
        raise SchemaError(f"RLE counts hold a value of more than {_MAX_EXACT_CHARS} characters, "
                          "too large for any mask", field="counts")
    runs, _, _ = _decode([counts], exact=True)
    return runs.tolist()


def parse_counts(counts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run lengths of many COCO compressed ``counts`` strings, decoded together.

    Same arithmetic as pycocotools ``rleFrString`` (see ``run_lengths``), vectorised over
    all characters of all strings.  Returns (runs int64, offsets (n + 1,), ok (n,) bool):
    the runs of string i are ``runs[offsets[i]:offsets[i + 1]]``.  ``ok[i]`` is False
    where this decoder cannot vouch for string i (a character outside '0'..'o', a
    truncated last value, an over-long or huge value, non-ASCII text): its runs are then
    meaningless and the caller must use ``run_lengths``.  Runs are not checked against a
    size.
    """
    return _decode(counts, exact=False)


def counts_cover(counts: Sequence[str], pixels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Bool per string: it decodes (fast path of ``parse_counts``) to non-negative runs
    covering exactly ``pixels[i]`` = H*W pixels, i.e. ``Rle.check`` passes.

    False means "not vouched for", not necessarily invalid: ask ``Rle.check`` then.
    """
    runs, offsets, ok = parse_counts(counts)
    covered, negative = _coverage(runs, offsets)
    return ok & (covered == np.asarray(pixels, dtype=np.int64)) & ~negative


def checked_run_lengths(counts: Sequence[str], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of many counts strings of (height, width) masks, decoded together.

    Returns (runs int64, offsets) as ``parse_counts`` does, every string read exactly;
    raises ``Rle.check``'s SchemaError for the first string that fails it.
    """
    runs, offsets, ok = parse_counts(counts)
    if not ok.all():  # rare: let the exact decoder read (or reject) those strings
        parts = [runs[offsets[i] : offsets[i + 1]] if ok[i] else np.asarray(run_lengths(s), np.int64)
                 for i, s in enumerate(counts)]
        runs = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        offsets = np.concatenate(([0], np.cumsum([len(p) for p in parts]))).astype(np.int64)
    covered, negative = _coverage(runs, offsets)
    bad = np.flatnonzero((covered != height * width) | negative)
    if bad.size:
        Rle((height, width), counts[int(bad[0])]).check()  # raises the error of that string
    return runs, offsets


def _coverage(runs: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per string of ``parse_counts`` output: pixels covered (sum of runs), any negative run."""
    total = np.concatenate(([0], np.cumsum(runs)))
    which = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    negative = np.bincount(which[runs < 0], minlength=len(offsets) - 1) > 0
    return total[offsets[1:]] - total[offsets[:-1]], negative


def _decode(counts: Sequence[str], exact: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``parse_counts``; with ``exact``, values of any length in Python integers (object
    arrays, slow) and nothing flagged for size: for the few strings int64 cannot hold."""
    n = len(counts)
    ok = np.ones(n, dtype=bool)
    strings = list(counts)
    for i, s in enumerate(strings):
        if not s.isascii():
            ok[i], strings[i] = False, ""
    char_offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(s) for s in strings], out=char_offsets[1:])
    d = np.frombuffer("".join(strings).encode("ascii"), dtype=np.uint8) - np.uint8(48)  # wraps below '0'
    if d.size == 0:
        return np.zeros(0, np.int64), np.zeros(n + 1, np.int64), ok

    def flag(char_positions: np.ndarray) -> None:
        ok[np.searchsorted(char_offsets, char_positions, side="right") - 1] = False

    flag(np.flatnonzero(d > 63))
    more = d >= 32  # the continuation bit, for valid characters
    last_char = char_offsets[1:][char_offsets[1:] > char_offsets[:-1]] - 1
    flag(last_char[more[last_char]])  # the string ends inside a value
    # A value ends at a character without the continuation bit, or at its string's end
    # (so a truncated value never runs into the next string).
    more[last_char] = False
    ends = np.flatnonzero(~more)
    nchars = np.diff(ends, prepend=-1)
    digits = d & np.uint8(0x1F)
    if exact:
        digits = digits.astype(object)
        longest = int(nchars.max())
    else:
        flag(ends[nchars > _MAX_VALUE_CHARS])
        longest = min(int(nchars.max()), _MAX_VALUE_CHARS)
    # Horner from the most significant (last) character, which carries the sign.
    top = digits[ends].astype(object if exact else np.int64)
    v = top - ((top & 0x10) << 1)
    for j in range(1, longest):
        sel = np.flatnonzero(nchars > j)
        v[sel] = (v[sel] << 5) | digits[ends[sel] - j]
    if not exact:
        flag(ends[np.abs(v) > _MAX_VALUE])

    offsets = np.searchsorted(ends, char_offsets)  # values ending before each string
    nvals = np.diff(offsets)
    first = np.repeat(offsets[:-1], nvals)  # index of the first value of each value's string
    if not ok.all():
        v[~ok[np.repeat(np.arange(n), nvals)]] = 0  # keep rejected strings out of the sums below
    # runs[m] = v[m] + runs[m - 2] for m >= 3 (m: index within the string): running sums
    # over every other value, restarted at every string.  With value 0 of each string
    # zeroed, runs[g] = sums[g] - sums[the last index before the string of g's parity].
    starts = offsets[:-1][nvals > 0]
    w = v.copy()
    w[starts] = 0
    sums = np.empty_like(w)
    np.cumsum(w[0::2], out=sums[0::2])
    np.cumsum(w[1::2], out=sums[1::2])
    before = first - 2 + ((np.arange(v.size) - first) & 1)
    runs = sums - np.where(before >= 0, sums[np.maximum(before, 0)], 0)
    runs[starts] = v[starts]
    return runs, offsets, ok


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


def areas_and_boxes(rles: Sequence[Rle]) -> tuple[np.ndarray, np.ndarray]:
    """Foreground area (N,) and (x, y, w, h) box (N, 4) of each RLE, from its runs: no pixels."""
    coco = [r.to_coco() for r in rles]
    return _coco.area(coco), _coco.toBbox(coco).reshape(len(coco), 4)


def empty(height: int, width: int) -> Rle:
    # All-zero mask: a single run of H*W zeros.
    return encode(np.zeros((height, width), dtype=np.uint8))
