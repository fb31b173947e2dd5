"""Read-only access to a submission, a folder or a zip, by relative POSIX path.

A zip is read in place, never extracted, so a hostile entry name cannot write anywhere:
entries with `..` or absolute paths are refused (reported as `Issue`s) and the total
uncompressed size is capped.
"""
from __future__ import annotations

import posixpath
import zipfile
from pathlib import Path

from refsav.schemas.errors import SchemaError

from .report import Issue

DEFAULT_MAX_UNZIPPED = 8 << 30  # bytes; a zip bomb stops here


class ReadOnlyFiles:
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
