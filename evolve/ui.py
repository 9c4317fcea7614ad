"""Terminal progress of a run: one bar per round (done / failed / kept), rates, ETA and cost so far."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from evolve.pipeline import Run

T = TypeVar("T")


def eta_seconds(done: int, total: int | None, elapsed: float) -> float | None:
    """Seconds left at the rate so far, or None when it cannot be told yet."""
    if not total or done <= 0 or done >= total:
        return None
    return elapsed / done * (total - done)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RunView:
    """A renderable that reads a run's live counters each time the display refreshes."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __rich__(self) -> RenderableType:
        counters = self.run.counters
        total = counters.total or None
        elapsed = max(time.monotonic() - counters.started, 1e-6)
        grid = Table.grid(padding=(0, 1))
        for number, live in counters.rounds.items():
            bar = ProgressBar(total=float(total or 1), completed=float(live.done), width=30)
            amount = f"{live.done:,}/{total:,}" if total else f"{live.done:,}"
            waiting = f" · {live.waiting:,} waiting for a batch" if live.waiting else ""
            name = "annotate" if number == 0 else f"round {number}"
            grid.add_row(name, bar, f"{amount} done · {live.failed:,} failed · {live.kept:,} kept{waiting}")
        usage = counters.usage
        paid = usage.requests + usage.batch_requests
        line = (
            f"requests {paid:,} ({paid / elapsed:,.1f}/s) · cached {usage.cached:,} · "
            f"tokens {usage.paid_prompt_tokens:,} in / {usage.completion_tokens + usage.batch_completion_tokens:,} out"
            f" · {_clock(elapsed)}"
        )
        done = sum(c.done for c in counters.rounds.values())
        work = (total or 0) * len(counters.rounds)
        eta = eta_seconds(done, work, elapsed)
        if eta is not None:
            line += f" · ETA {_clock(eta)}"
        if counters.cost is not None:
            line += f" · US$ {counters.cost:.4f} this run"
        if counters.rejected:
            line += f" · {counters.rejected:,} seeds rejected"
        return Group(grid, line)


def run_with_progress(run: Run, work: Coroutine[Any, Any, T], *, quiet: bool) -> T:
    """Run `work` to the end, showing live progress on a terminal (never on cron's pipes)."""
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        return asyncio.run(work)
    with Live(RunView(run), console=console, refresh_per_second=4, transient=False):
        return asyncio.run(work)
