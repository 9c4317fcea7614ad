"""`--executor ray`: the same records as a local run and as 3 merged shards; resume; the hint without Ray.

Ray listens on all interfaces and probes a public address, so it only ever runs here inside a fresh
loopback-only network namespace (`unshare -rn`), together with its own test server: the subprocess runs
`inside_namespace`, which starts `evolve.fakeserver` in a thread, a local Ray bound to 127.0.0.1 and the Ray
executor, and leaves run folders and a JSON report for the test to compare with runs made out here (the fake
server is deterministic). The test installs the `ray` extra into this interpreter when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from evolve.cli import app
from evolve.fakeserver import ThreadedServer
from tests.test_run import REPO, SEEDS, evolve, lines
from tests.test_scaleout import canonical

RAY_PIN = "ray[data]==2.60.0"
REJECT_RATIO = 0.3
FLAGS = {"rounds": 2, "seed": 5, "verify": "claims"}
FLAWS = {"flawed_ratio": 0.2, "echo_ratio": 0.2, "false_claim_ratio": 0.2}
"""Every stage drops something, so the engines are compared on all of them."""
NETNS_SHELL = 'ip link set lo up && exec "$0" -c "$1" "$2"'
INNER = "import json, sys; from tests.test_ray import inside_namespace; inside_namespace(json.loads(sys.argv[1]))"


def netns_unavailable() -> str | None:
    """None when `unshare -rn` with a loopback interface works here, else why not."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip not found: cannot isolate Ray in a loopback-only network namespace"
    probe = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up && ip -o addr show lo"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if probe.returncode != 0 or "127.0.0.1" not in probe.stdout:
        return f"unshare -rn not permitted here ({probe.stderr.strip()[-200:]}): Ray runs only in a network namespace"
    return None


@pytest.fixture(scope="session")
def ray_installed() -> None:
    """Install the `ray` extra into this interpreter if it is missing (~30 s), so CI runs these tests."""
    if subprocess.run([sys.executable, "-c", "import ray, ray.data"], capture_output=True).returncode == 0:
        return
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", RAY_PIN],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"pip install '{RAY_PIN}' failed: {done.stderr.strip()[-500:]}")


@pytest.fixture
def ray_temp() -> Iterator[Path]:
    """A short /tmp folder for Ray's sockets (a pytest tmp_path can pass the 107-byte socket path limit)."""
    path = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------- in the namespace


def damage(folder: Path) -> list[str]:
    """Make `folder` look like a job killed in round 2; returns the seeds whose sample-round was lost (3)."""
    lost = sorted({r["seed_id"] for r in lines(folder / "round-2" / "evolved.jsonl")})[:3]
    gone, half = set(lost[:2]), lost[2]
    for name in ("evolved", "judged", "kept", "dropped", "outcomes"):
        path = folder / "round-2" / f"{name}.jsonl"
        keep = [r for r in lines(path) if r["seed_id"] not in gone]
        if name in ("kept", "dropped", "outcomes"):  # `half` wrote evolved and judged, then died
            keep = [r for r in keep if r["seed_id"] != half]
        path.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    with (folder / "round-2" / "evolved.jsonl").open("a", encoding="utf-8") as fp:
        fp.write('{"id": "torn')  # a line cut short by the kill
    (folder / "final.jsonl").unlink()
    return lost


def inside_namespace(spec: dict[str, Any]) -> None:
    """The Ray side of the test; runs in `unshare -rn` (imports Ray, so never in the pytest process)."""
    import ray

    from evolve.config import build_config
    from evolve.errors import EvolveError
    from evolve.fakeserver import serve_in_thread
    from evolve.fakeserver.app import Config
    from evolve.ray_executor import run_ray

    report: dict[str, Any] = {"messages": []}
    out, resumed = Path(spec["out"]), Path(spec["resumed"])
    seeds = sorted(SEEDS.glob("*.jsonl"))
    with serve_in_thread(Config(reject_ratio=REJECT_RATIO, **FLAWS)) as server:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=spec["ray_temp"])
        try:
            flags = {"base_url": server.base_url, "api_key": "test-key", "model": "fake-vlm", **FLAGS}
            config = build_config(flags, environ={})
            run_ray(config, seeds, out, report["messages"].append, actors=2)
            report["requests"] = server.stats()["total"]
            # the cache is left behind: actors may still be closing it (its -wal/-shm files come and go), and the
            # resumed run below runs without a cache anyway
            shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("cache.sqlite*"))
            report["lost"] = damage(resumed)
            before = server.stats()["total"]
            run_ray(config.model_copy(update={"no_cache": True}), seeds, resumed, report["messages"].append, actors=1)
            report["resume_requests"] = server.stats()["total"] - before
            server.add_fault("401", count=10_000)  # a key the endpoint refuses: the whole run stops
            failed = Path(spec["failed"])
            try:
                run_ray(config.model_copy(update={"no_cache": True}), seeds, failed, print, actors=1)
            except EvolveError as exc:
                report["fatal"] = [type(exc).__name__, exc.exit_code]
            report["fatal_status"] = json.loads((failed / "run.json").read_text())["status"]
            report["fatal"] = report.get("fatal") or ["none", 0]
        finally:
            ray.shutdown()
    Path(spec["report"]).write_text(json.dumps(report), encoding="utf-8")


# ---------------------------------------------------------------------------------------- the tests


@pytest.mark.timeout(900)  # includes installing the extra (~30 s) and starting Ray (~10 s) when needed
def test_ray_equals_local_and_merged_shards(
    server: ThreadedServer, tmp_path: Path, ray_installed: None, ray_temp: Path
) -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    server.set_config(reject_ratio=REJECT_RATIO, **FLAWS)
    common = ["--rounds", str(FLAGS["rounds"]), "--seed", str(FLAGS["seed"]), "--verify", str(FLAGS["verify"])]
    one = tmp_path / "one"
    assert evolve(server, str(SEEDS), *common, "--out", str(one)).exit_code == 0
    shards = [tmp_path / f"shard{k}" for k in range(3)]
    for k, shard in enumerate(shards):
        result = evolve(server, str(SEEDS), *common, "--shard", f"{k}/3", "--out", str(shard))
        assert result.exit_code == 0, result.output
    merged = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge", *map(str, shards), "--out", str(merged)])
    assert result.exit_code == 0, result.output

    spec = {"out": str(tmp_path / "ray"), "resumed": str(tmp_path / "resumed"), "failed": str(tmp_path / "failed"),
            "ray_temp": str(ray_temp), "report": str(tmp_path / "report.json")}  # fmt: skip
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": path}
    done = subprocess.run(["unshare", "-rn", "sh", "-c", NETNS_SHELL, sys.executable, INNER, json.dumps(spec)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=280)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())

    expected = canonical(one, 2)
    assert sum(len(v) for v in expected.values()) > 40
    assert canonical(merged, 2) == expected
    assert canonical(tmp_path / "ray", 2) == expected  # ids, operators, Q&A, verdicts, drops: all identical
    local, ray_run = (json.loads((d / "run.json").read_text()) for d in (one, tmp_path / "ray"))
    assert ray_run["status"] == "done" and ray_run["final_samples"] == local["final_samples"]
    assert ray_run["usage"]["requests"] == local["usage"]["requests"] == report["requests"]
    for number in ("1", "2"):
        for key in ("samples", "kept_items", "operators", "drop_reasons"):
            assert ray_run["rounds"][number][key] == local["rounds"][number][key]
    assert any("2 actors" in m for m in report["messages"])

    # resume after a killed job: only the 3 lost sample-rounds are redone (their calls, no cache)
    calls = {o["seed_id"]: o["answers"].get("calls", 0) for o in lines(one / "round-2" / "outcomes.jsonl")}
    assert len(report["lost"]) == 3 and report["resume_requests"] == sum(calls[s] for s in report["lost"])
    assert any("3 seeds with work left" in m for m in report["messages"])
    assert canonical(tmp_path / "resumed", 2) == expected
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["status"] == "done"

    # a refused API key inside an actor stops the run like a local one: same error, run.json says failed
    assert report["fatal"] == ["AuthenticationError", 1] and report["fatal_status"] == "failed"


def test_without_ray_the_error_names_the_install_command(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from pathlib import Path\n"
        "from evolve.config import RunConfig\n"
        "from evolve.errors import UsageError\n"
        "from evolve.ray_executor import run_ray\n"
        "try:\n"
        f"    run_ray(RunConfig(api_key='k'), [Path({str(SEEDS / 'demo.jsonl')!r})], Path({str(tmp_path)!r}), print)\n"
        "except UsageError as exc:\n"
        "    print('usage:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "usage: --executor ray needs Ray Data: pip install 'mmevolve[ray]'"
    assert not (tmp_path / "run.json").exists()
