"""`refsav evaluate`: predict with a reference model, then score with the benchmark's protocol.

The one place that joins `refsav.model` and `refsav.benchmark`: the predictions go through
the same path as `refsav score`, so scores.json, the validation report and the leaderboard
entry are those a user would get by running the two commands by hand.
"""
from __future__ import annotations

from pathlib import Path

import click

from refsav.model.predict import predict_from_options, predict_options


@click.command("evaluate")
@predict_options
@click.option("--scores", "scores_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for scores.json (default: --out).")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Add the result to this leaderboard database (SQLite).")
@click.option("--name", default=None,
              help="Leaderboard name (default: the checkpoint folder name, plus +desa2va:<heads> with heads).")
@click.pass_context
def evaluate_command(ctx: click.Context, scores_dir, db, name, **kw) -> None:
    """Predict, score with the protocol, and optionally add a leaderboard entry."""
    from refsav.benchmark.cli import score_command

    res = predict_from_options(**kw)
    heads = kw.get("desa2va_heads")
    default_name = (kw["model_path"].name if kw["model_path"] is not None else "served") + (f"+desa2va:{heads.stem}" if heads is not None else "")
    ctx.invoke(score_command, protocol=kw["protocol"], gt=kw["gt"], pred=res.predictions,
               out=scores_dir or kw["out"], strict=False, name=name or default_name, db=db, benchmark=None,
               meta_name=kw["meta_name"], split=kw["split"], split_by=kw["split_by"], empty_union="one",
               image_set="val", sequences=None, workers=1, scheduler=None)
