"""run.json: the typed manifest of a run, its one writer, and the exit code it implies.

Every engine (live, Batch API, workers, Ray) and `evolve merge` write run.json through `write_manifest`; the
per-round numbers come from the round's outcome lines (`summarize_round`), so they are right across resumes,
merges and engines. The CLI takes its exit code from `RunManifest.exit_code` and nowhere else.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from evolve import __version__
from evolve.accounting import Prices, TokenUsage, estimate_cost
from evolve.errors import UsageError
from evolve.runfolder import RunFolder, iter_outcomes, write_atomic

Status = Literal["running", "waiting", "done", "done_with_failures", "stopped", "interrupted", "failed"]
"""running: in progress (or killed); waiting: a Batch API batch is pending; done; done_with_failures: finished
with failed sample-rounds; stopped: --max-failures reached; interrupted: a signal; failed: an error."""
Mode = Literal["live", "batch", "workers", "ray", "merged"]
EXIT_CODES: dict[str, int] = {"done": 0, "waiting": 0, "done_with_failures": 3, "stopped": 3, "failed": 1}


def now() -> str:
    """The time as run.json writes it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class RoundSummary(BaseModel):
    """The numbers of one round, summed over its outcome lines."""

    model_config = ConfigDict(extra="ignore")

    samples: int = 0
    evolved: int = 0
    evolve_failed: int = 0
    judge_failed: int = 0
    failed: int = 0
    """Sample-rounds a call failed in (any stage)."""
    unreadable: int = 0
    judged_samples: int = 0
    judged_items: int = 0
    improved_items: int = 0
    kept_samples: int = 0
    kept_items: int = 0
    carried_forward: int = 0
    improvement_rate: float | None = None
    mean_accepted_score: float | None = None
    vote_agreement: float | None = None
    """Mean share of votes agreeing with the majority, over items judged with --judge-votes > 1."""
    operators: dict[str, int] = Field(default_factory=dict)
    items: dict[str, int] = Field(default_factory=dict)
    """Item counts summed: parent, evolved, judged, kept, and dropped per stage (check, eliminate, verify, ...)."""
    checks: dict[str, int] = Field(default_factory=dict)
    """Rule-check violations by rule."""
    answers: dict[str, int] = Field(default_factory=dict)
    """calls, cut_off (finish_reason length), reasked and lost items."""
    drop_reasons: dict[str, int] = Field(default_factory=dict)
    usage: TokenUsage = Field(default_factory=TokenUsage)
    cost_usd: float | None = None


class RunManifest(BaseModel):
    """run.json."""

    model_config = ConfigDict(extra="ignore")

    tool: str = "evolve"
    version: str = __version__
    created: str = Field(default_factory=now)
    updated: str = Field(default_factory=now)
    status: Status = "running"
    mode: Mode = "live"
    seeds: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    fingerprint: dict[str, Any] = Field(default_factory=dict)
    prompt_hashes: dict[str, str] = Field(default_factory=dict)
    prompt_sources: dict[str, str] = Field(default_factory=dict)
    rng_seed: int = 0
    rounds: dict[str, RoundSummary] = Field(default_factory=dict)
    final_samples: int = 0
    rejected_seeds: int = 0
    usage: TokenUsage = Field(default_factory=TokenUsage)
    cost_usd: float | None = None
    prices_per_million: list[float] | None = None
    """[input, cached input, output] US$ per million tokens used for the estimates."""
    batch: dict[str, Any] | None = None
    merged_from: list[str] | None = None
    error: str | None = None
    signal: int | None = None

    def exit_code(self) -> int:
        """The CLI's exit code for this state of the run."""
        if self.status == "interrupted":
            return 128 + (self.signal or 15)
        return EXIT_CODES.get(self.status, 1)

    def failures(self) -> int:
        """Sample-rounds in which a call failed or an answer could not be read."""
        return sum(r.failed + r.unreadable for r in self.rounds.values())

    def finished(self, *, stopped: bool = False) -> Status:
        """The status of a run that ran to its end (or to --max-failures)."""
        if stopped:
            return "stopped"
        return "done_with_failures" if self.failures() else "done"


def read_manifest(folder: RunFolder) -> RunManifest | None:
    """The manifest an earlier invocation wrote, or None."""
    raw = folder.read_run_json()
    if raw is None:
        return None
    try:
        return RunManifest.model_validate(raw)
    except ValueError as exc:
        raise UsageError(f"{folder.run_json}: not a run manifest ({exc}); move it away to start over") from exc


def write_manifest(folder: RunFolder, manifest: RunManifest) -> None:
    """The one writer of run.json (atomic)."""
    manifest.updated = now()
    write_atomic(folder.run_json, manifest.model_dump_json(indent=2) + "\n")


def summarize_round(folder: RunFolder, number: int, prices: Prices | None) -> RoundSummary:
    """A round's numbers from its outcome lines."""
    summary = RoundSummary()
    operators: Counter[str] = Counter()
    items: Counter[str] = Counter()
    checks: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    scores: list[float] = []
    agreement: list[float] = []
    usage = TokenUsage()
    for outcome in iter_outcomes(folder, number):
        summary.samples += 1
        if outcome.operator:
            operators[outcome.operator] += 1
        items.update(outcome.items)
        checks.update(outcome.rules)
        answers.update(outcome.answers)
        reasons.update(outcome.reasons)
        scores.extend(outcome.scores)
        agreement.extend(outcome.agreement)
        usage.merge(TokenUsage.from_dict(outcome.usage))
        summary.failed += outcome.failed is not None and not outcome.unreadable
        summary.unreadable += outcome.unreadable
        summary.evolve_failed += outcome.failed in ("evolve", "annotate")
        summary.judge_failed += outcome.failed == "judge"
        summary.evolved += outcome.items.get("evolved", 0) > 0 or (number == 0 and outcome.failed is None)
        summary.judged_samples += outcome.items.get("judged", 0) > 0
        summary.kept_samples += outcome.kept
    summary.judged_items = items.get("judged", 0)
    summary.improved_items = items.get("improved", 0)
    summary.kept_items = items.get("kept", 0)
    summary.carried_forward = summary.samples - summary.kept_samples
    judged = summary.judged_items
    summary.improvement_rate = round(summary.improved_items / judged, 4) if judged else None
    summary.mean_accepted_score = round(sum(scores) / len(scores), 3) if scores else None
    summary.vote_agreement = round(sum(agreement) / len(agreement), 4) if agreement else None
    summary.operators = dict(sorted(operators.items()))
    summary.items = dict(sorted(items.items()))
    summary.checks = dict(sorted(checks.items()))
    summary.answers = dict(sorted(answers.items()))
    summary.drop_reasons = dict(reasons.most_common(10))
    summary.usage = usage
    summary.cost_usd = estimate_cost(usage, prices)
    return summary


def summarize_rounds(folder: RunFolder, numbers: range, prices: Prices | None, manifest: RunManifest) -> None:
    """Fill the manifest's per-round numbers, total usage and cost from the round files."""
    total = TokenUsage()
    manifest.rounds = {}
    for number in numbers:
        summary = summarize_round(folder, number, prices)
        manifest.rounds[str(number)] = summary
        total.merge(summary.usage)
    manifest.usage = total
    manifest.cost_usd = estimate_cost(total, prices)
    manifest.prices_per_million = prices.as_list() if prices else None
