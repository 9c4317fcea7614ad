"""Paths, bounded subprocess runs with rusage, and the fake server process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRATCH = REPO / ".bench"
DATA = SCRATCH / "data"
VENVS = SCRATCH / "venvs"
LOGS = SCRATCH / "logs"
PY = sys.executable
TIME = Path("/usr/bin/time")
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
SHARED_SEEDS = SHARED_DATA / "mmevol_demo_seeds.jsonl"
SHARED_REWRITES = SHARED_DATA / "gpt4o_mini_round1_responses.jsonl"
HAVE_SHARED = SHARED_SEEDS.is_file()
DEMO_SEEDS = SHARED_SEEDS if HAVE_SHARED else DATA / "generated-demo-seeds.jsonl"
"""The demo seeds every row builds on: the real ones next to the repository, else a generated set of the same
shape (``bench.workload.ensure_demo_seeds`` writes it from bench/workload_shape.json)."""
WORKLOAD = (
    f"real demo seeds ({SHARED_SEEDS})"
    if HAVE_SHARED
    else "generated demo-shaped seeds (no ../shared: lengths from bench/workload_shape.json)"
)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def evolve_cmd() -> list[str]:
    """How to call the evolve CLI: the installed script when present, else ``python -m evolve``."""
    script = Path(PY).parent / "evolve"
    return [str(script)] if script.exists() else [PY, "-m", "evolve"]


@dataclass
class Proc:
    """A finished child process: exit code, wall time, its rusage (children included) and output files."""

    rc: int
    wall: float
    cpu: float
    maxrss_mb: float
    timed_out: bool
    stdout: str = ""
    stderr: str = ""


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    log: Path | None = None,
) -> Proc:
    """Run ``cmd`` to completion (killed after ``timeout`` s) and read its own rusage with ``os.wait4``."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = log or LOGS / "last.log"
    out_path = log.with_suffix(".out")
    rss_path = log.with_suffix(".maxrss")
    rss_path.unlink(missing_ok=True)
    full_env = {**os.environ, **(env or {})}
    argv = list(cmd)
    if TIME.exists():
        # Linux keeps the pre-exec peak RSS in ru_maxrss, so a child forked from this (large) process would
        # report at least our size: /usr/bin/time (a small C program) forks the real command and measures it.
        argv = [str(TIME), "-f", "%M", "-o", str(rss_path), *argv]
    with open(out_path, "wb") as out, open(log, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=full_env, cwd=cwd, start_new_session=True)
        timed_out = False
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss_kb = float(usage.ru_maxrss)
    with contextlib.suppress(OSError, ValueError, IndexError):
        maxrss_kb = float(rss_path.read_text().split()[-1])
    return Proc(
        rc=proc.returncode,
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        maxrss_mb=maxrss_kb / 1024,
        timed_out=timed_out,
        stdout=out_path.read_text("utf-8", "replace"),
        stderr=log.read_text("utf-8", "replace"),
    )


@dataclass
class Poller:
    """Samples the server's chat request counter ~50 times a second to find the active window."""

    port: int
    kinds: tuple[str, ...] | None = ("evolve", "judge")
    interval: float = 0.02
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin sampling in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.samples.append((time.perf_counter(), count(stats(self.port), self.kinds)))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def window(self, latency: float) -> tuple[float, float] | None:
        """(first request seen, last request seen + latency) in perf_counter seconds, or None."""
        first = next((t for t, n in self.samples if n > 0), None)
        if first is None:
            return None
        final = self.samples[-1][1]
        last = next(t for t, n in self.samples if n >= final)
        # Both ends are seen up to one interval late: the first arrival by ~interval/2 on average, so shift it.
        return first - self.interval / 2, last - self.interval / 2 + latency


def count(server_stats: dict[str, Any], kinds: tuple[str, ...] | None) -> int:
    """Chat requests of the given kinds (all when None) in a stats answer."""
    if kinds is None:
        return int(server_stats["total"])
    return sum(int(server_stats["by_kind"].get(k, 0)) for k in kinds)


def stats(port: int) -> dict[str, Any]:
    """The fake server's counters."""
    with _OPENER.open(f"http://127.0.0.1:{port}/_control/stats", timeout=5) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


@dataclass
class Server:
    """A running fake server: its port, and its own CPU seconds once it has exited."""

    port: int = 0
    cpu: float = 0.0


@contextlib.contextmanager
def fake_server(latency: float, tag: str = "server", *, prefix_cache: bool = False) -> Iterator[Server]:
    """Run ``python -m evolve.fakeserver`` in its own process on 127.0.0.1 (without its emulation of provider
    prompt caching unless asked: it costs the server ~20% more CPU per request, and only row 12 reads it)."""
    DATA.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    port_file = SCRATCH / f"port-{os.getpid()}-{tag}"
    port_file.unlink(missing_ok=True)
    cmd = [PY, "-m", "evolve.fakeserver", "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
           "--latency", str(latency), "--log-max", "1000", "--model", "m",
           *([] if prefix_cache else ["--no-prefix-cache"])]  # fmt: skip
    with open(LOGS / f"{tag}.log", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    server = Server()
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake server did not start (see {LOGS / f'{tag}.log'})")
            time.sleep(0.02)
        server.port = int(port_file.read_text().strip())
        yield server
    finally:
        proc.terminate()
        deadline = time.monotonic() + 10
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                server.cpu = usage.ru_utime + usage.ru_stime
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.01)
        port_file.unlink(missing_ok=True)


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, memory, Python version, kernel and date."""
    import datetime
    import platform

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = 0.0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
