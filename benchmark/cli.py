"""`refsav score` and `refsav leaderboard`."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import click

from schemas.errors import SchemaError
from schemas.io import atomic_write_json
from schemas.scores import LeaderboardEntry
from schemas.version import __version__

from .inputs import find_meta, submission_sha256
from .protocols import VIDEO_PROTOCOLS, get_video_protocol
from .report import ScoreReport
from .score import score_refvos


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _print_table(report: ScoreReport) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = ["J&F", "J", "F"] + [m for m in ("A", "R") if m in report.totals]
    table = Table(title=f"refsav score — protocol {report.protocol}")
    table.add_column("subset")
    for k in keys:
        table.add_column(k, justify="right")
    for name, values in report.subsets.items():
        n = sum(1 for s in report.items if s.subset == name)
        table.add_row(f"{name} ({n})", *[_fmt(values.get(k)) for k in keys])
    table.add_row("overall", *[_fmt(report.totals.get(k)) for k in keys], style="bold")
    Console().print(table)


@click.command("score")
@click.option("--protocol", required=True, type=click.Choice(sorted(VIDEO_PROTOCOLS)), help="Scoring protocol.")
@click.option("--gt", "gt", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Ground-truth folder (meta_expressions*.json + mask_dict.json).")
@click.option("--pred", "pred", required=True, type=click.Path(exists=True, path_type=Path),
              help="Predictions: PNG folder, results.json, Parquet, or a .zip of any of these.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder for scores.json.")
@click.option("--strict", is_flag=True, help="Exit non-zero when the submission has any problem.")
@click.option("--name", default=None, help="Submission name for the leaderboard (default: the prediction file name).")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Add the result to this leaderboard database (SQLite).")
@click.option("--benchmark", default=None, help="Benchmark name on the leaderboard (default: the protocol).")
@click.option("--meta", "meta_name", default=None, help="Meta file name inside --gt (default: meta_expressions_valid.json or meta_expressions.json).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Worker processes.")
def score_command(protocol, gt, pred, out, strict, name, db, benchmark, meta_name, workers) -> None:
    """Score referring video segmentation predictions with an official protocol."""
    from pipelines.progress import progress_bar
    from schemas.refvos import read_meta_expressions

    proto = get_video_protocol(protocol)
    n_videos = len(read_meta_expressions(_meta_path(gt, meta_name)))
    with progress_bar("scoring videos", total=n_videos) as advance:
        report = score_refvos(gt, pred, proto, meta_name=meta_name, workers=workers, on_video=advance)
    sha = submission_sha256(pred)
    kinds = Counter(i.kind for i in report.issues)
    payload = {
        "protocol": proto.name,
        "protocol_source": proto.source,
        "scorer": "refsav",
        "scorer_version": __version__,
        "submission": str(pred),
        "submission_sha256": sha,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **report.totals,
        "subsets": report.subsets,
        "validation": {"problems": len(report.issues), "by_kind": dict(kinds), "issues": [asdict(i) for i in report.issues]},
        report.item_kind: [asdict(s) for s in report.items],
    }
    atomic_write_json(out / "scores.json", payload, indent=1)
    _print_table(report)
    if report.issues:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        click.echo(f"validation: {len(report.issues)} problems ({summary}); details in {out / 'scores.json'}", err=True)
    click.echo(f"wrote {out / 'scores.json'}")
    if db is not None:
        from .leaderboard import LeaderboardDB

        metrics = {k: v for k, v in report.totals.items() if not math.isnan(v)}
        entry = LeaderboardEntry(
            benchmark=benchmark or proto.name,
            protocol=proto.name,
            name=name or pred.stem,
            metrics=metrics,
            primary_metric=report.primary_metric,
            submission_sha256=sha,
            scorer_version=__version__,
            created_at=payload["created_at"],
            provenance={"submission": str(pred), "gt": str(gt)},
        )
        LeaderboardDB(db).add(entry)
        click.echo(f"added '{entry.name}' to {db}")
    if strict and report.issues:
        for issue in report.issues[:50]:
            click.echo(f"  {issue}", err=True)
        more = len(report.issues) - 50
        raise click.ClickException(f"--strict: the submission has {len(report.issues)} problems" + (f" ({more} not shown)" if more > 0 else ""))


def _meta_path(gt: Path, meta_name: str | None) -> Path:
    return gt / meta_name if meta_name else find_meta(gt)


@click.command("leaderboard")
@click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Leaderboard database.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
def leaderboard_command(db: Path, out: Path) -> None:
    """Render the leaderboard as Markdown, a static HTML page, JSON and bar charts."""
    from .leaderboard import LeaderboardDB, write_leaderboard

    store = LeaderboardDB(db)
    if not store.entries():
        raise SchemaError("the leaderboard database has no entries", file=db)
    files = write_leaderboard(store, out)
    for f in asdict(files).values():
        for p in f if isinstance(f, (list, tuple)) else [f]:
            click.echo(f"wrote {p}")
