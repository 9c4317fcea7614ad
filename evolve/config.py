"""Run settings as one pydantic model, merged from flags > environment > config file > defaults.

The config file (`evolve.toml` in the working directory, or `--config PATH`) holds the same names as the
flags, with `-` written `_`; tables are only for grouping, except `[judge]`, whose keys get a `judge_` prefix.
Environment variables: `EVOLVE_<NAME>` for every setting, plus the OpenAI conventions `OPENAI_BASE_URL` and
`OPENAI_API_KEY`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from evolve.client import EndpointSettings
from evolve.errors import UsageError
from evolve.operators import DEFAULT_WEIGHTS, check_weights, parse_weights

DEFAULT_CONFIG_FILE = "evolve.toml"
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
SECRET_FIELDS = ("api_key", "judge_api_key")


class RunConfig(BaseModel):
    """Every setting of `evolve run` and `evolve eliminate`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # endpoint
    base_url: str = OPENAI_DEFAULT_URL
    api_key: SecretStr | None = None
    model: str = "gpt-4o-mini"
    temperature: float = Field(1.0, ge=0, le=2)
    max_tokens: int = Field(4096, ge=1)
    timeout: float = Field(120.0, gt=0)
    concurrency: int = Field(64, ge=1, le=4096)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_retries: int = Field(6, ge=0)
    transport: Literal["aiohttp", "sdk"] = "aiohttp"
    # judge
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_api_key: SecretStr | None = None
    judge_images: bool = True
    min_score: float = Field(0.0, ge=0, le=10)
    # evolution
    rounds: int = Field(3, ge=1, le=100)
    seed: int = 0
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    prompts: Path | None = None
    # inputs
    images: Literal["send", "skip"] = "send"
    image_root: Path | None = None
    image_size: int = Field(512, ge=32, le=4096)
    format: Literal["mmevol", "llava", "sharegpt"] | None = None
    strict: bool = False
    # run folder and behaviour
    cache: Path | None = None
    no_cache: bool = False
    max_failures: int | None = Field(None, ge=0)
    shard: str | None = None
    log_file: Path | None = None
    quiet: bool = False
    price_in: float | None = Field(None, ge=0)
    price_out: float | None = Field(None, ge=0)

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_weights(value)
        if isinstance(value, dict):
            return check_weights({str(k): float(v) for k, v in value.items()})
        return value

    @field_validator("shard")
    @classmethod
    def _shard(cls, value: str | None) -> str | None:
        if value is not None:
            shard_spec(value)
        return value

    def shard_pair(self) -> tuple[int, int] | None:
        """(K, N) of `--shard K/N`, or None."""
        return shard_spec(self.shard) if self.shard else None

    def endpoint_settings(self) -> EndpointSettings:
        """Settings of the evolution endpoint."""
        return EndpointSettings(
            base_url=self.base_url,
            api_key=self.api_key,
            model=self.model,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            timeout=self.timeout,
            concurrency=self.concurrency,
            rpm=self.rpm,
            tpm=self.tpm,
            max_retries=self.max_retries,
            transport=self.transport,
        )

    def judge_settings(self) -> EndpointSettings:
        """Settings of the judge endpoint: the evolution endpoint unless --judge-* says otherwise."""
        return self.endpoint_settings().model_copy(
            update={
                "model": self.judge_model or self.model,
                "base_url": self.judge_base_url or self.base_url,
                "api_key": self.judge_api_key or self.api_key,
            }
        )

    def public(self) -> dict[str, Any]:
        """The settings as written to run.json: no secrets, paths as strings."""
        data = self.model_dump(mode="json", exclude=set(SECRET_FIELDS))
        data["api_key_set"] = self.api_key is not None
        return data


def shard_spec(text: str) -> tuple[int, int]:
    """Read `K/N` (K counted from 0) into (K, N)."""
    left, sep, right = text.partition("/")
    try:
        index, count = int(left), int(right)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: expected K/N with 0 <= K < N")
    return index, count


def _flatten(table: dict[str, Any], path: Path) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if isinstance(value, dict) and name != "weights":
            prefix = "judge_" if name == "judge" else ""
            for inner, inner_value in value.items():
                flat[prefix + inner.replace("-", "_")] = inner_value
        else:
            flat[name] = value
    unknown = set(flat) - set(RunConfig.model_fields)
    if unknown:
        raise UsageError(f"{path}: unknown setting {sorted(unknown)[0]!r}")
    return flat


def read_config_file(path: Path | None) -> dict[str, Any]:
    """Settings from a TOML file; `evolve.toml` in the working directory is read when it exists."""
    explicit = path is not None
    path = path or Path(DEFAULT_CONFIG_FILE)
    if not path.exists():
        if explicit:
            raise UsageError(f"--config {path}: no such file")
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from exc
    return _flatten(data, path)


def read_environment(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Settings from `EVOLVE_*` variables and the OpenAI conventions."""
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    if env.get("OPENAI_BASE_URL"):
        found["base_url"] = env["OPENAI_BASE_URL"]
    if env.get("OPENAI_API_KEY"):
        found["api_key"] = env["OPENAI_API_KEY"]
    for name in RunConfig.model_fields:
        value = env.get(f"EVOLVE_{name.upper()}")
        if value is not None and value != "":
            found[name] = value
    return found


def build_config(
    flags: dict[str, Any],
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> RunConfig:
    """Merge flags > environment > config file > defaults; flags that are None were not given."""
    merged: dict[str, Any] = {}
    merged.update(read_config_file(config_file))
    merged.update(read_environment(environ))
    merged.update({k: v for k, v in flags.items() if v is not None})
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "config"
        raise UsageError(f"--{name.replace('_', '-')}: {first['msg']}") from exc


def config_sources(
    flags: dict[str, Any], config_file: Path | None = None, environ: dict[str, str] | None = None
) -> dict[str, str]:
    """Where each non-default setting came from (flag, env, config), for `--dry-run` and logs."""
    sources: dict[str, str] = {}
    for name in read_config_file(config_file):
        sources[name] = "config"
    for name in read_environment(environ):
        sources[name] = "env"
    for name, value in flags.items():
        if value is not None:
            sources[name] = "flag"
    return sources
