"""Ground truth and predictions for the meta_expressions + mask_dict family
(Ref-SAV, MeViS, ReVOS, Ref-DAVIS in the VISA/Sa2VA style).

Predictions may be a PNG tree (`[Annotations/]<video>/<exp_id>/<frame>.png`), a
Sa2VA `results.json`, refsav `VideoPrediction` Parquet, or a `.zip` of any of
these. A zip is read in place, never extracted, so a hostile entry name cannot
write anywhere; entries with `..` or absolute paths are refused and the total
uncompressed size is capped.

Problems with a submission are collected as `Issue`s instead of raised, so the
scorer can do what the official scripts do (count the item as 0) and still
report everything it saw.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from schemas import rle as rle_ops
from schemas.errors import SchemaError
from schemas.io import read_parquet
from schemas.predictions import VideoPrediction
from schemas.refvos import RefExpression, RefVideo, read_mask_dict, read_meta_expressions
from schemas.rle import Rle

DEFAULT_MAX_UNZIPPED = 8 << 30  # bytes; a zip bomb stops here


@dataclass(frozen=True)
class Issue:
    kind: str  # missing_video, missing_expression, missing_frame, extra_*, wrong_size, non_binary, corrupt_file, unsafe_entry, ...
    where: str  # "<video>/<exp_id>[/<frame>]" or a file name
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.message}"


# --------------------------------------------------------------------------- ground truth


@dataclass
class RefVosGroundTruth:
    videos: list[RefVideo]
    masks: dict[str, list[Rle | None]]  # mask_dict
    foreground: dict[str, list[Rle]] | None = None  # ReVOS mask_dict_foreground, per video

    @classmethod
    def load(cls, root: str | os.PathLike, meta_name: str | None = None) -> "RefVosGroundTruth":
        root = Path(root)
        meta_path = root / meta_name if meta_name else find_meta(root)
        gt = cls(read_meta_expressions(meta_path), read_mask_dict(root / "mask_dict.json"))
        fg_path = root / "mask_dict_foreground.json"
        if fg_path.exists():
            raw = json.loads(fg_path.read_text())
            gt.foreground = {v: [Rle.from_json(r) for r in e["masks_rle"]] for v, e in raw.items()}
        return gt

    def frame_size(self, video: RefVideo) -> tuple[int, int]:
        if video.height and video.width:
            return video.height, video.width
        for exp in video.expressions:
            for a in exp.anno_id:
                for r in self.masks.get(str(a), []):
                    if r is not None:
                        return r.size
        raise SchemaError("cannot tell the frame size: no height/width and no non-empty mask", record=video.video_id)

    def expression_mask(self, video: RefVideo, exp: RefExpression) -> np.ndarray:
        """Bool (T, H, W): the union of the expression's annotated objects, empty where null."""
        h, w = self.frame_size(video)
        out = np.zeros((len(video.frames), h, w), dtype=bool)
        for a in exp.anno_id:
            rles = self.masks.get(str(a))
            if rles is None:
                raise SchemaError(f"anno_id {a} is not in mask_dict.json", record=f"{video.video_id}/{exp.exp_id}", field="anno_id")
            if len(rles) != len(video.frames):
                raise SchemaError(
                    f"mask_dict[{a}] has {len(rles)} masks for {len(video.frames)} frames",
                    record=f"{video.video_id}/{exp.exp_id}", field="anno_id",
                )
            for t, r in enumerate(rles):
                if r is not None:
                    out[t] |= rle_ops.decode(r)
        return out

    def video_foreground(self, video: RefVideo) -> np.ndarray:
        """Bool (T, H, W) union of every object any expression of the video refers to (ReVOS R)."""
        if self.foreground and video.video_id in self.foreground:
            return rle_ops.decode_many(self.foreground[video.video_id])
        h, w = self.frame_size(video)
        out = np.zeros((len(video.frames), h, w), dtype=bool)
        for exp in video.expressions:
            out |= self.expression_mask(video, exp)
        return out


def find_meta(root: Path) -> Path:
    for name in ("meta_expressions_valid.json", "meta_expressions.json", "meta_expressions_valid_.json"):
        if (root / name).exists():
            return root / name
    raise SchemaError("no meta_expressions*.json in the ground-truth folder", file=root)


# --------------------------------------------------------------------------- file access


class _Files:
    """Read-only access to a folder or a zip by relative POSIX path."""

    def __init__(self, root: Path, max_unzipped: int = DEFAULT_MAX_UNZIPPED):
        self.root = root
        self.issues: list[Issue] = []
        self._zip: zipfile.ZipFile | None = None
        self._names: dict[str, str] = {}  # normalised relative path -> real name
        if root.is_dir():
            for p in root.rglob("*"):
                if p.is_file():
                    rel = p.relative_to(root).as_posix()
                    self._names[rel] = rel
            return
        try:
            self._zip = zipfile.ZipFile(root)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError) as err:
            raise SchemaError(f"not a readable zip file ({err})", file=root) from None
        total = 0
        for info in infos:
            if info.is_dir():
                continue
            name = info.filename.replace("\\", "/")
            norm = posixpath.normpath(name)
            escapes = norm == ".." or norm.startswith("../") or "/../" in f"/{name}/"
            if name.startswith("/") or escapes or (len(name) > 1 and name[1] == ":"):
                self.issues.append(Issue("unsafe_entry", info.filename, "absolute or '..' path in zip; entry ignored"))
                continue
            total += info.file_size
            self._names[norm] = info.filename
        if total > max_unzipped:
            raise SchemaError(f"zip would decompress to {total} bytes, over the limit of {max_unzipped}", file=root)

    def names(self) -> list[str]:
        return sorted(self._names)

    def read(self, rel: str) -> bytes:
        real = self._names[rel]
        if self._zip is not None:
            return self._zip.read(real)
        return (self.root / real).read_bytes()

    def local_path(self, rel: str) -> Path | None:
        return None if self._zip is not None else self.root / self._names[rel]


# --------------------------------------------------------------------------- predictions


@dataclass
class PredictionSet:
    """Predicted masks per (video, exp_id), from whichever format was submitted."""

    source: str  # "png", "results-json", "parquet"
    files: _Files
    issues: list[Issue] = field(default_factory=list)
    _rles: dict[tuple[str, str], list[Rle | None]] = field(default_factory=dict)
    _frames: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # parquet frame names
    _png: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # frame -> relative path

    def keys(self) -> set[tuple[str, str]]:
        return set(self._rles) | set(self._png)

    def masks(self, video: RefVideo, exp: RefExpression, size: tuple[int, int]) -> tuple[np.ndarray | None, list[Issue]]:
        """Bool (T, H, W) over the video's listed frames, or None when the expression is missing.

        Missing, mis-sized or corrupt frames become empty masks and are reported.
        """
        key = (video.video_id, exp.exp_id)
        where = f"{video.video_id}/{exp.exp_id}"
        issues: list[Issue] = []
        h, w = size
        out = np.zeros((len(video.frames), h, w), dtype=bool)
        if key in self._png:
            files = self._png[key]
            for t, name in enumerate(video.frames):
                rel = files.get(name)
                if rel is None:
                    issues.append(Issue("missing_frame", f"{where}/{name}", "no PNG for this frame; scored as empty"))
                    continue
                mask, problem = _read_png(self.files, rel)
                if problem:
                    issues.append(Issue(problem[0], f"{where}/{name}", problem[1]))
                if mask is None:
                    continue
                if mask.shape != (h, w):
                    issues.append(Issue("wrong_size", f"{where}/{name}", f"mask is {mask.shape[0]}x{mask.shape[1]}, GT is {h}x{w}; scored as empty"))
                    continue
                out[t] = mask
            extra = sorted(set(files) - set(video.frames))
            if extra:
                issues.append(Issue("extra_frame", where, f"{len(extra)} frames not in the GT (e.g. {extra[0]}); ignored"))
            return out, issues
        if key in self._rles:
            rles = self._rles[key]
            names = self._frames.get(key)
            if names is not None:  # parquet rows name their frames; align by name
                by_name = dict(zip(names, rles))
                rles = [by_name.get(n) for n in video.frames]
                extra = sorted(set(names) - set(video.frames))
                if extra:
                    issues.append(Issue("extra_frame", where, f"{len(extra)} frames not in the GT (e.g. {extra[0]}); ignored"))
            elif len(rles) != len(video.frames):
                issues.append(Issue("frame_count", where, f"{len(rles)} masks for {len(video.frames)} GT frames; missing ones scored as empty"))
            for t in range(len(video.frames)):
                r = rles[t] if t < len(rles) else None
                if r is None:
                    if names is not None or t >= len(rles):
                        issues.append(Issue("missing_frame", f"{where}/{video.frames[t]}", "no mask for this frame; scored as empty"))
                    continue
                if tuple(r.size) != (h, w):
                    issues.append(Issue("wrong_size", f"{where}/{video.frames[t]}", f"mask is {r.size[0]}x{r.size[1]}, GT is {h}x{w}; scored as empty"))
                    continue
                out[t] = rle_ops.decode(r)
            return out, issues
        return None, issues


def _read_png(files: _Files, rel: str) -> tuple[np.ndarray | None, tuple[str, str] | None]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(files.read(rel))) as img:
            img.load()
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return None, ("corrupt_file", f"cannot read PNG ({err}); scored as empty")
    if arr.ndim == 3:  # RGB(A) masks: foreground wherever any channel is set
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    values = np.unique(arr)
    problem = None
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        problem = ("non_binary", f"values {values[:5].tolist()}...; any non-zero counts as foreground")
    return arr != 0, problem


def load_predictions(path: str | os.PathLike, max_unzipped: int = DEFAULT_MAX_UNZIPPED) -> PredictionSet:
    """Open a prediction folder, results.json, Parquet file or zip of any of these."""
    path = Path(path)
    if not path.exists():
        raise SchemaError("prediction path not found", file=path)
    if path.is_file() and path.suffix == ".json":
        files = _Files(path.parent)
        return _from_results_json(files, path.name, str(path))
    if path.is_file() and path.suffix == ".parquet":
        return _from_parquet([read_parquet(path, VideoPrediction)], _Files(path.parent))
    files = _Files(path, max_unzipped)
    names = files.names()
    results = [n for n in names if posixpath.basename(n) == "results.json"]
    if results:
        pred = _from_results_json(files, results[0], f"{path}:{results[0]}")
    elif any(n.endswith(".parquet") for n in names):
        pred = _from_parquet([_parquet_from_files(files, n, path) for n in names if n.endswith(".parquet")], files)
    else:
        pred = _from_png_tree(files)
    pred.issues[:0] = files.issues
    return pred


def _parquet_from_files(files: _Files, rel: str, container: Path) -> list[VideoPrediction]:
    local = files.local_path(rel)
    if local is not None:
        return read_parquet(local, VideoPrediction)
    import pyarrow.parquet as pq

    from schemas.io import rows_to_records

    try:
        table = pq.read_table(io.BytesIO(files.read(rel)))
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise SchemaError(f"not a readable Parquet file ({err})", file=f"{container}:{rel}") from None
    return list(rows_to_records(table.to_pylist(), VideoPrediction, file=f"{container}:{rel}"))


def _from_results_json(files: _Files, rel: str, label: str) -> PredictionSet:
    try:
        obj = json.loads(files.read(rel))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SchemaError(f"not valid JSON ({err})", file=label) from None
    if not isinstance(obj, dict):
        raise SchemaError("expected {video: {exp_id: {prediction_masks: [...]}}}", file=label)
    pred = PredictionSet("results-json", files)
    for vid, exps in obj.items():
        if not isinstance(exps, dict):
            raise SchemaError("expected an object keyed by expression id", file=label, record=vid)
        for exp_id, entry in exps.items():
            where = f"{vid}/{exp_id}"
            if not isinstance(entry, dict) or "prediction_masks" not in entry:
                raise SchemaError("required key is missing", file=label, record=where, field="prediction_masks")
            rles: list[Rle | None] = []
            for t, r in enumerate(entry["prediction_masks"]):
                try:
                    rles.append(Rle.from_json(r))
                except SchemaError as err:
                    pred.issues.append(Issue("corrupt_mask", f"{where}/#{t}", f"{err.message}; scored as empty"))
                    rles.append(None)
            pred._rles[(str(vid), str(exp_id))] = rles
    return pred


def _from_parquet(batches: list[list[VideoPrediction]], files: _Files) -> PredictionSet:
    pred = PredictionSet("parquet", files)
    for batch in batches:
        for p in batch:
            key = (p.video_id, p.expression_id)
            if key in pred._rles:
                pred.issues.append(Issue("duplicate", f"{p.video_id}/{p.expression_id}", "predicted twice; the first is scored"))
                continue
            pred._rles[key] = list(p.rles)
            pred._frames[key] = list(p.frames)
    return pred


def _from_png_tree(files: _Files) -> PredictionSet:
    pred = PredictionSet("png", files)
    for rel in files.names():
        parts = rel.split("/")
        if parts and parts[0] == "Annotations":
            parts = parts[1:]
        if len(parts) != 3 or not parts[2].lower().endswith(".png"):
            continue
        vid, exp_id, fname = parts
        pred._png.setdefault((vid, exp_id), {})[fname[:-4]] = rel
    if not pred._png:
        raise SchemaError("no predictions found: expected results.json, *.parquet or <video>/<exp_id>/<frame>.png", file=files.root)
    return pred


def submission_sha256(path: str | os.PathLike) -> str:
    """Hash of a submission: the file's bytes, or a folder's sorted (path, hash) list."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        digest.update(p.relative_to(path).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def iter_expressions(gt: RefVosGroundTruth) -> Iterator[tuple[RefVideo, RefExpression]]:
    for video in gt.videos:
        for exp in video.expressions:
            yield video, exp
