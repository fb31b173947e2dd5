"""`refsav demo`: the whole toolkit on generated data, offline, in a few minutes.

Stages that exist today run for real; the demo grows as capabilities land
(annotate, export, predict, score, leaderboard).
"""
from __future__ import annotations

import time
from pathlib import Path

import click

from schemas.media import check_frame_count, probe_video
from schemas.refsav_json import read_refsav_json
from schemas.refvos import read_mask_dict, read_meta_expressions
from schemas.sav import read_sav_json

from .sample import CHUNK, EVAL, SampleConfig, write_sample


@click.command("demo")
@click.option("--out", default="demo_out", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--videos", default=4, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
def demo_command(out: Path, videos: int, seed: int) -> None:
    """Generate a synthetic SA-V sample and run every available stage on it."""
    start = time.perf_counter()
    sample_dir = out / "sample"
    click.echo(f"[1/2] sample: generating {videos} synthetic SA-V videos in {sample_dir}")
    write_sample(sample_dir, SampleConfig(videos=videos, seed=seed))

    click.echo("[2/2] validate: reading everything back through refsav's schemas")
    n_masklets = 0
    for ann_path in sorted((sample_dir / CHUNK).glob("*_manual.json")):
        ann = read_sav_json(ann_path)
        check_frame_count(probe_video(ann.video.path), len(ann.masklets[0].rles), file=str(ann_path))
        n_masklets += len(ann.masklets)
    training = read_refsav_json(sample_dir / "Ref-SAV.json")
    meta = read_meta_expressions(sample_dir / EVAL / "meta_expressions_valid.json")
    masks = read_mask_dict(sample_dir / EVAL / "mask_dict.json")
    n_exp = sum(len(v.expressions) for v in meta)
    click.echo(f"      {len(training)} videos, {n_masklets} masklets, {n_exp} benchmark expressions, {len(masks)} GT masklets")
    example = meta[0].expressions[0]
    click.echo(f"      e.g. {meta[0].video_id} #{example.exp_id}: \"{example.exp}\"")
    click.echo("      not yet available in this version: annotate, export, predict, score, leaderboard")
    click.echo(f"done in {time.perf_counter() - start:.1f} s; outputs in {out}")
