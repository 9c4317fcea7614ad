"""`evolve run --dry-run`: the requests round 1 would send and what the run may cost, without any call.

Later rounds depend on the model's answers, so they are projected from round 1: every round sends one
evolution and one judge request per sample, the judge prompt being about as long as the evolution prompt
plus the rewritten items.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from evolve.accounting import TokenUsage, estimate_cost, prices_for
from evolve.config import RunConfig
from evolve.operators import choose_operator
from evolve.pipeline import iter_seeds
from evolve.prompts import PromptSet
from evolve.records import Drop

IMAGE_TOKENS = 85  # an image sent with detail "low"
CHARS_PER_TOKEN = 4


@dataclass
class DryRunReport:
    """Counts and token estimates of round 1, and the projection over every round."""

    samples: int = 0
    rejected: int = 0
    operators: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    images: int = 0
    example: str = ""
    round_one: TokenUsage = field(default_factory=TokenUsage)
    whole_run: TokenUsage = field(default_factory=TokenUsage)
    cost_round_one: float | None = None
    cost_whole_run: float | None = None


def estimate_tokens(text: str) -> int:
    """Tokens of a text, estimated as characters / 4 (tiktoken's encodings are not always at hand)."""
    return max(1, len(text) // CHARS_PER_TOKEN)


def dry_run(config: RunConfig, seeds: list[Path], answer_tokens: int = 700) -> DryRunReport:
    """Render every round-1 evolution prompt and add up what the run would send."""
    prompts = PromptSet.load(config.prompts)
    report = DryRunReport()
    for item in iter_seeds(seeds, config):
        if isinstance(item, Drop):
            report.rejected += 1
            continue
        sample, image = item
        operator = choose_operator(config.seed, sample.seed_id, 1, config.weights)
        text = prompts.render_evolution(operator, sample)
        if not report.example:
            report.example = f"[{operator}] {sample.id}\n--- system ---\n{prompts.system}\n--- user ---\n{text}"
        report.samples += 1
        report.operators[operator] += 1
        sends_image = image is not None and config.images == "send"
        report.images += sends_image
        report.prompt_tokens += estimate_tokens(prompts.system) + estimate_tokens(text)
        report.prompt_tokens += IMAGE_TOKENS if sends_image else 0
    answers = min(answer_tokens, config.max_tokens)
    evolve_in = report.prompt_tokens
    judge_in = evolve_in + report.samples * answers
    report.round_one = TokenUsage(
        requests=2 * report.samples,
        prompt_tokens=evolve_in + judge_in,
        completion_tokens=report.samples * (answers + answers // 3),
    )
    report.whole_run = TokenUsage(
        requests=report.round_one.requests * config.rounds,
        prompt_tokens=report.round_one.prompt_tokens * config.rounds,
        completion_tokens=report.round_one.completion_tokens * config.rounds,
    )
    prices = prices_for(config.model, config.price_in, config.price_out)
    report.cost_round_one = estimate_cost(report.round_one, prices)
    report.cost_whole_run = estimate_cost(report.whole_run, prices)
    return report
