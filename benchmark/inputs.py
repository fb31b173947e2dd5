"""Ground truth and predictions for the meta_expressions + mask_dict family
(Ref-SAV, MeViS, ReVOS, Ref-DAVIS in the VISA/Sa2VA style).

Predictions may be a PNG tree (`[Annotations/]<video>/<exp_id>/<frame>.png`), a
Sa2VA `results.json`, refsav `VideoPrediction` Parquet, or a `.zip` of any of
these, exactly one of them. Files are read through `files.ReadOnlyFiles` (zips in
place, links kept inside the submission, every read bounded) and within the caps of
`files.SubmissionLimits` (docs/submission-limits.md).

Problems with a submission are collected as `Issue`s instead of raised, so the
scorer can do what the official scripts do (count the item as 0) and still
report everything it saw.
"""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from refsav.schemas import rle as rle_ops
from refsav.schemas.errors import SchemaError
from refsav.schemas.io import parse_json, read_json
from refsav.schemas.predictions import VideoPrediction
from refsav.schemas.limits import check_frame_size
from refsav.schemas.refvos import (
    RefExpression,
    RefVideo,
    find_mask_dict,
    find_meta,
    read_mask_dict_lists,
    read_meta_expressions,
)
from refsav.schemas.rle import Rle

from .files import DEFAULT_LIMITS, EntryError, ReadOnlyFiles, SubmissionLimits, check_submission_path, printable
from .metrics import RunMasks
from .pngs import read_mask_png
from .report import Issue


# --------------------------------------------------------------------------- ground truth


@dataclass
class RefVosGroundTruth:
    videos: list[RefVideo]
    masks: Mapping[str, list[Rle | None]]  # mask_dict (a MaskDict when loaded from a folder)
    foreground: dict[str, list[Rle | None]] | None = None  # ReVOS mask_dict_foreground, per video
    mask_file: str | None = None  # where the masks came from, for error messages
    foreground_file: str | None = None

    @classmethod
    def load(cls, root: str | os.PathLike, meta_name: str | None = None) -> "RefVosGroundTruth":
        root = Path(root)
        meta_path = root / meta_name if meta_name else find_meta(root)
        mask_path = find_mask_dict(root)
        gt = cls(read_meta_expressions(meta_path), _read_mask_dict(mask_path), mask_file=str(mask_path))
        fg_path = root / FOREGROUND_NAME
        if os.path.lexists(fg_path):
            gt.foreground, gt.foreground_file = _read_foreground(fg_path), str(fg_path)
        return gt

    def frame_size(self, video: RefVideo) -> tuple[int, int]:
        """The video's height/width, else the size of its first non-empty GT mask (Ref-DAVIS17
        as ReferFormer converts it has no sizes in its meta file)."""
        if video.height and video.width:
            return video.height, video.width
        for exp in video.expressions:
            for a in exp.anno_id:
                for t, r in enumerate(self.masks.get(str(a), [])):
                    if r is not None:
                        return check_frame_size(*r.size, file=self.mask_file, record=f"{a}[{t}]", field="size")
        raise SchemaError("cannot tell the frame size: no height/width and no non-empty mask", file=self.mask_file,
                          record=video.video_id, field="height")

    def _object_rles(self, video: RefVideo, exp: RefExpression, anno_id: int) -> list[Rle | None]:
        rles = self.masks.get(str(anno_id))
        if rles is None:
            raise SchemaError(f"anno_id {anno_id} is not in {Path(self.mask_file or 'mask_dict.json').name}",
                              file=self.mask_file, record=f"{video.video_id}/{exp.exp_id}", field="anno_id")
        if len(rles) != len(video.frames):
            raise SchemaError(
                f"mask_dict[{anno_id}] has {len(rles)} masks for {len(video.frames)} frames",
                file=self.mask_file, record=f"{video.video_id}/{exp.exp_id}", field="anno_id",
            )
        return rles

    def expression_mask(self, video: RefVideo, exp: RefExpression) -> np.ndarray:
        """Bool (T, H, W): the union of the expression's annotated objects, empty where null."""
        h, w = self.frame_size(video)
        out = np.zeros((len(video.frames), h, w), dtype=bool)
        for a in exp.anno_id:
            rles = self._object_rles(video, exp, a)
            _check_sizes(rles, (h, w), str(a), self.mask_file)
            for t, r in enumerate(rles):
                if r is not None:
                    out[t] |= rle_ops.decode(r)
        return out

    def expression_runs(
        self, video: RefVideo, exp: RefExpression, cache: dict[tuple[int, ...], RunMasks] | None = None
    ) -> RunMasks:
        """``expression_mask`` as RunMasks, never decoded to pixels.

        ``cache``: a dict owned by the caller for one video (its keys are anno_id tuples,
        not video ids), so expressions that share objects parse and merge them once.
        """
        cache = {} if cache is None else cache
        key = tuple(sorted(set(exp.anno_id)))
        if key not in cache:
            h, w = self.frame_size(video)
            out = RunMasks.empty(len(video.frames), h, w)
            for a in key:
                if (a,) not in cache:
                    rles = self._object_rles(video, exp, a)
                    _check_sizes(rles, (h, w), str(a), self.mask_file)
                    cache[(a,)] = RunMasks.from_rles(rles, h, w)
                out = cache[(a,)] if len(key) == 1 else out.union(cache[(a,)])
            cache[key] = out
        return cache[key]

    def _foreground_rles(self, video: RefVideo, size: tuple[int, int]) -> list[Rle | None] | None:
        if not self.foreground or video.video_id not in self.foreground:
            return None
        rles = self.foreground[video.video_id]
        if len(rles) != len(video.frames):
            raise SchemaError(f"{len(rles)} masks for {len(video.frames)} frames", file=self.foreground_file,
                              record=video.video_id, field="masks_rle")
        _check_sizes(rles, size, f"{video.video_id}.masks_rle", self.foreground_file)
        return rles

    def foreground_areas(self, video: RefVideo, cache: dict[tuple[int, ...], RunMasks] | None = None) -> np.ndarray:
        """|``video_foreground``| per frame, int64 (T,), from runs."""
        h, w = self.frame_size(video)
        rles = self._foreground_rles(video, (h, w))
        if rles is not None:
            return RunMasks.from_rles(rles, h, w).areas()
        out = RunMasks.empty(len(video.frames), h, w)
        for exp in video.expressions:
            out = out.union(self.expression_runs(video, exp, cache))
        return out.areas()

    def video_foreground(self, video: RefVideo) -> np.ndarray:
        """Bool (T, H, W) union of every object any expression of the video refers to (ReVOS R)."""
        h, w = self.frame_size(video)
        rles = self._foreground_rles(video, (h, w))
        out = np.zeros((len(video.frames), h, w), dtype=bool)
        if rles is not None:
            for t, r in enumerate(rles):
                if r is not None:
                    out[t] = rle_ops.decode(r)
            return out
        for exp in video.expressions:
            out |= self.expression_mask(video, exp)
        return out


FOREGROUND_NAME = "mask_dict_foreground.json"


def _check_sizes(rles: list[Rle | None], size: tuple[int, int], where: str, file: str | None = None) -> None:
    for t, r in enumerate(rles):
        if r is not None and tuple(r.size) != tuple(size):
            raise SchemaError(f"mask is {r.size[0]}x{r.size[1]}, the video is {size[0]}x{size[1]}",
                              file=file, record=f"{where}[{t}]", field="size")


def _read_foreground(path: Path) -> dict[str, list[Rle | None]]:
    """mask_dict_foreground.json: {video: {"masks_rle": [RLE per frame], ...}}, every RLE checked
    (null, which VISA never writes, reads as an empty frame)."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise SchemaError(f"expected an object keyed by video id, got {type(obj).__name__}", file=path)
    out: dict[str, list[Rle | None]] = {}
    for vid, entry in obj.items():
        if not isinstance(entry, dict) or "masks_rle" not in entry:
            raise SchemaError("required key is missing", file=path, record=vid, field="masks_rle")
        raw = entry["masks_rle"]
        if not isinstance(raw, list):
            raise SchemaError(f"expected a list with one RLE per frame, got {type(raw).__name__}", file=path,
                              record=vid, field="masks_rle")
        parsed = iter(rles_from_json([r for r in raw if r is not None]))
        rles: list[Rle | None] = []
        for t, r in enumerate(raw):
            rle = None if r is None else next(parsed)
            if isinstance(rle, SchemaError):
                raise rle.within(f"masks_rle[{t}]", file=path, record=vid) from None
            rles.append(rle)
        out[str(vid)] = rles
    return out


def _plain_rle(obj: object) -> tuple[int, int, str] | None:
    """(H, W, counts) of a JSON RLE in the usual shape, None for anything else."""
    if type(obj) is not dict:
        return None
    size, counts = obj.get("size"), obj.get("counts")
    if type(counts) is not str or type(size) is not list or len(size) != 2:
        return None
    h, w = size
    if type(h) is not int or type(w) is not int or not (0 <= h <= rle_ops.MAX_SIDE and 0 <= w <= rle_ops.MAX_SIDE):
        return None  # Rle.from_json words the error
    return h, w, counts


#: Characters of counts strings validated in one vectorised pass: the pass holds about
#: 60 bytes per character, so a chunk costs at most ~250 MB however long the list is.
_CHUNK_CHARS = 4 << 20


def rles_from_json(items: list) -> list[Rle | SchemaError]:
    """``Rle.from_json`` of every item, in bulk: the RLE, or the error it raises.

    Well-formed {"size": [H, W], "counts": str} items are validated together (one
    vectorised pass instead of a Python loop per character); anything else, and any item
    that fails that check, goes through ``Rle.from_json`` itself, so results and error
    messages are exactly its.
    """
    out: list[Rle | SchemaError | None] = [None] * len(items)
    plain_at, plain = [], []
    for i, obj in enumerate(items):
        p = _plain_rle(obj)
        if p is not None:
            plain_at.append(i)
            plain.append(p)
    start = 0
    while start < len(plain):
        stop, chars = start, 0
        while stop < len(plain) and (stop == start or chars + len(plain[stop][2]) <= _CHUNK_CHARS):
            chars += len(plain[stop][2])
            stop += 1
        chunk = plain[start:stop]
        good = rle_ops.counts_cover([c for _, _, c in chunk], [h * w for h, w, _ in chunk])
        for i, (h, w, counts), fine in zip(plain_at[start:stop], chunk, good.tolist()):
            if fine:
                out[i] = Rle((h, w), counts)
        start = stop
    for i, obj in enumerate(items):
        if out[i] is None:
            try:
                out[i] = Rle.from_json(obj)
            except SchemaError as err:
                out[i] = err
    return out  # type: ignore[return-value]


class MaskDict(Mapping[str, list[Rle | None]]):
    """mask_dict.json as a read-only mapping whose entries are validated when first read.

    Same values and errors as ``refsav.schemas.refvos.read_mask_dict`` (an entry's error
    names the file, the anno_id and the frame), but a worker of a parallel job checks
    only the objects it scores, and the RLEs of a list are checked in bulk.
    """

    def __init__(self, raw: dict[str, list], path: str | os.PathLike) -> None:
        self._raw = raw
        self._path = path
        self._done: dict[str, list[Rle | None]] = {}

    def __getitem__(self, anno_id: str) -> list[Rle | None]:
        if anno_id not in self._done:
            raw = self._raw[anno_id]
            parsed = iter(rles_from_json([r for r in raw if r is not None]))
            rles: list[Rle | None] = []
            for t, r in enumerate(raw):
                rle = None if r is None else next(parsed)
                if isinstance(rle, SchemaError):
                    raise rle.within(f"[{t}]", file=self._path, record=anno_id) from None
                rles.append(rle)
            self._done[anno_id] = rles
        return self._done[anno_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def _read_mask_dict(path: Path) -> MaskDict:
    """mask_dict.json or .pkl, shape-checked now (errors as ``read_mask_dict``), RLEs when read."""
    return MaskDict(read_mask_dict_lists(path), path)




# --------------------------------------------------------------------------- predictions


#: Corrupt masks of one expression listed one by one; the rest are counted in one issue.
MASK_ISSUES_PER_EXPRESSION = 20
#: Masks of expressions that are not scored (not in the GT, or of an excluded type) that
#: are still validated, to report their problems; a bound on work nothing is scored from.
UNSCORED_MASKS_CHECKED = 100_000
_VALIDATE_BATCH = 10_000


@dataclass
class PredictionSet:
    """Predicted masks per (video, exp_id), from whichever format was submitted.

    RLEs from a results.json are validated when their expression is first read (so each
    worker of a parallel job checks only what it scores); a corrupt one is reported
    with that expression's problems, or by ``unscored_issues`` if it is never read.
    """

    source: str  # "png", "results-json", "parquet"
    files: ReadOnlyFiles
    issues: list[Issue] = field(default_factory=list)
    limits: SubmissionLimits = DEFAULT_LIMITS
    _rles: dict[tuple[str, str], list[Rle | None]] = field(default_factory=dict)  # validated
    _pending: dict[tuple[str, str], list] = field(default_factory=dict)  # raw JSON RLEs, not yet validated
    _corrupt: dict[tuple[str, str], list[Issue]] = field(default_factory=dict)  # found when validating
    _frames: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # parquet frame names
    _png: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # frame -> relative path

    def keys(self) -> set[tuple[str, str]]:
        return set(self._rles) | set(self._pending) | set(self._png)

    def _validated(self, key: tuple[str, str], frames: int | None = None) -> list[Rle | None]:
        """The expression's RLEs, validated now if not yet. ``frames``: how many to
        validate (the GT's frame count: masks past it are not scored, so they are not
        validated either); None: all."""
        if key in self._pending:
            where = f"{key[0]}/{key[1]}"
            raw = self._pending.pop(key)
            checked = raw if frames is None else raw[:frames]
            rles: list[Rle | None] = [None] * len(raw)
            bad: list[tuple[int, str]] = []
            todo_at, todo = [], []
            for t, obj in enumerate(checked):
                # Cheap paths first: a million nulls or strings must not cost a million exceptions.
                if type(obj) is not dict:
                    bad.append((t, "null instead of an RLE" if obj is None else
                                f"expected an RLE object {{size, counts}}, got {type(obj).__name__}"))
                    continue
                counts = obj.get("counts")
                if type(counts) is str and len(counts) > self.limits.max_counts_chars:
                    bad.append((t, f"counts string of {len(counts)} characters, over the limit of "
                                   f"{self.limits.max_counts_chars} (limit 'counts_chars')"))
                    continue
                todo_at.append(t)
                todo.append(obj)
            for start in range(0, len(todo), _VALIDATE_BATCH):  # errors are kept as text, a batch at a time
                batch = rles_from_json(todo[start : start + _VALIDATE_BATCH])
                for t, r in zip(todo_at[start : start + _VALIDATE_BATCH], batch):
                    if isinstance(r, SchemaError):
                        field_name = r.location.field
                        bad.append((t, f"{field_name}: {r.message}" if field_name else r.message))
                    else:
                        rles[t] = r
            bad.sort()
            problems = [Issue("corrupt_mask", f"{where}/#{t}", f"{message}; scored as empty")
                        for t, message in bad[:MASK_ISSUES_PER_EXPRESSION]]
            if len(bad) > MASK_ISSUES_PER_EXPRESSION:
                problems.append(Issue("corrupt_mask", where, f"{len(bad) - MASK_ISSUES_PER_EXPRESSION} more corrupt "
                                                           "masks, not listed; scored as empty"))
            self._rles[key], self._corrupt[key] = rles, problems
        return self._rles[key]

    def unscored_issues(self, scored: set[tuple[str, str]]) -> list[Issue]:
        """Problems of the RLEs of every expression not in ``scored`` (in file order),
        validating those not read yet: an extra or excluded expression's corrupt mask is
        still reported. Nothing of these is scored, so only the first
        ``UNSCORED_MASKS_CHECKED`` of their masks are validated; the rest are counted."""
        issues: list[Issue] = []
        budget, unchecked = UNSCORED_MASKS_CHECKED, 0
        for key in [k for k in self._pending if k not in scored]:
            n = len(self._pending[key])
            if n > budget:
                unchecked += n - budget
            self._validated(key, min(n, budget))
            budget -= min(n, budget)
            issues += self._corrupt[key]
        if unchecked:
            issues.append(Issue("not_checked", "submission", f"{unchecked} masks of expressions that are not scored "
                                                           f"were not validated (past the first {UNSCORED_MASKS_CHECKED})"))
        return issues

    def masks(self, video: RefVideo, exp: RefExpression, size: tuple[int, int]) -> tuple[np.ndarray | None, list[Issue]]:
        """Bool (T, H, W) over the video's listed frames, or None when the expression is missing.

        Missing, mis-sized or corrupt frames become empty masks and are reported.
        """
        key = (video.video_id, exp.exp_id)
        if key in self._png:
            return self._png_masks(video, exp, size)
        if key in self._rles or key in self._pending:
            rles, issues = self._aligned_rles(video, exp, size)
            h, w = size
            out = np.zeros((len(video.frames), h, w), dtype=bool)
            for t, r in enumerate(rles):
                if r is not None:
                    out[t] = rle_ops.decode(r)
            return out, issues
        return None, []

    def runs(self, video: RefVideo, exp: RefExpression, size: tuple[int, int]) -> tuple[RunMasks | None, list[Issue]]:
        """``masks`` as RunMasks: RLE predictions are never decoded to pixels."""
        key = (video.video_id, exp.exp_id)
        if key in self._rles or key in self._pending:
            rles, issues = self._aligned_rles(video, exp, size)
            return RunMasks.from_rles(rles, *size), issues
        masks, issues = self.masks(video, exp, size)
        return (None if masks is None else RunMasks.from_dense(masks)), issues

    def _png_masks(self, video: RefVideo, exp: RefExpression, size: tuple[int, int]) -> tuple[np.ndarray, list[Issue]]:
        where = f"{video.video_id}/{exp.exp_id}"
        issues: list[Issue] = []
        h, w = size
        out = np.zeros((len(video.frames), h, w), dtype=bool)
        files = self._png[(video.video_id, exp.exp_id)]
        for t, name in enumerate(video.frames):
            rel = files.get(name)
            if rel is None:
                issues.append(Issue("missing_frame", f"{where}/{name}", "no PNG for this frame; scored as empty"))
                continue
            got = read_mask_png(self.files, rel, size, self.limits.max_image_pixels)
            issues += [Issue(kind, f"{where}/{name}", message) for kind, message in got.problems]
            if got.mask is not None:
                out[t] = got.mask
        extra = sorted(set(files) - set(video.frames))
        if extra:
            issues.append(Issue("extra_frame", where, f"{len(extra)} frames not in the GT (e.g. {extra[0]}); ignored"))
        return out, issues

    def _aligned_rles(self, video: RefVideo, exp: RefExpression, size: tuple[int, int]) -> tuple[list[Rle | None], list[Issue]]:
        """The expression's RLEs, one per GT frame (None: scored as empty), and the problems."""
        key = (video.video_id, exp.exp_id)
        where = f"{video.video_id}/{exp.exp_id}"
        names = self._frames.get(key)
        rles = self._validated(key, None if names is not None else len(video.frames))
        issues: list[Issue] = list(self._corrupt.get(key, []))
        h, w = size
        if names is not None:  # parquet rows name their frames; align by name
            by_name = dict(zip(names, rles))
            rles = [by_name.get(n) for n in video.frames]
            extra = sorted(set(names) - set(video.frames))
            if extra:
                issues.append(Issue("extra_frame", where, f"{len(extra)} frames not in the GT (e.g. {extra[0]}); ignored"))
        elif len(rles) != len(video.frames):
            issues.append(Issue("frame_count", where, f"{len(rles)} masks for {len(video.frames)} GT frames; missing ones scored as empty"))
        out: list[Rle | None] = []
        for t in range(len(video.frames)):
            r = rles[t] if t < len(rles) else None
            if r is None:
                if names is not None or t >= len(rles):
                    issues.append(Issue("missing_frame", f"{where}/{video.frames[t]}", "no mask for this frame; scored as empty"))
                out.append(None)
                continue
            if tuple(r.size) != (h, w):
                issues.append(Issue("wrong_size", f"{where}/{video.frames[t]}", f"mask is {r.size[0]}x{r.size[1]}, GT is {h}x{w}; scored as empty"))
                out.append(None)
                continue
            out.append(r)
        return out, issues


def load_predictions(path: str | os.PathLike, max_unzipped: int | None = None, *,
                     limits: SubmissionLimits = DEFAULT_LIMITS) -> PredictionSet:
    """Open a prediction folder, results.json, Parquet file or zip of any of these.

    A submission that holds more than one of them (two results.json, results.json beside
    a PNG tree, ...) is refused: which one would be scored is ambiguous.
    """
    path = Path(path)
    st = check_submission_path(path)
    if stat.S_ISREG(st.st_mode) and path.suffix in (".json", ".parquet"):
        files = ReadOnlyFiles(path.parent, limits=limits, only=path.name)
        if path.suffix == ".json":
            return _from_results_json(files, path.name)
        return _from_parquet([_parquet_from_files(files, path.name)], files)
    files = ReadOnlyFiles(path, max_unzipped, limits=limits)
    names = files.names()
    results = [n for n in names if posixpath.basename(n) == "results.json"]
    found = {"results.json": results, "Parquet": [n for n in names if n.endswith(".parquet")],
             "PNG tree": [n for n in names if _png_parts(n) is not None]}
    if len(results) > 1:
        raise SchemaError(f"holds {len(results)} results.json files ({results[0]}, {results[1]}); "
                          "which one to score is ambiguous", file=printable(str(path)))
    kinds = [k for k, v in found.items() if v]
    if len(kinds) > 1:
        raise SchemaError(f"holds both a {kinds[0]} ({found[kinds[0]][0]}) and a {kinds[1]} ({found[kinds[1]][0]}); "
                          "which one to score is ambiguous", file=printable(str(path)))
    if results:
        pred = _from_results_json(files, results[0])
    elif found["Parquet"]:
        batches, unreadable = [], []
        for name in found["Parquet"]:
            try:
                batches.append(_parquet_from_files(files, name))
            except EntryError as err:  # this file cannot be read (zip entry, cap): its rows score as missing
                unreadable.append(Issue("corrupt_file", name, f"{err.message}; its predictions are missing"))
        if not batches:
            raise SchemaError(f"no Parquet file of the submission can be read ({unreadable[0].message})",
                              file=printable(str(path)))
        pred = _from_parquet(batches, files)
        pred.issues[:0] = unreadable
    else:
        pred = _from_png_tree(files)
    pred.issues[:0] = files.issues
    return pred


def _parquet_from_files(files: ReadOnlyFiles, rel: str) -> list[VideoPrediction]:
    import pyarrow.parquet as pq

    from refsav.schemas.io import rows_to_records

    label = files.label(rel)
    try:
        # Read through the bounded reader (also for a folder) so that the caps hold.
        table = pq.read_table(io.BytesIO(files.read(rel)))
        return list(rows_to_records(table.to_pylist(), VideoPrediction, file=label))
    except SchemaError:
        raise
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise SchemaError(f"not a readable VideoPrediction Parquet file ({type(err).__name__}: {err})", file=label) from None


def _text_id(value: str, what: str, label: str, record: str | None = None) -> str:
    """``value`` if it is valid UTF-8 text; JSON escapes can make lone surrogates, which no
    report (scores.json, the leaderboard) could be written with."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "backslashreplace").decode("utf-8")
        raise SchemaError(f"{what} {shown!r} is not valid UTF-8 text (a lone surrogate)", file=label,
                          record=record, field=what) from None
    return value


def _from_results_json(files: ReadOnlyFiles, rel: str) -> PredictionSet:
    label = files.label(rel)
    obj = parse_json(files.read(rel), file=label)
    if not isinstance(obj, dict):
        raise SchemaError("expected {video: {exp_id: {prediction_masks: [...]}}}", file=label)
    limits = files.limits
    pred = PredictionSet("results-json", files, limits=limits)
    masks = 0
    for vid, exps in obj.items():
        _text_id(vid, "video id", label)
        if not isinstance(exps, dict):
            raise SchemaError("expected an object keyed by expression id", file=label, record=vid)
        for exp_id, entry in exps.items():
            where = f"{vid}/{_text_id(exp_id, 'expression id', label, vid)}"
            if not isinstance(entry, dict) or "prediction_masks" not in entry:
                raise SchemaError("required key is missing", file=label, record=where, field="prediction_masks")
            items = entry["prediction_masks"]
            if not isinstance(items, (list, str, dict)):
                raise SchemaError(f"expected a list of RLEs, got {type(items).__name__}", file=label, record=where, field="prediction_masks")
            if len(pred._pending) >= limits.max_expressions:
                raise SchemaError(f"more than {limits.max_expressions} expressions (limit 'expressions')",
                                  file=label, record=where)
            masks += len(items)
            if masks > limits.max_masks:
                raise SchemaError(f"more than {limits.max_masks} masks in all (limit 'masks')", file=label,
                                  record=where, field="prediction_masks")
            pred._pending[(vid, exp_id)] = list(items)
    return pred


def _from_parquet(batches: list[list[VideoPrediction]], files: ReadOnlyFiles) -> PredictionSet:
    pred = PredictionSet("parquet", files, limits=files.limits)
    for batch in batches:
        for p in batch:
            key = (p.video_id, p.expression_id)
            if key in pred._rles:
                pred.issues.append(Issue("duplicate", f"{p.video_id}/{p.expression_id}", "predicted twice; the first is scored"))
                continue
            pred._rles[key] = list(p.rles)
            pred._frames[key] = list(p.frames)
    return pred


def _png_parts(rel: str) -> tuple[str, str, str] | None:
    """(video, exp_id, frame) of a `[Annotations/]<video>/<exp_id>/<frame>.png` path."""
    parts = rel.split("/")
    if parts and parts[0] == "Annotations":
        parts = parts[1:]
    if len(parts) != 3 or not parts[2].lower().endswith(".png"):
        return None
    return parts[0], parts[1], parts[2][:-4]


def _from_png_tree(files: ReadOnlyFiles) -> PredictionSet:
    pred = PredictionSet("png", files, limits=files.limits)
    for rel in files.names():
        parts = _png_parts(rel)
        if parts is None:
            continue
        vid, exp_id, frame = parts
        frames = pred._png.setdefault((vid, exp_id), {})
        if frame in frames:
            raise SchemaError(f"two PNGs for frame {frame} ({frames[frame]}, {rel}); which one to score is ambiguous",
                              file=printable(str(files.root)), record=f"{vid}/{exp_id}")
        frames[frame] = rel
    if not pred._png:
        raise SchemaError("no predictions found: expected results.json, *.parquet or <video>/<exp_id>/<frame>.png",
                          file=printable(str(files.root)))
    return pred


def submission_sha256(path: str | os.PathLike) -> str:
    """Hash of a submission: the file's bytes, or a folder's sorted (path, hash) list.

    Folders are listed as `ReadOnlyFiles` lists them (no links out, no FIFOs), and every
    file is hashed in blocks, so hashing costs no more memory than a block.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if stat.S_ISREG(check_submission_path(path).st_mode):
        _hash_file(path, digest)
        return digest.hexdigest()
    files = ReadOnlyFiles(path, limits=replace(DEFAULT_LIMITS, max_total_bytes=1 << 62))
    for rel in sorted(files.names(), key=lambda n: n.split("/")):
        digest.update(rel.encode() + b"\0")
        inner = hashlib.sha256()
        _hash_file(files.local_path(rel), inner)
        digest.update(inner.digest())
    return digest.hexdigest()


def _hash_file(path: Path | None, digest) -> None:
    assert path is not None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SchemaError("not a plain file", file=printable(str(path)))
            while block := fh.read(1 << 20):
                digest.update(block)
    except OSError as err:
        raise SchemaError(f"cannot read ({err.strerror})", file=printable(str(path))) from None
