"""Token usage and what it costs: list prices, cached-input prices and the Batch API's discount."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

BATCH_DISCOUNT = 0.5
"""The Batch API bills half the list price (OpenAI); applied to every token of a batch call."""

KNOWN_PRICES: dict[str, tuple[float, float, float]] = {
    # model: US$ per million (input, cached input, output), list prices; --price-in/--price-cached-in/--price-out
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4.1": (2.00, 0.50, 8.00),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-4.1-nano": (0.10, 0.025, 0.40),
}


@dataclass(frozen=True)
class Prices:
    """US$ per million tokens: input, cached input (served from the provider's prefix cache) and output."""

    input: float
    cached_input: float
    output: float

    def as_list(self) -> list[float]:
        """[input, cached input, output] for run.json."""
        return [self.input, self.cached_input, self.output]


@dataclass
class TokenUsage:
    """Calls and their tokens. Answers from the response cache are counted apart (free); failed calls (after
    their retries) apart too; calls answered through the Batch API apart, since they cost half."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Of prompt_tokens, those the provider served from its prefix cache (billed at the cached price)."""
    completion_tokens: int = 0
    failed: int = 0
    batch_requests: int = 0
    batch_prompt_tokens: int = 0
    batch_cached_tokens: int = 0
    batch_completion_tokens: int = 0

    def add_call(
        self, prompt_tokens: int, completion_tokens: int, cached: bool, cached_tokens: int = 0, batch: bool = False
    ) -> None:
        """Count one answered call."""
        if cached:
            self.cached += 1
        elif batch:
            self.batch_requests += 1
            self.batch_prompt_tokens += prompt_tokens
            self.batch_cached_tokens += cached_tokens
            self.batch_completion_tokens += completion_tokens
        else:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.cached_tokens += cached_tokens
            self.completion_tokens += completion_tokens

    def merge(self, other: TokenUsage) -> None:
        """Add another usage to this one."""
        for name in _FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def paid_prompt_tokens(self) -> int:
        """Prompt tokens of every call that was paid for (live and batch)."""
        return self.prompt_tokens + self.batch_prompt_tokens

    @property
    def paid_cached_tokens(self) -> int:
        """Of those, the ones served from the provider's prefix cache."""
        return self.cached_tokens + self.batch_cached_tokens

    def cached_share(self) -> float | None:
        """Share of paid prompt tokens served from the provider's prefix cache."""
        total = self.paid_prompt_tokens
        return self.paid_cached_tokens / total if total else None

    def as_dict(self) -> dict[str, int]:
        """Plain numbers for run.json (by hand: `dataclasses.asdict` deep-copies, ~60 µs a call)."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TokenUsage:
        """Read back what as_dict wrote (missing fields are 0)."""
        return cls(**{name: int((data or {}).get(name) or 0) for name in _FIELDS})


_FIELDS = tuple(f.name for f in fields(TokenUsage))


def prices_for(
    model: str, price_in: float | None, price_out: float | None, price_cached_in: float | None = None
) -> Prices | None:
    """The prices of a model: the flags, else the known list prices, else None (no estimate)."""
    known = KNOWN_PRICES.get(model)
    if price_in is None and price_out is None and price_cached_in is None:
        return None if known is None else Prices(*known)
    base_in, base_cached, base_out = known or (0.0, None, 0.0)
    given_in = base_in if price_in is None else price_in
    cached = price_cached_in if price_cached_in is not None else base_cached if price_in is None else given_in
    return Prices(given_in, given_in if cached is None else cached, base_out if price_out is None else price_out)


def _cost(prompt: int, cached: int, completion: int, prices: Prices) -> float:
    uncached = max(prompt - cached, 0)
    return (uncached * prices.input + cached * prices.cached_input + completion * prices.output) / 1_000_000


def estimate_cost(usage: TokenUsage, prices: Prices | None) -> float | None:
    """US$ for the tokens paid for: live calls at list prices (cached input at its price), Batch API calls at
    half of that, answers from the response cache free; None without prices."""
    if prices is None:
        return None
    live = _cost(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, prices)
    batch = _cost(usage.batch_prompt_tokens, usage.batch_cached_tokens, usage.batch_completion_tokens, prices)
    return live + BATCH_DISCOUNT * batch


IMAGE_TILE_TOKENS: dict[str, tuple[int, int]] = {
    # model family: (base tokens, tokens per 512-px tile at high detail), OpenAI's published image costs
    "gpt-4o-mini": (2833, 5667),
    "gpt-4o": (85, 170),
}
IMAGE_PATCH_TOKENS: dict[str, float] = {
    # model family: tokens per 32-px patch (at most 1,536 patches), OpenAI's published image costs
    "gpt-4.1-nano": 2.46,
    "gpt-4.1-mini": 1.62,
    "gpt-4.1": 1.0,
}
MAX_PATCHES = 1536


def image_tokens(model: str, width: int, height: int, detail: str) -> int:
    """Prompt tokens one image costs on OpenAI.

    gpt-4o family (others are estimated like it): low is the base; high is base + tiles of 512 px after scaling
    the image to fit 2048 px and a shortest side of at most 768 px; auto is low when the image fits in 512 ×
    512, else high. gpt-4.1 family: 32-px patches (at most 1,536) times the model's multiplier, whatever the
    detail."""
    patch = next((rate for name, rate in IMAGE_PATCH_TOKENS.items() if model.startswith(name)), None)
    if patch is not None:
        patches = -(-width // 32) * -(-height // 32)
        if patches > MAX_PATCHES:
            scale = (MAX_PATCHES / patches) ** 0.5
            patches = -(-int(width * scale) // 32) * -(-int(height * scale) // 32)
        return round(min(patches, MAX_PATCHES) * patch)
    family = next((name for name in IMAGE_TILE_TOKENS if model.startswith(name)), "gpt-4o")
    base, per_tile = IMAGE_TILE_TOKENS[family]
    if detail == "auto":
        detail = "low" if max(width, height) <= 512 else "high"
    if detail == "low" or width <= 0 or height <= 0:
        return base
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tiles = -(-int(w) // 512) * -(-int(h) // 512)
    return base + per_tile * tiles
