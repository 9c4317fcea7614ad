"""The package as users get it: the wheel is named mmevolve and holds the code, the prompts, the test endpoint
and the demo seeds; installed into a fresh virtual environment it runs the README's quick start. Install hints
show their brackets in --help and in error lines."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evolve.cli import app

REPO = Path(__file__).resolve().parents[1]
USER_ENV = dict(os.environ)
"""The environment before the autouse fixture points HOME into tmp_path: pip's warm cache lives there."""


def pip_env() -> dict[str, str]:
    """The user's environment (HOME and caches, so pip's cache is warm), with no virtual environment active."""
    env = {k: v for k, v in USER_ENV.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def call(argv: list[str | Path], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output unless it exits 0."""
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=pip_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"{argv}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.packaging
@pytest.mark.timeout(420)
def test_wheel_in_a_fresh_venv_runs_the_quick_start(tmp_path: Path) -> None:
    started = time.monotonic()
    wheels = tmp_path / "wheels"
    call([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, REPO], tmp_path)
    [wheel] = list(wheels.glob("mmevolve-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"evolve/demo_seeds/demo.jsonl", "evolve/prompts/judge.j2", "evolve/fakeserver/__main__.py"} <= names
    assert len([n for n in names if n.startswith("evolve/demo_seeds/images/")]) == 10
    assert not any(n.startswith(("tests/", "bench/", "seeds/")) for n in names)

    venv = tmp_path / "venv"
    call([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    python, evolve = venv / "bin" / "python", venv / "bin" / "evolve"
    call([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile", wheel], tmp_path, 300)
    installed = time.monotonic() - started
    where = call([python, "-c", "import evolve; print(evolve.__file__)"], tmp_path).stdout
    assert str(venv) in where, "the installed package is imported, not the checkout"

    work = tmp_path / "work"
    port_file = tmp_path / "port"
    log = (tmp_path / "fake-endpoint.log").open("wb")
    server = subprocess.Popen([evolve, "fake-endpoint", "--port", "0", "--port-file", port_file], cwd=tmp_path,
                              env=pip_env(), stdout=log, stderr=log)  # fmt: skip
    try:
        call([evolve, "init", "--demo", work], tmp_path)
        assert "10 loaded" in call([evolve, "validate", "seeds"], work).stdout
        for _ in range(100):
            if port_file.exists():
                break
            time.sleep(0.1)
        base_url = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"
        call([evolve, "run", "seeds", "--base-url", base_url, "--api-key", "x", "--rounds", "1", "--quiet"], work)
        assert (work / "runs" / "seeds" / "final.jsonl").stat().st_size > 0
        exported = call([evolve, "export", "runs/seeds", "--to", "sharegpt", "-o", "data/train.json", "--json-array"],
                        work)  # fmt: skip
        assert "records exported as sharegpt" in exported.stderr
        assert (work / "data" / "dataset_info.json").is_file()
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
    print(f"wheel built and installed in {installed:.1f} s, whole test {time.monotonic() - started:.1f} s")


def test_install_hints_show_their_brackets() -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "300"}).output
    assert "pip install 'mmevolve[ray]'" in " ".join(shown.split()), "Rich markup must not eat [ray]"
    if importlib.util.find_spec("benepar") is None:
        result = runner.invoke(app, ["stats", str(REPO / "seeds" / "demo.jsonl"), "--parser", "benepar"])
        assert result.exit_code == 2
        assert "error: benepar is not installed: pip install 'mmevolve[benepar]'" in result.output


def test_error_lines_keep_square_brackets(tmp_path: Path) -> None:
    missing = tmp_path / "shard[1].jsonl"
    result = CliRunner().invoke(app, ["validate", str(missing)])
    assert result.exit_code == 2
    assert f"{missing}: no file matches this pattern" in result.output


def test_init_demo_copies_the_demo_seeds(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["init", "--demo", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "seeds" / "demo.jsonl").read_bytes() == (REPO / "seeds" / "demo.jsonl").read_bytes()
    assert len(list((tmp_path / "seeds" / "images").iterdir())) == 10
    again = CliRunner().invoke(app, ["init", "--demo", str(tmp_path)])
    assert again.exit_code == 2 and "--force" in again.output
    assert CliRunner().invoke(app, ["validate", str(tmp_path / "seeds")]).exit_code == 0
