"""`refsav validate`: check input files before a long job trips over them."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from refsav.schemas.errors import SchemaError
from refsav.schemas.expression import Expression
from refsav.schemas.io import read_json, read_parquet
from refsav.schemas.media import check_frame_count, probe_video
from refsav.schemas.predictions import ImagePrediction, QAPrediction, VideoPrediction
from refsav.schemas.refsav_json import refsav_from_json
from refsav.schemas.refvos import meta_from_json, read_mask_dict
from refsav.schemas.sav import read_sav_json
from refsav.schemas.video import Masklet, Video

PARQUET_KINDS = {
    "expression": Expression,
    "masklet": Masklet,
    "video": Video,
    "video-prediction": VideoPrediction,
    "image-prediction": ImagePrediction,
    "qa-prediction": QAPrediction,
}


def validate_path(path: Path, parquet_kind: str = "expression") -> str:
    """Validate one file; return a short summary, raise SchemaError on the first problem."""
    name = path.name
    if path.suffix == ".mp4":
        v = probe_video(path)
        return f"{v.num_frames} frames, {v.width}x{v.height} @ {v.fps:g} fps"
    if name.endswith(("_manual.json", "_auto.json")):
        ann = read_sav_json(path)
        annotated = len(ann.video.annotated_frames)  # the reader checked the masklets have this many
        summary = f"{len(ann.masklets)} masklets over {annotated} annotated frames"
        if os.path.exists(ann.video.path):
            check_frame_count(probe_video(ann.video.path), annotated, file=str(path))
            summary += ", matches its mp4"
        return summary
    if path.suffix == ".parquet":
        rows = read_parquet(path, PARQUET_KINDS[parquet_kind])
        return f"{len(rows)} {parquet_kind} rows"
    if name == "mask_dict.json" or name.startswith("mask_dict"):
        masks = read_mask_dict(path)
        return f"{len(masks)} masklets"
    if path.suffix == ".json":
        obj = read_json(path)
        try:
            if isinstance(obj, dict) and "videos" in obj:
                videos = meta_from_json(obj)
                return f"benchmark meta: {len(videos)} videos, {sum(len(v.expressions) for v in videos)} expressions"
            videos = refsav_from_json(obj)
            return f"Ref-SAV JSON: {len(videos)} videos, {sum(len(v.objects) for v in videos)} objects"
        except SchemaError as err:
            raise err.at(file=path) from None
    raise SchemaError("unknown file type (expected .mp4, SA-V/Ref-SAV/benchmark .json or .parquet)", file=path)


@click.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--kind", "parquet_kind", type=click.Choice(sorted(PARQUET_KINDS)), default="expression", show_default=True,
              help="Record type of .parquet files.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per file instead of text.")
def validate_command(paths: tuple[Path, ...], parquet_kind: str, as_json: bool) -> None:
    """Check files (or every file in folders) and report each problem on one line.

    Exits with status 1 when any file is bad; the other files are still checked.
    """
    files = [p for path in paths for p in (sorted(q for q in path.rglob("*") if q.is_file() and _checkable(q)) if path.is_dir() else [path])]
    bad = 0
    for f in files:
        try:
            summary, ok = validate_path(f, parquet_kind), True
        except SchemaError as err:
            summary, ok = str(err), False
            bad += 1
        if as_json:
            click.echo(json.dumps({"file": str(f), "ok": ok, "message": summary}))
        else:
            click.echo(f"{'ok ' if ok else 'BAD'} {f}: {summary}" if ok else f"BAD {summary}", err=not ok)
    if not as_json:
        click.echo(f"{len(files) - bad} ok, {bad} bad")
    if bad:
        raise SystemExit(1)


def _checkable(path: Path) -> bool:
    return path.suffix in (".mp4", ".parquet") or path.name.endswith(("_manual.json", "_auto.json")) or (
        path.suffix == ".json" and (path.name.startswith(("meta_expressions", "mask_dict")) or "ref-sav" in path.name.lower())
    )
