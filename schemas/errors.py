"""refsav's errors: one line that says what is wrong and where.

`RefsavError` is any problem the user can act on (a locked output folder, too few GPUs, a
tokenizer that lacks a token); the `refsav` command prints its message as one line and
exits 2. `SchemaError`, a kind of it, is bad input data only. Readers raise it with as much
location as they know; callers that know more (the file name, the row) add it with
`.at(...)` and re-raise, so the message a user finally sees is
`file: record: field: what is wrong`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    file: str | None = None
    record: str | None = None
    field: str | None = None

    def merged(self, outer: "Location") -> "Location":
        # The inner (more specific) location wins; the outer one fills the gaps.
        return Location(
            file=self.file or outer.file,
            record=self.record or outer.record,
            field=self.field or outer.field,
        )

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.record:
            parts.append(f"record {self.record}")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ": ".join(parts)


class RefsavError(Exception):
    """A problem the user can act on. `str(err)` is one line, naming file, record and field
    where they are known."""

    def __init__(self, message: str, *, file=None, record=None, field=None):
        self.message = " ".join(str(message).split())  # always a single line
        self.location = Location(
            file=str(file) if file is not None else None,
            record=str(record) if record is not None else None,
            field=field,
        )
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.location)
        return f"{where}: {self.message}" if where else self.message

    def at(self, *, file=None, record=None, field=None) -> "RefsavError":
        """Return a copy with missing location parts filled in."""
        outer = Location(
            file=str(file) if file is not None else None,
            record=str(record) if record is not None else None,
            field=field,
        )
        err = type(self)(self.message)
        err.location = self.location.merged(outer)
        err.args = (str(err),)
        return err


class SchemaError(RefsavError, ValueError):
    """Bad input data: a file, record or field that does not follow its format."""

    def within(self, prefix: str, *, file=None, record=None) -> "SchemaError":
        """Re-locate an error raised inside a nested value: field `size` under
        prefix `rles[3]` becomes `rles[3].size`."""
        inner = self.location.field
        field = prefix if not inner else f"{prefix}{inner}" if inner.startswith("[") else f"{prefix}.{inner}"
        err = SchemaError(self.message, file=file, record=record, field=field)
        err.location = err.location.merged(self.location)
        err.args = (str(err),)
        return err


__all__ = ["Location", "RefsavError", "SchemaError"]
