"""What `evolve run`, `evolve merge`, `evolve eliminate` and `--dry-run` print: tables rendered from the manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evolve.config import RunConfig
from evolve.manifest import RoundSummary, RunManifest


def fmt(value: Any, pattern: str = "{:,}") -> str:
    """A number for a table cell ("–" when unknown)."""
    return "–" if value is None else pattern.format(value)


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "–"


def _drops(stage: str) -> Callable[[RoundSummary], str]:
    return lambda r: fmt(r.items.get(f"dropped_{stage}", 0))


SUMMARY_ROWS: list[tuple[str, Callable[[RoundSummary], str]]] = [
    ("samples", lambda r: fmt(r.samples)),
    ("evolved", lambda r: fmt(r.evolved)),
    ("failed calls (redone next time)", lambda r: fmt(r.failed)),
    ("unreadable answers", lambda r: fmt(r.unreadable)),
    ("answers cut off / items re-asked / lost", lambda r: (
        f"{r.answers.get('cut_off', 0):,} / {r.answers.get('reasked', 0):,} / {r.items.get('lost', 0):,}")),
    ("items dropped by rule checks", _drops("check")),
    ("items judged", lambda r: fmt(r.judged_items)),
    ("improvement rate", lambda r: fmt(r.improvement_rate, "{:.1%}")),
    ("vote agreement", lambda r: fmt(r.vote_agreement, "{:.1%}")),
    ("items dropped by verify / dedup", lambda r: f"{_drops('verify')(r)} / {_drops('dedup')(r)}"),
    ("kept samples", lambda r: fmt(r.kept_samples)),
    ("kept items", lambda r: fmt(r.kept_items)),
    ("carried forward", lambda r: fmt(r.carried_forward)),
    ("mean accepted score", lambda r: fmt(r.mean_accepted_score, "{:.2f}")),
    ("operators", lambda r: " ".join(f"{k[:4]}={v}" for k, v in r.operators.items()) or "–"),
    ("calls paid / from cache / failed", lambda r: (
        f"{r.usage.requests + r.usage.batch_requests:,} / {r.usage.cached:,} / {r.usage.failed:,}")),
    ("tokens in / out", lambda r: f"{r.usage.paid_prompt_tokens:,} / "
                                  f"{r.usage.completion_tokens + r.usage.batch_completion_tokens:,}"),
    ("input served from provider cache", lambda r: _share(r.usage.paid_cached_tokens, r.usage.paid_prompt_tokens)),
    ("est. cost US$", lambda r: fmt(r.cost_usd, "{:.4f}")),
]  # fmt: skip


def print_run_summary(console: Console, manifest: RunManifest, message: Callable[[str], None], *, quiet: bool) -> None:
    """The per-round table, the drop reasons and the totals."""
    rounds = manifest.rounds
    if not quiet and rounds:
        table = Table(title=f"evolve run · {manifest.status}", title_justify="left")
        table.add_column("")
        for number in rounds:
            table.add_column("seeds annotated" if number == "0" else f"round {number}", justify="right")
        for label, cell in SUMMARY_ROWS:
            table.add_row(label, *(cell(summary) for summary in rounds.values()))
        console.print(table)
    for number, summary in rounds.items():
        for reason, count in summary.drop_reasons.items():
            message(f"round {number}: {count:,} × {reason}")
        for rule, count in summary.checks.items():
            message(f"round {number}: rule {rule} failed {count:,} ×")
    cost = f"; est. cost US$ {manifest.cost_usd:.4f}" if manifest.cost_usd is not None else ""
    message(
        f"{manifest.final_samples:,} evolved samples in final.jsonl; {manifest.rejected_seeds:,} seeds rejected{cost}"
    )
    if manifest.status == "waiting" and manifest.batch:
        if manifest.batch.get("pending"):
            message("batches are pending: run the same command again later to collect them")
        else:  # after --cancel
            message("no batch is pending: run the same command again to send the requests")


def elimination_table(data: dict[str, Any]) -> Table:
    """The counts of `evolve eliminate`."""
    table = Table(title="evolve eliminate", title_justify="left")
    for key in data:
        table.add_column(key.replace("_", " "), justify="right")
    table.add_row(*(fmt(v, "{:.1%}") if k == "improvement_rate" else fmt(v) for k, v in data.items()))
    return table


def _engine(config: RunConfig) -> str:
    """How the run would send its calls, as the dry run's title names it."""
    if config.batch:
        return "Batch API (half price)"
    if config.executor == "ray":
        return "live, Ray executor"
    if config.workers > 1:
        return f"live, {config.workers} worker processes"
    return "live"


def print_dry_run(console: Console, config: RunConfig, files: list[Path]) -> None:
    """An example request, then the calls, tokens and cost to expect."""
    from evolve.dryrun import dry_run

    report = dry_run(config, files)
    console.print(report.example, markup=False, highlight=False)
    engine = _engine(config)
    table = Table(title=f"evolve run --dry-run · {config.model} · {config.rounds} rounds · {engine}",
                  title_justify="left")  # fmt: skip
    for column in ("", "requests", "input tokens", "of which cacheable", "output tokens", "est. cost US$"):
        table.add_column(column, justify="right")
    for label, usage, cost in (
        ("round 1", report.round_one, report.cost_round_one),
        (f"all {config.rounds} rounds", report.whole_run, report.cost_whole_run),
    ):
        calls = usage.requests + usage.batch_requests
        table.add_row(label, f"{calls:,}", f"~{usage.paid_prompt_tokens:,}", f"~{usage.paid_cached_tokens:,}",
                      f"~{usage.completion_tokens + usage.batch_completion_tokens:,}", fmt(cost, "{:.2f}"))  # fmt: skip
    console.print(table)
    operators = ", ".join(f"{k} {v:,}" for k, v in sorted(report.operators.items()))
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(report.calls.items()))
    share = report.cacheable_share
    console.print(
        f"{report.samples:,} samples ({operators}), {report.images:,} with an image, {report.rejected:,} rejected; "
        f"calls in round 1: {kinds}; cacheable input share {fmt(share, '{:.1%}')} "
        f"(layout {config.prompt_layout}); tokens are characters/4 estimates"
    )
