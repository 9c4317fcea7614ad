"""One throughput measurement: a fresh fake server at latency L, one client process, the server's counters.

In-process: ``measure(Spec(...))``. In a loopback-only network namespace (for the peers), the same thing runs as
``python -m bench.measure SPEC.json`` and prints the result as JSON.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import LOGS, Poller, count, fake_server, run, stats


@dataclass
class Spec:
    """What to run: ``cmd`` may hold ``{base_url}``; ``kinds`` are the counted request kinds (None = all)."""

    tag: str
    cmd: list[str]
    latency: float
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    kinds: list[str] | None = field(default_factory=lambda: ["evolve", "judge"])


@dataclass
class Result:
    """Client process facts plus the server's view of the same run."""

    tag: str
    latency: float
    rc: int
    timed_out: bool
    wall: float
    cpu: float
    maxrss_mb: float
    requests: int
    window: float | None
    stdout_tail: str
    stderr_tail: str
    server: dict[str, Any]
    server_cpu: float = 0.0

    @property
    def rate_window(self) -> float:
        """Requests per second over the active window (first request to last answer)."""
        return self.requests / self.window if self.window else 0.0

    @property
    def rate_wall(self) -> float:
        """Requests per second over the client process's whole life (start-up included)."""
        return self.requests / self.wall if self.wall else 0.0

    @property
    def cpu_ms(self) -> float:
        """Client CPU (user + sys, children included) per request, in ms."""
        return 1000 * self.cpu / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived rates."""
        d = asdict(self)
        server_ms = 1000 * self.server_cpu / self.requests if self.requests else 0.0
        d.update(rate_window=self.rate_window, rate_wall=self.rate_wall, cpu_ms=self.cpu_ms, server_cpu_ms=server_ms)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        """Inverse of ``as_dict``."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


def measure(spec: Spec) -> Result:
    """Start a server, run the client to completion (bounded by ``spec.timeout``), read the counters."""
    kinds = None if spec.kinds is None else tuple(spec.kinds)
    with fake_server(spec.latency, tag=f"server-{spec.tag}") as server:
        port = server.port
        base_url = f"http://127.0.0.1:{port}/v1"
        cmd = [part.replace("{base_url}", base_url) for part in spec.cmd]
        poller = Poller(port, kinds)
        poller.start()
        try:
            proc = run(cmd, timeout=spec.timeout, env=spec.env, log=LOGS / f"{spec.tag}.log")
        finally:
            poller.stop()
        final = stats(port)
    window = poller.window(spec.latency)
    return Result(
        tag=spec.tag,
        latency=spec.latency,
        rc=proc.rc,
        timed_out=proc.timed_out,
        wall=proc.wall,
        cpu=proc.cpu,
        maxrss_mb=proc.maxrss_mb,
        requests=count(final, kinds),
        window=None if window is None else window[1] - window[0],
        stdout_tail=proc.stdout[-2000:],
        stderr_tail=proc.stderr[-3000:],
        server=final,
        server_cpu=server.cpu,
    )


def main(argv: list[str]) -> int:
    """``python -m bench.measure SPEC.json``: measure and print the result as JSON."""
    spec = Spec(**json.loads(Path(argv[0]).read_text()))
    print(json.dumps(measure(spec).as_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
