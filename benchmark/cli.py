"""`refsav score` and `refsav leaderboard`."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import click

from refsav.schemas.errors import RefsavError
from refsav.schemas.io import atomic_write_json
from refsav.schemas.protocols import get_protocol, protocol_names
from refsav.schemas.refvos import find_meta
from refsav.schemas.scores import LeaderboardEntry
from refsav.schemas.version import __version__

from .files import SubmissionLimits, check_submission_path, printable
from .inputs import submission_sha256
from .protocols import get_video_protocol
from .report import ScoreReport
from .score import score_refvos


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


MAX_TABLE_ROWS = 40


def _print_table(report: ScoreReport) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = [report.primary_metric] + [k for k in report.totals if k != report.primary_metric]
    table = Table(title=f"refsav score — protocol {report.protocol}")
    table.add_column("subset")
    for k in keys:
        table.add_column(k, justify="right")
    names = list(report.subsets)
    for name in names[:MAX_TABLE_ROWS]:
        values = report.subsets[name]
        n = sum(1 for s in report.items if getattr(s, "subset", None) == name)
        table.add_row(f"{name} ({n})" if n else name, *[_fmt(values.get(k)) for k in keys])
    if len(names) > MAX_TABLE_ROWS:
        table.add_row(f"... {len(names) - MAX_TABLE_ROWS} more in scores.json", *[""] * len(keys))
    table.add_row("overall", *[_fmt(report.totals.get(k)) for k in keys], style="bold")
    Console().print(table)


def run_protocol(protocol: str, gt: Path, pred: Path, *, meta_name=None, workers=1, scheduler=None, split="val",
                 split_by=None, empty_union="one", image_set="val", sequences=None, progress=True,
                 limits: SubmissionLimits | None = None) -> tuple[ScoreReport, str]:
    """Score with any named protocol; returns the report and the protocol's source.

    ``limits``: caps on reading the submission; the video protocols apply all of them,
    the others the file caps of ``ReadOnlyFiles`` at their defaults."""
    from refsav.runtime.progress import progress_bar

    family = get_protocol(protocol).family
    if family == "refvos":
        from refsav.schemas.refvos import read_meta_expressions

        proto = get_video_protocol(protocol)
        total = len(read_meta_expressions(_meta_path(gt, meta_name)))
        with progress_bar("scoring videos", total=total, enabled=progress) as advance:
            extra = {"scheduler": scheduler} if scheduler else {}
            if limits is not None:
                extra["limits"] = limits
            report = score_refvos(gt, pred, proto, meta_name=meta_name, workers=workers, on_video=advance, **extra)
        return report, proto.source
    if family == "davis":
        from .davis import DavisGroundTruth, get_davis_protocol, score_davis

        proto = get_davis_protocol(protocol)
        total = len(DavisGroundTruth.open(gt, proto, image_set, sequences).sequences)
        with progress_bar("scoring sequences", total=total, enabled=progress) as advance:
            report = score_davis(gt, pred, protocol, image_set=image_set, sequences=sequences, workers=workers,
                                 on_sequence=advance)
        return report, proto.source
    if family == "refer":
        from refsav.schemas.refer import load_ground_truth

        from .refcoco import get_image_protocol, score_refcoco

        proto = get_image_protocol(protocol)
        total = len(load_ground_truth(gt, protocol, split, split_by).samples)
        with progress_bar(f"scoring {split} sentences", total=total, enabled=progress) as advance:
            report = score_refcoco(gt, pred, protocol, split=split, split_by=split_by, empty_union=empty_union,
                                   on_sample=advance)
        return report, proto.source
    from .qa_inputs import get_qa_protocol, score_qa

    return score_qa(gt, pred, protocol), get_qa_protocol(protocol).source


@click.command("score")
@click.option("--protocol", required=True, type=click.Choice(protocol_names()), help="Scoring protocol.")
@click.option("--gt", "gt", required=True, type=click.Path(exists=True, path_type=Path),
              help="Ground truth: meta_expressions + mask_dict folder (refsav/mevis/revos/refdavis), DAVIS root "
                   "(davis17-*), RefCOCO data root holding <dataset>/refs(*).p + instances.json (refcoco*), "
                   "or a TSV/JSONL file (mcq/mme/mmbench).")
@click.option("--pred", "pred", required=True, type=click.Path(exists=True, path_type=Path),
              help="Predictions: PNG folder, results.json, JSON/JSONL, TSV, Parquet, or a .zip of any of these.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder for scores.json.")
@click.option("--strict", is_flag=True, help="Exit non-zero when the submission has any problem.")
@click.option("--name", default=None, help="Submission name for the leaderboard (default: the prediction file name).")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Add the result to this leaderboard database (SQLite).")
@click.option("--benchmark", default=None, help="Benchmark name on the leaderboard (default: the protocol).")
@click.option("--meta", "meta_name", default=None, help="Video protocols: meta file name inside --gt (default: meta_expressions_valid.json or meta_expressions.json).")
@click.option("--split", default="val", show_default=True, help="refcoco*: split to score (val, testA, testB, test).")
@click.option("--split-by", default=None, help="refcoco*: refs file variant (default: unc; umd for refcocog).")
@click.option("--empty-union", default="one", show_default=True, type=click.Choice(["one", "zero"]),
              help="refcoco*: IoU of a sample whose prediction and ground truth are both empty (LISA: one, LAVT: zero).")
@click.option("--image-set", default="val", show_default=True, help="davis17-*: ImageSets/2017/<set>.txt.")
@click.option("--sequences", default=None, help="davis17-*: comma-separated sequences (instead of ImageSets).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Worker processes (video and DAVIS protocols).")
@click.option("--scheduler", default=None, help="Video protocols: score on an existing Dask cluster (tcp://host:8786).")
@click.option("--limit", "limit_options", multiple=True, metavar="NAME=VALUE",
              help="Raise or lower a cap on reading the submission, e.g. entry_mb=2048 or masks=10000000 "
                   f"(names: {', '.join(SubmissionLimits.option_names())}; see docs/submission-limits.md).")
def score_command(protocol, gt, pred, out, strict, name, db, benchmark, meta_name, split, split_by, empty_union,
                  image_set, sequences, workers, scheduler, limit_options) -> None:
    """Score predictions with an official protocol: video (J, F, J&F), image (cIoU, gIoU) or QA."""
    seqs = [s.strip() for s in sequences.split(",") if s.strip()] if sequences else None
    limits = SubmissionLimits().with_options(limit_options)
    check_submission_path(pred)  # a FIFO or /dev/zero would block or never end, whatever the protocol
    report, source = run_protocol(protocol, gt, pred, meta_name=meta_name, workers=workers, scheduler=scheduler,
                                  split=split, split_by=split_by, empty_union=empty_union, image_set=image_set,
                                  sequences=seqs, limits=limits)
    sha = submission_sha256(pred)
    kinds = Counter(i.kind for i in report.issues)
    payload = {
        "protocol": report.protocol,
        "protocol_source": source,
        "primary_metric": report.primary_metric,
        "scorer": "refsav",
        "scorer_version": __version__,
        "submission": printable(str(pred)),
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

        metrics = {k: float(v) for k, v in report.totals.items() if isinstance(v, (int, float)) and not math.isnan(v)}
        if report.primary_metric not in metrics:
            raise RefsavError(f"no {report.primary_metric} to rank by (the ground truth is incomplete for this protocol); "
                              "not added to the leaderboard", file=db)
        entry = LeaderboardEntry(
            benchmark=benchmark or report.protocol,
            protocol=report.protocol,
            name=name or pred.stem,
            metrics=metrics,
            primary_metric=report.primary_metric,
            submission_sha256=sha,
            scorer_version=__version__,
            created_at=payload["created_at"],
            provenance={"submission": printable(str(pred)), "gt": printable(str(gt))},
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
        raise RefsavError("the leaderboard database has no entries", file=db)
    files = write_leaderboard(store, out)
    for f in asdict(files).values():
        for p in f if isinstance(f, (list, tuple)) else [f]:
            click.echo(f"wrote {p}")
