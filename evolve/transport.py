"""How a chat request gets its answer live: HTTP to any OpenAI-compatible endpoint, with limits and retries.

Two ways give the same results and errors: "aiohttp" (the default; one keep-alive session and almost no per-call
CPU) and "sdk" (the `openai` package's AsyncOpenAI over aiohttp). Every failure is mapped here to
`evolve.errors`; the API key never appears in an error, a log line or a repr. Retries (429, 5xx, timeouts,
resets) back off exponentially with jitter; a 429 pauses every call together for its Retry-After; a breaker stops
the run after `breaker` connection failures in a row. Every retry, pause and 5xx is logged (evolve.log).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from evolve.endpoint import EndpointSettings
from evolve.errors import (
    AuthenticationError,
    EndpointError,
    EndpointUnreachable,
    ImageInputRejected,
    RequestRejected,
    TransientEndpointError,
    UnreadableAnswer,
)

if TYPE_CHECKING:
    from evolve.client import ChatRequest

log = logging.getLogger("evolve.transport")

MAX_RETRY_AFTER = 600.0
"""A server's Retry-After is honoured up to this many seconds."""
IMAGE_TOKENS_LOW = 85
"""Tokens of one low-detail image on the gpt-4o family, the unit of the --tpm estimate."""
_IMAGE_HINT = re.compile(
    r"image|vision|multi-?modal|modalit|content[ _-]?type|content part|image_url|projector|mmproj"
    r'|\(not "list"\)',  # a text-only chat template given a list of content parts (llama.cpp server)
    re.I,
)
_IMAGE_STATUSES = frozenset({400, 415, 422, 500})
_TRANSIENT_4XX = frozenset({408, 409, 425, 429})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Answer:
    """What an endpoint answered: the text (or the model's refusal), token counts and why it stopped."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens the provider served from its prefix cache (usage.prompt_tokens_details.cached_tokens)."""
    finish_reason: str | None = None
    refusal: str | None = None


@dataclass(slots=True)
class ClientUsage:
    """Counters of one client."""

    requests: int = 0
    """HTTP requests sent (every attempt counts)."""
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    retries: int = 0
    rate_limited: int = 0
    """429 answers received."""
    failures: Counter[str] = field(default_factory=Counter)
    """Calls that finally failed, by reason ("401", "429", "500", "timeout", "connection", "bad_body"...)."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "failures": dict(self.failures),
        }


# error mapping -------------------------------------------------------------------------------------
def _seconds(value: float) -> float | None:
    """A sane wait from a number a server sent: None for negative, NaN or infinite values."""
    if math.isnan(value) or math.isinf(value) or value < 0:
        return None
    return min(value, MAX_RETRY_AFTER)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (seconds or an HTTP date), or None if absent or not sane."""
    if not value:
        return None
    value = value.strip()
    try:
        return _seconds(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return _seconds(max(0.0, when.timestamp() - (time.time() if now is None else now)))


def retry_after_from_headers(headers: Any) -> float | None:
    """Retry-After from response headers; a sane `retry-after-ms` (OpenAI's, more precise) wins."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            found = _seconds(float(ms) / 1000.0)
        except ValueError:
            found = None
        if found is not None:
            return found
    return parse_retry_after(headers.get("retry-after"))


def error_message_of(body: Any) -> str:
    """The human part of an error body (`{"error": {"message": ...}}` or text), on one short line."""
    message: Any = body
    if isinstance(body, (bytes, bytearray)):
        try:
            message = orjson.loads(bytes(body))
        except ValueError:
            message = bytes(body).decode("utf-8", "replace")
    if isinstance(message, dict):
        inner = message.get("error", message)
        if isinstance(inner, dict):
            message = inner.get("message") or inner.get("detail") or json.dumps(inner)[:300]
        else:
            message = inner if isinstance(inner, str) else message.get("message") or message.get("detail")
    text = " ".join(str(message or "").split())
    return text[:300] + ("…" if len(text) > 300 else "")


def map_status(status: int, message: str, *, has_images: bool, retry_after: float | None = None) -> EndpointError:
    """The evolve error for an HTTP error status (the caller raises it `from` the transport's error)."""
    detail = f": {message}" if message else ""
    if status in (401, 403):
        return AuthenticationError(
            f"endpoint refused the API key ({status}): check OPENAI_API_KEY or --api-key", status=status
        )
    if has_images and status in _IMAGE_STATUSES and _IMAGE_HINT.search(message or ""):
        return ImageInputRejected(
            f"endpoint rejected image input ({status}{detail}); use --images skip for text-only models",
            status=status,
        )
    if status == 429:
        return TransientEndpointError(f"rate limited (429){detail}", status=429, retry_after=retry_after)
    if status >= 500 or status in _TRANSIENT_4XX:
        return TransientEndpointError(f"endpoint error ({status}){detail}", status=status, retry_after=retry_after)
    return RequestRejected(f"endpoint rejected the request ({status}){detail}", status=status)


def map_exception(exc: BaseException, *, has_images: bool = False, timeout: float | None = None) -> EndpointError:
    """The evolve error for an exception raised by aiohttp, asyncio or the openai SDK."""
    if isinstance(exc, EndpointError):
        return exc
    if type(exc).__module__.startswith("openai"):
        return _map_sdk_exception(exc, has_images=has_images, timeout=timeout)
    if isinstance(exc, aiohttp.InvalidURL):
        return RequestRejected(f"invalid endpoint URL: {exc}")
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return _timeout_error(timeout)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransientEndpointError(f"endpoint answer was cut off: {_describe(exc)}")
    if isinstance(exc, (aiohttp.ClientConnectorError, ConnectionRefusedError)):
        return TransientEndpointError(f"connection to the endpoint failed: {_describe(exc)}", connection=True)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return TransientEndpointError(f"connection to the endpoint failed: {_describe(exc)}")
    return TransientEndpointError(f"endpoint call failed: {_describe(exc)}")


def _map_sdk_exception(exc: BaseException, *, has_images: bool, timeout: float | None) -> EndpointError:
    import openai

    if isinstance(exc, openai.APIStatusError):
        response = exc.response
        body = exc.body if exc.body is not None else response.content
        message = error_message_of(body) or exc.message
        return map_status(
            exc.status_code,
            message,
            has_images=has_images,
            retry_after=retry_after_from_headers(response.headers),
        )
    if isinstance(exc, openai.APITimeoutError):
        return _timeout_error(timeout)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        refused = (
            isinstance(cause, (aiohttp.ClientConnectorError, ConnectionRefusedError))
            or "connect" in str(cause or "").lower()
        )
        return TransientEndpointError(f"connection to the endpoint failed: {_describe(exc)}", connection=refused)
    if isinstance(exc, openai.APIResponseValidationError):
        return UnreadableAnswer("endpoint sent an answer that is not a chat completion")
    return TransientEndpointError(f"endpoint call failed: {_describe(exc)}")


def _timeout_error(timeout: float | None) -> TransientEndpointError:
    after = f" after {timeout:g} s" if timeout else ""
    return TransientEndpointError(f"endpoint timed out{after}")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return type(exc).__name__ + (f" ({text[:200]})" if text else "")


def failure_label(exc: BaseException) -> str:
    """A short label of a failed call for usage accounting ("429", "timeout", "connection", ...)."""
    if isinstance(exc, EndpointError) and exc.status is not None:
        return str(exc.status)
    text = str(exc)
    if "timed out" in text:
        return "timeout"
    if isinstance(exc, UnreadableAnswer) or "cut off" in text:
        return "bad_body"
    if "connection" in text:
        return "connection"
    return type(exc).__name__


def proxy_for(url: str) -> str | None:
    """The proxy the environment (HTTP(S)_PROXY, NO_PROXY) sets for `url`, or None."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def answer_fields(payload: Any) -> Answer:
    """The Answer in a chat completion body; raises UnreadableAnswer for a body that is not one."""
    try:
        choice = payload["choices"][0]
        message = choice["message"]
        text = message.get("content") or ""
        refusal = message.get("refusal") or None
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise UnreadableAnswer(
            f"endpoint sent an answer that is not a chat completion: {error_message_of(payload)[:120]}"
        ) from None
    usage = payload.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Answer(
        text=str(text),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(cached or 0),
        finish_reason=finish,
        refusal=None if refusal is None else str(refusal),
    )


# the live transport --------------------------------------------------------------------------------
class LiveTransport:
    """Chat completions over HTTP with a concurrency limit, rpm/tpm limits, retries, a shared 429 cool-down and
    a connection breaker."""

    def __init__(self, settings: EndpointSettings, usage: ClientUsage) -> None:
        self.settings = settings
        self.usage = usage
        self._key = settings.key_value()
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            self._headers["Authorization"] = f"Bearer {self._key}"
        base = settings.public_url()
        parts = urlsplit(settings.base_url)
        if parts.username is not None and not self._key:  # user:password@ in the URL: HTTP basic auth
            auth = aiohttp.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
            self._headers["Authorization"] = auth.encode()
        self._chat_url = base + "/chat/completions"
        self._models_url = base + "/models"
        self._semaphore: asyncio.Semaphore | None = None
        self._rpm: Any = None
        self._tpm: Any = None
        self._cooldown_until = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None
        self._sdk: Any = None
        self._started = False
        self._connection_failures = 0

    # lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the HTTP session (needs a running event loop); `send` calls it when needed."""
        if self._started:
            return
        s = self.settings
        self._semaphore = asyncio.Semaphore(s.concurrency)
        if s.rpm is not None or s.tpm is not None:
            from aiolimiter import AsyncLimiter

            self._rpm = AsyncLimiter(s.rpm, s.rate_period) if s.rpm is not None else None
            self._tpm = AsyncLimiter(s.tpm, s.rate_period) if s.tpm is not None else None
        if s.transport == "aiohttp":
            self._session = self._new_session(s.concurrency, s.timeout)
            self._proxy = proxy_for(s.base_url)
        else:
            import httpx2
            from openai import AsyncOpenAI, DefaultAioHttpClient

            http_client = DefaultAioHttpClient(
                timeout=httpx2.Timeout(s.timeout, connect=min(s.timeout, 10.0)),
                limits=httpx2.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency),
            )
            self._sdk = AsyncOpenAI(
                base_url=s.base_url,
                api_key=self._key or "no-key",
                timeout=s.timeout,
                max_retries=0,
                http_client=http_client,
            )
        self._started = True

    def _new_session(self, connections: int, timeout: float) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, keepalive_timeout=30)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers=self._headers,
            trust_env=False,  # no .netrc credentials; the proxy variables are read once by proxy_for
        )

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._sdk is not None:
            await self._sdk.close()
            self._sdk = None
        self._started = False

    # calls -------------------------------------------------------------------------------------
    async def send(self, key: str, body: dict[str, Any], request: ChatRequest) -> Answer:
        """The endpoint's answer to one chat completion body; raises `EndpointError` subclasses."""
        if not self._started:
            self.start()
        has_images = bool(request.images)
        tokens = 0
        if self._tpm is not None:
            chars = len(request.text) + len(request.prefix) + len(request.system or "")
            tokens = chars // 4 + 1 + IMAGE_TOKENS_LOW * len(request.images)
        send = self._send_aiohttp if self._session is not None else self._send_sdk
        answer = await self._with_retries(lambda: send(body, has_images), tokens)
        self.usage.prompt_tokens += answer.prompt_tokens
        self.usage.completion_tokens += answer.completion_tokens
        self.usage.cached_tokens += answer.cached_tokens
        return answer

    async def probe(self) -> None:
        """GET /models once, quickly: an endpoint that cannot be reached (refused, DNS, TLS, silent) or that
        refuses the key stops the run before the first round. Other answers (404 ...) are fine."""
        url = self.settings.public_url()
        wait = self.settings.probe_timeout
        try:
            async with (
                self._new_session(1, wait) as session,
                session.get(self._models_url, proxy=proxy_for(self.settings.base_url)) as resp,
            ):
                status = resp.status
                raw = await resp.read()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise EndpointUnreachable(f"no answer from {url} within {wait:g} s; check --base-url") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise EndpointUnreachable(f"cannot reach {url}: {_reason(exc)}; check --base-url") from None
        if status in (401, 403):
            raise self._scrubbed(map_status(status, error_message_of(raw), has_images=False))

    async def _fetch_aiohttp(self, request: Any, has_images: bool) -> Any:
        """Send one aiohttp request; the decoded JSON body, or the EndpointError its failure maps to."""
        try:
            async with request as resp:
                raw = await resp.read()
                status = resp.status
                if status >= 300:
                    if status == 429:
                        self.usage.rate_limited += 1
                    raise self._scrubbed(
                        map_status(
                            status,
                            error_message_of(raw),
                            has_images=has_images,
                            retry_after=retry_after_from_headers(resp.headers),
                        )
                    )
        except EndpointError:
            raise
        except Exception as exc:
            raise self._scrubbed(map_exception(exc, has_images=has_images, timeout=self.settings.timeout)) from exc
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:  # a 200 that is not JSON (or not UTF-8): an answer, unreadable, not retried
            snippet = raw[:80].decode("utf-8", "replace")
            raise UnreadableAnswer(f"endpoint sent a body that is not JSON: {' '.join(snippet.split())!r}") from None

    async def _send_aiohttp(self, body: dict[str, Any], has_images: bool) -> Answer:
        session = self._session
        assert session is not None
        self.usage.requests += 1
        payload = await self._fetch_aiohttp(
            session.post(self._chat_url, data=orjson.dumps(body), proxy=self._proxy), has_images
        )
        return answer_fields(payload)

    async def _send_sdk(self, body: dict[str, Any], has_images: bool) -> Answer:
        sdk = self._sdk
        assert sdk is not None
        self.usage.requests += 1
        try:
            completion = await sdk.chat.completions.create(**body)
        except ValueError as exc:  # the SDK lets a JSON or UTF-8 decoding error of the body through
            raise UnreadableAnswer(f"endpoint sent a body that is not JSON: {_describe(exc)}") from exc
        except Exception as exc:
            mapped = map_exception(exc, has_images=has_images, timeout=self.settings.timeout)
            if mapped.status == 429:
                self.usage.rate_limited += 1
            raise self._scrubbed(mapped) from exc
        try:
            return answer_fields(completion.model_dump())
        except AttributeError as exc:
            raise UnreadableAnswer("endpoint sent an answer that is not a chat completion") from exc

    # retries, limits, cool-down, breaker ---------------------------------------------------------
    async def _with_retries(self, send: Callable[[], Awaitable[T]], tokens: int) -> T:
        """Run `send` under the semaphore, the limiters and the cool-down, retrying transient errors.

        The first attempt runs bare (most calls succeed: no retry machinery on the hot path); after a
        transient failure, tenacity drives the remaining `max_retries` attempts.
        """
        try:
            try:
                return await self._attempt(send, tokens)
            except TransientEndpointError as exc:
                if self.settings.max_retries == 0:
                    raise
                self.usage.retries += 1
                delay = self._delay_after(exc, 1)
                self._log_retry(exc, 1, delay)
                await asyncio.sleep(delay)
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.settings.max_retries),
                wait=self._wait,
                retry=retry_if_exception_type(TransientEndpointError),
                before_sleep=self._before_sleep,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(send, tokens)
        except EndpointError as exc:
            self.usage.failures[failure_label(exc)] += 1
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, send: Callable[[], Awaitable[T]], tokens: int) -> T:
        semaphore = self._semaphore
        assert semaphore is not None
        async with semaphore:
            await self._gate(tokens)
            try:
                result = await send()
            except TransientEndpointError as exc:
                self._count_connection_failure(exc)
                raise
        self._connection_failures = 0
        return result

    def _count_connection_failure(self, exc: TransientEndpointError) -> None:
        """The breaker: `breaker` connection failures in a row (across all calls) stop the run."""
        if not exc.connection:
            self._connection_failures = 0
            return
        self._connection_failures += 1
        limit = self.settings.breaker
        if limit and self._connection_failures >= limit:
            raise EndpointUnreachable(
                f"cannot reach {self.settings.public_url()}: {self._connection_failures} connection failures in "
                f"a row (last: {exc}); check --base-url, then run the same command to resume"
            ) from exc

    async def _gate(self, tokens: int) -> None:
        """Wait out a shared 429 cool-down, then take rpm/tpm capacity."""
        if self._cooldown_until > time.monotonic():
            await self._sleep_cooldown()
        if self._rpm is not None or self._tpm is not None:
            if self._rpm is not None:
                await self._rpm.acquire()
            if self._tpm is not None and tokens:
                await self._tpm.acquire(min(tokens, self._tpm.max_rate))
            if self._cooldown_until > time.monotonic():
                await self._sleep_cooldown()

    async def _sleep_cooldown(self) -> None:
        while (delay := self._cooldown_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: between half and all of base·2^(attempt-1), capped."""
        s = self.settings
        step: float = min(s.retry_max_wait, s.retry_base_wait * 2.0 ** min(attempt - 1, 30))
        return step / 2 + random.uniform(0, step / 2)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return self._delay_after(exc, state.attempt_number + 1)  # the bare first attempt came before

    def _delay_after(self, exc: BaseException | None, attempt: int) -> float:
        """Seconds before the next attempt after failed attempt number `attempt`."""
        if isinstance(exc, TransientEndpointError) and exc.status == 429:
            # Everyone waits at the shared gate: open (or extend) the cool-down, retry as soon as it ends.
            pause = exc.retry_after if exc.retry_after is not None else self._backoff(attempt)
            until = time.monotonic() + pause
            if until > self._cooldown_until:
                if self._cooldown_until <= time.monotonic():
                    log.warning("rate limited (429): all calls pause for %.1f s", pause)
                self._cooldown_until = until
            return 0.0
        if isinstance(exc, TransientEndpointError) and exc.retry_after is not None:
            return float(exc.retry_after)
        return self._backoff(attempt)

    def _before_sleep(self, state: RetryCallState) -> None:
        self.usage.retries += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        self._log_retry(exc, state.attempt_number + 1, wait)

    def _log_retry(self, exc: BaseException | None, attempt: int, wait: float) -> None:
        log.info("retry %d/%d in %.2f s after: %s", attempt, self.settings.max_retries, wait, exc)

    def _scrubbed(self, exc: EndpointError) -> EndpointError:
        """The same error with the API key masked out of its message (servers may echo it)."""
        key = self._key
        if key and len(key) >= 4 and key in str(exc):
            exc.args = (str(exc).replace(key, "***"),)
        return exc


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words (the OS's message, without the exception's class)."""
    inner = getattr(exc, "os_error", None) or exc.__cause__ or exc
    text = getattr(inner, "strerror", None) or str(inner) or type(inner).__name__
    return " ".join(str(text).split())[:160]
