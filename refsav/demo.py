"""`refsav demo`: the whole toolkit on generated data, offline, in a few minutes.

Stages that exist today run for real; the demo grows as capabilities land. With no model
hub reachable, the annotation VLM is a tiny random-weight model (its texts are noise, the
pipeline around it is the real one), and the submissions it scores are reference baselines
derived from the ground truth; it says so as it goes.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from refsav.schemas.errors import SchemaError
from refsav.schemas.media import check_frame_count, probe_video
from refsav.schemas.refsav_json import read_refsav_json
from refsav.schemas.refvos import read_meta_expressions
from refsav.schemas.sav import read_sav_json

from refsav.pipelines.sample import CHUNK, EVAL, SampleConfig, write_sample


# The card of the demo's dataset folder says what its rows are, so that a copy of the folder
# cannot pass for a dataset.
DEMO_CARD_NOTE = (
    "a demo, not a dataset. These rows were written by `refsav demo`: the videos are synthetic and every text "
    "comes from a tiny random-weight VLM, so the expressions are noise. They show the format and the pipeline "
    "only; do not train or evaluate on them."
)


@click.command("demo")
@click.option("--out", default="demo_out", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--videos", default=4, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
def demo_command(out: Path, videos: int, seed: int) -> None:
    """Generate a synthetic SA-V sample and run every available stage on it."""
    from refsav.benchmark.baselines import KINDS, write_baseline
    from refsav.benchmark.cli import leaderboard_command, score_command
    from refsav.benchmark.inputs import RefVosGroundTruth

    start = time.perf_counter()
    sample_dir = out / "sample"
    gt_dir = sample_dir / EVAL
    click.echo(f"[1/6] sample: generating {videos} synthetic SA-V videos in {sample_dir}")
    write_sample(sample_dir, SampleConfig(videos=videos, seed=seed))

    click.echo("[2/6] validate: reading everything back through refsav's schemas")
    n_masklets = 0
    for ann_path in sorted((sample_dir / CHUNK).glob("*_manual.json")):
        ann = read_sav_json(ann_path)
        check_frame_count(probe_video(ann.video.path), len(ann.video.annotated_frames), file=str(ann_path))
        n_masklets += len(ann.masklets)
    training = read_refsav_json(sample_dir / "Ref-SAV.json")
    meta = read_meta_expressions(gt_dir / "meta_expressions_valid.json")
    example = meta[0].expressions[0]
    click.echo(f"      {len(training)} videos, {n_masklets} masklets, {sum(len(v.expressions) for v in meta)} benchmark expressions")
    click.echo(f"      e.g. {meta[0].video_id} #{example.exp_id}: \"{example.exp}\"")

    click.echo("[3/6] annotate: three-stage VLM annotation of every masklet on a local Dask cluster")
    click.echo("      NOTE the VLM is a tiny random-weight model saved here (no model hub): its texts are")
    click.echo("      noise, and the consistency check is off because such a model never answers YES")
    from refsav.pipelines.annotate.cli import annotate_command
    from refsav.pipelines.vlm.tiny import save_tiny_vlm

    model_dir = save_tiny_vlm(out / "tiny-vlm")
    if (out / "annotated").exists():
        shutil.rmtree(out / "annotated")  # the sample was just regenerated, maybe with other settings
    annotate_command.main(
        ["--input", str(sample_dir / CHUNK), "--out", str(out / "annotated"), "--vlm", "transformers",
         "--model", str(model_dir), "--no-check", "--max-tokens", "24", "--workers", "2", "--shard-size", "2"],
        standalone_mode=False,
    )

    click.echo("[4/6] publish + export: a Hugging Face dataset folder (dry run: nothing is uploaded),")
    click.echo("      the Ref-SAV training JSON Sa2VA reads, and a benchmark split in the Ref-SAV eval layout")
    from refsav.pipelines.export import export_group
    from refsav.pipelines.publish import publish_command

    publish_command.main(["--data", str(out / "annotated"), "--repo-id", "your-org/refsav-demo",
                          "--folder", str(out / "hub"), "--dry-run", "--card-note", DEMO_CARD_NOTE],
                         standalone_mode=False)
    export_group.main(["refsav-json", "--data", str(out / "annotated"), "--out", str(out / "exports" / "Ref-SAV.json")],
                      standalone_mode=False)
    try:
        export_group.main(["benchmark", "--data", str(out / "annotated"), "--out", str(out / "exports" / "benchmark"),
                           "--overwrite"], standalone_mode=False)
    except SchemaError as err:
        # A random-weight VLM writes near-identical texts for every object, so all may be flagged
        # ambiguous, and the export rightly leaves ambiguous expressions out of a benchmark.
        click.echo(f"      benchmark export skipped: {err}")

    click.echo("[5/6] score: NOTE no model has run (no checkpoint can be downloaded here); scoring three")
    click.echo("      reference submissions made from the ground truth: perfect, noisy (shifted/eroded), empty")
    gt = RefVosGroundTruth.load(gt_dir)
    db = out / "leaderboard.sqlite"
    if db.exists():
        db.unlink()  # a rerun starts a fresh board instead of stacking duplicates
    for kind in KINDS:
        pred = out / "predictions" / kind / "results.json"
        write_baseline(gt, pred, kind, seed=seed)
        score_command.main(
            ["--protocol", "refsav", "--gt", str(gt_dir), "--pred", str(pred), "--out", str(out / "scores" / kind),
             "--db", str(db), "--name", f"baseline-{kind}", "--benchmark", "ref-sav-synthetic"],
            standalone_mode=False,
        )

    click.echo(f"[6/6] leaderboard: rendering {db}")
    leaderboard_command.main(["--db", str(db), "--out", str(out / "leaderboard")], standalone_mode=False)
    click.echo("      not run here: refsav predict / evaluate (Sa2VA inference; wants a released checkpoint and a GPU)")
    click.echo(f"done in {time.perf_counter() - start:.1f} s; open {out / 'leaderboard' / 'leaderboard.html'}")
