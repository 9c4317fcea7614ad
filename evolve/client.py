"""An async chat client for any OpenAI-compatible endpoint: cache, limits, retries and error mapping.

Two transports give the same results and errors: "aiohttp" (the default; one keep-alive session and
almost no per-call CPU) and "sdk" (the `openai` package's AsyncOpenAI over aiohttp). Every failure is
mapped here to `evolve.errors`; the API key never appears in an error, a log line, a repr or the cache.

    async with ChatClient(EndpointSettings(model="gpt-4o-mini"), cache) as client:
        result = await client.chat(ChatRequest(system=None, text="Hello", images=[]))
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from evolve.cache import Cache
from evolve.errors import (
    AuthenticationError,
    EndpointError,
    ImageInputRejected,
    RequestRejected,
    TransientEndpointError,
    UsageError,
)
from evolve.images import EncodedImage

log = logging.getLogger("evolve.client")

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
NO_KEY_MESSAGE = "no API key: set OPENAI_API_KEY or pass --api-key"
MAX_RETRY_AFTER = 600.0
"""A server's Retry-After is honoured up to this many seconds."""
IMAGE_TOKENS = 85
"""Tokens one low-detail image costs (for the --tpm estimate)."""
_IMAGE_HINT = re.compile(
    r"image|vision|multi-?modal|modalit|content[ _-]?type|content part|image_url|projector|mmproj"
    r'|\(not "list"\)',  # a text-only chat template given a list of content parts (llama.cpp server)
    re.I,
)
_IMAGE_STATUSES = frozenset({400, 415, 422, 500})
_TRANSIENT_4XX = frozenset({408, 409, 425, 429})

T = TypeVar("T")


def _env_key() -> SecretStr | None:
    key = os.environ.get("OPENAI_API_KEY")
    return SecretStr(key) if key else None


class EndpointSettings(BaseModel):
    """Where and how to call the model. The API key is a SecretStr, left out of repr and model_dump."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    base_url: str = Field(default_factory=lambda: os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL)
    api_key: SecretStr | None = Field(default_factory=_env_key, repr=False, exclude=True)
    model: str = "gpt-4o-mini"
    temperature: float = Field(default=1.0, ge=0, le=2)
    max_tokens: int = Field(default=4096, ge=1)
    timeout: float = Field(default=120.0, gt=0)
    concurrency: int = Field(default=64, ge=1, le=4096)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_retries: int = Field(default=6, ge=0)
    transport: Literal["aiohttp", "sdk"] = "aiohttp"
    response_format_json: bool = False
    retry_base_wait: float = Field(default=1.0, ge=0)
    """First backoff step in seconds (doubled each retry, with jitter)."""
    retry_max_wait: float = Field(default=60.0, ge=0)
    """Longest backoff between two attempts (a server's Retry-After may ask for more)."""
    rate_period: float = Field(default=60.0, gt=0)
    """The window of --rpm and --tpm in seconds (60: per minute; tests shorten it)."""

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value

    def needs_key(self) -> bool:
        """True for OpenAI's own API, which cannot work without a key."""
        host = (urlsplit(self.base_url).hostname or "").lower()
        return host == "openai.com" or host.endswith(".openai.com")

    def key_value(self) -> str | None:
        """The API key in clear, or None; only for the Authorization header."""
        if self.api_key is None:
            return None
        return self.api_key.get_secret_value() or None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat call: an optional system prompt, the user text, and images sent before the text."""

    system: str | None
    text: str
    images: list[EncodedImage] = field(default_factory=list)

    def messages(self) -> list[dict[str, Any]]:
        """The OpenAI `messages`: system, then one user message (image parts first, then the text)."""
        user: dict[str, Any]
        if self.images:
            parts: list[dict[str, Any]] = [
                {"type": "image_url", "image_url": {"url": image.url, "detail": "low"}} for image in self.images
            ]
            parts.append({"type": "text", "text": self.text})
            user = {"role": "user", "content": parts}
        else:
            user = {"role": "user", "content": self.text}
        if self.system is None:
            return [user]
        return [{"role": "system", "content": self.system}, user]


@dataclass(frozen=True, slots=True)
class ChatResult:
    """The answer text, its token counts, whether it came from the cache, and its cache key."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    key: str
    finish_reason: str | None = None


@dataclass(slots=True)
class ClientUsage:
    """Counters of one client."""

    requests: int = 0
    """HTTP requests sent (every attempt counts)."""
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
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
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "failures": dict(self.failures),
        }


# error mapping -------------------------------------------------------------------------------------
def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (seconds or an HTTP date), or None if absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def retry_after_from_headers(headers: Any) -> float | None:
    """Retry-After from response headers; `retry-after-ms` (OpenAI's, more precise) wins when present."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return min(max(float(ms) / 1000.0, 0.0), MAX_RETRY_AFTER)
        except ValueError:
            pass
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
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return TransientEndpointError(f"connection to the endpoint failed: {_describe(exc)}")
    if isinstance(exc, ValueError):  # a body that is not JSON
        return TransientEndpointError(f"endpoint sent a body that is not JSON: {_describe(exc)}")
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
        return TransientEndpointError(f"connection to the endpoint failed: {_describe(exc)}")
    if isinstance(exc, openai.APIResponseValidationError):
        return TransientEndpointError("endpoint sent an answer that is not a chat completion")
    return TransientEndpointError(f"endpoint call failed: {_describe(exc)}")


def _timeout_error(timeout: float | None) -> TransientEndpointError:
    after = f" after {timeout:g} s" if timeout else ""
    return TransientEndpointError(f"endpoint timed out{after}")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return type(exc).__name__ + (f" ({text[:200]})" if text else "")


def failure_reason(exc: BaseException) -> str:
    """A short label for usage accounting."""
    if isinstance(exc, EndpointError) and exc.status is not None:
        return str(exc.status)
    text = str(exc)
    if "timed out" in text:
        return "timeout"
    if "not JSON" in text or "not a chat completion" in text or "cut off" in text:
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


def answer_fields(payload: Any) -> tuple[str, int, int, str | None]:
    """(text, prompt tokens, completion tokens, finish reason) from a chat completion body."""
    try:
        choice = payload["choices"][0]
        text = choice["message"].get("content") or ""
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise TransientEndpointError(
            f"endpoint sent an answer that is not a chat completion: {error_message_of(payload)[:120]}"
        ) from None
    usage = payload.get("usage") or {}
    return str(text), int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), finish


# the client ----------------------------------------------------------------------------------------
class ChatClient:
    """Chat completions with a cache, a concurrency limit, rpm/tpm limits, retries and a shared 429 cool-down."""

    def __init__(self, settings: EndpointSettings, cache: Cache) -> None:
        if settings.needs_key() and settings.key_value() is None:
            raise UsageError(NO_KEY_MESSAGE)
        self.settings = settings
        self.cache = cache
        self.usage = ClientUsage()
        self._key = settings.key_value()
        self._params: dict[str, Any] = {
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "response_format": "json_object" if settings.response_format_json else None,
        }
        self._base_body: dict[str, Any] = {
            "model": settings.model,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
        }
        if settings.response_format_json:
            self._base_body["response_format"] = {"type": "json_object"}
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            self._headers["Authorization"] = f"Bearer {self._key}"
        self._chat_url = settings.base_url + "/chat/completions"
        self._models_url = settings.base_url + "/models"
        self._semaphore: asyncio.Semaphore | None = None
        self._rpm: Any = None
        self._tpm: Any = None
        self._cooldown_until = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None
        self._sdk: Any = None
        self._started = False

    def __repr__(self) -> str:
        s = self.settings
        return f"ChatClient(base_url={s.base_url!r}, model={s.model!r}, transport={s.transport!r})"

    # lifecycle -----------------------------------------------------------------------------------
    async def __aenter__(self) -> ChatClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Open the HTTP session (needs a running event loop); `chat` calls it when needed."""
        if self._started:
            return
        s = self.settings
        self._semaphore = asyncio.Semaphore(s.concurrency)
        if s.rpm is not None or s.tpm is not None:
            from aiolimiter import AsyncLimiter

            self._rpm = AsyncLimiter(s.rpm, s.rate_period) if s.rpm is not None else None
            self._tpm = AsyncLimiter(s.tpm, s.rate_period) if s.tpm is not None else None
        if s.transport == "aiohttp":
            connector = aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=s.timeout),
                headers=self._headers,
                trust_env=False,  # no .netrc credentials; the proxy variables are read once below
            )
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

    async def aclose(self) -> None:
        """Close the HTTP session and flush the cache."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._sdk is not None:
            await self._sdk.close()
            self._sdk = None
        self._started = False
        self.cache.flush()

    # calls -------------------------------------------------------------------------------------
    async def chat(self, request: ChatRequest) -> ChatResult:
        """The answer to `request`, from the cache or the endpoint; raises `EndpointError` subclasses."""
        key = self.cache.request_key(
            self.settings.model, request.system, request.text, [i.key for i in request.images], self._params
        )
        hit = self.cache.get(key)
        if hit is not None:
            self.usage.cache_hits += 1
            return ChatResult(
                hit["text"], hit["prompt_tokens"], hit["completion_tokens"], True, key, hit.get("finish_reason")
            )
        if not self._started:
            self.start()
        body = dict(self._base_body)
        body["messages"] = request.messages()
        has_images = bool(request.images)
        if self._tpm is not None:
            chars = len(request.text) + len(request.system or "")
            tokens = chars // 4 + 1 + IMAGE_TOKENS * len(request.images)
        else:
            tokens = 0
        send = self._send_aiohttp if self._session is not None else self._send_sdk
        text, prompt_tokens, completion_tokens, finish = await self._with_retries(
            lambda: send(body, has_images), tokens
        )
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        if text:
            self.cache.put(
                key,
                {
                    "text": text,
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "finish_reason": finish,
                },
            )
        return ChatResult(text, prompt_tokens, completion_tokens, False, key, finish)

    async def list_models(self) -> list[str]:
        """Model ids the endpoint serves (GET /models); a cheap preflight of URL and key."""
        if not self._started:
            self.start()
        if self._session is not None:
            session = self._session

            async def get() -> list[str]:
                payload = await self._fetch_aiohttp(session.get(self._models_url, proxy=self._proxy), False)
                try:
                    return [str(m["id"]) for m in payload["data"]]
                except (KeyError, TypeError) as exc:
                    raise TransientEndpointError("endpoint sent a model list that cannot be read") from exc

            return await self._with_retries(get, 0)
        sdk = self._sdk

        async def get_sdk() -> list[str]:
            try:
                page = await sdk.models.list()
                return [str(m.id) for m in page.data]
            except Exception as exc:
                raise self._scrubbed(map_exception(exc, timeout=self.settings.timeout)) from exc

        return await self._with_retries(get_sdk, 0)

    # transports --------------------------------------------------------------------------------
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
            return orjson.loads(raw)
        except EndpointError:
            raise
        except Exception as exc:
            raise self._scrubbed(map_exception(exc, has_images=has_images, timeout=self.settings.timeout)) from exc

    async def _send_aiohttp(self, body: dict[str, Any], has_images: bool) -> tuple[str, int, int, str | None]:
        session = self._session
        assert session is not None
        self.usage.requests += 1
        payload = await self._fetch_aiohttp(
            session.post(self._chat_url, data=orjson.dumps(body), proxy=self._proxy), has_images
        )
        return answer_fields(payload)

    async def _send_sdk(self, body: dict[str, Any], has_images: bool) -> tuple[str, int, int, str | None]:
        sdk = self._sdk
        assert sdk is not None
        self.usage.requests += 1
        try:
            completion = await sdk.chat.completions.create(**body)
        except Exception as exc:
            mapped = map_exception(exc, has_images=has_images, timeout=self.settings.timeout)
            if mapped.status == 429:
                self.usage.rate_limited += 1
            raise self._scrubbed(mapped) from exc
        try:
            choice = completion.choices[0]
            text = choice.message.content or ""
            usage = completion.usage
            prompt = int(usage.prompt_tokens) if usage is not None else 0
            done = int(usage.completion_tokens) if usage is not None else 0
            finish = choice.finish_reason
        except (AttributeError, IndexError, TypeError) as exc:
            raise TransientEndpointError("endpoint sent an answer that is not a chat completion") from exc
        return str(text), prompt, done, finish

    # retries, limits, cool-down ------------------------------------------------------------------
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
                await asyncio.sleep(self._delay_after(exc, 1))
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
            self.usage.failures[failure_reason(exc)] += 1
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, send: Callable[[], Awaitable[T]], tokens: int) -> T:
        semaphore = self._semaphore
        assert semaphore is not None
        async with semaphore:
            await self._gate(tokens)
            return await send()

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
        if log.isEnabledFor(logging.DEBUG):
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.debug("retry %d/%d in %.2f s after: %s", state.attempt_number, self.settings.max_retries, wait, exc)

    def _scrubbed(self, exc: EndpointError) -> EndpointError:
        """The same error with the API key masked out of its message (servers may echo it)."""
        key = self._key
        if key and len(key) >= 4 and key in str(exc):
            exc.args = (str(exc).replace(key, "***"),)
        return exc
