"""`evolve init`: a commented starter evolve.toml and editable copies of the prompt templates."""

from __future__ import annotations

from pathlib import Path

from evolve.config import DEFAULT_CONFIG_FILE
from evolve.errors import UsageError
from evolve.prompts import copy_templates

STARTER = """\
# evolve settings. Precedence: command-line flag > environment (EVOLVE_<NAME>, OPENAI_*) > this file > default.
# Every flag of `evolve run` / `evolve eliminate` can be set here, with - written _.

# --- endpoint (any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp, SGLang ...)
base_url = "https://api.openai.com/v1"   # or http://127.0.0.1:8000/v1
model = "gpt-4o-mini"
# api_key: keep it in the environment (OPENAI_API_KEY), not in this file
temperature = 1.0
max_tokens = 4096
concurrency = 64          # requests in flight
timeout = 120.0           # seconds per request
max_retries = 6
# rpm = 500               # requests per minute
# tpm = 2000000           # tokens per minute

# --- evolution
rounds = 3
seed = 0                  # the operator drawn for a sample depends only on (seed, sample id, round)
weights = "perceptual=0.5,reasoning=0.25,interaction=0.25"
prompts = "prompts"       # the templates `evolve init` copied next to this file
images = "send"           # "skip" for text-only models or seed sets without their images
# image_root = "/data/images"
image_size = 512          # longest side in px of the JPEG sent

# --- judge (elimination)
min_score = 0             # keep rewrites judged improved with at least this score (0 = any, as the paper)
judge_images = true
# [judge]
# model = "gpt-4o"          # another model for the judge
# base_url = "http://127.0.0.1:8001/v1"

# --- runs and cron
# cache = "/shared/evolve-cache.sqlite"   # share responses between runs
# max_failures = 100
# log_file = "/var/log/evolve.log"
# quiet = true
# price_in = 0.15          # US$ per million tokens, for the cost estimate
# price_out = 0.60
"""


def write_starter(folder: Path, *, force: bool = False) -> list[Path]:
    """Write evolve.toml and prompts/ into `folder`; refuses to overwrite unless `force`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / DEFAULT_CONFIG_FILE
    if config.exists() and not force:
        raise UsageError(f"{config} exists; pass --force to overwrite")
    config.write_text(STARTER, encoding="utf-8")
    return [config, *copy_templates(folder / "prompts", force=force)]
