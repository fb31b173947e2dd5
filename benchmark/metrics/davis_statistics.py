"""davis2017 ``db_statistics``: mean, recall and decay of a per-frame J or F vector."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DavisStats:
    """davis2017 ``db_statistics`` of one per-frame vector."""

    mean: float  # M = nanmean(v)
    recall: float  # R ("O") = mean(v > 0.5); NaN frames count as misses
    decay: float  # D = nanmean(first quarter) - nanmean(last quarter)

    def __iter__(self):
        """``M, R, D = db_statistics(v)``, like the official tuple."""
        return iter((self.mean, self.recall, self.decay))


def _decay_bins(n: int, replicate_uint8_wrap: bool) -> list[tuple[int, int]]:
    """[start, stop) slices of the 4 decay bins (adjacent bins share an endpoint)."""
    edges = np.round(np.linspace(1, n, 5) + 1e-10) - 1
    if not replicate_uint8_wrap:
        ids = [int(e) for e in edges]
        return [(ids[i], ids[i + 1] + 1) for i in range(4)]
    # Official code: ids.astype(np.uint8) (wraps mod 256), then ids[i+1] + 1 in uint8
    # arithmetic (NumPy >= 2 wraps 255 + 1 to 0 as well).
    ids = [int(e) % 256 for e in edges]
    return [(ids[i], (ids[i + 1] + 1) % 256) for i in range(4)]


def decay(per_frame: np.ndarray, replicate_uint8_wrap: bool = False) -> float:
    """davis2017 decay D = nanmean(bin_0) - nanmean(bin_3) of a (n,) per-frame vector.

    Bin edges ``round(linspace(1, n, 5) + 1e-10) - 1``, bins inclusive of both edges.
    Divergence from the official code: it casts the edges to uint8, so for n >= 257 (and
    n = 256 under NumPy >= 2, where ``255 + 1`` wraps too) the bins are wrong, e.g.
    n = 300 -> edges 0, 75, 150, 224, 43 -> empty last bin -> NaN.  Here the edges are
    plain (int64-range) integers.  ``replicate_uint8_wrap=True`` reproduces the official numbers.
    """
    v = np.asarray(per_frame, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return float("nan")
    bins = _decay_bins(v.size, replicate_uint8_wrap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(np.nanmean(v[slice(*bins[0])]) - np.nanmean(v[slice(*bins[3])]))


def db_statistics(per_frame: np.ndarray, replicate_uint8_wrap: bool = False) -> DavisStats:
    """M, R (recall, "O"), D of a (n,) per-frame J or F vector (davis2017 ``db_statistics``).

    See ``decay`` for the uint8 bin-index divergence and ``replicate_uint8_wrap``.
    """
    v = np.asarray(per_frame, dtype=np.float64).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > 0.5))
    return DavisStats(mean=mean, recall=recall, decay=decay(v, replicate_uint8_wrap))
