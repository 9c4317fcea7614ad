"""Run the fake server: in this loop (``FakeServer``), in a background thread (``serve_in_thread``), and a
client handle (``ServerHandle``) that drives the control API over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from evolve.fakeserver.app import App, Config
from evolve.fakeserver.http import HttpServer

# Never route control calls through a proxy from the environment: the server is on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FakeServer:
    """The app plus its HTTP server, on the running event loop."""

    def __init__(self, config: Config | None = None) -> None:
        self.app = App(config)
        self.http = HttpServer(self.app.handle)
        self.host = "127.0.0.1"
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0, backlog: int = 4096) -> int:
        """Listen (loopback only by default) and return the port."""
        self.host = host
        self.port = await self.http.start(host, port, backlog)
        return self.port

    async def close(self) -> None:
        """Stop listening and drop all connections."""
        await self.http.close()


class ServerHandle:
    """Talks to a running fake server's control API (urllib; works for a server in any process)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    @property
    def root_url(self) -> str:
        """``http://HOST:PORT`` without a path."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url``: ``http://HOST:PORT/v1``."""
        return f"{self.root_url}/v1"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.root_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            exc.close()
            raise RuntimeError(f"fakeserver control {method} {path}: {exc.code} {detail}") from None

    def set_config(self, **values: Any) -> dict[str, Any]:
        """Change settings (latency, reject_ratio, score_min, score_max, text_only, batch_polls, model...)."""
        result: dict[str, Any] = self._call("POST", "/_control/config", values)
        return result

    def config(self) -> dict[str, Any]:
        """The current settings."""
        result: dict[str, Any] = self._call("GET", "/_control/config")
        return result

    def add_faults(self, *faults: dict[str, Any]) -> list[dict[str, Any]]:
        """Queue faults, e.g. ``add_faults({"kind": "429", "count": 2, "retry_after": 0})``."""
        result: list[dict[str, Any]] = self._call("POST", "/_control/faults", {"faults": list(faults)})["faults"]
        return result

    def add_fault(self, kind: str, count: int = 1, match: str | None = None, **extra: Any) -> list[dict[str, Any]]:
        """Queue one fault kind ``count`` times (extra: retry_after, hang_seconds)."""
        return self.add_faults({"kind": kind, "count": count, "match": match, **extra})

    def clear_faults(self) -> None:
        """Drop all queued faults."""
        self._call("DELETE", "/_control/faults")

    def stats(self) -> dict[str, Any]:
        """Counters: total, by_kind, by_status, faults_fired, faults_pending, http_total, files, batches."""
        result: dict[str, Any] = self._call("GET", "/_control/stats")
        return result

    def log(self) -> list[dict[str, Any]]:
        """One entry per chat request: kind, status, sha256, model, has_image, n_items, fault, batch."""
        result: list[dict[str, Any]] = self._call("GET", "/_control/log")["log"]
        return result

    def reset(self) -> None:
        """Back to the start-up config; forget faults, stats, log, files and batches."""
        self._call("POST", "/_control/reset")


class ThreadedServer(ServerHandle):
    """A fake server running on its own event loop in a daemon thread."""

    def __init__(self, config: Config | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.server = FakeServer(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def app(self) -> App:
        """The in-process app (read-only use from tests; mutate through the control API)."""
        return self.server.app

    def start(self) -> ThreadedServer:
        """Start the thread and wait until the port is bound."""
        self._thread = threading.Thread(target=self._run, name="fakeserver", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fakeserver did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"fakeserver failed to start: {self._error!r}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            self.port = await self.server.start(self.host, self.port)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()

    def stop(self) -> None:
        """Stop the server and join the thread."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> ThreadedServer:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_in_thread(config: Config | None = None, host: str = "127.0.0.1", port: int = 0) -> Iterator[ThreadedServer]:
    """Run a fake server in a background thread for the ``with`` block; yields its handle."""
    server = ThreadedServer(config, host, port).start()
    try:
        yield server
    finally:
        server.stop()
