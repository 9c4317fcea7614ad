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


# ==== Hugging Face `datasets`, offline (owner: tests/test_sources, tests/test_export) ==================


@pytest.fixture
def hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    """The `datasets` library, offline, its caches in tmp_path, without progress bars."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    return datasets


# ==== end of datasets block ===========================================================================


# ==== a finished demo run with drops (owner: tests/test_report, tests/test_show) ======================


@pytest.fixture(scope="session")
def demo_run(fake_server: ThreadedServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-round run of the 10 demo seeds (with their images) whose judge rejects 40% of the rewrites."""
    from typer.testing import CliRunner

    from evolve.cli import app

    seeds = Path(__file__).resolve().parents[1] / "seeds"
    out = tmp_path_factory.mktemp("demo-run") / "run"
    fake_server.reset()
    fake_server.set_config(reject_ratio=0.4)
    flags = ["--rounds", "3", "--seed", "3", "--base-url", fake_server.base_url, "--api-key", "k", "--quiet"]
    result = CliRunner().invoke(app, ["run", str(seeds), "--out", str(out), *flags])
    fake_server.reset()
    assert result.exit_code == 0, result.output
    return out


# ==== end of demo run block ===========================================================================
