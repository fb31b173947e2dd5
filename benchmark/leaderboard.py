"""Leaderboard: an SQLite store of scored submissions, ranking, and static renderings.

`LeaderboardDB` is the embedded store. Several scoring jobs may add entries to
one database file at the same time, so every write is a short `BEGIN IMMEDIATE`
transaction in WAL mode, with a busy timeout and a bounded retry; a writer waits
for the others instead of failing or losing its entry. WAL needs a local file
system (it relies on shared memory), so keep the database off NFS.

Renderers turn entries into `leaderboard.md`, a self-contained
`leaderboard.html` (tabs and click-to-sort in a few lines of inline JS, no
external assets), `leaderboard.json` and one bar chart PNG per benchmark. All
files are written atomically, so a web server never serves a half-written page.
"""
from __future__ import annotations

import contextlib
import hashlib
import html
import json
import math
import random
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from refsav.schemas.errors import SchemaError
from refsav.schemas.io import atomic_path, atomic_write_json, atomic_write_text
from refsav.schemas.scores import LeaderboardEntry
from refsav.schemas.version import __version__

T = TypeVar("T")

SCHEMA_VERSION = 1
JSON_FORMAT_VERSION = 1
BAR_COLOR = "#3b6ea8"  # the tests find the bars in the PNG by this colour

# Statements that take a database from version N to N + 1. Adding a column
# later means bumping SCHEMA_VERSION and adding its ALTER TABLE here.
_MIGRATIONS: dict[int, Sequence[str]] = {}

_CREATE_TABLES = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        benchmark TEXT NOT NULL,
        protocol TEXT NOT NULL,
        name TEXT NOT NULL,
        metrics_json TEXT NOT NULL,
        primary_metric TEXT NOT NULL,
        submission_sha256 TEXT NOT NULL,
        scorer_version TEXT NOT NULL,
        created_at TEXT NOT NULL,
        provenance_json TEXT NOT NULL,
        UNIQUE (benchmark, protocol, name, submission_sha256)
    )""",
    "CREATE INDEX IF NOT EXISTS entries_by_benchmark ON entries (benchmark)",
)

_ENTRY_COLUMNS = (
    "benchmark, protocol, name, metrics_json, primary_metric, "
    "submission_sha256, scorer_version, created_at, provenance_json"
)


# ---------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------


class LeaderboardDB:
    """Leaderboard entries in one SQLite file; safe for concurrent writers.

    No connection is held between calls: each call opens its own, which keeps
    the object cheap to create in every worker process and free of
    thread-affinity rules.

    Duplicates: an entry whose (benchmark, protocol, name, submission_sha256)
    is already stored is ignored, and `add` returns the id of the stored row.
    The first result wins (with its metrics and date) so that re-running a
    scoring job is idempotent and a submission keeps its original date.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0, max_retries: int = 8):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.max_retries = max_retries
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._with_retry(self._init_schema)

    def add(self, entry: LeaderboardEntry) -> int:
        """Store an entry and return its row id (the existing row's for a duplicate)."""
        entry.validate()
        row = (
            entry.benchmark,
            entry.protocol,
            entry.name,
            json.dumps(entry.metrics),  # key order kept: it is the column order
            entry.primary_metric,
            entry.submission_sha256,
            entry.scorer_version,
            entry.created_at,
            json.dumps(entry.provenance),
        )

        def insert(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                f"INSERT INTO entries ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (benchmark, protocol, name, submission_sha256) DO NOTHING",
                row,
            )
            if cur.rowcount == 1:
                return int(cur.lastrowid)
            existing = conn.execute(
                "SELECT id FROM entries WHERE benchmark = ? AND protocol = ? AND name = ? AND submission_sha256 = ?",
                (entry.benchmark, entry.protocol, entry.name, entry.submission_sha256),
            ).fetchone()
            return int(existing[0])

        return self._with_retry(lambda: self._write(insert))

    def entries(self, benchmark: str | None = None) -> list[LeaderboardEntry]:
        """Stored entries in insertion order, optionally of one benchmark."""
        query = f"SELECT {_ENTRY_COLUMNS} FROM entries"
        params: tuple[str, ...] = ()
        if benchmark is not None:
            query += " WHERE benchmark = ?"
            params = (benchmark,)
        query += " ORDER BY id"
        rows = self._with_retry(lambda: self._read(query, params))
        return [_entry_from_row(row) for row in rows]

    def benchmarks(self) -> list[str]:
        """Names of the benchmarks that have at least one entry, sorted."""
        rows = self._with_retry(lambda: self._read("SELECT DISTINCT benchmark FROM entries ORDER BY benchmark", ()))
        return [row[0] for row in rows]

    def __len__(self) -> int:
        return int(self._with_retry(lambda: self._read("SELECT COUNT(*) FROM entries", ()))[0][0])

    def __repr__(self) -> str:
        return f"LeaderboardDB({str(self.path)!r})"

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: the sqlite3 module must not open transactions
        # on its own; every write below says BEGIN IMMEDIATE explicitly.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            yield conn
        finally:
            conn.close()

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._connect() as conn:
            # IMMEDIATE takes the write lock up front. A deferred transaction
            # that reads first and then upgrades to a writer can fail with
            # "database is locked" without the busy handler ever waiting.
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            return result

    def _read(self, query: str, params: tuple) -> list[tuple]:
        with self._connect() as conn:
            return conn.execute(query, params).fetchall()

    def _with_retry(self, action: Callable[[], T]) -> T:
        # The busy timeout covers ordinary waiting. This loop covers the cases
        # where SQLite reports "locked" without calling the busy handler (WAL
        # recovery, switching journal modes), with jittered exponential backoff.
        for attempt in range(self.max_retries + 1):
            try:
                return action()
            except sqlite3.OperationalError as err:
                if not _is_lock_error(err) or attempt == self.max_retries:
                    raise
                time.sleep(min(0.05 * 2**attempt, 2.0) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _init_schema(self) -> None:
        with self._connect() as conn:
            # Persistent in the file; a no-op when the database is already in WAL mode.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL mode (got {mode!r})")

        def create_or_migrate(conn: sqlite3.Connection) -> None:
            for statement in _CREATE_TABLES:
                conn.execute(statement)
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            version = int(row[0])
            if version > SCHEMA_VERSION:
                raise SchemaError(
                    f"leaderboard database schema version {version} is newer than this refsav supports "
                    f"({SCHEMA_VERSION}); upgrade refsav",
                    file=self.path,
                )
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                version += 1
            conn.execute("UPDATE schema_version SET version = ?", (version,))

        self._write(create_or_migrate)


def _is_lock_error(err: sqlite3.OperationalError) -> bool:
    message = str(err).lower()
    return "database is locked" in message or "database is busy" in message


def _entry_from_row(row: tuple) -> LeaderboardEntry:
    (benchmark, protocol, name, metrics_json, primary_metric, sha, scorer_version, created_at, provenance_json) = row
    return LeaderboardEntry(
        benchmark=benchmark,
        protocol=protocol,
        name=name,
        metrics={str(k): float(v) for k, v in json.loads(metrics_json).items()},
        primary_metric=primary_metric,
        submission_sha256=sha,
        scorer_version=scorer_version,
        created_at=created_at,
        provenance={str(k): str(v) for k, v in json.loads(provenance_json).items()},
    )


# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RankedEntry:
    """An entry and its rank within its benchmark (1 is best; ties share a rank)."""

    rank: int
    entry: LeaderboardEntry

    @property
    def score(self) -> float:
        return self.entry.metrics[self.entry.primary_metric]


def rank_entries(entries: Iterable[LeaderboardEntry]) -> list[RankedEntry]:
    """Rank entries per benchmark by their primary metric, best first.

    Ties share a rank and the next rank skips ("1224" competition ranking).
    Ties compare exact values, not the two decimals shown. Within a tie the
    earlier submission comes first. NaN scores rank last. The result is
    ordered by benchmark name, then rank.
    """
    by_benchmark: dict[str, list[LeaderboardEntry]] = {}
    for entry in entries:
        entry.validate()
        by_benchmark.setdefault(entry.benchmark, []).append(entry)

    ranked: list[RankedEntry] = []
    for benchmark in sorted(by_benchmark):
        group = by_benchmark[benchmark]
        primaries = {e.primary_metric for e in group}
        if len(primaries) > 1:
            # Ranking one entry by J&F and another by J would be meaningless.
            raise SchemaError(
                f"benchmark {benchmark!r} mixes primary metrics {sorted(primaries)}", field="primary_metric"
            )
        group.sort(key=lambda e: (-_sortable_score(e), _date_key(e), e.name, e.submission_sha256))
        previous: float | None = None
        rank = 0
        for position, entry in enumerate(group, start=1):
            score = _sortable_score(entry)
            if score != previous:
                rank, previous = position, score
            ranked.append(RankedEntry(rank=rank, entry=entry))
    return ranked


def _sortable_score(entry: LeaderboardEntry) -> float:
    score = entry.metrics[entry.primary_metric]
    return -math.inf if math.isnan(score) else score


def _parse_date(entry: LeaderboardEntry) -> datetime | None:
    """`created_at` as an aware UTC datetime; None when it is not ISO 8601."""
    text = entry.created_at.strip()
    if text.endswith(("Z", "z")):  # fromisoformat accepts "Z" only from Python 3.11
        text = text[:-1] + "+00:00"
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp.replace(tzinfo=timezone.utc) if stamp.tzinfo is None else stamp.astimezone(timezone.utc)


def _date_key(entry: LeaderboardEntry) -> tuple[bool, datetime, str]:
    # Unparsable dates sort after all real ones instead of failing the ranking.
    stamp = _parse_date(entry)
    return (stamp is None, stamp or datetime.min.replace(tzinfo=timezone.utc), entry.created_at)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """One benchmark's ranked rows and the metric columns to show."""

    benchmark: str
    primary_metric: str
    metrics: tuple[str, ...]  # primary first, then the others in first-seen order
    rows: tuple[RankedEntry, ...]


def _tables(entries: Iterable[LeaderboardEntry]) -> list[_Table]:
    tables: list[_Table] = []
    groups: dict[str, list[RankedEntry]] = {}
    for ranked in rank_entries(entries):
        groups.setdefault(ranked.entry.benchmark, []).append(ranked)
    for benchmark, rows in groups.items():
        primary = rows[0].entry.primary_metric
        columns = [primary]
        for ranked in rows:
            columns += [m for m in ranked.entry.metrics if m not in columns]
        tables.append(_Table(benchmark, primary, tuple(columns), tuple(rows)))
    return tables


def _fmt_metric(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}"


def _fmt_date(entry: LeaderboardEntry) -> str:
    stamp = _parse_date(entry)
    return entry.created_at if stamp is None else stamp.strftime("%Y-%m-%d")


def _entries_of(source: LeaderboardDB | Iterable[LeaderboardEntry]) -> list[LeaderboardEntry]:
    return source.entries() if isinstance(source, LeaderboardDB) else list(source)


# Backslash-escaped in Markdown cells: link and image syntax ([x](url), ![x](url), [x][ref]),
# emphasis and code spans, and the table's own "|".  "<" and ">" become entities, so no raw
# HTML or autolink (<javascript:...>) survives.  Entities a name spells itself ("&#91;")
# stay text: CommonMark never reads them as link or HTML syntax.
_MD_ESCAPED = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def _md_cell(text: str) -> str:
    """A user-provided name as literal text in a Markdown table cell or heading."""
    text = " ".join(text.split())
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return _MD_ESCAPED.sub(r"\\\1", text)


def render_markdown(entries: Iterable[LeaderboardEntry]) -> str:
    """One Markdown table per benchmark, in rank order."""
    tables = _tables(entries)
    lines = ["# Leaderboard", ""]
    if not tables:
        lines += ["No entries yet.", ""]
    for table in tables:
        lines += [f"## {_md_cell(table.benchmark)}", "", f"Ranked by {_md_cell(table.primary_metric)}.", ""]
        header = ["Rank", "Name", *(_md_cell(m) for m in table.metrics), "Date"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---:", ":---", *("---:" for _ in table.metrics), ":---"]) + "|")
        for ranked in table.rows:
            e = ranked.entry
            cells = [
                str(ranked.rank),
                _md_cell(e.name),
                *(_fmt_metric(e.metrics.get(m)) for m in table.metrics),
                _fmt_date(e),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


_HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.6rem; margin-bottom: 1rem; }
[role=tablist] { display: flex; flex-wrap: wrap; gap: .25rem; border-bottom: 2px solid #d0d7de; }
[role=tab] { font: inherit; padding: .5rem 1rem; border: 1px solid #d0d7de; border-bottom: none;
             border-radius: 6px 6px 0 0; background: #f6f8fa; cursor: pointer; }
[role=tab][aria-selected=true] { background: #fff; font-weight: 600; border-color: #3b6ea8; }
.note { color: #57606a; margin: .75rem 0; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: .4rem .75rem; border-bottom: 1px solid #d8dee4; }
th { background: #f6f8fa; cursor: pointer; user-select: none; white-space: nowrap; text-align: left; }
th[data-dir=asc]::after { content: " \\25B2"; }
th[data-dir=desc]::after { content: " \\25BC"; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.name { overflow-wrap: anywhere; }
tbody tr:hover { background: #f3f7fc; }
footer { margin-top: 2rem; color: #57606a; font-size: .85rem; }
"""

# Tabs: show the clicked tab's panel. Sort: numbers numerically, blanks last,
# first click sorts in the column's natural direction (data-first).
_HTML_SCRIPT = """
document.querySelectorAll('[role=tab]').forEach(tab => tab.addEventListener('click', () => {
  document.querySelectorAll('[role=tab]').forEach(t => {
    t.setAttribute('aria-selected', String(t === tab));
    document.getElementById(t.getAttribute('aria-controls')).hidden = t !== tab;
  });
}));
document.querySelectorAll('th').forEach(th => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], col = th.cellIndex, num = th.classList.contains('num');
  const dir = th.dataset.dir ? (th.dataset.dir === 'asc' ? 'desc' : 'asc') : th.dataset.first;
  th.closest('tr').querySelectorAll('th').forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir;
  const key = tr => tr.cells[col].dataset.value;
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === '' || y === '') return (x === '') - (y === '');
    const c = num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
    return dir === 'asc' ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
}));
"""


def render_html(entries: Iterable[LeaderboardEntry]) -> str:
    """A single self-contained page: one tab per benchmark, sortable tables."""
    esc = html.escape
    tables = _tables(entries)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Leaderboard</title>",
        f"<style>{_HTML_STYLE}</style>",
        "</head>",
        "<body>",
        "<h1>Leaderboard</h1>",
    ]
    if not tables:
        out.append('<p class="note">No entries yet.</p>')
    else:
        # Element ids are positional so that user-provided benchmark names never reach an id.
        out.append('<div role="tablist">')
        for i, table in enumerate(tables):
            selected = "true" if i == 0 else "false"
            out.append(
                f'<button type="button" role="tab" id="tab-{i}" aria-controls="panel-{i}" '
                f'aria-selected="{selected}">{esc(table.benchmark)}</button>'
            )
        out.append("</div>")
        for i, table in enumerate(tables):
            hidden = "" if i == 0 else " hidden"
            out.append(f'<section role="tabpanel" id="panel-{i}" aria-labelledby="tab-{i}"{hidden}>')
            out.append(
                f'<p class="note">{len(table.rows)} entries, ranked by <b>{esc(table.primary_metric)}</b>. '
                "Click a column header to sort.</p>"
            )
            out.append("<table>")
            heads = [
                '<th class="num" data-first="asc">Rank</th>',
                '<th data-first="asc">Name</th>',
                *(f'<th class="num" data-first="desc">{esc(m)}</th>' for m in table.metrics),
                '<th data-first="desc">Date</th>',
            ]
            out.append("<thead><tr>" + "".join(heads) + "</tr></thead>")
            out.append("<tbody>")
            for ranked in table.rows:
                e = ranked.entry
                cells = [
                    f'<td class="num" data-value="{ranked.rank}">{ranked.rank}</td>',
                    f'<td class="name" data-value="{esc(e.name)}" title="{esc(e.submission_sha256)}">{esc(e.name)}</td>',
                ]
                for metric in table.metrics:
                    value = e.metrics.get(metric)
                    sort_value = "" if value is None or math.isnan(value) else repr(value)
                    cells.append(f'<td class="num" data-value="{sort_value}">{_fmt_metric(value)}</td>')
                cells.append(f'<td data-value="{esc(e.created_at)}">{esc(_fmt_date(e))}</td>')
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody>")
            out.append("</table>")
            out.append("</section>")
    out += [
        f"<footer>Generated by refsav {esc(__version__)}.</footer>",
        f"<script>{_HTML_SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(out)


def _json_number(value: float) -> float | None:
    # JSON has no NaN or Infinity; a strict parser would reject the whole file.
    return value if math.isfinite(value) else None


def render_json(entries: Iterable[LeaderboardEntry]) -> dict:
    """Machine-readable leaderboard: per benchmark, ranked entries with provenance.

    Shape: {"format_version", "generator", "benchmarks": {name: {"primary_metric",
    "metrics", "entries": [{"rank", "name", "protocol", "metrics", "primary_score",
    "created_at", "submission_sha256", "scorer_version", "provenance"}]}}}.
    """
    benchmarks: dict[str, dict] = {}
    for table in _tables(entries):
        benchmarks[table.benchmark] = {
            "primary_metric": table.primary_metric,
            "metrics": list(table.metrics),
            "entries": [
                {
                    "rank": ranked.rank,
                    "name": ranked.entry.name,
                    "protocol": ranked.entry.protocol,
                    "primary_score": _json_number(ranked.score),
                    "metrics": {k: _json_number(v) for k, v in ranked.entry.metrics.items()},
                    "created_at": ranked.entry.created_at,
                    "submission_sha256": ranked.entry.submission_sha256,
                    "scorer_version": ranked.entry.scorer_version,
                    "provenance": dict(ranked.entry.provenance),
                }
                for ranked in table.rows
            ],
        }
    return {"format_version": JSON_FORMAT_VERSION, "generator": f"refsav {__version__}", "benchmarks": benchmarks}


def chart_filename(benchmark: str, taken: set[str] | None = None) -> str:
    """A safe PNG file name for a benchmark; names that clash after cleaning get a hash suffix."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", benchmark).strip("._") or "benchmark"
    name = f"{stem}.png"
    if taken is not None and name in taken:
        name = f"{stem}-{hashlib.sha256(benchmark.encode()).hexdigest()[:8]}.png"
    return name


def _chart_text(text: str, limit: int = 40) -> str:
    """A user-provided name as a chart label: one line, at most `limit` characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    # Matplotlib reads "$...$" as math; an odd "$" would even fail the render.
    return text.replace("$", r"\$")


def render_charts(entries: Iterable[LeaderboardEntry], out_dir: str | Path) -> list[Path]:
    """One horizontal bar chart PNG of the primary metric per benchmark, best on top."""
    # Figure + Agg canvas directly, not pyplot: no global backend switch and no
    # figure registry, so this is safe to call from any process or thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    paths: list[Path] = []
    taken: set[str] = set()
    for table in _tables(entries):
        labels = [f"{r.rank}. {_chart_text(r.entry.name)}" for r in table.rows]
        scores = [r.score for r in table.rows]
        widths = [0.0 if math.isnan(s) else s for s in scores]

        fig = Figure(figsize=(9, 1.4 + 0.38 * len(labels)), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        positions = range(len(labels))
        bars = ax.barh(positions, widths, height=0.6, color=BAR_COLOR)
        ax.set_yticks(list(positions), labels=labels)
        ax.invert_yaxis()  # rank 1 on top
        ax.bar_label(bars, labels=[_fmt_metric(s) for s in scores], padding=3, fontsize=9)
        finite = [w for w in widths if math.isfinite(w)]
        low, high = min([0.0, *finite]), max([0.0, *finite])
        ax.set_xlim(low, high * 1.12 if high > 0 else 1.0)  # room for the value labels
        ax.set_xlabel(_chart_text(table.primary_metric))
        ax.set_title(_chart_text(f"{table.benchmark}: {table.primary_metric}", 80), loc="left", fontsize=12)
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="x", color="#e0e0e0", linewidth=0.8)
        ax.set_axisbelow(True)

        name = chart_filename(table.benchmark, taken)
        taken.add(name)
        path = out / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        paths.append(path)
    return paths


@dataclass(frozen=True)
class LeaderboardFiles:
    """Paths of the files `write_leaderboard` wrote."""

    markdown: Path
    html: Path
    json: Path
    charts: tuple[Path, ...]


def write_leaderboard(source: LeaderboardDB | Iterable[LeaderboardEntry], out_dir: str | Path) -> LeaderboardFiles:
    """Write leaderboard.md, leaderboard.html, leaderboard.json and charts/<benchmark>.png.

    Charts of benchmarks that no longer have entries are left in place.
    """
    entries = _entries_of(source)
    out = Path(out_dir)
    files = LeaderboardFiles(
        markdown=out / "leaderboard.md",
        html=out / "leaderboard.html",
        json=out / "leaderboard.json",
        charts=tuple(render_charts(entries, out / "charts")),
    )
    atomic_write_text(files.markdown, render_markdown(entries))
    atomic_write_text(files.html, render_html(entries))
    atomic_write_json(files.json, render_json(entries), indent=2)
    return files


__all__ = [
    "BAR_COLOR",
    "LeaderboardDB",
    "LeaderboardFiles",
    "RankedEntry",
    "SCHEMA_VERSION",
    "chart_filename",
    "rank_entries",
    "render_charts",
    "render_html",
    "render_json",
    "render_markdown",
    "write_leaderboard",
]
