"""The helpers of `make e2e-vision` against the test server: the recording proxy sees evolve's image parts, and
the wire and accounting checks pass on a run with images and fail on one without."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from typer.testing import CliRunner

from evolve.cli import app
from evolve.fakeserver import ThreadedServer

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def load_script(name: str) -> ModuleType:
    """A module of scripts/ (not a package) by file name."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


check = load_script("e2e_vision_check")
probe = load_script("e2e_vision_probe")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def proxy_process(fake_server: ThreadedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The recording proxy in its own process in front of the test server: (its /v1 URL, its log)."""
    port, log = free_port(), tmp_path_factory.mktemp("proxy") / "wire.jsonl"
    upstream = fake_server.base_url.removesuffix("/v1")
    command = [sys.executable, str(SCRIPTS / "e2e_vision_proxy.py"), "--upstream", upstream, "--port", str(port)]
    process = subprocess.Popen([*command, "--log", str(log)])
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{url}/models", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def proxy(proxy_process: tuple[str, Path], server: ThreadedServer) -> tuple[str, Path]:
    """The proxy with an empty log, in front of the freshly reset test server."""
    proxy_process[1].write_text("", encoding="utf-8")
    return proxy_process


def run_through(url: str, out: Path, seeds: Path, images: str) -> None:
    """`evolve run` of the seeds for one round through `url`."""
    args = ["run", str(seeds), "--image-root", str(REPO / "seeds"), "--images", images, "--rounds", "1"]
    result = CliRunner().invoke(app, [*args, "--base-url", url, "--api-key", "x", "--out", str(out), "--quiet"])
    assert result.exit_code in (0, 3), result.output


@pytest.fixture
def two_seeds(tmp_path: Path) -> Path:
    """The first two demo seeds (images relative to seeds/)."""
    lines = (REPO / "seeds" / "demo.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_proxy_log_shows_every_call_with_its_image_and_the_checks_pass(
    proxy: tuple[str, Path], two_seeds: Path, tmp_path: Path
) -> None:
    url, log = proxy
    run_through(url, tmp_path / "run", two_seeds, "send")
    errors: list[str] = []
    wire = check.check_wire(check.jsonl(log), errors)
    accounting = check.check_run(two_seeds, tmp_path / "run", errors)
    assert errors == []
    assert wire["calls"] >= 4 and wire["with_image"] == wire["calls"]  # evolve and judge calls of 2 seeds
    assert wire["statuses"] == {"200": wire["calls"]}
    assert set(wire["image_kinds"]) == {"data:image/jpeg;base64"}
    assert len(accounting["per_seed"]) == 2


def test_wire_check_fails_when_the_run_sends_no_image(proxy: tuple[str, Path], two_seeds: Path, tmp_path: Path) -> None:
    url, log = proxy
    run_through(url, tmp_path / "run", two_seeds, "skip")
    errors: list[str] = []
    wire = check.check_wire(check.jsonl(log), errors)
    assert wire["calls"] > 0 and wire["with_image"] == 0
    assert errors and all("has no image part" in error for error in errors)


def test_accounting_check_finds_a_seed_without_an_outcome(
    proxy: tuple[str, Path], two_seeds: Path, tmp_path: Path
) -> None:
    url, _ = proxy
    run_through(url, tmp_path / "run", two_seeds, "send")
    with two_seeds.open("a", encoding="utf-8") as seeds:  # a third seed line the run never saw
        seeds.write((REPO / "seeds" / "demo.jsonl").read_text(encoding="utf-8").splitlines()[2] + "\n")
    errors: list[str] = []
    check.check_run(two_seeds, tmp_path / "run", errors)
    assert any("3 seed lines but 2 round-1 outcomes" in error for error in errors)


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [(320, 240, 128), (512, 512, 128), (1024, 768, 64 * 5), (2048, 200, 64 * 5)],
)
def test_expected_image_tokens_follow_mtmds_idefics3_tiling(width: int, height: int, tokens: int) -> None:
    assert probe.expected_image_tokens(width, height, tile=512, per_tile=64) == tokens
