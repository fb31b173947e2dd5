"""Each benchmark owns one marked section of perf/README.md and rewrites only that."""
from __future__ import annotations

from pathlib import Path

from refsav.schemas.io import atomic_write_text

README = Path(__file__).resolve().parent / "README.md"
INTRO = """# Performance

Speed and memory benchmarks; `make perf` runs them all and each rewrites its own section below.
"""


def update_section(name: str, body: str, readme: Path = README) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = readme.read_text() if readme.exists() else INTRO
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(readme, text)
