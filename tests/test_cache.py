"""The SQLite response cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from evolve.cache import MIGRATIONS, CacheError, NullCache, ResponseCache, legacy_request_key, request_key


def test_blank_db_gets_every_migration(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with ResponseCache(path) as cache:
        assert cache.applied_migrations() == [name for name, _ in MIGRATIONS]
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"_migrations", "responses"} <= tables
    finally:
        db.close()
    with ResponseCache(path) as again:  # reopening applies nothing twice
        assert again.applied_migrations() == [name for name, _ in MIGRATIONS]


def test_put_get_roundtrip_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    value = {"text": "héllo", "prompt_tokens": 3, "completion_tokens": 4}
    with ResponseCache(path) as cache:
        assert cache.get("k") is None
        cache.put("k", value)
        assert cache.get("k") == value  # visible before the commit
    with ResponseCache(path) as cache:
        assert cache.get("k") == value
        assert len(cache) == 1


def test_without_event_loop_each_put_commits(tmp_path: Path) -> None:
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        for i in range(5):
            cache.put(f"k{i}", {"i": i})
        assert cache.commits == 5
        cache.flush()
        assert cache.commits == 5  # nothing left to write


def test_an_answer_is_on_disk_when_put_returns(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    other = sqlite3.connect(path)

    async def main() -> None:
        for i in range(50):
            cache.put(f"k{i}", {"i": i})
            assert other.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == i + 1

    try:
        asyncio.run(main())
    finally:
        other.close()
        cache.close()


def test_many_puts_in_an_event_loop_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)

    async def main() -> None:
        for i in range(1000):
            cache.put(f"k{i}", {"i": i})
            assert cache.get(f"k{i}") == {"i": i}  # visible while a commit runs on a worker thread
            if i % 10 == 0:
                await asyncio.sleep(0.001)

    asyncio.run(main())
    assert cache.commits >= 3
    cache.close()
    with ResponseCache(path) as again:
        assert len(again) == 1000 and again.get("k999") == {"i": 999}


def test_put_after_close_raises(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.close()
    with pytest.raises(CacheError):
        cache.put("k", {})


IDENTITY = {
    "endpoint": "http://127.0.0.1:8000/v1", "model": "m", "params": {"temperature": 1.0, "max_tokens": 10},
    "system": "sys", "prefix": "fixed", "text": "text", "images": ["sha256:ab"], "round": 1, "attempt": 0,
}  # fmt: skip


def test_request_key_is_canonical_and_knows_endpoint_round_and_attempt() -> None:
    a = request_key(IDENTITY)
    reordered = dict(reversed(list(IDENTITY.items())))
    reordered["params"] = {"max_tokens": 10, "temperature": 1.0}
    assert a == request_key(reordered) and a.startswith("v2:") and len(a) == 3 + 64
    for key, other in (("endpoint", "http://127.0.0.1:9/v1"), ("round", 2), ("attempt", 1), ("model", "m2"),
                       ("system", None), ("images", []), ("prefix", ""), ("params", {"temperature": 0.5})):  # fmt: skip
        assert request_key({**IDENTITY, key: other}) != a, key
    assert request_key({**IDENTITY, "text": "lone \ud800 surrogate"}).startswith("v2:")  # never raises


@pytest.mark.parametrize(
    "text", ["plain", "ünïcödé ✓ 字", 'quotes " and \\ back\nslash', "control \x01\x1f\u2028", "emoji 🙂"]
)
def test_legacy_key_is_the_sha256_of_the_stdlib_canonical_json(text: str) -> None:
    """Keys written by earlier versions stay readable: same bytes as json.dumps(sort_keys, compact, UTF-8)."""
    params = {"temperature": 0.7, "top_p": 1e-05, "max_tokens": 2048, "stop": None}
    value = {"model": "gpt-4o-mini", "system": text[::-1], "text": text, "images": ["sha256:ab"], "params": params}
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = "v1:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert legacy_request_key("gpt-4o-mini", text[::-1], text, ["sha256:ab"], params) == expected


def test_null_cache() -> None:
    cache = NullCache()
    cache.put("k", {"a": 1})
    assert cache.get("k") is None
    assert not cache.enabled  # the client hashes nothing for a cache that keeps nothing
    cache.flush()
    cache.close()


def _writer(path: str, tag: str, n: int) -> None:
    async def run() -> None:
        cache = ResponseCache(Path(path))
        for i in range(n):
            cache.put(f"{tag}-{i}", {"tag": tag, "i": i})
            cache.put("shared", {"tag": tag})
            if i % 50 == 0:
                cache.get(f"{tag}-0")
                await asyncio.sleep(0)
        cache.close()

    asyncio.run(run())


def test_two_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    ctx = multiprocessing.get_context("spawn")
    n = 1500
    procs = [ctx.Process(target=_writer, args=(str(path), tag, n)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with ResponseCache(path) as cache:
        assert len(cache) == 2 * n + 1
        for tag in ("a", "b"):
            assert cache.get(f"{tag}-{n - 1}") == {"tag": tag, "i": n - 1}
        shared = cache.get("shared")
        assert shared is not None and shared["tag"] in ("a", "b")
        assert cache.applied_migrations() == [name for name, _ in MIGRATIONS]
