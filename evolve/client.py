"""The chat client a round's stages ask: a request in, an answer out, through the response cache.

How an answer is obtained is the transport's business: live HTTP (`evolve.transport.LiveTransport`, the default)
or the Batch API (`evolve.batch.BatchTransport`, which queues the request and raises `AnswerDeferred`). The
client builds the request body once (`build_body`), keys the cache by the request's identity (endpoint, model,
parameters, texts, image keys, round, attempt) and keeps the usage counters.

    async with ChatClient(EndpointSettings(model="gpt-4o-mini"), cache) as client:
        result = await client.chat(ChatRequest(system=None, text="Hello"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from evolve.cache import Cache, legacy_request_key, request_key
from evolve.endpoint import NO_KEY_MESSAGE, EndpointSettings, ImageDetail, PromptLayout
from evolve.errors import UsageError
from evolve.images import EncodedImage
from evolve.transport import Answer, ClientUsage, LiveTransport


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat call: a system prompt, the user's text in two parts around the images, and its identity.

    `prefix` is the sample-independent text (providers cache it when it comes first); `text` the sample's part.
    `round` and `attempt` are part of the cache key, so a later round or a deliberate second attempt asks anew;
    `seed` goes into the body (judge votes); `tag` names the stage that asks (batch ids, accounting).
    """

    system: str | None
    text: str
    images: list[EncodedImage] = field(default_factory=list)
    prefix: str = ""
    round: int = 0
    attempt: int = 0
    seed: int | None = None
    tag: str = "chat"

    def messages(self, detail: ImageDetail = "low", layout: PromptLayout = "cached") -> list[dict[str, Any]]:
        """The OpenAI `messages`: system, then one user message.

        With images, the cached layout sends the prefix text, the images, then the sample's text; image-first
        sends the images, then all the text. The text is the same either way.
        """
        user: dict[str, Any]
        if self.images:
            images = [{"type": "image_url", "image_url": {"url": i.url, "detail": detail}} for i in self.images]
            if layout == "cached" and self.prefix:
                parts = [{"type": "text", "text": self.prefix}, *images, {"type": "text", "text": self.text}]
            else:
                parts = [*images, {"type": "text", "text": self.prefix + self.text}]
            user = {"role": "user", "content": parts}
        else:
            user = {"role": "user", "content": self.prefix + self.text}
        if self.system is None:
            return [user]
        return [{"role": "system", "content": self.system}, user]


@dataclass(frozen=True, slots=True)
class ChatResult:
    """The answer, its token counts, whether it came from the response cache, and its cache key."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    key: str
    finish_reason: str | None = None
    cached_tokens: int = 0
    refusal: str | None = None
    batch: bool = False
    """Answered through the Batch API (collected into the response cache): paid, at the batch price."""


class Transport(Protocol):
    """How a request body gets its answer: live HTTP, or the Batch API (which needs the key to find it again)."""

    def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def send(self, key: str, body: dict[str, Any], request: ChatRequest) -> Answer: ...


def build_body(settings: EndpointSettings, request: ChatRequest) -> dict[str, Any]:
    """The chat completions body for `request` (what live calls and Batch API lines send)."""
    body: dict[str, Any] = {
        "model": settings.model,
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
    }
    if settings.response_format_json:
        body["response_format"] = {"type": "json_object"}
    if request.seed is not None:
        body["seed"] = request.seed
    body["messages"] = request.messages(settings.image_detail, settings.prompt_layout)
    return body


class ChatClient:
    """Answers through the response cache, then the transport; keeps the usage counters."""

    def __init__(
        self,
        settings: EndpointSettings,
        cache: Cache,
        transport: Transport | None = None,
        usage: ClientUsage | None = None,
    ) -> None:
        if settings.needs_key() and settings.key_value() is None:
            raise UsageError(NO_KEY_MESSAGE)
        self.settings = settings
        self.cache = cache
        self.usage = usage if usage is not None else ClientUsage()
        self.transport: Transport = transport if transport is not None else LiveTransport(settings, self.usage)
        self._endpoint = settings.public_url()
        self._params: dict[str, Any] = {
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "response_format": "json_object" if settings.response_format_json else None,
        }

    def __repr__(self) -> str:
        s = self.settings
        return f"ChatClient(base_url={s.public_url()!r}, model={s.model!r}, transport={s.transport!r})"

    async def __aenter__(self) -> ChatClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start the transport (needs a running event loop); `chat` calls it when needed."""
        self.transport.start()

    async def aclose(self) -> None:
        """Close the transport and flush the cache."""
        await self.transport.aclose()
        self.cache.flush()

    def key(self, request: ChatRequest) -> str:
        """The cache key of a request ("" when the cache keeps nothing: then nothing is hashed)."""
        if not self.cache.enabled:
            return ""
        s = self.settings
        params = dict(self._params)
        params["seed"] = request.seed
        if request.images:
            params["detail"] = s.image_detail
            params["layout"] = s.prompt_layout if request.prefix else "image-first"
        identity = {
            "endpoint": self._endpoint,
            "model": s.model,
            "params": params,
            "system": request.system,
            "prefix": request.prefix,
            "text": request.text,
            "images": [i.key for i in request.images],
            "round": request.round,
            "attempt": request.attempt,
        }
        return request_key(identity)

    def _legacy_hit(self, request: ChatRequest) -> dict[str, Any] | None:
        """An answer of a cache written before v2 keys (round 1, first attempt only: those keys knew neither
        the round nor the attempt, so a later round must not replay them)."""
        if request.round > 1 or request.attempt or request.seed is not None:
            return None
        key = legacy_request_key(
            self.settings.model, request.system, request.prefix + request.text, [i.key for i in request.images],
            self._params,
        )  # fmt: skip
        return self.cache.get(key)

    async def chat(self, request: ChatRequest) -> ChatResult:
        """The answer to `request`, from the cache or the transport; raises `EndpointError` subclasses (and
        `AnswerDeferred` under the Batch API). An answer with text, or a refusal, is cached before it returns."""
        key = self.key(request)
        if key:
            hit = self.cache.get(key) or self._legacy_hit(request)
            if hit is not None:
                self.usage.cache_hits += 1
                return ChatResult(
                    hit["text"], hit["prompt_tokens"], hit["completion_tokens"], True, key, hit.get("finish_reason"),
                    int(hit.get("cached_tokens") or 0), hit.get("refusal"), bool(hit.get("batch")),
                )  # fmt: skip
        answer = await self.transport.send(key, build_body(self.settings, request), request)
        if key and (answer.text or answer.refusal):
            self.cache.put(key, answer_record(answer))
        return ChatResult(
            answer.text, answer.prompt_tokens, answer.completion_tokens, False, key, answer.finish_reason,
            answer.cached_tokens, answer.refusal,
        )  # fmt: skip

    async def probe(self) -> None:
        """A quick reachability check of the endpoint (live transport only)."""
        probe = getattr(self.transport, "probe", None)
        if probe is not None:
            await probe()


def answer_record(answer: Answer) -> dict[str, Any]:
    """An answer as the response cache stores it."""
    record: dict[str, Any] = {
        "text": answer.text,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "finish_reason": answer.finish_reason,
    }
    if answer.cached_tokens:
        record["cached_tokens"] = answer.cached_tokens
    if answer.refusal:
        record["refusal"] = answer.refusal
    return record
