"""Where and how to call a model: the endpoint settings, declared once for the run config and the client."""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
NO_KEY_MESSAGE = "no API key: set OPENAI_API_KEY (or pass --api-key)"
ImageDetail = Literal["low", "high", "auto"]
PromptLayout = Literal["cached", "image-first"]


def setting(default: Any, help: str, group: str, **constraints: Any) -> Any:
    """A settings field: its default, the one-line help that --help and the starter file show, and its group."""
    return Field(default, description=help, json_schema_extra={"group": group}, **constraints)


def public_url(url: str) -> str:
    """A URL without its user:password@ part, so credentials never reach a file, a key or a message."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class EndpointFields(BaseModel):
    """The endpoint settings a run shares with its client (flags, variables and evolve.toml all use these names)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    base_url: str = setting(OPENAI_DEFAULT_URL, "Endpoint base URL (or OPENAI_BASE_URL).", "Endpoint")
    api_key: SecretStr | None = setting(
        None,
        "API key; better in the OPENAI_API_KEY variable (a flag shows in ps). Never written anywhere.",
        "Endpoint",
        repr=False,
        exclude=True,
    )
    model: str = setting("gpt-4o-mini", "Model name.", "Endpoint")
    temperature: float = setting(1.0, "Temperature of the evolution calls (the paper: 1).", "Endpoint", ge=0, le=2)
    max_tokens: int = setting(4096, "Answer token limit per call.", "Endpoint", ge=1)
    timeout: float = setting(120.0, "Seconds per request.", "Endpoint", gt=0)
    concurrency: int = setting(64, "Requests in flight.", "Endpoint", ge=1, le=4096)
    rpm: int | None = setting(None, "Requests per minute limit.", "Endpoint", ge=1)
    tpm: int | None = setting(None, "Tokens per minute limit.", "Endpoint", ge=1)
    max_retries: int = setting(6, "Retries per request (429, 5xx, timeouts, resets).", "Endpoint", ge=0)
    transport: Literal["aiohttp", "sdk"] = setting("aiohttp", "aiohttp (fast) or sdk (the openai SDK).", "Endpoint")
    breaker: int = setting(20, "Stop after this many connection failures in a row (0: never).", "Endpoint", ge=0)
    image_detail: ImageDetail = setting(
        "auto", "The image detail asked of the endpoint: low, high or auto (see README for the cost).", "Endpoint"
    )
    prompt_layout: PromptLayout = setting(
        "cached",
        "cached: fixed text, then the image, then the sample's text (providers cache the prefix); image-first.",
        "Endpoint",
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value


def _env_url() -> str:
    return os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL


def _env_key() -> SecretStr | None:
    key = os.environ.get("OPENAI_API_KEY")
    return SecretStr(key) if key else None


class EndpointSettings(EndpointFields):
    """Everything the client needs; used alone, base URL and key default to the OpenAI environment variables."""

    base_url: str = Field(default_factory=_env_url)
    api_key: SecretStr | None = Field(default_factory=_env_key, repr=False, exclude=True)
    response_format_json: bool = False
    retry_base_wait: float = Field(default=1.0, ge=0)
    """First backoff step in seconds (doubled each retry, with jitter)."""
    retry_max_wait: float = Field(default=60.0, ge=0)
    """Longest backoff between two attempts (a server's Retry-After may ask for more)."""
    rate_period: float = Field(default=60.0, gt=0)
    """The window of --rpm and --tpm in seconds (60: per minute; tests shorten it)."""
    probe_timeout: float = Field(default=10.0, gt=0)
    """Seconds the start-up probe of the endpoint may take."""

    def needs_key(self) -> bool:
        """True for OpenAI's own API, which cannot work without a key."""
        host = (urlsplit(self.base_url).hostname or "").lower()
        return host == "openai.com" or host.endswith(".openai.com")

    def key_value(self) -> str | None:
        """The API key in clear, or None; only for the Authorization header."""
        if self.api_key is None:
            return None
        return self.api_key.get_secret_value() or None

    def public_url(self) -> str:
        """The base URL without credentials (for keys, fingerprints and messages)."""
        return public_url(self.base_url)
