"""Token usage per round and the estimated cost of a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# US$ per million input / output tokens of common OpenAI models (list prices; override with --price-in/out).
KNOWN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}


@dataclass
class TokenUsage:
    """Answered calls and their tokens; cache hits are counted apart and cost nothing, failed calls (after
    their retries) apart too."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: int = 0

    def add_call(self, prompt_tokens: int, completion_tokens: int, cached: bool) -> None:
        """Count one answered call."""
        if cached:
            self.cached += 1
            return
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def merge(self, other: TokenUsage) -> None:
        """Add another usage to this one."""
        self.requests += other.requests
        self.cached += other.cached
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.failed += other.failed

    def as_dict(self) -> dict[str, int]:
        """Plain numbers for run.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TokenUsage:
        """Read back what as_dict wrote."""
        fields = ("requests", "cached", "prompt_tokens", "completion_tokens", "failed")
        return cls(**{k: int((data or {}).get(k, 0)) for k in fields})


def prices_for(model: str, price_in: float | None, price_out: float | None) -> tuple[float, float] | None:
    """(input, output) US$ per million tokens: the flags, else a known list price, else None."""
    known = KNOWN_PRICES.get(model)
    if price_in is None and price_out is None:
        return known
    base = known or (0.0, 0.0)
    return (base[0] if price_in is None else price_in, base[1] if price_out is None else price_out)


def estimate_cost(usage: TokenUsage, prices: tuple[float, float] | None) -> float | None:
    """US$ for the tokens actually paid for (cache hits excluded), or None without prices."""
    if prices is None:
        return None
    return (usage.prompt_tokens * prices[0] + usage.completion_tokens * prices[1]) / 1_000_000
