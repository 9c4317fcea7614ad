"""``python -m bench`` (``make bench``): run every row, print one table, write bench/results.json and results.md.

Environment:
- ``BENCH_QUICK=1``: smaller sizes (~5 min smoke run, plus ~2 min the first time for the peer venvs), written to
  results-quick.json and results-quick.md;
- ``BENCH_ROWS=1,2,3``: only these rows (row 4 needs row 2's evolve figures and row 7 row 3's runs: they are
  run too); their lines replace the same rows' in the existing results file, the other rows are kept;
- ``BENCH_WAIT_IDLE=S``: first wait up to S seconds for the load average to fall below 1.5 (shared machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import rows, rows_cache, rows_dedup, rows_report, rows_scale, rows_stats, setup, workload
from bench.common import REPO, WORKLOAD, evolve_cmd, machine_info, run

RESULTS = REPO / "bench" / "results.json"
MARKDOWN = REPO / "bench" / "results.md"
ALL_ROWS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12")


def row_id(label: str) -> str:
    """The row number a table line belongs to ("3 ceiling: ..." → "3")."""
    return label.split(" ", 1)[0]


def merge(previous: dict[str, Any], result: dict[str, Any], ran: set[str]) -> dict[str, Any]:
    """``result`` (rows ``ran`` only) merged into ``previous``: the rows not run now keep their earlier lines."""
    kept = [r for r in previous.get("rows", []) if row_id(r["row"]) not in ran]
    lines = sorted(kept + result["rows"], key=lambda r: int(row_id(r["row"])) if row_id(r["row"]).isdigit() else 99)
    dates = {k: v for k, v in previous.get("row_dates", {}).items() if k not in ran}
    if not previous.get("row_dates"):  # a results file from before per-row dates: all its rows share its date
        old = previous.get("machine", {}).get("date", "")
        dates = {row_id(r["row"]): old for r in kept}
    dates.update(result["row_dates"])
    return {
        **result,
        "total_seconds": previous.get("total_seconds", 0.0),
        "timings": {**previous.get("timings", {}), **result["timings"]},
        "load_average": {**previous.get("load_average", {}), **result["load_average"]},
        "rows": lines,
        "measurements": {**previous.get("measurements", {}), **result["measurements"]},
        "row_dates": dict(sorted(dates.items())),
        "last_partial_run": {"rows": sorted(ran), "total_seconds": result["total_seconds"]},
    }


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


def markdown(lines: list[rows.Row], machine: dict[str, Any], quick: bool, dates: dict[str, str] | None = None) -> str:
    """The same table in Markdown, with the machine it ran on (and when each row ran, if not all at once)."""
    out = [
        f"Machine: {machine['nproc']} cores, {machine['cpu_model']}, {machine['memory_gb']} GB, "
        f"Python {machine['python']}, {machine['date']}{' (BENCH_QUICK)' if quick else ''}.",
    ]
    by_date: dict[str, list[str]] = {}
    for key, date in (dates or {}).items():
        by_date.setdefault(date, []).append(key)
    if len(by_date) > 1:
        out.append("Rows measured: " + "; ".join(f"{', '.join(k)} at {d}" for d, k in sorted(by_date.items())) + ".")
    out += [
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
    wanted = {s.strip() for s in os.environ.get("BENCH_ROWS", ",".join(ALL_ROWS)).split(",") if s.strip()}
    if "4" in wanted:
        wanted.add("2")
    if "7" in wanted:
        wanted.add("3")
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
    workload.ensure_demo_seeds()
    console.print(f"bench: workload: {WORKLOAD}", highlight=False)
    evolve_error = _evolve_ready()
    if evolve_error:
        console.print(f"[yellow]bench: {evolve_error}: evolve rows will show errors[/]")

    plan: list[tuple[str, Any, tuple[Any, ...]]] = []
    order = [("1", rows.row1), ("2", rows.row2), ("3", rows.row3), ("4", rows.row4), ("5", rows.row5), ("6", rows.row6),
             ("7", rows_scale.row7), ("8", rows_scale.row8), ("9", rows_stats.row9), ("10", rows_dedup.row10),
             ("11", rows_report.row11), ("12", rows_cache.row12)]  # fmt: skip
    for key, fn in order:
        if key not in wanted:
            continue
        args: tuple[Any, ...] = (sizes,)
        if key in ("4", "7"):
            args = (sizes, data)
        plan.append((key, fn, args))
    wait_idle(float(os.environ.get("BENCH_WAIT_IDLE", "0") or 0), console)
    loads: dict[str, list[float]] = {}
    crashed: list[str] = []
    for key, fn, args in plan:
        console.print(f"bench: row {key} ... (load average {os.getloadavg()[0]:.1f})", highlight=False)
        before = os.getloadavg()[0]
        try:
            outcome, seconds = rows.timed(fn, *args)
        except Exception as exc:  # one broken row must not lose the others
            outcome, seconds = rows.Outcome(rows=[rows._fail(f"{key} (crashed)", "—", repr(exc))]), 0.0
            crashed.append(key)
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
        "workload": WORKLOAD,
        "sizes": asdict(sizes),
        "evolve_cmd": evolve_cmd(),
        "total_seconds": total,
        "timings": timings,
        "load_average": loads,
        "rows": [asdict(r) for r in lines],
        "measurements": data,
        "row_dates": {key: machine["date"] for key, _, _ in plan},
    }
    # A smoke run never overwrites the full run's figures.
    results = RESULTS.with_name("results-quick.json") if quick else RESULTS
    md = MARKDOWN.with_name("results-quick.md") if quick else MARKDOWN
    ran = {key for key, _, _ in plan}
    if ran != set(ALL_ROWS) and results.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            result = merge(json.loads(results.read_text()), result, ran)
    tmp = results.with_name(results.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, results)
    md.write_text(markdown([rows.Row(**r) for r in result["rows"]], machine, quick, result["row_dates"]))
    console.print(f"wrote {results.relative_to(REPO)} and {md.relative_to(REPO)}")
    if crashed:
        console.print(f"[red]bench: row(s) {', '.join(crashed)} crashed (see the table): exit 1[/]")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
