"""Read-only access to a submission, a folder or a zip, by relative POSIX path.

A submission is untrusted input, so reading one is bounded by what it is, not by what it
claims (docs/submission-limits.md):

* The path itself must be a plain file or a folder: a FIFO, a device, a socket or a file
  of /proc or /sys is refused before anything opens it (a FIFO would block, /dev/zero
  would never end).
* A folder is walked without following links. A symlink that leaves the folder (absolute
  or relative) refuses the submission; one inside it is read as its target. Any other
  non-regular file, or a name that is not valid UTF-8, refuses it too.
* A zip is read in place, never extracted, so a hostile entry name cannot write anywhere:
  entries with `..` or absolute paths are reported as `Issue`s and ignored, symlink
  entries are resolved inside the zip or refuse it, two entries of one name refuse it.
* Each file is read with a bounded read: at most `SubmissionLimits.max_entry_bytes`, and
  never more than it declared; the total is capped as well. An entry that cannot be read
  (encrypted, corrupt data, bad CRC, unknown compression, over the cap) raises
  `EntryError`, so the caller scores that entry as empty and reads the others.
"""
from __future__ import annotations

import os
import posixpath
import stat
import zipfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

from refsav.schemas.errors import SchemaError

from .report import Issue


@dataclass(frozen=True)
class SubmissionLimits:
    """Caps on what reading one submission may cost. The defaults fit every public
    benchmark's full submission; `refsav score --limit NAME=VALUE` changes one."""

    max_entry_bytes: int = 512 << 20  # one file of a folder or entry of a zip, uncompressed
    max_total_bytes: int = 8 << 30  # all files together, uncompressed (a zip bomb stops here)
    max_files: int = 2_000_000  # files in a folder or entries in a zip
    max_expressions: int = 200_000  # (video, expression) pairs in a results.json
    max_masks: int = 5_000_000  # items of every prediction_masks list together, nulls included
    max_counts_chars: int = 2_000_000  # one RLE counts string; a longer one is scored as empty
    max_image_pixels: int = 40_000_000  # one PNG, width x height; a larger one is scored as empty

    # CLI names: the field without `max_`, sizes in MiB.
    _MIB = ("max_entry_bytes", "max_total_bytes")

    @classmethod
    def option_names(cls) -> dict[str, str]:
        """`--limit` name -> field name."""
        out = {}
        for f in fields(cls):
            name = f.name.removeprefix("max_")
            out[name.replace("_bytes", "_mb") if f.name in cls._MIB else name] = f.name
        return out

    def with_options(self, options: list[str] | tuple[str, ...]) -> "SubmissionLimits":
        """A copy with `NAME=VALUE` options applied (`entry_mb=1024`, `masks=10000000`)."""
        names = self.option_names()
        changes: dict[str, int] = {}
        for opt in options:
            key, sep, value = opt.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in names:
                raise SchemaError(f"unknown limit {opt!r}; expected NAME=VALUE with NAME one of {', '.join(names)}",
                                  field="--limit")
            try:
                number = int(value.strip().replace("_", ""))
            except ValueError:
                number = -1
            if number <= 0:
                raise SchemaError(f"limit {key} must be a positive integer, got {value!r}", field="--limit")
            changes[names[key]] = number << 20 if names[key] in self._MIB else number
        return replace(self, **changes)


DEFAULT_LIMITS = SubmissionLimits()
DEFAULT_MAX_UNZIPPED = DEFAULT_LIMITS.max_total_bytes  # kept for the callers that pass a total only


class EntryError(SchemaError):
    """One file of a submission cannot be read; the rest of the submission can."""


def printable(name: str) -> str:
    """A file name as UTF-8-safe text: undecodable bytes of a POSIX name (surrogate
    escapes) shown as \\xNN, so an error message or scores.json can always be written."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _pseudo_fs_devices() -> set[int]:
    devices = set()
    for mount in ("/proc", "/sys"):
        try:
            devices.add(os.stat(mount).st_dev)
        except OSError:
            pass
    return devices


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_submission_path(path: str | os.PathLike) -> os.stat_result:
    """Refuse (one-line SchemaError) a submission path that is neither a plain file nor
    a folder, before anything opens it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SchemaError("prediction path not found", file=printable(os.fspath(path))) from None
    except OSError as err:
        raise SchemaError(f"cannot read ({err.strerror})", file=printable(os.fspath(path))) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise SchemaError(f"is {_kind(st.st_mode)}, not a plain file or folder", file=printable(os.fspath(path)))
    if st.st_dev in _pseudo_fs_devices():
        # /proc and /sys files claim a size of 0 (or terabytes) and are generated as read.
        raise SchemaError("is a file of /proc or /sys, not a plain file", file=printable(os.fspath(path)))
    return st


class ReadOnlyFiles:
    """Read-only access to a folder, a zip or one file by relative POSIX path."""

    def __init__(self, root: Path, max_unzipped: int | None = None, *, limits: SubmissionLimits = DEFAULT_LIMITS,
                 only: str | None = None):
        """``only``: read just this file of the folder ``root`` (a results.json or Parquet
        file given by its own path), instead of walking the folder."""
        self.root = Path(root)
        self.limits = limits if max_unzipped is None else replace(limits, max_total_bytes=max_unzipped)
        self.issues: list[Issue] = []
        self._zip: zipfile.ZipFile | None = None
        self._names: dict[str, str] = {}  # normalised relative path -> path below root (folders)
        self._infos: dict[str, zipfile.ZipInfo] = {}  # normalised relative path -> entry (zips)
        if only is not None:
            st = check_submission_path(self.root / only)
            self._check_total(st.st_size)
            self._names[only] = only
            return
        st = check_submission_path(self.root)
        if stat.S_ISDIR(st.st_mode):
            self._walk()
        else:
            self._open_zip()

    # ----------------------------------------------------------------- folders

    def _walk(self) -> None:
        root = os.fspath(self.root)
        real_root = os.path.realpath(root)
        pseudo = _pseudo_fs_devices()
        total = 0

        def refuse(err: OSError) -> None:
            raise SchemaError(f"cannot list folder ({err.strerror})", file=printable(err.filename or root))

        for dirpath, dirnames, filenames in os.walk(root, onerror=refuse, followlinks=False):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    raise SchemaError("file or folder name is not valid UTF-8", file=printable(full), field="name") from None
                try:
                    st = os.lstat(full)
                except OSError as err:  # removed or made unreadable since it was listed
                    raise SchemaError(f"cannot read ({err.strerror})", file=printable(full)) from None
                if stat.S_ISLNK(st.st_mode):
                    target = os.path.realpath(full)
                    if os.path.commonpath([real_root, target]) != real_root:
                        raise SchemaError(f"symlink leaves the submission (to {printable(target)})", file=printable(full))
                    try:
                        st = os.stat(full)
                    except OSError:
                        self.issues.append(Issue("broken_link", rel, "symlink to a missing file; ignored"))
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        self.issues.append(Issue("linked_folder", rel, "symlink to a folder of the submission; not followed"))
                        continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                if not stat.S_ISREG(st.st_mode):
                    raise SchemaError(f"is {_kind(st.st_mode)}, not a plain file", file=printable(full))
                if st.st_dev in pseudo:  # e.g. /proc bind-mounted into the folder
                    raise SchemaError("is a file of /proc or /sys, not a plain file", file=printable(full))
                self._names[rel] = rel
                total += st.st_size
                if len(self._names) > self.limits.max_files:
                    raise SchemaError(f"more than {self.limits.max_files} files (limit 'files')", file=printable(root))
        self._check_total(total)

    def _check_total(self, total: int) -> None:
        if total > self.limits.max_total_bytes:
            raise SchemaError(f"submission holds {total} bytes, over the limit of {self.limits.max_total_bytes} "
                              "(limit 'total_mb')", file=printable(os.fspath(self.root)))

    # ----------------------------------------------------------------- zips

    def _open_zip(self) -> None:
        root = printable(os.fspath(self.root))
        self._check_entry_count()
        try:
            self._zip = zipfile.ZipFile(self.root)
            infos = self._zip.infolist()
        except UnicodeDecodeError:
            raise SchemaError("an entry name is flagged UTF-8 but is not valid UTF-8", file=root, field="name") from None
        except Exception as err:  # zipfile raises many types for a corrupt central directory
            raise SchemaError(f"not a readable zip file ({type(err).__name__}: {err})", file=root) from None
        total = 0
        links: list[tuple[str, zipfile.ZipInfo]] = []
        for info in infos:
            if info.is_dir():
                continue
            name = info.filename.replace("\\", "/")
            norm = posixpath.normpath(name)
            if _escapes(name):
                self.issues.append(Issue("unsafe_entry", info.filename, "absolute or '..' path in zip; entry ignored"))
                continue
            if norm in self._infos:
                raise SchemaError(f"two entries named {norm!r}; which one to score is ambiguous", file=root, field="name")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                links.append((norm, info))
                continue
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                self.issues.append(Issue("unsafe_entry", info.filename, f"entry is {_kind(mode)}; ignored"))
                continue
            total += info.file_size
            self._infos[norm] = info
        for norm, info in links:
            self._resolve_link(norm, info, root)
        self._check_total(total)

    def _check_entry_count(self) -> None:
        """Refuse a zip with too many entries from its end record, before zipfile builds an
        object per entry (a tiny central directory can list millions)."""
        try:
            with open(self.root, "rb") as fh:
                end = zipfile._EndRecData(fh)  # private but stable since Python 2; only a pre-check
        except Exception:  # only a pre-check: zipfile itself reports a damaged archive below
            return
        if end is not None and end[zipfile._ECD_ENTRIES_TOTAL] > self.limits.max_files:
            raise SchemaError(f"zip lists {end[zipfile._ECD_ENTRIES_TOTAL]} entries, over the limit of "
                              f"{self.limits.max_files} (limit 'files')", file=printable(os.fspath(self.root)))

    def _resolve_link(self, norm: str, info: zipfile.ZipInfo, root: str) -> None:
        try:
            target = self._read_zip(info, 4096).decode("utf-8")
        except (EntryError, UnicodeDecodeError):
            self.issues.append(Issue("corrupt_file", info.filename, "unreadable symlink entry; ignored"))
            return
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(norm), target))
        if target.startswith("/") or (len(target) > 1 and target[1] == ":") or _escapes(joined):
            raise SchemaError(f"symlink entry leaves the zip (to {target!r})", file=f"{root}:{printable(info.filename)}")
        if joined not in self._infos:
            self.issues.append(Issue("broken_link", info.filename, f"symlink to {target!r}, not a file of the zip; ignored"))
            return
        self._infos[norm] = self._infos[joined]

    def _read_zip(self, info: zipfile.ZipInfo, cap: int) -> bytes:
        label = f"{printable(os.fspath(self.root))}:{info.filename}"
        if info.file_size > cap:
            raise EntryError(f"entry is {info.file_size} bytes uncompressed, over the limit of {cap} "
                             "(limit 'entry_mb')", file=label)
        if info.flag_bits & 0x1:
            raise EntryError("entry is encrypted", file=label)
        assert self._zip is not None
        try:
            with self._zip.open(info) as fh:
                # zipfile stops at the declared size and checks the CRC there, so an entry
                # that under-declares its size fails instead of inflating without bound.
                data = fh.read(cap + 1)
        except Exception as err:  # the decompressors raise several unrelated types for corrupt data
            raise EntryError(f"cannot read entry ({type(err).__name__}: {err})", file=label) from None
        if len(data) > cap:
            raise EntryError(f"entry is over the limit of {cap} bytes (limit 'entry_mb')", file=label)
        if len(data) != info.file_size:
            raise EntryError(f"entry holds {len(data)} bytes but declares {info.file_size}", file=label)
        return data

    # ----------------------------------------------------------------- reading

    def names(self) -> list[str]:
        return sorted(self._infos if self._zip is not None else self._names)

    def label(self, rel: str) -> str:
        """How errors name a file: the path, or zip:entry."""
        if self._zip is not None:
            return f"{printable(os.fspath(self.root))}:{rel}"
        return printable(os.path.join(os.fspath(self.root), self._names[rel]))

    def read(self, rel: str) -> bytes:
        """The file's bytes; raises EntryError when it cannot be read or is over the cap."""
        cap = self.limits.max_entry_bytes
        if self._zip is not None:
            return self._read_zip(self._infos[rel], cap)
        path = os.path.join(os.fspath(self.root), self._names[rel])
        label = printable(path)
        try:
            # O_NONBLOCK: a file swapped for a FIFO since the walk must not block the open.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as err:
            raise EntryError(f"cannot open ({err.strerror})", file=label) from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise EntryError(f"is {_kind(st.st_mode)}, not a plain file", file=label)
            if st.st_size > cap:
                raise EntryError(f"file is {st.st_size} bytes, over the limit of {cap} (limit 'entry_mb')", file=label)
            try:
                data = fh.read(st.st_size + 1)
            except OSError as err:
                raise EntryError(f"cannot read ({err.strerror})", file=label) from None
        if len(data) > st.st_size:
            raise EntryError("file grew while it was read; not a plain file", file=label)
        return data

    def read_head(self, rel: str, n: int) -> bytes:
        """The first ``n`` bytes (fewer if the file is shorter), reading no further."""
        if self._zip is not None:
            info = self._infos[rel]
            if info.flag_bits & 0x1:
                raise EntryError("entry is encrypted", file=self.label(rel))
            try:
                with self._zip.open(info) as fh:
                    return fh.read(n)
            except Exception as err:  # see _read_zip
                raise EntryError(f"cannot read entry ({type(err).__name__}: {err})", file=self.label(rel)) from None
        try:
            fd = os.open(os.path.join(os.fspath(self.root), self._names[rel]), os.O_RDONLY | os.O_NONBLOCK)
        except OSError as err:
            raise EntryError(f"cannot open ({err.strerror})", file=self.label(rel)) from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise EntryError("not a plain file", file=self.label(rel))
            return fh.read(n)

    def local_path(self, rel: str) -> Path | None:
        return None if self._zip is not None else self.root / self._names[rel]


def _escapes(name: str) -> bool:
    """An absolute, drive-letter or `..` path: it would leave the submission."""
    norm = posixpath.normpath(name)
    return (name.startswith("/") or norm == ".." or norm.startswith("../") or "/../" in f"/{name}/"
            or (len(name) > 1 and name[1] == ":"))
