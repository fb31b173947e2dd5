"""Finding the SA-V videos to annotate: `<id>.mp4` next to `<id>_manual.json` / `<id>_auto.json`.

Discovery only pairs file names; the files themselves are read in the workers, where a
corrupt one is recorded and skipped instead of stopping the run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from refsav.schemas.errors import RefsavError

SUFFIXES = {"manual": ("_manual.json",), "auto": ("_auto.json",), "both": ("_manual.json", "_auto.json")}


@dataclass(frozen=True)
class VideoInput:
    video_id: str
    video_path: str  # "" when the mp4 is missing
    annotation_paths: tuple[str, ...]  # "" entries never; may be empty when no annotation exists


def discover(root: str | os.PathLike, masklets: str = "manual") -> list[VideoInput]:
    """Every video under `root` (recursively) that has an mp4 or an annotation, sorted by id.

    Sorting makes shard contents a function of the input folder alone, which is what lets
    a rerun line its shards up with the completion markers of the first run.
    """
    root = Path(root)
    if not root.is_dir():
        raise RefsavError("input folder not found", file=root)
    if masklets not in SUFFIXES:
        raise RefsavError(f"--masklets must be one of {', '.join(SUFFIXES)}, got {masklets!r}")
    mp4s: dict[str, Path] = {}
    annotations: dict[str, list[Path]] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if name.endswith(".mp4"):
                mp4s.setdefault(name[: -len(".mp4")], path)
            for suffix in SUFFIXES[masklets]:
                if name.endswith(suffix):
                    annotations.setdefault(name[: -len(suffix)], []).append(path)
    ids = sorted(set(mp4s) | set(annotations))
    return [
        VideoInput(vid, str(mp4s[vid]) if vid in mp4s else "", tuple(sorted(str(p) for p in annotations.get(vid, []))))
        for vid in ids
    ]
