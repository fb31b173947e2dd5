"""DAVIS-2017 semi-supervised and unsupervised scoring, as davisvideochallenge/davis2017-evaluation.

Ground truth (a DAVIS root)::

    <root>/ImageSets/2017/<set>.txt                  one sequence name per line
    <root>/Annotations/480p/<seq>/<frame>.png        semi-supervised (davis17-semi)
    <root>/Annotations_unsupervised/480p/<seq>/...   unsupervised (davis17-unsup)

PNGs are palette ('P') or grayscale ('L') images whose value is the object id, 0 the
background and 255 void.  The frames of a sequence are its annotation PNGs, sorted by
name (the official code lists ``JPEGImages`` too and needs them; DAVIS-2017 train/val
annotate every frame, so the lists agree and the JPEGs are not read here).  The number
of objects of a sequence is the largest label of its **first** frame; objects that only
appear later are not scored (their pixels are neither object nor void).

A root without ``Annotations*/480p`` is read as a flat tree ``<root>/<seq>/<frame>.png``;
with no ``ImageSets/2017/<set>.txt`` (``ImageSets/2019`` for the unsupervised
test-dev/test-challenge sets, as the official code) the sequence list must be given
explicitly: ``score_davis(..., sequences=["bike-packing", ...])``.  An explicit list also
overrides ImageSets, like the official ``sequences=`` argument.

Predictions: ``<results>/<seq>/<frame>.png``, palette or grayscale, value = object id
(semi) or proposal id (unsup); or a ``.zip`` of that tree (read in place through
``refsav.benchmark.inputs``' safe zip access; a zip whose entries all sit under one top folder
is read from inside it).

Protocols (``DAVIS_PROTOCOLS``):

* ``davis17-semi``: the first and last frames are dropped; GT object k is compared with
  prediction id k (J and F per frame, **no** void: the official code passes ``None``).
* ``davis17-unsup``: all frames; void (GT 255) is passed to J and F; proposals
  1..max(id) (at most 20), zero-padded up to the number of GT objects; J and F of every
  (proposal, object) pair; Hungarian matching (``scipy.optimize.linear_sum_assignment``)
  maximising the mean over frames of (J + F) / 2.

Per object, ``db_statistics`` of the per-frame J and F vectors gives mean M, recall R and
decay D; the global numbers are plain means over all objects of all sequences, and
``J&F = (J-Mean + F-Mean) / 2``.  Every number here is x100 (percent); the official
CSVs hold fractions.

Where this scorer deliberately differs from the official code (documented choices):

* ground-truth PNGs larger than ``refsav.schemas.limits`` allows (8192 pixels a side,
  40 million a frame) are refused from their header, before any pixel is decoded;
* a missing sequence or frame, a corrupt, mis-sized or non-id (RGB) PNG is an ``Issue``
  and is scored as an empty mask (the official code exits or crashes);
* prediction ids above the GT object count (semi) or above 20 (unsup) are an ``Issue``
  and are ignored, i.e. read as background (the official code exits);
* decay bins use int64 indices: the official uint8 cast wraps for sequences of 256+
  frames (``replicate_uint8_wrap=True`` reproduces it; see ``refsav.benchmark.metrics.decay``);
* unsupervised per-object records are labelled with the GT object id they were matched
  to; the official ``M_per_object`` names the i-th matched pair ``<seq>_<i+1>`` in
  *proposal* order, which can permute names within a sequence (global numbers are the same);
* an old revision of davis2017-evaluation (commit 30b698a) tested ``bool_gt == 255`` for
  void, i.e. used no void in either task; this follows the current code (void in unsup only).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from refsav.runtime.executor import make_executor, results_in_order
from refsav.schemas.errors import SchemaError
from refsav.schemas.io import read_bytes
from refsav.schemas.limits import check_frame_size

from .files import DEFAULT_MAX_UNZIPPED, ReadOnlyFiles
from .metrics import db_statistics, f_per_frame, j_per_frame
from .report import Issue, ScoreReport

__all__ = [
    "DavisProtocol",
    "DAVIS_PROTOCOLS",
    "get_davis_protocol",
    "DavisObjectScore",
    "GtSequence",
    "DavisGroundTruth",
    "DavisPredictions",
    "object_masks",
    "semi_per_frame",
    "unsup_pairwise",
    "match_proposals",
    "object_metrics",
    "summarize",
    "score_sequence",
    "score_davis",
    "METRIC_KEYS",
]

VOID_LABEL = 255
MAX_PROPOSALS = 20  # davis2017-evaluation max_n_proposals
METRIC_KEYS = ("J&F", "J", "J-Recall", "J-Decay", "F", "F-Recall", "F-Decay")


# --------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class DavisProtocol:
    name: str
    source: str  # the official scorer this reproduces
    description: str
    task: Literal["semi-supervised", "unsupervised"]
    annotations: str  # annotation folder under the DAVIS root
    trim_first_last: bool  # drop the first and last frame of every sequence
    use_void: bool  # pass GT void (255) to J and F
    max_proposals: int | None  # None: ids must not exceed the GT object count (semi)


DAVIS_PROTOCOLS: dict[str, DavisProtocol] = {
    p.name: p
    for p in [
        DavisProtocol(
            "davis17-semi",
            "davisvideochallenge/davis2017-evaluation evaluation_method.py --task semi-supervised",
            "DAVIS-2017 semi-supervised: Annotations/480p; first and last frames dropped; "
            "prediction id k scored against GT object k (J, F without void); per object "
            "mean/recall/decay; means over all objects of all sequences; J&F = (J + F) / 2.",
            task="semi-supervised",
            annotations="Annotations",
            trim_first_last=True,
            use_void=False,
            max_proposals=None,
        ),
        DavisProtocol(
            "davis17-unsup",
            "davisvideochallenge/davis2017-evaluation evaluation_method.py --task unsupervised",
            "DAVIS-2017 unsupervised: Annotations_unsupervised/480p; all frames; up to 20 "
            "proposals, zero-padded to the object count; J, F with void for every "
            "(proposal, object) pair; Hungarian matching on mean (J + F) / 2; per object "
            "mean/recall/decay; means over all objects; J&F = (J + F) / 2.",
            task="unsupervised",
            annotations="Annotations_unsupervised",
            trim_first_last=False,
            use_void=True,
            max_proposals=MAX_PROPOSALS,
        ),
    ]
}


def get_davis_protocol(name: str) -> DavisProtocol:
    try:
        return DAVIS_PROTOCOLS[name]
    except KeyError:
        raise SchemaError(f"unknown DAVIS protocol {name!r}; choose from {', '.join(sorted(DAVIS_PROTOCOLS))}") from None


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class DavisObjectScore:
    """Scores of one GT object of one sequence (x100)."""

    sequence: str
    object_id: int  # GT label, 1-based
    pred_id: int  # prediction id scored against it (semi: = object_id; unsup: matched proposal, 0 = padding)
    n_frames: int  # frames scored
    metrics: dict[str, float]  # METRIC_KEYS: J&F, J, J-Recall, J-Decay, F, F-Recall, F-Decay

    @property
    def subset(self) -> str:
        """The per-sequence table groups objects by sequence (ScoreReport.subsets)."""
        return self.sequence


@dataclass(frozen=True)
class GtSequence:
    name: str
    frames: tuple[str, ...]  # frame ids (PNG stems), sorted
    labels: np.ndarray  # (T, H, W) uint8 object ids, void set to 0
    void: np.ndarray  # (T, H, W) bool, GT == 255
    n_objects: int  # max label of the first frame

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.labels.shape[1]), int(self.labels.shape[2])


# --------------------------------------------------------------------------- PNG decoding


class _NotIds(ValueError):
    """A readable image whose pixels are colours, not ids."""


def _decode_ids(data: bytes, check_size: Callable[[int, int], object] | None = None) -> np.ndarray:
    """PNG bytes -> (H, W) integer array of ids.

    Raises OSError/ValueError (and PIL's subclasses) for unreadable data and
    ``_NotIds`` for images that hold colours rather than ids (RGB, float).
    ``check_size(height, width)`` sees the header's size before any pixel is decoded.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if check_size is not None:
            check_size(img.height, img.width)
        img.load()
        mode = img.mode
        arr = np.asarray(img)
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise _NotIds(f"PNG mode {mode} holds no object ids; expected a palette (P) or grayscale (L) PNG")
    return arr.astype(np.uint8) if arr.dtype == np.bool_ else arr


def _unreadable() -> tuple[type[BaseException], ...]:
    from PIL import Image, UnidentifiedImageError

    # PIL raises several types for truncated, garbled or absurdly large images.
    return (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError)


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class DavisGroundTruth:
    root: Path
    mask_dir: Path  # the folder holding <seq>/<frame>.png
    sequences: tuple[str, ...]
    frames: dict[str, tuple[str, ...]]  # sequence -> sorted frame ids

    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        protocol: DavisProtocol,
        image_set: str = "val",
        sequences: Sequence[str] | None = None,
    ) -> "DavisGroundTruth":
        """Index a DAVIS root (or a flat ``<root>/<seq>/`` tree); reads no masks yet."""
        root = Path(root)
        if not root.is_dir():
            raise SchemaError("DAVIS ground-truth folder not found", file=root)
        nested = root / protocol.annotations / "480p"
        mask_dir = nested if nested.is_dir() else root
        names = list(sequences) if sequences is not None else _read_image_set(root, protocol, image_set)
        frames: dict[str, tuple[str, ...]] = {}
        for seq in names:
            if not seq or "/" in seq or "\\" in seq or seq in (".", ".."):
                raise SchemaError("not a plain sequence folder name", file=root, record=repr(seq))
            folder = mask_dir / seq
            if not folder.is_dir():
                raise SchemaError(
                    f"no annotation folder for this sequence (looked for {folder}; expected "
                    f"{protocol.annotations}/480p/<seq>/ or <seq>/ under the root)",
                    file=root, record=seq,
                )
            pngs = sorted(p.stem for p in folder.iterdir() if p.is_file() and p.suffix == ".png")
            if not pngs:
                raise SchemaError("no annotation PNGs for this sequence", file=folder, record=seq)
            if protocol.trim_first_last and len(pngs) < 3:
                raise SchemaError(f"{len(pngs)} frames; {protocol.name} drops the first and last frame "
                                  "and needs at least 3", file=folder, record=seq)
            frames[seq] = tuple(pngs)
        return cls(root, mask_dir, tuple(frames), frames)

    def load(self, seq: str) -> GtSequence:
        """Labels, void and object count of one sequence (all frames)."""
        frames = self.frames[seq]
        labels = None
        for t, frame in enumerate(frames):
            path = self.mask_dir / seq / f"{frame}.png"
            try:
                arr = _decode_ids(read_bytes(path, "PNG file"), partial(check_frame_size, file=path))
            except SchemaError:
                raise
            except _unreadable() as err:
                raise SchemaError(f"unreadable ground-truth PNG ({err})", file=path) from None
            if labels is None:
                labels = np.zeros((len(frames), *arr.shape), dtype=np.uint8)
                void = np.zeros(labels.shape, dtype=bool)
            if arr.shape != labels.shape[1:]:
                raise SchemaError(f"frame is {arr.shape[0]}x{arr.shape[1]}, the sequence's first frame "
                                  f"{labels.shape[1]}x{labels.shape[2]}", file=path)
            if arr.max(initial=0) > VOID_LABEL:
                raise SchemaError(f"label {int(arr.max())} above 255", file=path)
            void[t] = arr == VOID_LABEL
            labels[t] = np.where(void[t], 0, arr)
        n_objects = int(labels[0].max())
        return GtSequence(seq, frames, labels, void, n_objects)


def _read_image_set(root: Path, protocol: DavisProtocol, image_set: str) -> list[str]:
    year = "2019" if protocol.task == "unsupervised" and image_set in ("test-dev", "test-challenge") else "2017"
    path = root / "ImageSets" / year / f"{image_set}.txt"
    if not path.is_file():
        raise SchemaError(f"no ImageSets/{year}/{image_set}.txt; pass the sequence list explicitly "
                          "(score_davis(..., sequences=[...]))", file=root)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- predictions


def _index_result_tree(names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Entry names -> {sequence: {frame id: entry}} for ``<seq>/<frame>.png`` entries.

    When no PNG sits at depth two but all depth-three PNGs share one top folder (a
    zipped results folder), the tree is read from inside that folder.
    """
    pngs = [n for n in names if n.lower().endswith(".png") and not n.startswith("__MACOSX/")]
    prefix = ""
    if not any(n.count("/") == 1 for n in pngs):
        tops = {n.split("/")[0] for n in pngs if n.count("/") == 2}
        if len(tops) == 1:
            prefix = tops.pop() + "/"
    index: dict[str, dict[str, str]] = {}
    for name in pngs:
        parts = name[len(prefix):].split("/") if name.startswith(prefix) else []
        if len(parts) == 2:
            index.setdefault(parts[0], {})[parts[1][:-4]] = name
    return index


@dataclass
class DavisPredictions:
    files: ReadOnlyFiles
    index: dict[str, dict[str, str]]  # sequence -> frame id -> entry name in `files`
    issues: list[Issue]  # problems found while opening (unsafe zip entries)

    @classmethod
    def open(cls, path: str | os.PathLike, max_unzipped: int = DEFAULT_MAX_UNZIPPED) -> "DavisPredictions":
        path = Path(path)
        if not path.exists():
            raise SchemaError("prediction path not found", file=path)
        files = ReadOnlyFiles(path, max_unzipped)
        index = _index_result_tree(files.names())
        if not index:
            raise SchemaError("no predictions found: expected <sequence>/<frame>.png", file=path)
        return cls(files, index, list(files.issues))

    def read_labels(
        self, seq: str, frames: Sequence[str], shape: tuple[int, int], max_id: int
    ) -> tuple[np.ndarray, int, list[Issue]]:
        """(T, H, W) uint8 ids of `frames`, the largest id seen, and the problems found.

        Ids above ``max_id`` are set to 0 (ignored); missing, unreadable, non-id and
        mis-sized frames are empty.  A sequence absent from the predictions is all
        empty without per-frame issues (the caller reports it once).
        """
        out = np.zeros((len(frames), *shape), dtype=np.uint8)
        issues: list[Issue] = []
        largest = 0
        files_of_seq = self.index.get(seq)
        if files_of_seq is None:
            return out, largest, issues
        for t, frame in enumerate(frames):
            where = f"{seq}/{frame}"
            rel = files_of_seq.get(frame)
            if rel is None:
                issues.append(Issue("missing_frame", where, "no PNG for this frame; scored as empty"))
                continue
            try:
                arr = _decode_ids(self.files.read(rel))
            except _NotIds as err:
                issues.append(Issue("wrong_mode", where, f"{err}; scored as empty"))
                continue
            except _unreadable() as err:
                issues.append(Issue("corrupt_file", where, f"cannot read PNG ({err}); scored as empty"))
                continue
            if arr.shape != tuple(shape):
                issues.append(Issue("wrong_size", where, f"mask is {arr.shape[0]}x{arr.shape[1]}, "
                                                         f"GT is {shape[0]}x{shape[1]}; scored as empty"))
                continue
            largest = max(largest, int(arr.max(initial=0)))
            out[t] = np.where((arr > 0) & (arr <= max_id), arr, 0)
        return out, largest, issues


# --------------------------------------------------------------------------- per-frame metrics


def object_masks(labels: np.ndarray, n_objects: int) -> np.ndarray:
    """(T, H, W) ids -> (n_objects, T, H, W) bool; plane k - 1 is ``labels == k``."""
    out = np.zeros((n_objects, *labels.shape), dtype=bool)
    for k in range(n_objects):
        out[k] = labels == k + 1
    return out


def semi_per_frame(
    gt_objects: np.ndarray, pred_labels: np.ndarray, void: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(N, T) J and F of GT object k against prediction id k (ids above N are ignored)."""
    n, t = gt_objects.shape[:2]
    j, f = np.zeros((n, t)), np.zeros((n, t))
    for k in range(n):
        pred = pred_labels == k + 1
        j[k] = j_per_frame(pred, gt_objects[k], void)
        f[k] = f_per_frame(pred, gt_objects[k], void)
    return j, f


def unsup_pairwise(
    gt_objects: np.ndarray, pred_labels: np.ndarray, n_proposals: int, void: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(P, N, T) J and F of every proposal 1..P (empty when absent) against every GT object."""
    n, t = gt_objects.shape[:2]
    j, f = np.zeros((n_proposals, n, t)), np.zeros((n_proposals, n, t))
    # J and F with void equal J and F without it on masks with the void pixels removed
    # (both only ever see pred & ~void and gt & ~void), so remove them once per mask
    # instead of once per pair.
    keep = np.ones(gt_objects.shape[1:], dtype=bool) if void is None else ~np.asarray(void, dtype=bool)
    gt_kept = gt_objects & keep
    for p in range(n_proposals):
        proposal = (pred_labels == p + 1) & keep
        for k in range(n):
            j[p, k] = j_per_frame(proposal, gt_kept[k])
            f[p, k] = f_per_frame(proposal, gt_kept[k])
    return j, f


def match_proposals(j: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of (P, N, T) pair scores: (proposal indices, object indices).

    Maximises the sum over matched pairs of (mean_t J + mean_t F) / 2, computed with the
    official float operations so that ties break the same way; proposal indices ascend.
    """
    from scipy.optimize import linear_sum_assignment

    score = (np.mean(j, axis=2) + np.mean(f, axis=2)) / 2
    rows, cols = linear_sum_assignment(-score)
    return rows, cols


def object_metrics(j: np.ndarray, f: np.ndarray, replicate_uint8_wrap: bool = False) -> dict[str, float]:
    """METRIC_KEYS of one object from its per-frame J and F vectors, x100."""
    js = db_statistics(j, replicate_uint8_wrap)
    fs = db_statistics(f, replicate_uint8_wrap)
    out = {
        "J": 100 * js.mean, "J-Recall": 100 * js.recall, "J-Decay": 100 * js.decay,
        "F": 100 * fs.mean, "F-Recall": 100 * fs.recall, "F-Decay": 100 * fs.decay,
    }
    out["J&F"] = (out["J"] + out["F"]) / 2
    return {k: out[k] for k in METRIC_KEYS}


def summarize(items: Sequence[DavisObjectScore]) -> dict[str, float]:
    """Plain means over objects (as the official np.mean); J&F = (J + F) / 2."""
    if not items:
        return {k: float("nan") for k in METRIC_KEYS}
    out = {k: float(np.mean([it.metrics[k] for it in items])) for k in METRIC_KEYS if k != "J&F"}
    out["J&F"] = (out["J"] + out["F"]) / 2
    return {k: out[k] for k in METRIC_KEYS}


# --------------------------------------------------------------------------- scoring


def score_sequence(
    gt: DavisGroundTruth,
    pred: DavisPredictions,
    seq: str,
    protocol: DavisProtocol,
    replicate_uint8_wrap: bool = False,
) -> tuple[list[DavisObjectScore], list[Issue]]:
    """Per-object scores of one sequence, ordered by GT object id."""
    s = gt.load(seq)
    lo, hi = (1, len(s.frames) - 1) if protocol.trim_first_last else (0, len(s.frames))
    limit = s.n_objects if protocol.max_proposals is None else protocol.max_proposals
    labels, largest, issues = pred.read_labels(seq, s.frames[lo:hi], s.shape, limit)
    gt_objects = object_masks(s.labels[lo:hi], s.n_objects)
    void = s.void[lo:hi] if protocol.use_void else None

    if protocol.max_proposals is None:
        if largest > limit:
            issues.append(Issue("id_above_objects", seq, f"prediction ids up to {largest}, but the first GT frame has "
                                                         f"{s.n_objects} objects; ids above {s.n_objects} ignored"))
        j, f = semi_per_frame(gt_objects, labels, void)
        matched = [(k, k + 1) for k in range(s.n_objects)]  # (object index, prediction id)
    else:
        if largest > limit:
            issues.append(Issue("too_many_proposals", seq, f"proposal ids up to {largest}, at most {limit} allowed; "
                                                           f"ids above {limit} ignored"))
        n_submitted = min(largest, limit)
        jp, fp = unsup_pairwise(gt_objects, labels, max(n_submitted, s.n_objects), void)
        rows, cols = match_proposals(jp, fp)
        j, f = np.zeros(jp.shape[1:]), np.zeros(fp.shape[1:])
        j[cols], f[cols] = jp[rows, cols], fp[rows, cols]
        by_object = dict(zip(cols.tolist(), rows.tolist()))
        matched = [(k, by_object[k] + 1 if by_object[k] < n_submitted else 0) for k in range(s.n_objects)]

    items = [
        DavisObjectScore(seq, k + 1, pred_id, hi - lo, object_metrics(j[k], f[k], replicate_uint8_wrap))
        for k, pred_id in matched
    ]
    return items, issues


def _coverage_issues(gt: DavisGroundTruth, pred: DavisPredictions) -> list[Issue]:
    issues = []
    for seq in gt.sequences:
        if seq not in pred.index:
            issues.append(Issue("missing_sequence", seq, "no predictions; every object scored against empty masks"))
        else:
            extra = sorted(set(pred.index[seq]) - set(gt.frames[seq]))
            if extra:
                issues.append(Issue("extra_frame", seq, f"{len(extra)} frames not in the GT (e.g. {extra[0]}); ignored"))
    for seq in sorted(set(pred.index) - set(gt.frames)):
        issues.append(Issue("extra_sequence", seq, "not in the ground truth; ignored"))
    return issues


# Worker state: the predictions are opened once per process (a zip handle cannot be sent).
_STATE: dict[str, object] = {}


def _init_worker(gt: DavisGroundTruth, pred_path: str) -> None:
    _STATE["gt"] = gt
    _STATE["pred"] = DavisPredictions.open(pred_path)


def _score_in_worker(seq: str, protocol: DavisProtocol, replicate_uint8_wrap: bool):
    return score_sequence(_STATE["gt"], _STATE["pred"], seq, protocol, replicate_uint8_wrap)  # type: ignore[arg-type]


def score_davis(
    gt_root: str | os.PathLike,
    pred_path: str | os.PathLike,
    protocol_name: str,
    *,
    image_set: str = "val",
    sequences: Sequence[str] | None = None,
    workers: int = 1,
    on_sequence: Callable[[int], None] | None = None,
    replicate_uint8_wrap: bool = False,
) -> ScoreReport:
    """Score a DAVIS-2017 result tree (or zip) with ``davis17-semi`` or ``davis17-unsup``.

    ``sequences`` overrides ``ImageSets/2017/<image_set>.txt`` (and is required when that
    file is missing).  ``on_sequence(n)`` is called as sequences finish.  Returns totals
    and per-sequence subsets keyed by METRIC_KEYS (x100), one ``DavisObjectScore`` per
    GT object (``item_kind="objects"``) and the submission's problems as issues.
    """
    protocol = get_davis_protocol(protocol_name)
    gt = DavisGroundTruth.open(gt_root, protocol, image_set, sequences)
    pred = DavisPredictions.open(pred_path)
    issues = list(pred.issues) + _coverage_issues(gt, pred)
    items: list[DavisObjectScore] = []

    def collect(results) -> None:
        for seq_items, seq_issues in results:
            items.extend(seq_items)
            issues.extend(seq_issues)
            if on_sequence:
                on_sequence(1)

    names = list(gt.sequences)
    if workers <= 1 or len(names) <= 1:
        collect(score_sequence(gt, pred, seq, protocol, replicate_uint8_wrap) for seq in names)
    else:
        with make_executor(min(workers, len(names)), local="processes", initializer=_init_worker,
                           initargs=(gt, str(pred_path))) as pool:
            score = partial(_score_in_worker, protocol=protocol, replicate_uint8_wrap=replicate_uint8_wrap)
            collect(results_in_order(pool, score, names))  # in sequence order, whatever order they finish in

    subsets = {seq: summarize(group) for seq in names if (group := [i for i in items if i.sequence == seq])}
    return ScoreReport(protocol.name, "J&F", summarize(items), subsets, items, issues, item_kind="objects")
