"""`evolve init`: a commented starter evolve.toml, editable copies of the prompt templates, and the demo seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import evolve
from evolve.config import DEFAULT_CONFIG_FILE, RunConfig, default_of, groups
from evolve.errors import UsageError
from evolve.prompts import copy_templates

HEADER = """\
# evolve settings. Precedence: command-line flag > environment (EVOLVE_<NAME>, OPENAI_*) > this file > default.
# Every setting of `evolve run` / `evolve eliminate` can be set here, with - written _ (a [judge] table may
# hold the judge_* settings without their prefix). Lines starting with # show the default; remove the # to set.
"""
EXAMPLES = {"prompts": "prompts"}
"""Settings the starter file sets to a useful value rather than showing the default."""
NEVER_IN_FILE = frozenset({"api_key", "judge_api_key"})


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return json.dumps(",".join(f"{k}={v:g}" for k, v in value.items()))
    return json.dumps(str(value))


def starter_text() -> str:
    """The starter evolve.toml: every setting, grouped, with its help and default (written from RunConfig)."""
    lines = [HEADER]
    for group, names in groups().items():
        lines.append(f"# --- {group.lower()}")
        for name in names:
            if name in NEVER_IN_FILE:
                lines.append(f"# {name}: keep it in the environment (OPENAI_API_KEY), not in this file")
                continue
            help_text = RunConfig.model_fields[name].description or ""
            if name in EXAMPLES:
                lines.append(f"{name} = {_toml_value(EXAMPLES[name])}   # {help_text}")
                continue
            value = default_of(name)
            shown = f"{name} = {_toml_value(value)}" if value is not None else f"{name} ="
            lines.append(f"# {shown}   # {help_text}")
        lines.append("")
    return "\n".join(lines)


DEMO_FILE = "demo.jsonl"
"""The demo seed file (its images sit beside it in images/)."""


def demo_seeds_dir() -> Path:
    """The shipped demo seeds: inside the installed package (`evolve/demo_seeds`), else the repository's seeds/."""
    packaged = Path(evolve.__file__).parent / "demo_seeds"
    if (packaged / DEMO_FILE).is_file():
        return packaged
    return Path(evolve.__file__).parents[1] / "seeds"


def copy_demo_seeds(dest: Path, *, force: bool = False) -> list[Path]:
    """Copy demo.jsonl and its images/ into `dest`; refuses to overwrite unless `force`."""
    source = demo_seeds_dir()
    if not (source / DEMO_FILE).is_file():
        raise UsageError(f"the demo seeds are not installed (looked in {source}); reinstall mmevolve")
    if (dest / DEMO_FILE).exists() and not force:
        raise UsageError(f"{dest / DEMO_FILE} exists; pass --force to overwrite")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / DEMO_FILE, dest / DEMO_FILE)
    shutil.copytree(source / "images", dest / "images", dirs_exist_ok=True)
    return [dest / DEMO_FILE, dest / "images"]


def write_starter(folder: Path, *, force: bool = False, demo: bool = False) -> list[Path]:
    """Write evolve.toml and prompts/ (and with `demo` the demo seeds, in seeds/) into `folder`; refuses to
    overwrite unless `force`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / DEFAULT_CONFIG_FILE
    if config.exists() and not force:
        raise UsageError(f"{config} exists; pass --force to overwrite")
    demo_files = copy_demo_seeds(folder / "seeds", force=force) if demo else []
    config.write_text(starter_text(), encoding="utf-8")
    return [config, *copy_templates(folder / "prompts", force=force), *demo_files]
