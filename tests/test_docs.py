"""The project's docs are self-contained: every `docs/<name>.md §N` citation resolves,
and no file points at reference material outside the repository."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Matches e.g. `docs/<name>.md §5`, ``docs/<name>.md`` §4, `docs/<name>.md` §6-§7, "§1a-1c", "§3, §7",
# and a path wrapped after "docs/" in a docstring.
CITATION = re.compile(
    r"docs/\s*(?P<name>[A-Za-z0-9_-]+)\.md[`'\"]*"
    r"(?P<sections>(?:\s*(?:§|,\s*§|[-–]\s*§?)\s*\d+[a-z]?)*)"
)
SECTION = re.compile(r"\d+[a-z]?")
# Written in two parts so that this file does not match itself.
OUTSIDE = ("shared" + "/reference", "shared" + "/seeds")


def _text_files() -> list[Path]:
    """Tracked .py / .md files (every such file under ROOT when git is unavailable)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", "*.py", "*.md"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        files = [ROOT / name for name in out.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("build", "dist", "__pycache__")]
            files += [Path(dirpath) / f for f in filenames if f.endswith((".py", ".md"))]
    # Untracked new docs still count once they exist in the working tree.
    files += [p for p in DOCS.glob("*.md") if p not in files]
    return [p for p in files if p.is_file()]


def _citations() -> list[tuple[str, str, list[str]]]:
    """(citing file, doc name, cited sections) for every citation in the repository."""
    found = []
    for path in _text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in CITATION.finditer(text):
            found.append((str(path.relative_to(ROOT)), m.group("name"), SECTION.findall(m.group("sections"))))
    return found


def _headings(doc: Path) -> set[str]:
    """Section numbers of `## 3. Title` / `### 1c. Title` headings."""
    out = set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{2,}\s+(\d+[a-z]?)\.\s", line)
        if m:
            out.add(m.group(1))
    return out


def test_the_docs_are_cited():
    assert _citations(), "no docs/<name>.md citation found: is the file walk broken?"


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md"))
def test_every_doc_is_in_the_index(doc):
    assert f"({doc})" in (DOCS / "README.md").read_text(encoding="utf-8")


def test_every_cited_doc_and_section_exists():
    problems = []
    for where, name, sections in _citations():
        doc = DOCS / f"{name}.md"
        if not doc.is_file():
            problems.append(f"{where}: docs/{name}.md does not exist")
            continue
        missing = [s for s in sections if s not in _headings(doc)]
        if missing:
            problems.append(f"{where}: docs/{name}.md has no section {', '.join('§' + s for s in missing)}")
    assert not problems, "\n".join(problems)


def test_nothing_points_outside_the_repository():
    hits = []
    for path in _text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if any(marker in line for marker in OUTSIDE):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)
