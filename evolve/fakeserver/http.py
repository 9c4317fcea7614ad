"""A small, fast HTTP/1.1 server on asyncio.Protocol: keep-alive, Content-Length and chunked bodies.

The application is a callable ``handler(request) -> Reply`` that never blocks. A reply may ask for a
delay (sent later with ``loop.call_later``), or for the connection to be reset without an answer.
Requests on one connection are answered in order (pipelined requests wait for the previous reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 512 * 1024 * 1024

REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 413: "Payload Too Large", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
}  # fmt: skip


@dataclass
class Request:
    """One parsed HTTP request."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    path: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        self.path = unquote(parts.path)
        self.query = parse_qs(parts.query)

    def json(self) -> Any:
        """The body decoded as JSON (raises ValueError if it is not)."""
        return orjson.loads(self.body)


@dataclass
class Reply:
    """What to do with a request: send a response (maybe after ``delay`` seconds) or reset the connection."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0
    reset: bool = False


def json_reply(value: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Reply:
    """A JSON response."""
    body = orjson.dumps(value)
    return Reply(status=status, body=body, headers=headers or [])


Handler = Callable[[Request], Reply]


class _IncompleteError(Exception):
    """More bytes are needed."""


class _BadRequestError(Exception):
    """The bytes are not valid HTTP."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _parse_chunked(buf: bytearray, start: int) -> tuple[bytes, int]:
    """Decode a chunked body starting at ``start``; return (body, end offset) or raise _IncompleteError."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            raise _IncompleteError
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise _BadRequestError(400, "bad chunk size") from exc
        pos = eol + 2
        if size == 0:
            # trailers until an empty line
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    raise _IncompleteError
                if eol == pos:
                    return bytes(out), eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            raise _IncompleteError
        out += buf[pos : pos + size]
        if len(out) > MAX_BODY_BYTES:
            raise _BadRequestError(413, "body too large")
        pos += size + 2


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.sent_continue = False

    # asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._process()

    # parsing -----------------------------------------------------------------------------------
    def _process(self) -> None:
        while self.buf and not self.busy and not self.closed:
            try:
                parsed = self._parse_one()
            except _BadRequestError as exc:
                self._write(Reply(exc.status, json.dumps({"error": {"message": str(exc)}}).encode()), False)
                self._close()
                return
            if parsed is None:
                return
            request, keep_alive = parsed
            try:
                reply = self.server.handler(request)
            except Exception as exc:  # a bug in the app: answer 500, keep serving
                reply = json_reply({"error": {"message": f"fakeserver internal error: {exc!r}"}}, 500)
            self._dispatch(reply, keep_alive)

    def _parse_one(self) -> tuple[Request, bool] | None:
        buf = self.buf
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise _BadRequestError(431, "headers too large")
            return None
        lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError as exc:
            raise _BadRequestError(400, "bad request line") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequestError(400, "bad header line")
            headers[name.strip().lower()] = value.strip()
        body_start = head_end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._maybe_continue(headers)
            try:
                body, end = _parse_chunked(buf, body_start)
            except _IncompleteError:
                return None
        else:
            try:
                length = int(headers.get("content-length", "0") or "0")
            except ValueError as exc:
                raise _BadRequestError(400, "bad content-length") from exc
            if length < 0 or length > MAX_BODY_BYTES:
                raise _BadRequestError(413, "body too large")
            end = body_start + length
            if len(buf) < end:
                self._maybe_continue(headers)
                return None
            body = bytes(buf[body_start:end])
        del buf[:end]
        self.sent_continue = False
        connection = headers.get("connection", "").lower()
        keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        return Request(method.upper(), target, headers, body), keep_alive

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        if not self.sent_continue and headers.get("expect", "").lower() == "100-continue":
            self.sent_continue = True
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # answering ---------------------------------------------------------------------------------
    def _dispatch(self, reply: Reply, keep_alive: bool) -> None:
        if reply.delay > 0 or reply.reset:
            self.busy = True
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(max(reply.delay, 0.0), self._finish, reply, keep_alive)
        else:
            self._write(reply, keep_alive)
            if not keep_alive:
                self._close()

    def _finish(self, reply: Reply, keep_alive: bool) -> None:
        self.timer = None
        self.busy = False
        if self.closed:
            return
        if reply.reset:
            self._reset()
            return
        self._write(reply, keep_alive)
        if not keep_alive:
            self._close()
            return
        if self.buf:
            self._process()

    def _write(self, reply: Reply, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = [
            f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Unknown')}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
            "Connection: keep-alive" if keep_alive else "Connection: close",
        ]
        head += [f"{k}: {v}" for k, v in reply.headers]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), dropping whatever is pending."""
        self.closed = True
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


class HttpServer:
    """An asyncio HTTP/1.1 server bound to one host and port."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: set[HttpProtocol] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0, backlog: int = 4096) -> int:
        """Listen and return the bound port."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: HttpProtocol(self), host, port, backlog=backlog, reuse_address=True
        )
        sock = self.server.sockets[0]
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
            if conn.transport is not None:
                conn.transport.abort()
        self.connections.clear()
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None
        await asyncio.sleep(0)
