"""Run a measurement inside a fresh loopback-only network namespace (server and client both inside it)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

from bench.common import LOGS, PY, SCRATCH, run
from bench.measure import Result, Spec

SHELL = 'ip link set lo up && exec "$0" -m bench.measure "$1"'


def available() -> str | None:
    """None when ``unshare -rn`` with a loopback works here, else the reason."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip not found"
    probe = run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up && ip -o addr show lo"],
        timeout=20,
        log=LOGS / "netns-probe.log",
    )
    if probe.rc != 0 or "127.0.0.1" not in probe.stdout:
        return f"unshare -rn failed: {probe.stderr.strip()[-200:]}"
    return None


def measure_in_netns(spec: Spec) -> Result:
    """``bench.measure`` in ``unshare -rn``: nothing inside can reach anything but 127.0.0.1."""
    specs = SCRATCH / "specs"
    specs.mkdir(parents=True, exist_ok=True)
    path = specs / f"{spec.tag}.json"
    path.write_text(json.dumps(asdict(spec)))
    proc = run(
        ["unshare", "-rn", "sh", "-c", SHELL, PY, str(path)],
        timeout=spec.timeout + 60,
        log=LOGS / f"netns-{spec.tag}.log",
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.rc != 0 or not lines:
        raise RuntimeError(f"netns measurement {spec.tag} failed (rc {proc.rc}): {proc.stderr.strip()[-500:]}")
    return Result.from_dict(json.loads(lines[-1]))
