"""How the refvos-family protocols are scored, each with its source; keyed by their
names in the protocol registry (`refsav.schemas.protocols`).

A protocol fixes which expressions count, how they are grouped, which metrics are
reported, whether per-expression values are rounded, and how subsets combine.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VideoProtocol:
    name: str
    source: str  # the official scorer this reproduces
    description: str
    subsets: dict[int, str] | None  # type_id -> subset name; None: one pool of all expressions
    dropped_types: tuple[int, ...] = ()
    metrics: tuple[str, ...] = ("J", "F")  # J, F and optionally A (accuracy), R (robustness)
    round_per_expression: bool = False  # x100 then rounded to 2 decimals before averaging
    overall: str = "pool"  # "pool": mean over expressions; "mean_of_subsets": mean of subset means

    def subset_of(self, type_id: int | None) -> str | None:
        """Subset of an expression, or None when the protocol leaves it out."""
        if type_id in self.dropped_types:
            return None
        if self.subsets is None:
            return "all"
        return self.subsets.get(type_id) if type_id is not None else None


VIDEO_PROTOCOLS: dict[str, VideoProtocol] = {
    p.name: p
    for p in [
        VideoProtocol(
            "refsav",
            "bytedance/Sa2VA tools/eval/eval_ref_sav.py",
            "Ref-SAV eval: J, F, A per expression over all frames, rounded to 2 decimals; "
            "long = type 0, short = type 1, overall = mean of the two.",
            subsets={0: "long", 1: "short"},
            metrics=("J", "F", "A"),
            round_per_expression=True,
            overall="mean_of_subsets",
        ),
        VideoProtocol(
            "mevis",
            "henghuiding/MeViS tools/eval_mevis.py (valid_u)",
            "MeViS valid_u: J and F per expression over all frames, mean over expressions.",
            subsets=None,
        ),
        VideoProtocol(
            "revos",
            "cilinyan/VISA tools/eval_revos.py; bytedance/Sa2VA tools/eval/eval_revos.py",
            "ReVOS: J, F, A, R per expression, rounded to 2 decimals; referring = type 0, "
            "reasoning = type 1, type 2 excluded; overall = mean of the two. A and R on "
            "binarised masks (Sa2VA's RLE scorer, not VISA's 0/255 PNG scorer).",
            subsets={0: "referring", 1: "reasoning"},
            dropped_types=(2,),
            metrics=("J", "F", "A", "R"),
            round_per_expression=True,
            overall="mean_of_subsets",
        ),
        VideoProtocol(
            "refdavis",
            "cilinyan/VISA tools/eval_davis17.py; bytedance/Sa2VA tools/eval/eval_davis.py",
            "Ref-DAVIS17, VISA/Sa2VA style: J and F per expression over all frames, mean over expressions.",
            subsets=None,
        ),
    ]
}


def get_video_protocol(name: str) -> VideoProtocol:
    from refsav.schemas.errors import SchemaError

    try:
        return VIDEO_PROTOCOLS[name]
    except KeyError:
        raise SchemaError(f"unknown protocol {name!r}; choose from {', '.join(sorted(VIDEO_PROTOCOLS))}") from None
