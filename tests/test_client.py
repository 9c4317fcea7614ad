"""The chat client against the project's fake OpenAI-compatible server (real sockets, both transports)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
import pytest
from aiohttp import web
from pydantic import SecretStr, ValidationError

from evolve.cache import NullCache, ResponseCache, legacy_request_key
from evolve.client import ChatClient, ChatRequest, ChatResult
from evolve.endpoint import EndpointSettings
from evolve.errors import (
    AuthenticationError,
    EndpointError,
    EndpointUnreachable,
    ImageInputRejected,
    RequestRejected,
    TransientEndpointError,
    UnreadableAnswer,
    UsageError,
)
from evolve.fakeserver import ThreadedServer
from evolve.images import EncodedImage
from evolve.transport import map_exception, map_status, parse_retry_after, proxy_for

TRANSPORTS = ["aiohttp", "sdk"]
SECRET = "sk-test-Secret0123456789abcdefXYZ"
PIXEL = EncodedImage(
    url="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
    key="sha256:" + "0" * 64,
)


def evolution_prompt(tag: str) -> str:
    """A prompt the fake server answers as an evolution request."""
    item = {
        "question": f"What is in the picture ({tag})?",
        "answer": "A cat on a mat.",
        "objects": ["cat", "mat"],
        "skills": ["object recognition"],
        "steps": [{"manipulation": "none", "description": "look"}],
        "format": "Normal",
        "image_position": "single",
    }
    return f"Rewrite this ({tag}).\n### Given Q&A&S\n```json\n{json.dumps([item])}\n```\nAnswer with a JSON array."


def settings(server: ThreadedServer | None = None, **kw: Any) -> EndpointSettings:
    values: dict[str, Any] = {
        "base_url": server.base_url if server is not None else "http://127.0.0.1:9/v1",
        "model": "fake-mm-1",
        "retry_base_wait": 0.01,
        "retry_max_wait": 0.05,
        "timeout": 10.0,
    }
    values.update(kw)
    return EndpointSettings(**values)


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


async def chat_once(s: EndpointSettings, request: ChatRequest, cache: Any = None) -> tuple[ChatResult, ChatClient]:
    async with ChatClient(s, cache or NullCache()) as client:
        return await client.chat(request), client


async def chat_error(s: EndpointSettings, request: ChatRequest) -> tuple[EndpointError, ChatClient]:
    async with ChatClient(s, NullCache()) as client:
        with pytest.raises(EndpointError) as info:
            await client.chat(request)
        return info.value, client


# request shape -------------------------------------------------------------------------------------
def test_messages_text_only_and_with_images() -> None:
    plain = ChatRequest(system="sys", text="hi").messages()
    assert plain == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    assert ChatRequest(system=None, text="hi").messages() == [{"role": "user", "content": "hi"}]
    img = EncodedImage(url="https://x/a.jpg", key="url:https://x/a.jpg")
    msgs = ChatRequest(system=None, text="what?", images=[img, PIXEL]).messages()
    assert msgs == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x/a.jpg", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": PIXEL.url, "detail": "low"}},
                {"type": "text", "text": "what?"},
            ],
        }
    ]


# settings ------------------------------------------------------------------------------------------
def test_settings_from_environment_and_secret_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1234/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    s = EndpointSettings()
    assert s.base_url == "http://127.0.0.1:1234/v1"
    assert s.key_value() == SECRET
    assert SECRET not in repr(s) and SECRET not in str(s)
    assert "api_key" not in s.model_dump() and SECRET not in s.model_dump_json()
    assert SECRET not in repr(ChatClient(s, NullCache()))
    with pytest.raises(ValidationError):
        EndpointSettings(colour="red")  # type: ignore[call-arg]


def test_missing_key_for_openai_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no API key"):
        ChatClient(EndpointSettings(base_url="https://api.openai.com/v1", api_key=None), NullCache())
    ChatClient(EndpointSettings(base_url="http://127.0.0.1:8000/v1", api_key=None), NullCache())  # local: fine


# happy path ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_happy_path(server: ThreadedServer, transport: str) -> None:
    result, client = run(chat_once(settings(server, transport=transport), ChatRequest("sys", evolution_prompt("a"))))
    assert not result.cached and result.key == ""  # --no-cache: nothing is hashed
    assert result.text.startswith("```json") and "question" in result.text
    assert result.prompt_tokens > 0 and result.completion_tokens > 0 and result.finish_reason == "stop"
    assert client.usage.requests == 1 and client.usage.prompt_tokens == result.prompt_tokens
    stats = server.stats()
    assert stats["total"] == 1 and stats["by_kind"]["evolve"] == 1
    entry = server.log()[0]
    assert entry["model"] == "fake-mm-1" and entry["has_image"] is False


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_image_parts_are_sent(server: ThreadedServer, transport: str) -> None:
    request = ChatRequest("sys", evolution_prompt("img"), [PIXEL])
    run(chat_once(settings(server, transport=transport), request))
    assert [e["has_image"] for e in server.log()] == [True]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_probe_passes_a_live_endpoint_and_stops_an_unreachable_one(server: ThreadedServer, transport: str) -> None:
    async def probe(s: EndpointSettings) -> None:
        async with ChatClient(s, NullCache()) as client:
            await client.probe()

    run(probe(settings(server, transport=transport)))
    assert server.stats()["http_total"] >= 1 and server.stats()["total"] == 0  # GET /models, no chat call
    started = time.monotonic()
    with pytest.raises(EndpointUnreachable, match=r"cannot reach http://127\.0\.0\.1:9/v1"):
        run(probe(settings(transport=transport)))  # port 9: nothing listens
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_response_format_json_is_sent(server: ThreadedServer, transport: str) -> None:
    result, _ = run(chat_once(settings(server, transport=transport, response_format_json=True), ChatRequest(None, "x")))
    assert result.text and server.stats()["total"] == 1


# cache ---------------------------------------------------------------------------------------------
def test_cache_hit_makes_no_request(server: ThreadedServer, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    request = ChatRequest("sys", evolution_prompt("cached"), [PIXEL])

    async def main() -> tuple[ChatResult, ChatResult, ChatClient]:
        with ResponseCache(path) as cache:
            async with ChatClient(settings(server), cache) as client:
                first = await client.chat(request)
                second = await client.chat(request)
                return first, second, client

    first, second, client = run(main())
    assert not first.cached and second.cached
    assert (second.text, second.key, second.prompt_tokens) == (first.text, first.key, first.prompt_tokens)
    assert client.usage.cache_hits == 1 and client.usage.requests == 1
    assert server.stats()["total"] == 1

    # another client (another run) with the same cache file: still no request
    with ResponseCache(path) as cache:
        third, again = run(chat_once(settings(server, transport="sdk"), request, cache))
    assert third.cached and third.text == first.text and again.usage.requests == 0
    assert server.stats()["total"] == 1

    # other params are another key
    with ResponseCache(path) as cache:
        fourth, _ = run(chat_once(settings(server, temperature=0.2), request, cache))
    assert not fourth.cached and server.stats()["total"] == 2


def test_empty_answer_is_not_cached(server: ThreadedServer, tmp_path: Path) -> None:
    server.add_fault("empty")
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        result, _ = run(chat_once(settings(server), ChatRequest(None, "hello"), cache))
        assert result.text == "" and cache.get(result.key) is None


# faults --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", ["429", "500", "503", "reset"])
def test_transient_faults_are_retried(server: ThreadedServer, transport: str, kind: str) -> None:
    server.add_faults({"kind": kind, "count": 2, "retry_after": 0})
    result, client = run(chat_once(settings(server, transport=transport), ChatRequest(None, evolution_prompt(kind))))
    assert "question" in result.text
    assert client.usage.retries == 2 and client.usage.requests == 3
    assert server.stats()["faults_fired"] == {kind: 2}
    if kind == "429":
        assert client.usage.rate_limited == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", ["429", "500", "503", "reset"])
def test_transient_faults_give_up_after_max_retries(server: ThreadedServer, transport: str, kind: str) -> None:
    server.add_faults({"kind": kind, "count": 10, "retry_after": 0})
    error, client = run(chat_error(settings(server, transport=transport, max_retries=2), ChatRequest(None, "q")))
    assert isinstance(error, TransientEndpointError)
    assert client.usage.requests == 3 and sum(client.usage.failures.values()) == 1
    if kind in ("429", "500", "503"):
        assert error.status == int(kind) and kind in str(error)
    assert server.stats()["faults_fired"] == {kind: 3}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_200_that_is_not_json_is_one_unreadable_answer(server: ThreadedServer, transport: str) -> None:
    """It may be billed: asking again could bill it again, so it is counted once and not retried."""
    server.add_faults({"kind": "garbage_body", "count": 5})
    error, client = run(chat_error(settings(server, transport=transport), ChatRequest(None, "q")))
    assert isinstance(error, UnreadableAnswer) and "not JSON" in str(error)
    assert client.usage.requests == 1 and client.usage.retries == 0 and server.stats()["total"] == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("kind", "error_type"),
    [("400", RequestRejected), ("404", RequestRejected), ("401", AuthenticationError)],
)
def test_permanent_faults_are_not_retried(
    server: ThreadedServer, transport: str, kind: str, error_type: type[EndpointError]
) -> None:
    server.add_faults({"kind": kind, "count": 5})
    error, client = run(chat_error(settings(server, transport=transport), ChatRequest(None, "q")))
    assert type(error) is error_type and error.status == int(kind)
    assert client.usage.requests == 1 and client.usage.retries == 0
    assert server.stats()["total"] == 1
    if kind == "401":
        assert str(error) == "endpoint refused the API key (401): check OPENAI_API_KEY or --api-key"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_text_only_server_rejects_images(server: ThreadedServer, transport: str) -> None:
    server.set_config(text_only=True)
    s = settings(server, transport=transport)
    error, client = run(chat_error(s, ChatRequest(None, "q", [PIXEL])))
    assert isinstance(error, ImageInputRejected) and "--images skip" in str(error)
    assert client.usage.requests == 1
    result, _ = run(chat_once(s, ChatRequest(None, "q")))  # text alone works
    assert result.text


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("kind", "finish"), [("malformed", "stop"), ("truncated", "length")])
def test_bad_answers_come_back_as_text(server: ThreadedServer, transport: str, kind: str, finish: str) -> None:
    server.add_fault(kind)
    result, client = run(chat_once(settings(server, transport=transport), ChatRequest(None, evolution_prompt(kind))))
    assert result.finish_reason == finish and client.usage.retries == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hang_times_out_then_retries(server: ThreadedServer, transport: str) -> None:
    server.add_faults({"kind": "hang", "count": 1, "hang_seconds": 5})
    t0 = time.monotonic()
    result, client = run(chat_once(settings(server, transport=transport, timeout=0.3), ChatRequest(None, "q")))
    assert result.text and client.usage.retries == 1
    assert 0.25 < time.monotonic() - t0 < 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hang_gives_timeout_error(server: ThreadedServer, transport: str) -> None:
    server.add_faults({"kind": "hang", "count": 5, "hang_seconds": 5})
    s = settings(server, transport=transport, timeout=0.2, max_retries=1)
    error, client = run(chat_error(s, ChatRequest(None, "q")))
    assert isinstance(error, TransientEndpointError) and "timed out" in str(error)
    assert client.usage.failures == {"timeout": 1}


def test_connection_refused_is_transient() -> None:
    error, client = run(chat_error(settings(None, max_retries=1), ChatRequest(None, "q")))
    assert isinstance(error, TransientEndpointError) and "connection" in str(error)
    assert client.usage.requests == 2


# 429 cool-down and rate limits ---------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_429_retry_after_opens_a_shared_cool_down(server: ThreadedServer, transport: str) -> None:
    server.set_config(latency=0.02)
    server.add_faults({"kind": "429", "count": 1, "match": "first-call", "retry_after": 1.0})
    s = settings(server, transport=transport, concurrency=16)

    async def main() -> tuple[list[float], int, ChatClient]:
        async with ChatClient(s, NullCache()) as client:
            t0 = time.monotonic()

            async def call(text: str) -> float:
                await client.chat(ChatRequest(None, text))
                return time.monotonic() - t0

            first = asyncio.create_task(call("first-call"))
            await asyncio.sleep(0.25)  # the 429 has come back: the cool-down is open
            others = [asyncio.create_task(call(f"other-{i}")) for i in range(6)]
            await asyncio.sleep(0.4)
            during = (await asyncio.to_thread(server.stats))["total"]
            done = await asyncio.gather(first, *others)
            return done, during, client

    done, during, client = run(main())
    assert during == 1  # nobody sent anything while the cool-down lasted
    assert min(done) >= 0.95  # Retry-After: 1 was honoured by every call, not only the one that got 429
    assert server.stats()["total"] == 8 and client.usage.rate_limited == 1


def test_many_concurrent_429s_all_wait(server: ThreadedServer) -> None:
    server.add_faults({"kind": "429", "count": 8, "retry_after": 0.5})

    async def main() -> tuple[float, ChatClient]:
        async with ChatClient(settings(server), NullCache()) as client:
            t0 = time.monotonic()
            await asyncio.gather(*(client.chat(ChatRequest(None, f"q{i}")) for i in range(8)))
            return time.monotonic() - t0, client

    elapsed, client = run(main())
    assert 0.45 <= elapsed < 3
    assert client.usage.rate_limited == 8 and server.stats()["total"] == 16


def _timed_calls(s: EndpointSettings, n: int, text: str) -> float:
    async def main() -> float:
        async with ChatClient(s, NullCache()) as client:
            t0 = time.monotonic()
            await asyncio.gather(*(client.chat(ChatRequest(None, f"{i} {text}")) for i in range(n)))
            return time.monotonic() - t0

    result: float = asyncio.run(main())
    return result


def test_rpm_limiter(server: ThreadedServer) -> None:
    # 5 per second: a burst of 5, then one every 0.2 s
    assert _timed_calls(settings(server, rpm=5, rate_period=1.0), 10, "q") >= 0.75
    assert _timed_calls(settings(server), 10, "q") < 0.5
    assert server.stats()["total"] == 20


def test_tpm_limiter(server: ThreadedServer) -> None:
    # ~100 tokens per call against 400 tokens per second
    assert _timed_calls(settings(server, tpm=400, rate_period=1.0), 8, "x" * 400) >= 0.75


def test_concurrency_limit(server: ThreadedServer) -> None:
    server.set_config(latency=0.1)
    elapsed = _timed_calls(settings(server, concurrency=2), 6, "q")
    assert elapsed >= 0.29


# the API key never leaks ---------------------------------------------------------------------------
@asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[str, list[str | None]]]:
    """A server that echoes the Authorization header in its error messages (as some do)."""
    seen: list[str | None] = []

    async def chat(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        seen.append(auth)
        message = f"Incorrect API key provided: {auth}. Body had image: {'image_url' in await request.text()}"
        status = 500 if "image_url" in await request.text() else 400
        return web.json_response({"error": {"message": message}}, status=status)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_key_never_in_errors_even_when_echoed(transport: str) -> None:
    async def main() -> tuple[list[EndpointError], list[str | None]]:
        errors: list[EndpointError] = []
        async with echo_server() as (url, seen):
            s = EndpointSettings(base_url=url, api_key=SecretStr(SECRET), transport=transport, max_retries=0)  # type: ignore[arg-type]
            async with ChatClient(s, NullCache()) as client:
                for images in ([], [PIXEL]):
                    with pytest.raises(EndpointError) as info:
                        await client.chat(ChatRequest(None, "q", images))
                    errors.append(info.value)
        return errors, seen

    errors, seen = run(main())
    assert seen == [f"Bearer {SECRET}"] * 2  # the key was sent...
    assert isinstance(errors[0], RequestRejected) and isinstance(errors[1], ImageInputRejected)
    for error in errors:  # ...and never comes back in a message
        assert SECRET not in str(error) and SECRET not in repr(error) and "***" in str(error)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_key_absent_from_faults_cache_and_logs(
    server: ThreadedServer, transport: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    path = tmp_path / "c.sqlite"
    server.add_faults(
        {"kind": "401", "count": 1, "match": "a401"}, {"kind": "429", "count": 5, "match": "b429", "retry_after": 0}
    )
    server.add_faults({"kind": "hang", "count": 5, "match": "chang", "hang_seconds": 5})
    s = settings(server, transport=transport, api_key=SECRET, max_retries=1, timeout=0.2)
    texts: list[str] = []

    async def main() -> None:
        with ResponseCache(path) as cache:
            async with ChatClient(s, cache) as client:
                await client.chat(ChatRequest("sys", "fine"))
                for text in ("a401", "b429", "chang"):
                    with pytest.raises(EndpointError) as info:
                        await client.chat(ChatRequest(None, text))
                    texts.extend([str(info.value), repr(info.value), str(info.value.__cause__)])

    run(main())
    assert SECRET not in "\n".join(texts)
    assert SECRET not in caplog.text
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("c.sqlite*"))
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 1
    db.close()


def test_no_key_sends_no_authorization() -> None:
    async def main() -> list[str | None]:
        async with echo_server() as (url, seen):
            s = EndpointSettings(base_url=url, api_key=None, max_retries=0)
            async with ChatClient(s, NullCache()) as client:
                with pytest.raises(RequestRejected):
                    await client.chat(ChatRequest(None, "q"))
        return seen

    assert run(main()) == [None]


# the mapping covers what the transports raise ------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "has_images", "message", "expected"),
    [
        (401, False, "bad key", AuthenticationError),
        (403, True, "forbidden image", AuthenticationError),
        (400, False, "bad request", RequestRejected),
        (404, False, "model not found", RequestRejected),
        (413, False, "too large", RequestRejected),
        (422, False, "unprocessable", RequestRejected),
        (400, True, "Invalid content type. image_url is only supported by certain models.", ImageInputRejected),
        (400, True, "this model does not support vision", ImageInputRejected),
        (415, True, "unsupported content-type of parts", ImageInputRejected),
        (422, True, "multimodal input not enabled", ImageInputRejected),
        (500, True, "image input is not supported (no mmproj)", ImageInputRejected),
        (500, False, "image input is not supported", TransientEndpointError),
        (500, True, "internal error", TransientEndpointError),
        (400, True, "bad request", RequestRejected),
        (408, False, "request timeout", TransientEndpointError),
        (409, False, "conflict", TransientEndpointError),
        (429, True, "slow down", TransientEndpointError),
        (502, False, "bad gateway", TransientEndpointError),
        (503, True, "overloaded", TransientEndpointError),
        (504, False, "gateway timeout", TransientEndpointError),
    ],
)
def test_map_status(status: int, has_images: bool, message: str, expected: type[EndpointError]) -> None:
    error = map_status(status, message, has_images=has_images, retry_after=2.0)
    assert type(error) is expected and error.status == status
    if expected is TransientEndpointError:
        assert isinstance(error, TransientEndpointError) and error.retry_after == 2.0


def _httpx_response(status: int, headers: dict[str, str] | None = None) -> httpx2.Response:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    body = {"error": {"message": f"status {status}", "type": "x"}}
    return httpx2.Response(status, json=body, headers=headers or {}, request=request)


def _aiohttp_connector_error() -> aiohttp.ClientConnectorError:
    from aiohttp.client_reqrep import ConnectionKey

    key = ConnectionKey("127.0.0.1", 9, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


_REQ = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
EXCEPTIONS: list[tuple[str, Callable[[], BaseException], type[EndpointError], str | None]] = [
    ("asyncio.TimeoutError", lambda: TimeoutError(), TransientEndpointError, "timeout"),
    ("aiohttp.ServerTimeoutError", lambda: aiohttp.ServerTimeoutError("read"), TransientEndpointError, "timeout"),
    ("aiohttp.ConnectionTimeoutError", lambda: aiohttp.ConnectionTimeoutError(), TransientEndpointError, "timeout"),
    ("aiohttp.SocketTimeoutError", lambda: aiohttp.SocketTimeoutError(), TransientEndpointError, "timeout"),
    ("aiohttp.ServerDisconnectedError", lambda: aiohttp.ServerDisconnectedError(), TransientEndpointError, None),
    ("aiohttp.ClientOSError", lambda: aiohttp.ClientOSError(104, "reset"), TransientEndpointError, None),
    ("aiohttp.ClientConnectionResetError", lambda: aiohttp.ClientConnectionResetError(), TransientEndpointError, None),
    ("aiohttp.ClientConnectorError", _aiohttp_connector_error, TransientEndpointError, None),
    ("aiohttp.ClientPayloadError", lambda: aiohttp.ClientPayloadError("cut"), TransientEndpointError, None),
    ("aiohttp.ClientConnectionError", lambda: aiohttp.ClientConnectionError(), TransientEndpointError, None),
    ("aiohttp.InvalidURL", lambda: aiohttp.InvalidURL("::bad"), RequestRejected, None),
    ("ConnectionResetError", lambda: ConnectionResetError(104, "reset"), TransientEndpointError, None),
    ("json.JSONDecodeError", lambda: json.JSONDecodeError("x", "<html>", 0), TransientEndpointError, None),
    ("openai.APITimeoutError", lambda: openai.APITimeoutError(_REQ), TransientEndpointError, "timeout"),
    ("openai.APIConnectionError", lambda: openai.APIConnectionError(request=_REQ), TransientEndpointError, None),
    (
        "openai.APIResponseValidationError",
        lambda: openai.APIResponseValidationError(_httpx_response(200), None),
        UnreadableAnswer,
        "bad_body",
    ),
]
for _status, _cls, _expected in [
    (400, openai.BadRequestError, RequestRejected),
    (401, openai.AuthenticationError, AuthenticationError),
    (403, openai.PermissionDeniedError, AuthenticationError),
    (404, openai.NotFoundError, RequestRejected),
    (409, openai.ConflictError, TransientEndpointError),
    (422, openai.UnprocessableEntityError, RequestRejected),
    (429, openai.RateLimitError, TransientEndpointError),
    (500, openai.InternalServerError, TransientEndpointError),
    (503, openai.InternalServerError, TransientEndpointError),
]:
    EXCEPTIONS.append(
        (
            f"openai.{_cls.__name__}({_status})",
            lambda s=_status, c=_cls: c(  # type: ignore[misc]
                f"status {s}", response=_httpx_response(s, {"retry-after": "3"}), body={"message": f"status {s}"}
            ),
            _expected,
            None,
        )
    )


@pytest.mark.parametrize(("name", "make", "expected", "reason"), EXCEPTIONS, ids=[e[0] for e in EXCEPTIONS])
def test_map_exception(
    name: str, make: Callable[[], BaseException], expected: type[EndpointError], reason: str | None
) -> None:
    error = map_exception(make(), timeout=5.0)
    assert type(error) is expected, name
    if reason == "timeout":
        assert "timed out after 5 s" in str(error)
    if isinstance(error, TransientEndpointError) and error.status is not None:
        assert error.retry_after == 3.0


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None and parse_retry_after("nan") is None and parse_retry_after("inf") is None
    assert parse_retry_after("99999") == 600.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_proxy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert proxy_for("https://api.openai.com/v1") == "http://proxy.invalid:3128"
    assert proxy_for("http://127.0.0.1:8000/v1") is None
    assert proxy_for("http://gpu-box:8000/v1") is None  # no HTTP_PROXY set


# reliability II -------------------------------------------------------------------------------------
def test_an_insane_retry_after_falls_back_to_backoff(server: ThreadedServer) -> None:
    """Retry-After: -5 (and retry-after-ms: -5000) must not send every attempt at once."""
    server.add_faults({"kind": "429", "count": 3, "retry_after": -5})
    started = time.monotonic()
    result, client = run(chat_once(settings(server, retry_base_wait=0.1, retry_max_wait=1.0), ChatRequest(None, "q")))
    assert result.text and client.usage.retries == 3
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.2 - 0.01  # at least the jittered backoff of 3 retries


def test_a_cache_written_with_old_keys_is_still_used(server: ThreadedServer, tmp_path: Path) -> None:
    """v1 keys knew neither the endpoint nor the round: they answer round 1's first attempt, nothing else."""
    s = settings(server)
    request = ChatRequest("sys", evolution_prompt("old"), [PIXEL], prefix="fixed part ", round=1)
    params = {"temperature": s.temperature, "max_tokens": s.max_tokens, "response_format": None}
    old_key = legacy_request_key(s.model, "sys", "fixed part " + request.text, [PIXEL.key], params)
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        cache.put(old_key, {"text": "from the old cache", "prompt_tokens": 1, "completion_tokens": 1})

    async def ask(req: ChatRequest) -> ChatResult:
        with ResponseCache(tmp_path / "cache.sqlite") as cache:
            async with ChatClient(s, cache) as client:
                return await client.chat(req)

    hit = run(ask(request))
    assert hit.cached and hit.text == "from the old cache" and server.stats()["total"] == 0
    later = run(ask(ChatRequest("sys", request.text, [PIXEL], prefix="fixed part ", round=2)))
    assert not later.cached and later.text != "from the old cache" and server.stats()["total"] == 1
