"""The response cache: answers keyed by a hash of (model, messages, params), in one SQLite file.

Several processes may share one cache file (WAL mode, a 30 s busy timeout). Writes are group-committed on a
worker thread: every put starts a commit unless one is running, which then takes all answers that arrived
meanwhile. So an answer is on disk within milliseconds of its arrival (a kill -9 loses at most the answers of
the last commit in flight), the event loop never waits for SQLite, and under load commits batch themselves.
The schema is built by named, append-only migrations recorded in `_migrations`: never edit one, add a new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from evolve.errors import EvolveError

log = logging.getLogger("evolve.cache")

KEY_VERSION = "v1"
COMMIT_RETRY_SECONDS = 0.005
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
    """A SQLite-backed cache of answers (JSON objects), safe to share between processes.

    Two connections: reads on the caller's thread, batched writes on a worker thread when an event loop
    runs (SQLite releases the GIL while it writes), so a commit never stalls the loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._wdb = self._connect()
            self._migrate()
            self._rdb = self._connect()
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open the response cache {self.path}: {exc}") from exc
        self._state = threading.Lock()  # guards the two dicts below (held for microseconds)
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one commit at a time
        self._pending: dict[str, str] = {}  # put, not yet taken by a commit
        self._writing: dict[str, str] = {}  # taken by the commit in progress
        self._timer: asyncio.TimerHandle | None = None
        self._background = False  # a commit is scheduled on a worker thread
        self._error: BaseException | None = None
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.commits = 0

    request_key = staticmethod(request_key)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    # schema --------------------------------------------------------------------------------------
    def _migrate(self) -> None:
        db = self._wdb
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
        with self._read_lock:
            rows = self._rdb.execute("SELECT name FROM _migrations ORDER BY name").fetchall()
        return [row[0] for row in rows]

    # get / put -----------------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        """The cached answer for `key`, or None."""
        with self._state:
            raw = self._pending.get(key) or self._writing.get(key)
        if raw is None:
            with self._read_lock:
                row = self._rdb.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            raw = None if row is None else row[0]
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        value: dict[str, Any] = json.loads(raw)
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store an answer; a commit starts at once (or joins the one running)."""
        if self._error is not None:
            self._raise_background_error()
        raw = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        with self._state:
            if self._closed:
                raise CacheError(f"the response cache {self.path} is closed")
            self._pending[key] = raw
        self._commit_soon()

    def flush(self) -> None:
        """Commit every buffered answer now (waits for a commit in progress)."""
        self._cancel_timer()
        self._commit()
        if self._error is not None:
            self._raise_background_error()

    def close(self) -> None:
        """Flush and close; further puts raise."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            with self._write_lock, self._state:
                self._closed = True
                self._wdb.close()
                with self._read_lock:
                    self._rdb.close()

    def __len__(self) -> int:
        self.flush()
        with self._read_lock:
            row = self._rdb.execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(row[0])

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # commits ---------------------------------------------------------------------------------------
    def _commit(self) -> None:
        """Write what is pending in one transaction (on the calling thread)."""
        with self._write_lock:
            with self._state:
                if self._closed or not self._pending:
                    return
                batch, self._pending = self._pending, {}
                self._writing = batch
            rows = [(k, v, time.time()) for k, v in batch.items()]
            try:
                self._wdb.execute("BEGIN IMMEDIATE")
                try:
                    self._wdb.executemany(
                        "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)", rows
                    )
                    self._wdb.execute("COMMIT")
                except BaseException:
                    self._wdb.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                with self._state:  # keep the answers: a later flush tries again
                    self._pending = {**batch, **self._pending}
                    self._writing = {}
                raise CacheError(f"cannot write the response cache {self.path}: {exc}") from exc
            with self._state:
                self._writing = {}
            self.commits += 1

    def _commit_soon(self) -> None:
        """Commit on a worker thread if an event loop runs here, else right away."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._commit()
            return
        if self._background:  # a commit is running: look again shortly
            if self._timer is None:
                self._arm_timer()
            return
        self._cancel_timer()
        self._background = True
        loop.run_in_executor(None, self._background_commit)

    def _background_commit(self) -> None:
        try:
            while True:  # group commit: take what arrived during the previous commit
                self._commit()
                with self._state:
                    if self._closed or not self._pending:
                        break
        except BaseException as exc:
            log.warning("response cache write failed (will retry at the next flush): %s", exc)
            self._error = exc
        finally:
            self._background = False

    def _raise_background_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            self._commit()  # try again; raises if it still fails
            if isinstance(error, CacheError):
                log.info("response cache write succeeded on retry after: %s", error)

    def _arm_timer(self) -> None:
        """Commit after the interval even if no further put comes (only when an event loop runs here)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(COMMIT_RETRY_SECONDS, self._on_timer)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed and self._pending:
            self._commit_soon()


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
