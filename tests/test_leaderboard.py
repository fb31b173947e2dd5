"""Leaderboard store (SQLite, concurrent writers), ranking and renderers."""
from __future__ import annotations

import hashlib
import html
import json
import math
import multiprocessing
import re
import sqlite3
import threading
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from refsav.benchmark.leaderboard import (
    BAR_COLOR,
    SCHEMA_VERSION,
    LeaderboardDB,
    LeaderboardFiles,
    RankedEntry,
    rank_entries,
    render_charts,
    render_html,
    render_json,
    render_markdown,
    write_leaderboard,
)
from refsav.schemas import LeaderboardEntry, SchemaError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def entry(name, score, *, benchmark="ref-sav-valid", day=1, sha=None, protocol="refsav", **extra) -> LeaderboardEntry:
    return LeaderboardEntry(
        benchmark=benchmark,
        protocol=protocol,
        name=name,
        metrics={"J&F": score, "J": score - 2.0, "F": score + 2.0, **extra},
        primary_metric="J&F",
        submission_sha256=sha or hashlib.sha256(f"{benchmark}/{name}/{score}".encode()).hexdigest(),
        scorer_version="0.1.0",
        created_at=f"2026-01-{day:02d}T12:00:00Z",
        provenance={"model": name, "commit": "abc123"},
    )


def sample_entries() -> list[LeaderboardEntry]:
    return [
        entry("Sa2VA-4B", 70.5, day=3),
        entry("Sa2VA-8B", 75.25, day=5),
        entry("<script>x</script>", 70.5, day=1),  # ties with Sa2VA-4B but is older
        entry("VISA|13B", 60.0, day=2),
        entry("Sa2VA-1B", 51.0, benchmark="mevis-valid-u", day=4),
        entry("VideoLISA", 44.125, benchmark="mevis-valid-u", day=2),
    ]


# ---------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------


def test_add_and_read_round_trip(tmp_path):
    db = LeaderboardDB(tmp_path / "lb.sqlite")
    originals = sample_entries()
    ids = [db.add(e) for e in originals]
    assert len(set(ids)) == len(originals)
    # A fresh handle on the same file sees everything, field for field.
    again = LeaderboardDB(tmp_path / "lb.sqlite")
    assert again.entries() == originals
    assert [list(e.metrics) for e in again.entries()] == [list(e.metrics) for e in originals]  # column order
    assert again.entries("mevis-valid-u") == [e for e in originals if e.benchmark == "mevis-valid-u"]
    assert again.entries("no-such-benchmark") == []
    assert again.benchmarks() == ["mevis-valid-u", "ref-sav-valid"]
    assert len(again) == len(originals)


def test_database_is_wal_and_versioned(tmp_path):
    path = tmp_path / "lb.sqlite"
    LeaderboardDB(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        stored = conn.execute("SELECT metrics_json, provenance_json FROM entries").fetchall()
    assert stored == []
    LeaderboardDB(path).add(entry("a", 50.0))
    with sqlite3.connect(path) as conn:
        metrics_json, provenance_json = conn.execute("SELECT metrics_json, provenance_json FROM entries").fetchone()
    assert json.loads(metrics_json)["J&F"] == 50.0
    assert json.loads(provenance_json) == {"model": "a", "commit": "abc123"}


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "lb.sqlite"
    LeaderboardDB(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaError, match="newer"):
        LeaderboardDB(path)


def test_identical_submission_is_stored_once(tmp_path):
    db = LeaderboardDB(tmp_path / "lb.sqlite")
    first = entry("Sa2VA-4B", 70.0, sha="a" * 64, day=1)
    first_id = db.add(first)
    # Same key, re-scored later with other numbers: the first result is kept.
    rescored = entry("Sa2VA-4B", 99.0, sha="a" * 64, day=9)
    assert db.add(rescored) == first_id
    assert db.entries() == [first]
    # Any differing key field makes it a new submission.
    db.add(entry("Sa2VA-4B", 71.0, sha="b" * 64))
    db.add(entry("Sa2VA-4B-ft", 70.0, sha="a" * 64))
    db.add(entry("Sa2VA-4B", 70.0, sha="a" * 64, protocol="refsav-strict"))
    db.add(entry("Sa2VA-4B", 70.0, sha="a" * 64, benchmark="other"))
    assert len(db) == 5


def test_add_rejects_invalid_entry(tmp_path):
    db = LeaderboardDB(tmp_path / "lb.sqlite")
    bad = LeaderboardEntry("b", "p", "n", {"J": 1.0}, "J&F", "0" * 64, "0.1.0", "2026-01-01T00:00:00Z")
    with pytest.raises(SchemaError, match="primary metric"):
        db.add(bad)
    assert len(db) == 0


def _add_many(db_path: str, worker: int, count: int, barrier) -> None:
    db = LeaderboardDB(db_path)
    barrier.wait(timeout=60)  # all writers start together to force lock contention
    for i in range(count):
        db.add(entry(f"w{worker}-{i:02d}", float(i), sha=f"{worker:032x}{i:032x}"))


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "lb.sqlite")
    LeaderboardDB(path)
    ctx = multiprocessing.get_context("spawn")
    workers, per_worker = 4, 25
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_add_many, args=(path, w, per_worker, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers
    names = [e.name for e in LeaderboardDB(path).entries()]
    assert len(names) == workers * per_worker
    assert set(names) == {f"w{w}-{i:02d}" for w in range(workers) for i in range(per_worker)}


def test_add_waits_for_a_held_write_lock(tmp_path):
    path = tmp_path / "lb.sqlite"
    db = LeaderboardDB(path, busy_timeout_s=0.05, max_retries=8)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.4, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        db.add(entry("patient", 1.0))  # outlasts the busy timeout, so only the retry loop saves it
    finally:
        release.join()
        holder.close()
    assert [e.name for e in db.entries()] == ["patient"]


def test_add_gives_up_after_bounded_retries(tmp_path):
    path = tmp_path / "lb.sqlite"
    db = LeaderboardDB(path, busy_timeout_s=0.02, max_retries=2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            db.add(entry("impatient", 1.0))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(db) == 0


# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------


def test_ranking_with_ties_is_competition_ranking():
    ranked = rank_entries(sample_entries())
    assert all(isinstance(r, RankedEntry) for r in ranked)
    got = [(r.entry.benchmark, r.rank, r.entry.name) for r in ranked]
    assert got == [
        ("mevis-valid-u", 1, "Sa2VA-1B"),
        ("mevis-valid-u", 2, "VideoLISA"),
        ("ref-sav-valid", 1, "Sa2VA-8B"),
        ("ref-sav-valid", 2, "<script>x</script>"),  # tie: the earlier submission first
        ("ref-sav-valid", 2, "Sa2VA-4B"),
        ("ref-sav-valid", 4, "VISA|13B"),  # "1224": the rank after a tie skips
    ]
    assert ranked[2].score == 75.25


def test_ranking_puts_nan_last_and_refuses_mixed_primary_metrics():
    ranked = rank_entries([entry("broken", math.nan), entry("a", 10.0), entry("b", 20.0)])
    assert [(r.rank, r.entry.name) for r in ranked] == [(1, "b"), (2, "a"), (3, "broken")]
    other = LeaderboardEntry("ref-sav-valid", "refsav", "j-only", {"J": 1.0}, "J", "1" * 64, "0.1.0", "2026-01-01")
    with pytest.raises(SchemaError, match="mixes primary metrics"):
        rank_entries([entry("a", 10.0), other])


# ---------------------------------------------------------------------------
# Renderers
# ---------------------------------------------------------------------------


def _markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """Benchmark heading -> data rows (cells split on unescaped pipes)."""
    tables: dict[str, list[list[str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:]
            tables[current] = []
        elif current and line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            tables[current].append(cells)
    return {name: rows[2:] for name, rows in tables.items()}  # drop header and rule


def test_markdown_has_a_ranked_table_per_benchmark():
    text = render_markdown(sample_entries())
    tables = _markdown_tables(text)
    assert list(tables) == ["mevis-valid-u", "ref-sav-valid"]
    header = next(line for line in text.splitlines() if line.startswith("| Rank"))
    assert header == "| Rank | Name | J&F | J | F | Date |"
    rows = tables["ref-sav-valid"]
    assert [(r[0], r[1]) for r in rows] == [
        ("1", "Sa2VA-8B"),
        ("2", "&lt;script&gt;x&lt;/script&gt;"),
        ("2", "Sa2VA-4B"),
        ("4", "VISA\\|13B"),
    ]
    assert all(len(r) == 6 for r in rows)  # the escaped pipe did not add a cell
    assert rows[0][2:] == ["75.25", "73.25", "77.25", "2026-01-05"]
    assert tables["mevis-valid-u"][1][2] == "44.12"  # 2 decimals
    assert render_markdown([]).count("|") == 0


def test_markdown_names_stay_text_whatever_they_hold():
    from markdown_it import MarkdownIt

    names = ["[x](javascript:alert(1))", "![img](http://evil.example/a.png)", "[ref][1]", "<javascript:alert(1)>",
             "<img src=x onerror=alert(1)>", "&#91;y&#93;(javascript:alert(2))", "**bold** _it_ `code` ~~del~~ a|b \\"]
    entries = [entry(n, 50.0 + i) for i, n in enumerate(names)]
    text = render_markdown(entries) + "\n[1]: javascript:alert(3)\n"  # even with a reference definition below
    page = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(text)
    assert "<a " not in page and "<img" not in page and "<strong>" not in page and "<em>" not in page
    assert "<code>" not in page and "<s>" not in page and "<del>" not in page
    cells = [r[1] for r in _markdown_tables(render_markdown(entries))["ref-sav-valid"]]
    assert len(cells) == len(names)  # no name split its row
    # What a reader sees is the name itself.
    shown = re.findall(r"<td[^>]*>(.*?)</td>", page)
    for name in names:
        assert html.escape(" ".join(name.split()), quote=False) in shown or name.startswith("&#"), name


class _PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tabs: list[dict] = []
        self.panels: list[dict] = []
        self.rows_per_panel: list[int] = []
        self.scripts = 0
        self._in_tab = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("role") == "tab":
            self.tabs.append({**a, "text": ""})
            self._in_tab = True
        elif a.get("role") == "tabpanel":
            self.panels.append(a)
            self.rows_per_panel.append(0)
        elif tag == "tr" and self.panels:
            self.rows_per_panel[-1] += 1
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "button":
            self._in_tab = False

    def handle_data(self, data):
        if self._in_tab:
            self.tabs[-1]["text"] += data


def test_html_has_one_tab_per_benchmark_and_escapes_names():
    page = render_html(sample_entries())
    parser = _PageParser()
    parser.feed(page)
    assert [t["text"] for t in parser.tabs] == ["mevis-valid-u", "ref-sav-valid"]
    assert [t["aria-controls"] for t in parser.tabs] == [p["id"] for p in parser.panels]
    assert ["hidden" in p for p in parser.panels] == [False, True]  # first tab shown
    assert parser.rows_per_panel == [1 + 2, 1 + 4]  # header row + entries
    assert parser.scripts == 1  # only the page's own script survived
    assert "<script>x</script>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert "75.25" in page and "44.12" in page
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "http://" not in page and "https://" not in page


def test_json_has_ranks_and_provenance():
    doc = render_json(sample_entries())
    json.dumps(doc, allow_nan=False)  # strict JSON
    board = doc["benchmarks"]["ref-sav-valid"]
    assert board["primary_metric"] == "J&F"
    assert [(e["rank"], e["name"]) for e in board["entries"]] == [
        (1, "Sa2VA-8B"), (2, "<script>x</script>"), (2, "Sa2VA-4B"), (4, "VISA|13B"),
    ]
    top = board["entries"][0]
    assert top["created_at"] == "2026-01-05T12:00:00Z"
    assert top["provenance"] == {"model": "Sa2VA-8B", "commit": "abc123"}
    assert top["scorer_version"] == "0.1.0"
    assert len(top["submission_sha256"]) == 64
    assert render_json([entry("nan", math.nan)])["benchmarks"]["ref-sav-valid"]["entries"][0]["primary_score"] is None


def _count_bars(png_path) -> int:
    """Most runs of the bar colour met by any one pixel column."""
    rgb = np.asarray(Image.open(png_path).convert("RGB")).astype(int)
    target = np.array([int(BAR_COLOR[i : i + 2], 16) for i in (1, 3, 5)])
    is_bar = (np.abs(rgb - target).sum(axis=2) <= 6).astype(np.int8)
    starts = np.diff(is_bar, axis=0, prepend=0) == 1
    return int(starts.sum(axis=0).max())


def test_charts_one_png_per_benchmark(tmp_path):
    paths = render_charts(sample_entries(), tmp_path / "charts")
    assert [p.name for p in paths] == ["mevis-valid-u.png", "ref-sav-valid.png"]
    for path, bars in zip(paths, [2, 4]):
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as img:
            img.verify()
        assert _count_bars(path) == bars
    assert not list((tmp_path / "charts").glob(".*.tmp"))  # no leftovers of the atomic write


def test_chart_survives_hostile_names(tmp_path):
    # "$" starts matplotlib mathtext (an unbalanced one fails the render); "/" would leave the folder.
    odd = [entry("costs $5 and $x^{2", 10.0, benchmark="../odd/bench"), entry("b" * 300, 5.0, benchmark="../odd/bench")]
    paths = render_charts(odd, tmp_path / "charts")
    assert [p.parent for p in paths] == [tmp_path / "charts"]
    assert paths[0].name == "odd_bench.png"
    assert _count_bars(paths[0]) == 2


def test_write_leaderboard_from_db(tmp_path):
    db = LeaderboardDB(tmp_path / "lb.sqlite")
    for e in sample_entries():
        db.add(e)
    files = write_leaderboard(db, tmp_path / "site")
    assert isinstance(files, LeaderboardFiles)
    assert files.markdown.read_text(encoding="utf-8") == render_markdown(sample_entries())
    assert files.html.read_text(encoding="utf-8") == render_html(sample_entries())
    assert json.loads(files.json.read_text(encoding="utf-8")) == render_json(sample_entries())
    assert sorted(p.name for p in (tmp_path / "site" / "charts").iterdir()) == ["mevis-valid-u.png", "ref-sav-valid.png"]
    assert files.charts == tuple(sorted(files.charts))
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in files.charts)
