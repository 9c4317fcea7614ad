"""Row 11: ``evolve report`` on a 100,000-seed run in under 30 s, with peak RSS flat against a 10,000-seed run.

The two run folders (``--rounds 2 --images skip`` against the test endpoint in its own process, with a
judge that rejects a share of the rewrites so there are drops) are generated once under
``.bench/report/`` and reused when present: generating the large one takes minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

from bench.common import LOGS, SCRATCH, evolve_cmd, fake_server, run
from bench.rows import Outcome, Row, Sizes, _fail
from bench.workload import seed_file

RUNS = SCRATCH / "report"
REJECT_RATIO = 0.3
GOAL_SECONDS = 30.0
GOAL_RSS_RATIO = 1.5
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _set_reject_ratio(port: int, ratio: float) -> None:
    """Make the running test endpoint's judge say "not improved" for a share of the rewrites."""
    body = json.dumps({"reject_ratio": ratio}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/_control/config", data=body, headers={"Content-Type": "application/json"}
    )
    with _OPENER.open(request, timeout=10) as resp:
        resp.read()


def run_folder(seeds: int) -> Path:
    """``.bench/report/run-N``: a finished 2-round run of N synthetic seeds (made once, then reused)."""
    target = RUNS / f"run-{seeds}"
    manifest = target / "run.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("status") == "done":
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with fake_server(0.0, tag=f"server-report-{seeds}") as server:
        _set_reject_ratio(server.port, REJECT_RATIO)
        cmd = [
            *evolve_cmd(), "run", str(seed_file(seeds)), "--out", str(target), "--rounds", "2",
            "--images", "skip", "--base-url", f"http://127.0.0.1:{server.port}/v1", "--api-key", "x",
            "--model", "m", "--concurrency", "64", "--quiet", "--no-cache",
        ]  # fmt: skip
        proc = run(cmd, timeout=3600, log=LOGS / f"report-run-{seeds}.log")
    if proc.rc != 0:
        raise RuntimeError(f"evolve run for {seeds:,} seeds exited {proc.rc} (see {LOGS}/report-run-{seeds}.log)")
    return target


def _report(folder: Path, seeds: int) -> dict[str, float | int]:
    """Run ``evolve report`` on a run folder: wall seconds, CPU, peak RSS, the HTML's size and the machine's load."""
    html = RUNS / f"report-{seeds}.html"
    html.unlink(missing_ok=True)
    load = os.getloadavg()[0]
    proc = run([*evolve_cmd(), "report", str(folder), "-o", str(html)], timeout=600, log=LOGS / f"report-{seeds}.log")
    size = html.stat().st_size if html.exists() else 0
    return {"rc": proc.rc, "wall": proc.wall, "cpu": proc.cpu, "maxrss_mb": proc.maxrss_mb, "html_bytes": size,
            "load_before": load, "load_after": os.getloadavg()[0]}  # fmt: skip


def _run_bytes(folder: Path) -> int:
    """Bytes the report streams: the round files' records and the seed files."""
    from evolve.lineage import bytes_of, open_run, round_files

    run = open_run(folder)
    return bytes_of([path for _, _, path in round_files(run)] + list(run.seed_files))


def row11(sizes: Sizes) -> Outcome:
    """Wall time of ``evolve report`` on the large run, and its peak RSS against the small run's."""
    out = Outcome()
    small, large = (500, 5000) if sizes == Sizes.quick() else (10_000, 100_000)
    label_time, label_rss = "11 evolve report: wall time", "11 peak RSS: evolve report"
    setting = f"2 rounds, --images skip, {large:,} seeds"
    try:
        folders = {n: run_folder(n) for n in (small, large)}
    except RuntimeError as exc:
        out.rows.append(_fail(label_time, setting, str(exc)))
        return out
    results = {n: _report(folder, n) for n, folder in folders.items()}
    for n, result in results.items():
        out.data[f"report-{n}"] = {**result, "run_jsonl_bytes": _run_bytes(folders[n])}
    if any(r["rc"] != 0 for r in results.values()):
        out.rows.append(_fail(label_time, setting, f"evolve report failed (see {LOGS}/report-*.log)"))
        return out
    big, little = results[large], results[small]
    gigabytes = _run_bytes(folders[large]) / 1e9
    note = (
        f"{gigabytes:.2f} GB of round files and seeds read; report {big['html_bytes'] / 1e6:.2f} MB "
        f"({little['html_bytes'] / 1e6:.2f} MB at {small:,}); CPU {big['cpu']:.1f} s (all processes) on "
        f"{os.cpu_count()} cores, load average {big['load_before']:.1f} → {big['load_after']:.1f}"
    )
    out.rows.append(
        Row(label_time, setting, f"{big['wall']:.1f} s", f"goal {GOAL_SECONDS:.0f} s",
            big["wall"] / GOAL_SECONDS, f"< {GOAL_SECONDS:.0f} s", big["wall"] < GOAL_SECONDS, note)
    )  # fmt: skip
    ratio = big["maxrss_mb"] / little["maxrss_mb"]
    out.rows.append(
        Row(label_rss, f"{large:,} vs {small:,} seeds", f"{big['maxrss_mb']:.0f} MB", f"{little['maxrss_mb']:.0f} MB",
            ratio, f"≤ {GOAL_RSS_RATIO} (flat)", ratio <= GOAL_RSS_RATIO, f"{small:,} seeds: {little['wall']:.1f} s")
    )  # fmt: skip
    return out
