"""Reading pickled ground truth (refer's ``refs(*).p``, VISA/Sa2VA's ``mask_dict.pkl``)
without running anything it holds.

The unpickler builds only what pickle opcodes make without looking up a global: list,
dict, tuple, set, str, bytes, bytearray, int, float, bool and None.  Every class or
function lookup (``GLOBAL``, ``STACK_GLOBAL``, and so ``REDUCE`` / ``NEWOBJ`` of anything)
is refused before it happens, which is what stops ``__reduce__`` payloads.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any

from .errors import SchemaError


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, fh, label: str):
        # Files written by Python 2 keep str as latin-1 bytes and unicode as str.
        super().__init__(fh, encoding="latin1")
        self._label = label

    def find_class(self, module: str, name: str):
        raise SchemaError(
            f"pickle refers to the global {module}.{name}; only plain lists, dicts, strings and numbers are allowed",
            file=self._label,
        )

    def persistent_load(self, pid):
        raise SchemaError("pickle uses a persistent id; only plain lists, dicts, strings and numbers are allowed",
                          file=self._label)


def load_plain_pickle(data: bytes, label: str | os.PathLike) -> Any:
    """Unpickle plain data without executing anything; every failure is a one-line SchemaError."""
    label = str(label)
    try:
        return _PlainUnpickler(io.BytesIO(data), label).load()
    except SchemaError:
        raise
    except RecursionError:
        raise SchemaError("pickle nested too deeply to read", file=label) from None
    except Exception as err:  # truncated or garbled pickles raise many types
        raise SchemaError(f"not a readable pickle ({type(err).__name__}: {str(err)[:120]})", file=label) from None


__all__ = ["load_plain_pickle"]
