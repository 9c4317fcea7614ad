"""The response cache: answers keyed by a hash of the request's identity (`request_key`), in one SQLite file.

Several processes may share one cache file (WAL mode, a 30 s busy timeout). Every put commits before it
returns (in WAL mode with synchronous=NORMAL a commit is an append to the WAL file, tens of microseconds, no
fsync), so an answer the client received survives a kill -9 of the process: nothing is paid for twice.
The schema is built by named, append-only migrations recorded in `_migrations`: never edit one, add a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from evolve.errors import EvolveError

log = logging.getLogger("evolve.cache")

KEY_VERSION = "v2"
LEGACY_KEY_VERSION = "v1"
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


def request_key(identity: dict[str, Any]) -> str:
    """A stable key for a request: `v2:` + SHA-256 of the canonical JSON of its identity.

    The identity names everything that decides the answer: the endpoint (without credentials), the model, the
    sampling parameters, the messages' texts and image keys (never image data), the round and the attempt, so
    a cache never answers for another endpoint, another round or a deliberate second attempt.
    """
    try:
        data = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a lone surrogate: orjson refuses it, the stdlib writes it escaped
        data = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode("ascii")
    return f"{KEY_VERSION}:" + hashlib.sha256(data).hexdigest()


def legacy_request_key(model: str, system: str | None, text: str, image_keys: list[str], params: dict[str, Any]) -> str:
    """The key of caches written before v2: `v1:` + SHA-256 of (model, messages, params) only.

    The canonical JSON is ``json.dumps`` with sorted keys, compact separators and raw UTF-8.
    """
    params_json = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    digest = hashlib.sha256(b'{"images":' + _canonical_strings(image_keys))
    digest.update(b',"model":' + _canonical_strings(model) + b',"params":' + params_json)
    digest.update(b',"system":' + _canonical_strings(system))
    digest.update(b',"text":' + _canonical_strings(text) + b"}")
    return f"{LEGACY_KEY_VERSION}:" + digest.hexdigest()


def _canonical_strings(value: str | list[str] | None) -> bytes:
    """A string, a list of strings or None as canonical JSON bytes."""
    try:
        return orjson.dumps(value)
    except TypeError:  # e.g. a lone surrogate: let the stdlib write it escaped
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class Cache(Protocol):
    """What the client needs from a cache; `enabled` is False when nothing is kept (then nothing is hashed)."""

    enabled: bool

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _enter_wal(db: sqlite3.Connection) -> None:
    """Switch to WAL mode. SQLite answers "database is locked" at once, without waiting on its busy timeout,
    when another process is creating the same new file; so wait here, up to that timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class ResponseCache:
    """A SQLite-backed cache of answers (JSON objects), safe to share between processes.

    Two connections, one for reads and one for writes; every put commits on the caller's thread before it
    returns (a WAL append, no fsync). The locks make one instance safe across threads (a Ray actor opens and
    closes its cache on one thread and uses it on its event loop's); an answer that SQLite refused stays in
    memory, visible to `get`, until a later commit takes it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot write the response cache in {self.path.parent}: {exc.strerror}") from exc
        try:
            self._wdb = self._connect()
            self._migrate()
            self._rdb = self._connect()
        except sqlite3.Error as exc:
            if not os.access(self.path.parent, os.W_OK):
                raise CacheError(
                    f"cannot write the response cache in {self.path.parent}: permission denied; make the folder "
                    "writable or point --cache elsewhere"
                ) from exc
            raise CacheError(
                f"cannot open the response cache {self.path}: {exc}; move it away (its answers are lost) "
                "or point --cache elsewhere"
            ) from exc
        self._state = threading.Lock()  # guards the two dicts below (held for microseconds)
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one commit at a time
        self._pending: dict[str, str] = {}  # put, not yet taken by a commit
        self._writing: dict[str, str] = {}  # taken by the commit in progress
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.commits = 0

    enabled = True

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _enter_wal(db)
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
            try:
                with self._read_lock:
                    row = self._rdb.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                raise CacheError(f"cannot read the response cache {self.path}: {exc}") from exc
            raw = None if row is None else row[0]
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        value: dict[str, Any] = json.loads(raw)
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store an answer, committed before this returns (kept in memory and retried if SQLite refuses)."""
        raw = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        with self._state:
            if self._closed:
                raise CacheError(f"the response cache {self.path} is closed")
            self._pending[key] = raw
        try:
            self._commit()
        except CacheError as exc:  # e.g. locked past the busy timeout by another run: the next put retries
            log.warning("response cache write failed, will retry: %s", exc)

    def flush(self) -> None:
        """Commit every buffered answer now (waits for a commit in progress)."""
        self._commit()

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
                    if self._wdb.in_transaction:  # SQLite may have rolled back already (a full disk does)
                        with contextlib.suppress(sqlite3.Error):
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


class NullCache:
    """The cache for `--no-cache`: remembers nothing (so requests are not hashed either)."""

    enabled = False
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
