"""The benchmark protocols refsav knows: one registry, read by `benchmark` (which scores
them) and by `model` (which predicts for them).

A `Protocol` holds what is true of a benchmark whoever reads it: its name, its family
(which ground-truth layout and which kind of prediction it takes), the metric it is
ranked by, and, for the refer family, where its ground truth lies (`ReferLayout`).  How a
protocol is scored (subsets, rounding, matching, the official source reproduced) stays
with its scorer in `benchmark`, keyed by the same name.  Formats: docs/formats-benchmarks.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import SchemaError

# refvos: meta_expressions + mask_dict (refsav.schemas.refvos); davis: a DAVIS-2017 root;
# refer: lichengunc/refer refs + COCO instances (refsav.schemas.refer); qa: a question table.
Family = Literal["refvos", "davis", "refer", "qa"]


@dataclass(frozen=True)
class ReferLayout:
    """Where a refer-family dataset keeps its ground truth under the data root."""

    dataset: str  # folder under data_root
    split_by: str  # default splitBy ("unc", "umd", "google")
    refs_files: tuple[str, ...]  # candidate file names, "{split_by}" filled in; first found wins
    splits: tuple[str, ...]  # the splits the dataset defines
    multi_target: bool = False  # gRefCOCO: ann_id lists, [-1] = no target

    def refs_names(self, split_by: str | None = None) -> list[str]:
        return [f.format(split_by=split_by or self.split_by) for f in self.refs_files]


@dataclass(frozen=True)
class Protocol:
    name: str
    family: Family
    primary_metric: str  # the key of the scores that ranks submissions
    refer: ReferLayout | None = None  # set exactly for the refer family


_COCO_SPLITS = ("train", "val", "testA", "testB")

# In the order `refsav score --help` lists them.
PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in [
        Protocol("refsav", "refvos", "J&F"),
        Protocol("mevis", "refvos", "J&F"),
        Protocol("revos", "refvos", "J&F"),
        Protocol("refdavis", "refvos", "J&F"),
        Protocol("davis17-semi", "davis", "J&F"),
        Protocol("davis17-unsup", "davis", "J&F"),
        Protocol("refcoco", "refer", "cIoU",
                 ReferLayout("refcoco", "unc", ("refs({split_by}).p",), _COCO_SPLITS)),
        Protocol("refcoco+", "refer", "cIoU",
                 ReferLayout("refcoco+", "unc", ("refs({split_by}).p",), _COCO_SPLITS)),
        Protocol("refcocog", "refer", "cIoU",
                 # umd; the google split has train/val only
                 ReferLayout("refcocog", "umd", ("refs({split_by}).p",), ("train", "val", "test"))),
        Protocol("grefcoco", "refer", "gIoU",
                 # JSON first: same content as the pickle, and nothing to execute.
                 ReferLayout("grefcoco", "unc", ("grefs({split_by}).json", "grefs({split_by}).p"), _COCO_SPLITS,
                             multi_target=True)),
        Protocol("mcq", "qa", "accuracy"),
        Protocol("mme", "qa", "score"),
        Protocol("mmbench", "qa", "accuracy"),
    ]
}


def protocol_names() -> list[str]:
    """Every protocol's name, in registry order."""
    return list(PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise SchemaError(f"unknown protocol {name!r}; choose from {', '.join(sorted(PROTOCOLS))}") from None


def protocols_of(family: Family) -> dict[str, Protocol]:
    """The protocols of one family, by name, in registry order."""
    return {name: p for name, p in PROTOCOLS.items() if p.family == family}


__all__ = ["Family", "PROTOCOLS", "Protocol", "ReferLayout", "get_protocol", "protocol_names", "protocols_of"]
