"""Every setting of evolve, declared once in `RunConfig`, and merged from flags > environment > file > defaults.

A setting has one name everywhere: the flag `--max-tokens`, the variable `EVOLVE_MAX_TOKENS` and the line
`max_tokens = 4096` of `evolve.toml` (in the working directory, or `--config PATH`); the file's tables only group
lines, except `[judge]`, whose keys get a `judge_` prefix. `OPENAI_BASE_URL` and `OPENAI_API_KEY` are read too.
A value that does not validate is reported under the name of its source: `--rounds`, `EVOLVE_ROUNDS` or
`evolve.toml:12`. The CLI builds its options, help texts and defaults from the fields declared here, and
`evolve init` writes its starter file from them, so a default is written in one place only.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, SecretStr, ValidationError, field_validator, model_validator

from evolve.dedup import DEFAULT_THRESHOLD
from evolve.endpoint import EndpointFields, EndpointSettings, public_url, setting
from evolve.errors import UsageError
from evolve.operators import DEFAULT_WEIGHTS, check_weights, parse_weights

DEFAULT_CONFIG_FILE = "evolve.toml"
SECRET_FIELDS = ("api_key", "judge_api_key")
ENV_PREFIX = "EVOLVE_"
OPENAI_ENV = {"OPENAI_BASE_URL": "base_url", "OPENAI_API_KEY": "api_key"}


class RunConfig(EndpointFields):
    """Every setting of `evolve run` and `evolve eliminate` (the endpoint fields come from `EndpointFields`)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    # judge
    judge_model: str | None = setting(None, "Judge model (default: --model).", "Judge")
    judge_base_url: str | None = setting(None, "Judge endpoint (default: --base-url).", "Judge")
    judge_api_key: SecretStr | None = setting(None, "Judge API key (default: --api-key).", "Judge")
    judge_images: bool = setting(True, "Send the image to the judge as well.", "Judge")
    judge_temperature: float = setting(
        0.0, "Temperature of the judge calls (the official code used 1).", "Judge", ge=0, le=2
    )
    judge_votes: int = setting(
        1, "Judge each rewrite this many times: majority on improved, mean score.", "Judge", ge=1, le=9
    )
    min_score: float = setting(0.0, "Keep rewrites judged improved with at least this score.", "Judge", ge=0, le=10)
    # evolution
    rounds: int = setting(3, "Rounds of evolution.", "Evolution", ge=1, le=100)
    seed: int = setting(0, "Seed of every random draw (operator per sample and round).", "Evolution")
    weights: dict[str, float] = setting(
        dict(DEFAULT_WEIGHTS), "Operator weights, e.g. perceptual=0.5,reasoning=0.25,interaction=0.25.", "Evolution"
    )
    prompts: Path | None = setting(None, "Folder of prompt templates overriding the defaults.", "Evolution")
    items_per_call: int = setting(
        6, "Q&A items rewritten or judged per call; a sample with more is split (0: all in one call).", "Evolution",
        ge=0,
    )  # fmt: skip
    annotate: bool = setting(
        False, "Round 0: fill objects, skills and steps of seed items that lack them before evolving.", "Evolution"
    )
    reask_unreadable: bool = setting(
        False, "Ask again where an earlier invocation got an unreadable answer.", "Evolution"
    )
    # quality stages
    checks: str = setting("all", "Rule checks before the judge: all, none, or a comma list of rule names.", "Quality")
    verify: Literal["none", "claims"] = setting(
        "none", "claims: split each kept answer into yes/no claims and check them against the image.", "Quality"
    )
    dedup_threshold: float = setting(
        DEFAULT_THRESHOLD, "Drop a rewrite whose question is at least this similar to one of its lineage (0: off).",
        "Quality",
        ge=0, le=1,
    )  # fmt: skip
    # inputs
    images: Literal["send", "skip"] = setting(
        "send", "send: images go with the requests; skip: text only.", "Images and seeds"
    )
    image_root: Path | None = setting(None, "Folder that relative image paths start from.", "Images and seeds")
    image_size: int = setting(512, "Longest image side sent, in px.", "Images and seeds", ge=32, le=4096)
    image_cache: Path | None = setting(
        None, "Where images that arrive as bytes (parquet) are written (default: RUN/images).", "Images and seeds"
    )
    columns: str | None = setting(
        None, "Column mapping for table seeds, e.g. image=img,question=q,answer=a.", "Images and seeds"
    )
    format: Literal["mmevol", "llava", "sharegpt"] | None = setting(
        None, "Force the seed format instead of detecting it per line.", "Images and seeds"
    )
    strict: bool = setting(False, "Stop at the first bad seed line.", "Images and seeds")
    # run folder and engines
    cache: Path | None = setting(None, "Response cache file (default: RUN/cache.sqlite).", "Run")
    no_cache: bool = setting(False, "Neither read nor write the response cache.", "Run")
    max_failures: int | None = setting(None, "Stop (exit 3) after this many failed sample-rounds.", "Run", ge=0)
    allow_endpoint_change: bool = setting(False, "Resume a run folder made against another endpoint.", "Run")
    shard: str | None = setting(None, "Only shard K of N (K/N, K from 0).", "Run")
    workers: int = setting(1, "Local worker processes, each a shard, merged at the end.", "Run", ge=1, le=256)
    executor: Literal["local", "ray"] = setting(
        "local", "local, or ray (Ray Data; pip install 'mmevolve[ray]').", "Run"
    )
    ray_address: str | None = setting(None, "Ray cluster address (e.g. auto).", "Run")
    batch: bool = setting(False, "OpenAI Batch API: each invocation collects answers and submits the next.", "Run")
    log_file: Path | None = setting(None, "Also log to this file.", "Run")
    quiet: bool = setting(False, "No progress, only errors (for cron).", "Run")
    # cost
    price_in: float | None = setting(None, "US$ per million input tokens.", "Cost", ge=0)
    price_cached_in: float | None = setting(None, "US$ per million cached input tokens.", "Cost", ge=0)
    price_out: float | None = setting(None, "US$ per million output tokens.", "Cost", ge=0)

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

    @model_validator(mode="after")
    def _one_engine(self) -> RunConfig:
        engines = [
            name
            for name, chosen in (
                ("--batch", self.batch),
                ("--executor ray", self.executor == "ray"),
                (f"--workers {self.workers}", self.workers > 1),
            )
            if chosen
        ]
        if len(engines) > 1:
            raise ValueError(f"{' and '.join(engines)} cannot be combined: choose one way to run")
        if self.workers > 1 and self.shard is not None:
            raise ValueError("--workers and --shard cannot be combined: --workers makes its own shards")
        return self

    def shard_pair(self) -> tuple[int, int] | None:
        """(K, N) of `--shard K/N`, or None."""
        return shard_spec(self.shard) if self.shard else None

    def endpoint_settings(self) -> EndpointSettings:
        """Settings of the evolution endpoint."""
        shared = {name: getattr(self, name) for name in EndpointFields.model_fields}
        return EndpointSettings(**shared)

    def judge_settings(self) -> EndpointSettings:
        """Settings of the judge endpoint: the evolution endpoint unless --judge-* says otherwise."""
        return self.endpoint_settings().model_copy(
            update={
                "model": self.judge_model or self.model,
                "base_url": self.judge_base_url or self.base_url,
                "api_key": self.judge_api_key or self.api_key,
                "temperature": self.judge_temperature,
            }
        )

    def public(self) -> dict[str, Any]:
        """The settings as written to run.json: no secrets (keys, credentials in URLs), paths as strings."""
        data = self.model_dump(mode="json", exclude=set(SECRET_FIELDS))
        data["api_key_set"] = self.api_key is not None
        for name in ("base_url", "judge_base_url"):
            if data.get(name):
                data[name] = public_url(data[name])
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


def groups() -> dict[str, list[str]]:
    """Setting names by group, in declaration order (for --help panels and the starter file)."""
    found: dict[str, list[str]] = {}
    for name, info in RunConfig.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        found.setdefault(str(extra.get("group", "Endpoint")), []).append(name)
    return found


def default_of(name: str) -> Any:
    """The default value of a setting."""
    return RunConfig.model_fields[name].get_default(call_default_factory=True)


# ------------------------------------------------------------------------------------------ sources


@dataclass
class Sources:
    """Raw values of each setting and where they came from (a flag, a variable or file:line)."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: Any, origin: str) -> None:
        """Set a value (a later source wins: add defaults first, flags last)."""
        self.values[name] = value
        self.origin[name] = origin


def _toml_line(text: str, table: str | None, key: str) -> int | None:
    """The line number of `key = ...` (inside `[table]` when given) in a TOML text, if it can be found."""
    current: str | None = None
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        heading = re.match(r"^\s*\[([^\]]+)\]", line)
        if heading:
            current = heading.group(1).strip()
            continue
        if current == table and pattern.match(line):
            return number
    return None


def read_config_file(path: Path | None, sources: Sources | None = None) -> dict[str, Any]:
    """Settings from a TOML file; `evolve.toml` in the working directory is read when it exists."""
    explicit = path is not None
    path = path or Path(DEFAULT_CONFIG_FILE)
    sources = sources if sources is not None else Sources()
    if not path.exists():
        if explicit:
            raise UsageError(f"--config {path}: no such file")
        return {}
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from exc
    found: dict[str, Any] = {}
    for key, value in data.items():
        table = key.replace("-", "_")
        entries = value.items() if isinstance(value, dict) and table != "weights" else [(None, value)]
        for inner, inner_value in entries:
            if inner is None:
                name, line = table, _toml_line(text, None, key)
            else:
                name = ("judge_" if table == "judge" else "") + inner.replace("-", "_")
                line = _toml_line(text, key, inner)
            where = f"{path}:{line}" if line else str(path)
            if name not in RunConfig.model_fields:
                raise UsageError(f"{where}: unknown setting {name!r}")
            found[name] = inner_value
            sources.add(name, inner_value, where)
    return found


def read_environment(environ: dict[str, str] | None = None, sources: Sources | None = None) -> dict[str, Any]:
    """Settings from `EVOLVE_*` variables and the OpenAI conventions."""
    env = os.environ if environ is None else environ
    sources = sources if sources is not None else Sources()
    found: dict[str, Any] = {}
    for variable, name in OPENAI_ENV.items():
        if env.get(variable):
            found[name] = env[variable]
            sources.add(name, env[variable], variable)
    for name in RunConfig.model_fields:
        variable = ENV_PREFIX + name.upper()
        value = env.get(variable)
        if value is not None and value != "":
            found[name] = value
            sources.add(name, value, variable)
    return found


def build_config(
    flags: dict[str, Any],
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> RunConfig:
    """Merge flags > environment > config file > defaults; flags that are None were not given."""
    sources = Sources()
    read_config_file(config_file, sources)
    read_environment(environ, sources)
    for name, value in flags.items():
        if value is not None:
            sources.add(name, value, "--" + name.replace("_", "-"))
    try:
        return RunConfig.model_validate(sources.values)
    except ValidationError as exc:
        raise UsageError(_explain(exc, sources)) from exc


def _explain(exc: ValidationError, sources: Sources) -> str:
    """One line for the first validation problem, named after the source of the value."""
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    message = str(first["msg"]).removeprefix("Value error, ")
    if not name:
        return message
    origin = sources.origin.get(name, "--" + name.replace("_", "-"))
    if origin.startswith(ENV_PREFIX) or origin in OPENAI_ENV:
        secret = name in SECRET_FIELDS
        return f"{origin}={'***' if secret else sources.values.get(name)!s}: {message}"
    if origin.startswith("--"):
        return f"{origin}: {message}"
    return f"{origin}: {name}: {message}"
