"""`evolve run --dry-run`: the requests round 1 would send and what the run may cost, without any call.

Round 1 is rendered exactly (every evolution prompt, in the configured layout, chunked as configured); later
rounds depend on the model's answers, so they are projected from round 1. The judge prompt is estimated from
the evolution prompt's items, the answers from `answer_tokens` per item. The cacheable share assumes a
provider that caches prefixes of at least 1,024 tokens in 128-token steps (OpenAI): a request whose text
before the image was seen before is billed for that prefix at the cached price.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from evolve.accounting import TokenUsage, estimate_cost, image_tokens, prices_for
from evolve.config import RunConfig
from evolve.operators import choose_operator
from evolve.pipeline import iter_seeds
from evolve.prompts import PromptSet
from evolve.records import Drop, Sample
from evolve.stages import chunks, needs_annotation

CHARS_PER_TOKEN = 4
CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128


@dataclass
class DryRunReport:
    """Counts and token estimates of round 1, and the projection over every round."""

    samples: int = 0
    rejected: int = 0
    operators: Counter[str] = field(default_factory=Counter)
    images: int = 0
    example: str = ""
    calls: Counter[str] = field(default_factory=Counter)
    round_one: TokenUsage = field(default_factory=TokenUsage)
    whole_run: TokenUsage = field(default_factory=TokenUsage)
    cost_round_one: float | None = None
    cost_whole_run: float | None = None

    @property
    def cacheable_share(self) -> float | None:
        """Share of round 1's prompt tokens a prefix-caching provider would serve from its cache."""
        return self.round_one.cached_share()


def estimate_tokens(text: str) -> int:
    """Tokens of a text, estimated as characters / 4 (tiktoken's encodings are not always at hand)."""
    return max(1, len(text) // CHARS_PER_TOKEN)


class _PrefixCache:
    """Which request prefixes a provider has seen, to estimate its cached tokens."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def cached(self, prefix: str) -> int:
        tokens = estimate_tokens(prefix)
        digest = hashlib.blake2b(prefix.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest not in self.seen:
            self.seen.add(digest)
            return 0
        return tokens // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS if tokens >= CACHE_MIN_TOKENS else 0


def _image_size(image: Path | str, side: int) -> tuple[int, int]:
    """The size the image is sent at (its longest side shrunk to --image-size); a URL counts as side × side."""
    if isinstance(image, Path):
        try:
            with Image.open(image) as img:
                width, height = img.size
        except OSError:
            return side, side
        scale = min(1.0, side / max(width, height, 1))
        return max(1, int(width * scale)), max(1, int(height * scale))
    return side, side


def dry_run(config: RunConfig, seeds: list[Path], answer_tokens: int = 350) -> DryRunReport:
    """Render every round-1 request and add up what the run would send."""
    prompts = PromptSet.load(config.prompts)
    report = DryRunReport()
    usage = report.round_one
    cache = _PrefixCache()
    batch = config.batch
    system = prompts.system
    cached_layout = config.prompt_layout == "cached"

    def call(kind: str, fixed: str, text: str, image: int, answer: int) -> None:
        prefix = system + (fixed if cached_layout or not image else "")
        prompt = estimate_tokens(system) + estimate_tokens(fixed + text) + image
        usage.add_call(prompt, answer, cached=False, cached_tokens=cache.cached(prefix), batch=batch)
        report.calls[kind] += 1

    for item in iter_seeds(seeds, config, None):
        if isinstance(item, Drop):
            report.rejected += 1
            continue
        sample, image = item
        operator = choose_operator(config.seed, sample.seed_id, 1, config.weights)
        report.samples += 1
        report.operators[operator] += 1
        cost = 0
        if image is not None and config.images == "send":
            report.images += 1
            cost = image_tokens(config.model, *_image_size(image, config.image_size), config.image_detail)
        judge_image = cost if config.judge_images else 0
        if config.annotate:
            todo = [i for i in sample.qa if needs_annotation(i)]
            for _, part in chunks(todo, config.items_per_call) if todo else []:
                parts = prompts.render_annotation_parts(sample.model_copy(update={"qa": part}))
                call("annotate", parts.fixed, parts.sample, cost, answer_tokens // 2 * len(part))
        for _, part in chunks(sample.qa, config.items_per_call):
            piece = sample.model_copy(update={"qa": part})
            parts = prompts.render_evolution_parts(operator, piece)
            if not report.example:
                report.example = (
                    f"[{operator}] {sample.id}\n--- system ---\n{system}\n--- user (fixed part) ---\n{parts.fixed}\n"
                    f"--- image ---\n--- user (sample part) ---\n{parts.sample}"
                )
            call("evolve", parts.fixed, parts.sample, cost, answer_tokens * len(part))
            judge = prompts.render_judge_parts(piece, _rewritten(piece, answer_tokens))
            for _ in range(config.judge_votes):
                call("judge", judge.fixed, judge.sample, judge_image, 40 * len(part))
            if config.verify == "claims":
                split = prompts.render_claim_split_parts(piece)
                call("claims", split.fixed, split.sample, 0, 60 * len(part))
                check = prompts.render_claim_check_parts(piece, [["a claim"] * 3 for _ in part])
                call("verify", check.fixed, check.sample, cost, 15 * len(part))
    rounds = config.rounds
    report.whole_run = TokenUsage.from_dict({k: v * rounds for k, v in usage.as_dict().items()})
    prices = prices_for(config.model, config.price_in, config.price_out, config.price_cached_in)
    report.cost_round_one = estimate_cost(usage, prices)
    report.cost_whole_run = estimate_cost(report.whole_run, prices)
    return report


def _rewritten(sample: Sample, answer_tokens: int) -> Sample:
    """A stand-in for the rewrite the judge will see: the same items, answers padded to the expected length."""
    pad = " word" * max(0, answer_tokens - 20)
    return sample.model_copy(update={"qa": [i.model_copy(update={"answer": i.answer + pad}) for i in sample.qa]})
