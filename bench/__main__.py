"""``python -m bench`` (``make bench``): run every row, print one table, write bench/results.json and results.md.

Environment: ``BENCH_QUICK=1`` smaller sizes (~2-3 min smoke run); ``BENCH_ROWS=1,2,3`` only these rows (row 3
needs row 1's raw loop and row 4 needs row 2's evolve figures: they are run too when missing);
``BENCH_WAIT_IDLE=S`` waits up to S seconds for the load average to fall below 1.5 first (the machine may be
shared).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import rows, setup
from bench.common import REPO, evolve_cmd, machine_info, run

RESULTS = REPO / "bench" / "results.json"
MARKDOWN = REPO / "bench" / "results.md"


def _evolve_ready() -> str | None:
    """None when ``evolve run --help`` works."""
    p = run([*evolve_cmd(), "run", "--help"], timeout=60)
    return None if p.rc == 0 else f"`evolve run --help` exited {p.rc}"


def wait_idle(limit: float, console: Console) -> None:
    """Wait (at most ``limit`` s) until the 1-minute load average drops below 1.5: a shared machine skews rates."""
    deadline = time.monotonic() + limit
    if limit > 0 and os.getloadavg()[0] >= 1.5:
        console.print(
            f"bench: load average {os.getloadavg()[0]:.1f}; waiting up to {limit:.0f} s for a quieter machine"
        )
    while os.getloadavg()[0] >= 1.5 and time.monotonic() < deadline:
        time.sleep(5)


def table(lines: list[rows.Row], console: Console) -> None:
    """Print the rows as one rich table."""
    t = Table(title="evolve bench", show_lines=False)
    for name in ("row", "setting", "measured", "baseline", "ratio", "goal", "met?", "note"):
        t.add_column(name, overflow="fold")
    for r in lines:
        met = "—" if r.met is None else ("[green]yes[/]" if r.met else "[red]no[/]")
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}"
        t.add_row(r.row, r.setting, r.measured, r.baseline, ratio, r.goal, met, r.note)
    console.print(t)


def markdown(lines: list[rows.Row], machine: dict[str, Any], quick: bool) -> str:
    """The same table in Markdown, with the machine it ran on."""
    out = [
        f"Machine: {machine['nproc']} cores, {machine['cpu_model']}, {machine['memory_gb']} GB, "
        f"Python {machine['python']}, {machine['date']}{' (BENCH_QUICK)' if quick else ''}.",
        "",
        "| row | setting | measured | baseline | ratio | goal | met? | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in lines:
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}"
        cells = [r.row, r.setting, r.measured, r.baseline, ratio, r.goal, met, r.note]
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(out) + "\n"


def main() -> int:
    """Run the bench."""
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    wanted = {s.strip() for s in os.environ.get("BENCH_ROWS", "1,2,3,4,5,6").split(",") if s.strip()}
    if "3" in wanted:
        wanted.add("1")
    if "4" in wanted:
        wanted.add("2")
    sizes = rows.Sizes.quick() if quick else rows.Sizes()
    console = Console(width=max(Console().width, 200) if not sys.stdout.isatty() else None)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    data: dict[str, Any] = {}
    lines: list[rows.Row] = []

    if wanted & {"4", "6"}:
        t0 = time.perf_counter()
        for name, error in setup.ensure_all().items():
            if error:
                console.print(f"[yellow]bench: peer venv {name} unavailable: {error}[/]")
        timings["peer venvs"] = time.perf_counter() - t0
    evolve_error = _evolve_ready()
    if evolve_error:
        console.print(f"[yellow]bench: {evolve_error}: evolve rows will show errors[/]")

    plan: list[tuple[str, Any, tuple[Any, ...]]] = []
    order = [("1", rows.row1), ("2", rows.row2), ("3", rows.row3), ("4", rows.row4), ("5", rows.row5), ("6", rows.row6)]
    for key, fn in order:
        if key not in wanted:
            continue
        args: tuple[Any, ...] = (sizes,)
        if key in ("3", "4"):
            args = (sizes, data)
        plan.append((key, fn, args))
    wait_idle(float(os.environ.get("BENCH_WAIT_IDLE", "0") or 0), console)
    loads: dict[str, list[float]] = {}
    for key, fn, args in plan:
        console.print(f"bench: row {key} ... (load average {os.getloadavg()[0]:.1f})", highlight=False)
        before = os.getloadavg()[0]
        try:
            outcome, seconds = rows.timed(fn, *args)
        except Exception as exc:  # one broken row must not lose the others
            outcome, seconds = rows.Outcome(rows=[rows._fail(f"{key} (crashed)", "—", repr(exc))]), 0.0
        timings[f"row {key}"] = seconds
        loads[f"row {key}"] = [round(before, 2), round(os.getloadavg()[0], 2)]
        data.update(outcome.data)
        lines.extend(outcome.rows)
        console.print(f"bench: row {key} done in {seconds:.0f} s", highlight=False)

    total = time.perf_counter() - started
    machine = machine_info()
    table(lines, console)
    console.print(f"total {total / 60:.1f} min; " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    busiest = max((max(v) for v in loads.values()), default=0.0)
    if busiest > 2.5:
        console.print(
            f"[yellow]warning: load average reached {busiest:.1f} on {machine['nproc']} cores during the run: "
            "other processes competed for CPU; throughput figures are pessimistic[/]"
        )
    result = {
        "machine": machine,
        "quick": quick,
        "sizes": asdict(sizes),
        "evolve_cmd": evolve_cmd(),
        "total_seconds": total,
        "timings": timings,
        "load_average": loads,
        "rows": [asdict(r) for r in lines],
        "measurements": data,
    }
    tmp = RESULTS.with_name(RESULTS.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, RESULTS)
    MARKDOWN.write_text(markdown(lines, machine, quick))
    console.print(f"wrote {Path(RESULTS).relative_to(REPO)} and {Path(MARKDOWN).relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
