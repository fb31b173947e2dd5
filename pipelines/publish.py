"""`refsav publish`: an annotation run as a Hugging Face dataset repository.

Three steps, each checkable on its own:

1. `build_dataset_folder` writes the repository folder: `data/<split>-XXXXX-of-YYYYY.parquet`
   (rows in the `Expression` Arrow schema) and a dataset card `README.md` whose YAML
   (`configs`, `dataset_info`) is produced by the `datasets` library itself, so it is
   exactly what the Hub and `load_dataset` read. When rows carry grounding, the card
   embeds a histogram of grounding J&F, written beside it as `grounding_jf.png`.
2. `validate_folder` loads the folder with `datasets.load_dataset` and compares splits,
   row counts, features and every row with what was written.
3. `upload_dataset` creates the repository (`exist_ok`) and pushes the folder in one
   commit, retrying transient network errors with backoff.

`--dry-run` stops after step 2. The upload is unit-tested against a test double of
`HfApi` only: no test here (and no CI machine) can reach the Hub, so the real upload is
untested.

Splits are by video, never by object, and deterministic: a video goes to `validation`
when a hash of `"<seed>:<video_id>"` falls below the validation fraction (`SplitRule`).
A video's split therefore never changes when more videos are annotated later. The
exports (`refsav export`) use the same rule, so the published validation split, the
Ref-SAV training JSON and a benchmark can be kept apart.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click

from refsav.schemas.base import check_unique
from refsav.schemas.errors import SchemaError
from refsav.schemas.expression import Expression
from refsav.schemas.io import atomic_path, atomic_write_text, read_json, read_parquet, sha256_file, write_parquet

from .dataset_card import HISTOGRAM_FILE

SPLITS = ("train", "validation")
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SPLIT_SEED = 0
DEFAULT_SHARD_ROWS = 100_000  # an Expression row is ~1-3 KB: shards of a few hundred MB at most
DEFAULT_LICENSE = "cc-by-4.0"  # SA-V videos and masklets are CC BY 4.0
_SHARD_NAME = re.compile(r"^train-(\d{5})-of-(\d{5})\.parquet$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------- the annotate output


@dataclass(frozen=True)
class AnnotatedRun:
    """What `refsav annotate --out OUT` left: its rows and its run record."""

    out: Path
    input_root: Path  # the SA-V root the rows' input_files are relative to
    run: dict[str, Any]  # run.json: free-form config and summary, reported as they are
    shards: tuple[Path, ...]
    expressions: tuple[Expression, ...]  # sorted by (video_id, object_id)

    @property
    def video_ids(self) -> list[str]:
        return sorted({e.video_id for e in self.expressions})


def load_annotated(out: str | os.PathLike, *, allow_incomplete: bool = False) -> AnnotatedRun:
    """Read and check an annotate output folder; bad or partial folders are a SchemaError.

    A shard counts as complete when its completion marker exists (annotate writes it
    last) and records no object that failed on the VLM (a rerun of annotate would redo
    it); publishing half a run by accident is refused unless `allow_incomplete`.
    """
    out = Path(out)
    if not out.is_dir():
        raise SchemaError("annotation output folder not found", file=out)
    run = read_json(out / "run.json")
    if not isinstance(run, dict) or not isinstance(run.get("input"), str) or not run["input"]:
        raise SchemaError("expected an object with the SA-V input folder", file=out / "run.json", field="input")
    shards = tuple(sorted((out / "data").glob("*.parquet")))
    if not shards:
        raise SchemaError("no Parquet shards (data/*.parquet); is this the output of refsav annotate?", file=out / "data")
    if not allow_incomplete:
        _check_complete(out, shards)
    rows: list[Expression] = []
    for shard in shards:
        rows.extend(read_parquet(shard, Expression))
    rows.sort(key=lambda e: e.key)
    check_unique(rows, key=lambda e: e.key, field="video_id/object_id", file=out / "data")
    if not rows:
        raise SchemaError("the shards hold no rows", file=out / "data")
    return AnnotatedRun(out, Path(run["input"]), run, shards, tuple(rows))


def _check_complete(out: Path, shards: Sequence[Path]) -> None:
    expected = None
    seen = set()
    for shard in shards:
        m = _SHARD_NAME.match(shard.name)
        if not m:
            continue  # a differently named file is read, but cannot be checked
        index, total = int(m[1]), int(m[2])
        expected = total if expected is None else expected
        if total != expected:
            raise SchemaError(f"shards of two runs: '-of-{expected:05d}' and '-of-{total:05d}'", file=shard)
        marker = out / "markers" / f"shard-{index:05d}.done"
        if not marker.exists():
            raise SchemaError("shard has no completion marker (markers/shard-*.done): the run is incomplete; "
                              "rerun refsav annotate, or pass --allow-incomplete", file=shard)
        record = read_json(marker)
        failed = record.get("vlm_error", 0) if isinstance(record, dict) else 0
        if isinstance(failed, int) and not isinstance(failed, bool) and failed > 0:
            raise SchemaError(f"{failed} object(s) of this shard failed on the VLM and have no row: rerun "
                              "refsav annotate to retry them, or pass --allow-incomplete", file=marker)
        seen.add(index)
    if expected is not None and len(seen) < expected:
        missing = min(set(range(expected)) - seen)
        raise SchemaError(f"{expected - len(seen)} of {expected} shards are missing (first: {missing}); rerun "
                          "refsav annotate, or pass --allow-incomplete", file=out / "data")


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class SplitRule:
    """Video-level train/validation split from a hash of the seed and the video id."""

    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = DEFAULT_SPLIT_SEED

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise SchemaError(f"validation fraction must be in [0, 1), got {self.val_fraction}", field="val_fraction")

    def position(self, video_id: str) -> float:
        """A uniform number in [0, 1) fixed by (seed, video id), the same on every machine."""
        digest = hashlib.sha256(f"{self.seed}:{video_id}".encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def cli_args(self) -> str:
        return f"--val-fraction {self.val_fraction:g} --split-seed {self.seed}"

    def describe(self) -> str:
        return (f"a video is in `validation` when the first 8 bytes of sha256(\"{self.seed}:<video_id>\"), read as a "
                f"big-endian fraction of 2^64, are below {self.val_fraction:g}; with at least two videos, at least one "
                "is in each split (the video with the lowest, resp. highest, value moves)")


def assign_splits(video_ids: Iterable[str], rule: SplitRule) -> dict[str, str]:
    """Split name of every video. Stable: adding videos never moves an existing one,
    except through the at-least-one rule on tiny sets."""
    ids = sorted(set(video_ids))
    pos = {v: rule.position(v) for v in ids}
    out = {v: "validation" if pos[v] < rule.val_fraction else "train" for v in ids}
    if rule.val_fraction > 0 and len(ids) >= 2:
        by_pos = sorted(ids, key=lambda v: (pos[v], v))
        if "validation" not in out.values():
            out[by_pos[0]] = "validation"
        if "train" not in out.values():
            out[by_pos[-1]] = "train"
    return out


def rows_of_split(rows: Iterable[Expression], split: str, rule: SplitRule) -> list[Expression]:
    """Rows of one split ("train", "validation") or of all ("all")."""
    rows = list(rows)
    if split == "all":
        return rows
    if split not in SPLITS:
        raise SchemaError(f"unknown split {split!r}; choose from train, validation, all", field="split")
    splits = assign_splits((e.video_id for e in rows), rule)
    return [e for e in rows if splits[e.video_id] == split]


# --------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class SplitFiles:
    name: str
    files: tuple[str, ...]  # relative to the folder, POSIX
    num_examples: int
    num_bytes: int  # in-memory Arrow size, what `datasets` reports as num_bytes
    videos: int


@dataclass(frozen=True)
class BuiltDataset:
    folder: Path
    repo_id: str
    splits: tuple[SplitFiles, ...]
    download_size: int  # bytes of Parquet


def build_dataset_folder(
    run: AnnotatedRun,
    folder: str | os.PathLike,
    *,
    repo_id: str,
    rule: SplitRule = SplitRule(),
    shard_rows: int = DEFAULT_SHARD_ROWS,
    license: str = DEFAULT_LICENSE,
    note: str = "",
) -> BuiltDataset:
    """Write data/*.parquet and README.md into `folder`, replacing an earlier build there.
    `note` is put at the top of the card's body."""
    import pyarrow as pa

    from .dataset_card import CardInputs, dataset_stats, grounding_stats, histogram_png, provenance_summary, render_card

    if shard_rows < 1:
        raise SchemaError(f"rows per shard must be at least 1, got {shard_rows}", field="shard_rows")
    folder = Path(folder)
    _check_folder(folder)
    splits = assign_splits(run.video_ids, rule)
    staging = Path(tempfile.mkdtemp(prefix=".data.", dir=_mkdir(folder)))
    staging.chmod(0o755)  # mkdtemp's 0700 would follow the folder into place
    built: list[SplitFiles] = []
    try:
        for name in SPLITS:
            rows = [e for e in run.expressions if splits[e.video_id] == name]
            if not rows:
                continue
            n_files = math.ceil(len(rows) / shard_rows)
            files = []
            for i in range(n_files):
                rel = f"data/{name}-{i:05d}-of-{n_files:05d}.parquet"
                write_parquet(staging / Path(rel).name, rows[i * shard_rows : (i + 1) * shard_rows], Expression)
                files.append(rel)
            nbytes = pa.Table.from_pylist([e.to_row() for e in rows], schema=Expression.ARROW_SCHEMA).nbytes
            built.append(SplitFiles(name, tuple(files), len(rows), int(nbytes), len({e.video_id for e in rows})))
        download_size = sum(p.stat().st_size for p in staging.iterdir())
        # Swap the new shards in only once all are written: a failed build leaves the old folder.
        old = folder / "data"
        if old.exists():
            shutil.rmtree(old)
        staging.rename(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = BuiltDataset(folder, repo_id, tuple(built), download_size)
    grounding = grounding_stats(run.expressions)
    figure = folder / HISTOGRAM_FILE
    if grounding.used:
        with atomic_path(figure) as tmp:
            tmp.write_bytes(histogram_png(grounding))
    elif figure.exists():
        figure.unlink()  # an earlier build's figure no longer describes the rows
    card = render_card(CardInputs(
        repo_id=repo_id,
        splits=result.splits,
        download_size=download_size,
        stats=dataset_stats(run.expressions),
        provenance=provenance_summary(run.expressions),
        split_rule=rule.describe(),
        split_args=rule.cli_args(),
        run_config=run.run.get("config") if isinstance(run.run.get("config"), dict) else {},
        run_summary=run.run.get("summary") if isinstance(run.run.get("summary"), dict) else {},
        license=license,
        note=note,
        grounding=grounding,
        histogram=HISTOGRAM_FILE if grounding.used else "",
    ))
    atomic_write_text(folder / "README.md", card)
    return result


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


_CARD_FILES = ("README.md", HISTOGRAM_FILE)


def _check_folder(folder: Path) -> None:
    """Only a folder this command wrote (README.md, the grounding figure, data/*.parquet) may
    be overwritten: everything in the folder is uploaded, so stray files would be published too."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise SchemaError("not a folder", file=folder)
    for entry in folder.iterdir():
        if entry.name.startswith(".data.") and entry.is_dir():
            shutil.rmtree(entry)  # the staging folder of a build that was killed
            continue
        if entry.is_file() and entry.name.endswith(".tmp") and any(entry.name.startswith(f".{n}.") for n in _CARD_FILES):
            entry.unlink()  # a card or figure whose write was killed
            continue
        if entry.name in _CARD_FILES and entry.is_file():
            continue
        if entry.name == "data" and entry.is_dir() and all(p.suffix == ".parquet" and p.is_file() for p in entry.iterdir()):
            continue
        raise SchemaError(f"the folder holds '{entry.name}', which would be published too; "
                          "choose an empty or new --folder", file=folder)


def validate_folder(built: BuiltDataset, *, expected: Sequence[Expression] | None = None) -> dict[str, int]:
    """Load the folder as the Hub would (`datasets.load_dataset(folder)`) and compare.

    Returns rows per split. Checks split names, row counts, features (those of the
    Expression Arrow schema) and, when `expected` is given, every row.
    """
    import datasets

    from refsav.schemas.io import rows_to_records

    want_features = datasets.Features.from_arrow_schema(Expression.ARROW_SCHEMA)
    want = {s.name: s.num_examples for s in built.splits}
    rows: list[Expression] = []
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a check, not a download: keep the terminal quiet
    try:
        with tempfile.TemporaryDirectory(prefix="refsav-publish-") as cache:
            try:
                loaded = datasets.load_dataset(str(built.folder), cache_dir=cache)
            except Exception as err:  # datasets raises many types; each means the card or the files are wrong
                raise SchemaError(f"datasets.load_dataset cannot read the folder ({type(err).__name__}: "
                                  f"{_one_line(err)})", file=built.folder) from None
            counts = {name: ds.num_rows for name, ds in loaded.items()}
            if counts != want:
                raise SchemaError(f"load_dataset found splits {counts}, expected {want}", file=built.folder)
            for name, ds in loaded.items():
                if ds.features != want_features:
                    raise SchemaError(f"split {name} loads with other features than the Expression schema: {ds.features}",
                                      file=built.folder)
                rows.extend(rows_to_records(ds.to_list(), Expression, file=f"{built.folder} ({name})"))
            del loaded  # close the memory-mapped cache files before the folder is removed
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    if expected is not None and sorted(rows, key=lambda e: e.key) != sorted(expected, key=lambda e: e.key):
        raise SchemaError("the rows loaded back differ from the rows written", file=built.folder)
    return counts


# --------------------------------------------------------------------------- upload


class UploadError(RuntimeError):
    """The upload failed for good (after retries, or on an error retrying cannot fix)."""


TRANSIENT_STATUS = frozenset({408, 425, 429})
_TRANSIENT_NAMES = frozenset({"TransportError", "TimeoutException", "ConnectError", "ConnectionError", "Timeout",
                              "ReadTimeout", "ConnectTimeout", "RemoteProtocolError", "ChunkedEncodingError"})
# Errors that look like connection errors but no wait can fix: huggingface_hub's offline
# mode is a ConnectionError raised before any request, a missing token is an OSError.
_PERMANENT_NAMES = frozenset({"OfflineModeIsEnabled", "LocalTokenNotFoundError"})
# What to do about a permanent HTTP status, for the one-line error.
_STATUS_HINTS = {
    401: "the Hub did not accept the token: log in (`hf auth login`) or set HF_TOKEN",
    403: "the token may not write to this repository or organisation",
    404: "no such repository or organisation, or the token cannot see it",
}


def _status(err: BaseException) -> int | None:
    try:
        status = getattr(getattr(err, "response", None), "status_code", None)
    except Exception:  # noqa: BLE001 - some HTTP errors raise when asked for an absent response
        return None
    return status if isinstance(status, int) else None


def is_transient(err: BaseException) -> bool:
    """True for errors a retry can fix: 5xx, 408/425/429, and dropped or timed-out connections;
    False for offline mode, a missing token and every other 4xx (401, 403, 404 ...)."""
    if any(cls.__name__ in _PERMANENT_NAMES for cls in type(err).__mro__):
        return False
    status = _status(err)
    if status is not None:
        return status >= 500 or status in TRANSIENT_STATUS
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    # httpx / requests transport errors carry no response; match them by class name so
    # that this works with whichever HTTP client huggingface_hub uses.
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(err).__mro__)


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the folder's (path, content hash) list: names the commit's content."""
    digest = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        digest.update(f"{p.relative_to(folder).as_posix()}\0{sha256_file(p)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class UploadResult:
    repo_id: str
    commit: str  # commit id or URL, as the Hub answered
    attempts: int
    already_there: bool  # a retry found that an earlier attempt had in fact committed


def upload_dataset(
    api: Any,
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    attempts: int = 5,
    backoff: float = 2.0,
    max_wait: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _msg: None,
) -> UploadResult:
    """Create the dataset repo if needed and push `folder` in one commit.

    `api` is a `huggingface_hub.HfApi` (or a test double with `create_repo`,
    `upload_folder` and `list_repo_commits`). Transient errors are retried with
    exponential backoff; before each retry the latest commit is checked, so that an
    attempt which committed but lost its answer is not committed a second time.
    Remote files under data/ that the folder no longer has are deleted in the same
    commit, so a republished dataset never mixes old and new shards.

    Untested against the real Hub: no network access where this was written.
    """
    folder = Path(folder)
    message = f"refsav publish {_toolkit_version()} (content {folder_fingerprint(folder)[:16]})"

    def retrying(what: str, call: Callable[[], Any], recovered: Callable[[], Any] | None = None) -> tuple[Any, int, bool]:
        for attempt in range(1, attempts + 1):
            try:
                return call(), attempt, False
            except Exception as err:  # noqa: BLE001 - classified just below
                if not is_transient(err):
                    hint = _STATUS_HINTS.get(_status(err) or 0)
                    raise UploadError(f"{what} failed: {type(err).__name__}: {_one_line(err)}"
                                      + (f" ({hint})" if hint else "")) from None
                if recovered is not None:
                    found = recovered()
                    if found is not None:
                        return found, attempt, True
                if attempt == attempts:
                    raise UploadError(f"{what} failed after {attempts} attempts: {type(err).__name__}: "
                                      f"{_one_line(err)}") from None
                wait = min(backoff * 2 ** (attempt - 1), max_wait)
                log(f"{what}: {type(err).__name__}: {_one_line(err)}; retrying in {wait:g} s")
                sleep(wait)
        raise AssertionError("unreachable")

    retrying("create_repo", lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True))

    def committed_already() -> Any:
        try:
            commits = api.list_repo_commits(repo_id, repo_type="dataset")
        except Exception:  # noqa: BLE001 - cannot tell; the retry will say
            return None
        if commits and getattr(commits[0], "title", None) == message:
            return commits[0].commit_id
        return None

    info, n, again = retrying("upload", lambda: api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="dataset",
        commit_message=message,
        # The figure too: a republish without grounding must not leave the old one on the Hub.
        delete_patterns=["data/*", HISTOGRAM_FILE],
    ), committed_already)
    commit = getattr(info, "commit_url", None) or getattr(info, "oid", None) or str(info)
    return UploadResult(repo_id, str(commit), n, again)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _toolkit_version() -> str:
    from refsav.schemas.version import __version__

    return __version__


# --------------------------------------------------------------------------- command


def _repo_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _REPO_ID.match(value) or ".." in value or len(value) > 96:
        raise click.BadParameter(f"expected ORG/NAME (letters, digits, '.', '_', '-'), got {value!r}")
    return value


@click.command("publish")
@click.option("--data", "data", required=True, type=click.Path(path_type=Path), help="Output folder of `refsav annotate`.")
@click.option("--repo-id", required=True, callback=_repo_id, help="Hub dataset repository, ORG/NAME.")
@click.option("--folder", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the repository folder (default: DATA/hub).")
@click.option("--private", is_flag=True, help="Create the repository as private (an existing one keeps its visibility).")
@click.option("--dry-run", is_flag=True, help="Write and validate the folder, but do not upload.")
@click.option("--val-fraction", default=DEFAULT_VAL_FRACTION, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Fraction of videos in the validation split.")
@click.option("--split-seed", default=DEFAULT_SPLIT_SEED, show_default=True, type=int, help="Seed of the video-level split.")
@click.option("--shard-rows", default=DEFAULT_SHARD_ROWS, show_default=True, type=click.IntRange(1), help="Rows per Parquet file.")
@click.option("--license", "license_", default=DEFAULT_LICENSE, show_default=True,
              help="Licence id for the card (SA-V is CC BY 4.0; mind the terms of the models that wrote the text).")
@click.option("--attempts", default=5, show_default=True, type=click.IntRange(1), help="Upload attempts on network errors.")
@click.option("--allow-incomplete", is_flag=True, help="Publish even if shards of the run are missing or have objects that failed on the VLM.")
@click.option("--card-note", default="", help="A notice for the top of the dataset card, e.g. what the rows must not be used for.")
def publish_command(data: Path, repo_id: str, folder: Path | None, private: bool, dry_run: bool, val_fraction: float,
                    split_seed: int, shard_rows: int, license_: str, attempts: int, allow_incomplete: bool,
                    card_note: str) -> None:
    """Publish an annotation run as a Hugging Face dataset: Parquet splits, a dataset card, one commit.

    When rows carry grounding (refsav annotate --grounder), the card shows a histogram of the kept
    expressions' grounding J&F (grounding_jf.png beside it, and its bin counts as a table) and the
    counts dropped, removed and flagged by grounding; otherwise it says that no grounder was used."""
    run = load_annotated(data, allow_incomplete=allow_incomplete)
    folder = folder or data / "hub"
    rule = SplitRule(val_fraction, split_seed)
    built = build_dataset_folder(run, folder, repo_id=repo_id, rule=rule, shard_rows=shard_rows, license=license_,
                                 note=card_note)
    counts = validate_folder(built, expected=run.expressions)
    for s in built.splits:
        click.echo(f"  {s.name:<10} {s.videos:>7} videos {s.num_examples:>9} expressions  ({len(s.files)} file(s))")
    click.echo(f"wrote {folder} and loaded it back with datasets: {sum(counts.values())} rows, features as written")
    if dry_run:
        click.echo(f"dry run: not uploaded to {repo_id}")
        return
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise click.ClickException(f"not uploaded to {repo_id}: HF_HUB_OFFLINE is set, so huggingface_hub makes no "
                                   f"request; unset it to upload (the folder {folder} is ready), or pass --dry-run")

    try:
        result = upload_dataset(HfApi(), folder, repo_id, private=private, attempts=attempts,
                                log=lambda msg: click.echo(msg, err=True))
    except UploadError as err:
        raise click.ClickException(str(err)) from None
    note = " (an earlier attempt had already committed it)" if result.already_there else ""
    click.echo(f"uploaded to https://huggingface.co/datasets/{repo_id}: {result.commit}{note}")
