"""Terminal progress of a run: one bar per round (done / failed / kept) and a line of request rates."""

from __future__ import annotations

import asyncio
import time

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from evolve.pipeline import Runner, RunResult


class RunView:
    """A renderable that reads a runner's live counters each time the display refreshes."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def __rich__(self) -> RenderableType:
        counters = self.runner.counters
        total = counters.total or None
        grid = Table.grid(padding=(0, 1))
        for number, round_counters in counters.rounds.items():
            bar = ProgressBar(total=float(total or 1), completed=float(round_counters.done), width=30)
            amount = f"{round_counters.done:,}/{total:,}" if total else f"{round_counters.done:,}"
            grid.add_row(
                f"round {number}",
                bar,
                f"{amount} done · {round_counters.failed:,} failed · {round_counters.kept:,} kept",
            )
        usage = counters.usage
        elapsed = max(time.monotonic() - counters.started, 1e-6)
        line = (
            f"requests {usage.requests:,} ({usage.requests / elapsed:,.1f}/s) · cached {usage.cached:,} · "
            f"tokens {usage.prompt_tokens:,} in / {usage.completion_tokens:,} out · "
            f"{elapsed:,.0f} s"
        )
        if counters.rejected:
            line += f" · {counters.rejected:,} seeds rejected"
        return Group(grid, line)


def run_with_progress(runner: Runner, *, quiet: bool) -> RunResult:
    """Run to the end, showing live progress on a terminal (never on cron's pipes)."""
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        return asyncio.run(runner.run())
    with Live(RunView(runner), console=console, refresh_per_second=4, transient=False):
        return asyncio.run(runner.run())
