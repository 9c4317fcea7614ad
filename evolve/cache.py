"""The response cache: answers keyed by a hash of (model, messages, params), in one SQLite file.

Several processes may share one cache file (WAL mode, a 30 s busy timeout). Writes are buffered in memory
and committed in batches (every ~0.2 s or 200 puts, and on `flush()`/`close()`), so the hot path does not
pay a disk sync per answer and no write lock is held between batches. The schema is built by named,
append-only migrations recorded in `_migrations`: never edit one, add a new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from evolve.errors import EvolveError

KEY_VERSION = "v1"
COMMIT_EVERY_SECONDS = 0.2
COMMIT_EVERY_PUTS = 200
BUSY_TIMEOUT_MS = 30_000

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "0001_responses",
        "CREATE TABLE responses ( key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL) WITHOUT ROWID",
    ),
)
"""(name, SQL) in order. Append only: a database remembers which names it has applied."""


class CacheError(EvolveError):
    """The cache file cannot be opened or written."""


def request_key(model: str, system: str | None, text: str, image_keys: list[str], params: dict[str, Any]) -> str:
    """A stable key for a request: `v1:` + SHA-256 of its canonical JSON (image *keys*, never image data)."""
    canonical = json.dumps(
        {"model": model, "system": system, "text": text, "images": image_keys, "params": params},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return f"{KEY_VERSION}:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Cache(Protocol):
    """What the client needs from a cache."""

    def request_key(
        self, model: str, system: str | None, text: str, image_keys: list[str], params: dict[str, Any]
    ) -> str: ...

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class ResponseCache:
    """A SQLite-backed cache of answers (JSON objects), safe to share between processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open the response cache {self.path}: {exc}") from exc
        self._lock = threading.RLock()
        self._pending: dict[str, str] = {}
        self._first_pending = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.commits = 0

    request_key = staticmethod(request_key)

    # schema --------------------------------------------------------------------------------------
    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied REAL NOT NULL)")
        done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
        if all(name in done for name, _ in MIGRATIONS):
            return
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
        try:
            done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
            for name, sql in MIGRATIONS:
                if name not in done:
                    db.execute(sql)
                    db.execute("INSERT INTO _migrations (name, applied) VALUES (?, ?)", (name, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def applied_migrations(self) -> list[str]:
        """Names of the migrations this database has applied, in order."""
        with self._lock:
            rows = self._db.execute("SELECT name FROM _migrations ORDER BY name").fetchall()
        return [row[0] for row in rows]

    # get / put -----------------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        """The cached answer for `key`, or None."""
        with self._lock:
            raw = self._pending.get(key)
            if raw is None:
                row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
                raw = None if row is None else row[0]
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        value: dict[str, Any] = json.loads(raw)
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store an answer; it is committed within ~0.2 s (or at the next `flush`)."""
        raw = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if self._closed:
                raise CacheError(f"the response cache {self.path} is closed")
            if not self._pending:
                self._first_pending = time.monotonic()
                self._arm_timer()
            self._pending[key] = raw
            due = (
                len(self._pending) >= COMMIT_EVERY_PUTS
                or time.monotonic() - self._first_pending >= COMMIT_EVERY_SECONDS
            )
        if due:
            self.flush()

    def flush(self) -> None:
        """Commit every buffered answer now."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._pending:
                return
            rows = [(k, v, time.time()) for k, v in self._pending.items()]
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)", rows
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise CacheError(f"cannot write the response cache {self.path}: {exc}") from exc
            self._pending.clear()
            self.commits += 1

    def close(self) -> None:
        """Flush and close; further puts raise."""
        with self._lock:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                self._closed = True
                self._db.close()

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()
            return int(row[0]) + sum(1 for k in self._pending if not self._has(k))

    def _has(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _arm_timer(self) -> None:
        """Commit after the interval even if no further put comes (only when an event loop runs here)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(COMMIT_EVERY_SECONDS, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed:
            self.flush()


class NullCache:
    """The cache for `--no-cache`: remembers nothing."""

    request_key = staticmethod(request_key)
    hits = 0
    misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        """Always None."""
        return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Forget the answer."""

    def flush(self) -> None:
        """Nothing to do."""

    def close(self) -> None:
        """Nothing to do."""

    def __enter__(self) -> NullCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
