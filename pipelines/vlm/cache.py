"""A persistent answer cache for VLM requests, shared by processes on one machine.

Re-running the annotation pipeline (after a crash, with one stage changed, on more videos)
must not pay again for answers it already has. The grounding stage keeps its grounder's
masklets in the same file (table `groundings`, keyed by
`refsav.pipelines.annotate.grounding.cache_key`). Answers are keyed by
`VLMRequest.cache_key(model)`, so any change to the model, prompt, images or generation
settings is a miss. Only successful answers are stored: a failure is retried next time.

SQLite in WAL mode lets the Dask workers of one machine read while one of them writes; the
busy timeout makes a writer wait for another instead of failing. (Over NFS SQLite's locking
is unreliable: give each machine its own cache file.)
"""
from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from .base import VLMBackend, VLMRequest, VLMResponse

BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS groundings (
    key TEXT PRIMARY KEY,
    masklet TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""


class RequestCache:
    """SQLite table of answers by request key. Usable from several threads and processes."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None)
        # busy_timeout first: switching to WAL itself needs a lock another process may hold.
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # durable enough for a cache, and far faster
        self._db.executescript(_SCHEMA)

    def get(self, key: str) -> VLMResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, prompt_tokens, completion_tokens, seconds FROM responses WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return VLMResponse(text=row[0], prompt_tokens=row[1], completion_tokens=row[2], seconds=row[3], cached=True)

    def put(self, key: str, model: str, response: VLMResponse) -> None:
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._lock:
            # The first answer stored wins: a cached answer never changes under a reader.
            self._db.execute(
                "INSERT OR IGNORE INTO responses (key, model, text, prompt_tokens, completion_tokens, seconds, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, model, response.text, response.prompt_tokens, response.completion_tokens, response.seconds, created),
            )

    def get_grounding(self, key: str) -> str | None:
        """A grounder's masklet (JSON of RLEs) by `refsav.pipelines.annotate.grounding.cache_key`."""
        with self._lock:
            row = self._db.execute("SELECT masklet FROM groundings WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put_grounding(self, key: str, masklet: str) -> None:
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO groundings (key, masklet, created_at) VALUES (?, ?, ?)",
                             (key, masklet, created))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class CachedBackend:
    """A VLMBackend that answers from `cache` when it can and asks `backend` otherwise."""

    def __init__(self, backend: VLMBackend, cache: RequestCache):
        self.backend = backend
        self.cache = cache
        self.name = backend.name
        self.model = backend.model
        self.stats = CacheStats()
        # Identical requests in flight at once share one call instead of each paying for it.
        self._pending: dict[str, asyncio.Future] = {}

    async def generate(self, request: VLMRequest) -> VLMResponse:
        key = request.cache_key(self.model)
        while True:
            hit = await asyncio.to_thread(self.cache.get, key)
            if hit is not None:
                self.stats.hits += 1
                return hit
            pending = self._pending.get(key)
            if pending is None:
                break
            try:
                shared = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled():  # the caller that was asking gave up: ask again ourselves
                    continue
                raise
            self.stats.hits += 1
            return replace(shared, cached=True)
        self.stats.misses += 1
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            response = await self.backend.generate(request)
            await asyncio.to_thread(self.cache.put, key, self.model, response)
        except Exception as err:
            future.set_exception(err)
            future.exception()  # marked as retrieved: with nobody waiting it is not an "unhandled" error
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(response)
        return response

    async def aclose(self) -> None:
        try:
            await self.backend.aclose()
        finally:
            self.cache.close()
