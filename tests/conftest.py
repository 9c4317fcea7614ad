"""Shared pytest fixtures. Each block is owned by one part of the suite; keep blocks self-contained."""

from __future__ import annotations

# ==== fake OpenAI-compatible server + clean environment (owner: tests/fakeserver) ====================
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from evolve.fakeserver import ThreadedServer, serve_in_thread

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(scope="session")
def fake_server() -> Iterator[ThreadedServer]:
    """One fake OpenAI-compatible server for the whole session, on a free 127.0.0.1 port."""
    with serve_in_thread() as server:
        yield server


@pytest.fixture
def server(fake_server: ThreadedServer) -> Iterator[ThreadedServer]:
    """The session's fake server, reset (config, faults, stats, log, files, batches) before and after."""
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No OPENAI_* or proxy variables; HOME and the XDG dirs point into tmp_path. Returns the fake HOME."""
    for name in list(os.environ):
        if name.startswith("OPENAI_") or name in _PROXY_VARS:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    home = tmp_path / "home"
    for var, sub in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_STATE_HOME", ".local/state"),
    ):
        (home / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("HOME", str(home))
    return home


# ==== end of fake server block ========================================================================
