"""Row 8's Ray client: a local 2-CPU Ray, then ``evolve.ray_executor.run_ray``, with CPU split by process kind.

    python bench/rayclient.py BASE_URL SEEDS OUT CONCURRENCY ACTORS   (ACTORS 0: run_ray's default)

While the run goes, ``/proc`` is sampled 4 times a second; the CPU each of this process's descendants used
during ``run_ray`` (Ray's start-up excluded) is printed as ``{"cpu_during_run": {kind: seconds}}``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _kind(pid: int, cmd: str) -> str:
    if pid == os.getpid():
        return "driver"
    if "MapWorker" in cmd:
        return "actors"
    if "raylet" in cmd or "gcs_server" in cmd:
        return "daemons"
    return "other ray"


class CpuSampler:
    """CPU seconds of this process and its descendants, by kind, from ``/proc``."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, float]] = {}
        self.cmds: dict[int, str] = {}
        self._stop = threading.Event()

    def sample(self) -> None:
        """Read every process; remember the last CPU figure of each of our descendants."""
        procs: dict[int, tuple[int, float, str]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{entry}/cmdline", "rb") as fb:
                    cmd = fb.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            procs[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, cmd)
        mine = {os.getpid()}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _, _) in procs.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    grew = True
        for pid in mine:
            if pid in procs:
                _, cpu, cmd = procs[pid]
                kind = _kind(pid, cmd)
                if pid in self.seen and self.seen[pid][0] == "actors":  # renamed on exit (ray::IDLE): still one
                    kind = "actors"
                self.seen[pid] = (kind, cpu)
                self.cmds[pid] = cmd[:60]

    def start(self) -> None:
        """Sample in a daemon thread until ``stop``."""

        def loop() -> None:
            while not self._stop.is_set():
                self.sample()
                self._stop.wait(0.25)

        threading.Thread(target=loop, daemon=True).start()

    def stop(self) -> None:
        """Stop sampling and take a last sample."""
        self._stop.set()
        self.sample()


def main(argv: list[str]) -> int:
    """Start Ray, run one round through ``run_ray``, print the CPU split."""
    import ray

    from evolve.config import build_config
    from evolve.ray_executor import run_ray

    base_url, seeds, out, concurrency, actors = argv
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp)
    try:
        flags = {
            "base_url": base_url,
            "api_key": "x",
            "model": "m",
            "rounds": 1,
            "images": "skip",
            "concurrency": int(concurrency),
            "no_cache": True,
            "quiet": True,
            # the work the local row measures (bench.rows.SAME_WORK): two calls per sample, no call-free stage
            "items_per_call": 0,
            "max_tokens": 1_000_000,
            "checks": "none",
            "dedup_threshold": 0,
        }
        sampler = CpuSampler()
        sampler.sample()
        before = dict(sampler.seen)
        sampler.start()
        run_ray(
            build_config(flags, environ={}), [Path(seeds)], Path(out), lambda _text: None, actors=int(actors) or None
        )
        sampler.stop()
        cpu: dict[str, float] = {}
        by_cmd: dict[str, float] = {}
        for pid, (kind, value) in sampler.seen.items():
            used = value - before.get(pid, (kind, 0.0))[1]
            cpu[kind] = cpu.get(kind, 0.0) + used
            by_cmd[sampler.cmds[pid]] = by_cmd.get(sampler.cmds[pid], 0.0) + used
        top = dict(sorted(((k, round(v, 2)) for k, v in by_cmd.items() if v >= 0.05), key=lambda kv: -kv[1]))
        answer = {"cpu_during_run": {k: round(v, 2) for k, v in sorted(cpu.items())}, "by_cmd": top}
        print(json.dumps(answer), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
