"""Command-line options made from the settings declared in `RunConfig`: one declaration, one name everywhere.

`with_settings(*names)` adds an option per named setting to a Typer command (flag, type, help text, default
shown, a help panel per group) and hands the command a `settings` dict of the flags given (None = not given),
ready for `build_config`. So a setting's flag, its `EVOLVE_*` variable and its evolve.toml line never drift.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import typer
from pydantic import SecretStr
from rich.markup import escape

from evolve.config import RunConfig, default_of, groups

F = TypeVar("F", bound=Callable[..., Any])
SHORT = {"quiet": "-q"}


def _plain_type(annotation: Any) -> tuple[type, list[str]]:
    """The CLI type of a setting's annotation, and its choices when it is a Literal."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType) and len(args) == 1:
        return _plain_type(args[0])
    if origin is Literal:
        return str, [str(a) for a in get_args(annotation)]
    if annotation in (int, float, bool, Path, str):
        return annotation, []
    if annotation is SecretStr:
        return str, []
    return str, []  # dicts (weights) and the like are written as text and parsed by the model


def _default_text(name: str) -> str:
    value = default_of(name)
    if name in ("api_key", "judge_api_key") or value is None or value is False:
        return ""
    if isinstance(value, dict):
        value = ",".join(f"{k}={v:g}" for k, v in value.items())
    if value is True:
        return " (default: on)"
    return f" (default: {value})"


def setting_parameter(name: str) -> inspect.Parameter:
    """A keyword parameter whose annotation is the Typer option of setting `name`."""
    field = RunConfig.model_fields[name]
    kind, choices = _plain_type(field.annotation)
    flag = "--" + name.replace("_", "-")
    help_text = (field.description or "") + (f" One of: {', '.join(choices)}." if choices else "")
    help_text = escape(help_text + _default_text(name))
    group = next(g for g, names in groups().items() if name in names)
    negatable = kind is bool and not name.startswith("no_")
    decls = [f"{flag}/--no-{flag[2:]}"] if negatable else [flag]
    if name in SHORT:
        decls.append(SHORT[name])
    option = typer.Option(*decls, help=help_text, show_default=False, rich_help_panel=group)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
    )


def with_settings(*names: str) -> Callable[[F], F]:
    """Give a command one option per setting in `names`; the command receives them as `settings`."""

    def decorate(func: F) -> F:
        hints = get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.name != "settings"
        ]
        added = [setting_parameter(name) for name in names]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            flags = {name: kwargs.pop(name) for name in names}
            return func(settings=flags, **kwargs)

        command.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
        command.__annotations__ = {}
        del command.__wrapped__
        return command  # type: ignore[return-value]

    return decorate


ALL_SETTINGS: tuple[str, ...] = tuple(RunConfig.model_fields)
JUDGE_SETTINGS: tuple[str, ...] = tuple(
    name
    for name in ALL_SETTINGS
    if next(g for g, names in groups().items() if name in names) in ("Endpoint", "Judge")
    or name
    in (
        "prompts",
        "images",
        "image_root",
        "image_size",
        "format",
        "cache",
        "no_cache",
        "quiet",
        "items_per_call",
        "price_in",
        "price_cached_in",
        "price_out",
        "seed",
    )
)
"""The settings `evolve eliminate` takes."""
