"""The three MMEvol evolution operators and the per-sample, per-round choice among them."""

from __future__ import annotations

import hashlib
import random

from evolve.errors import UsageError

OPERATORS = ("perceptual", "reasoning", "interaction")
DEFAULT_WEIGHTS: dict[str, float] = {"perceptual": 0.5, "reasoning": 0.25, "interaction": 0.25}
OFFICIAL_TAGS = {"bf_in_breath": "perceptual", "df_cot": "reasoning", "df_format": "interaction"}


def parse_weights(text: str) -> dict[str, float]:
    """Read `perceptual=0.5,reasoning=0.25,interaction=0.25` (missing operators get weight 0)."""
    weights = dict.fromkeys(OPERATORS, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = OFFICIAL_TAGS.get(name.strip(), name.strip())
        if not sep or name not in weights:
            raise UsageError(f"--weights: expected operator=weight with operators {', '.join(OPERATORS)}")
        try:
            weights[name] = float(value)
        except ValueError as exc:
            raise UsageError(f"--weights: {value!r} is not a number") from exc
    return check_weights(weights)


def check_weights(weights: dict[str, float]) -> dict[str, float]:
    """Refuse negative weights, unknown operators and an all-zero mix."""
    unknown = set(weights) - set(OPERATORS)
    if unknown:
        raise UsageError(f"--weights: unknown operator {sorted(unknown)[0]!r}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise UsageError("--weights: weights must be >= 0 and not all 0")
    return {name: float(weights.get(name, 0.0)) for name in OPERATORS}


def sample_rng(seed: int, sample_id: str, round_number: int, purpose: str = "operator") -> random.Random:
    """An RNG for one sample in one round, independent of order, concurrency, resume and sharding."""
    digest = hashlib.sha256(f"{seed}\x00{sample_id}\x00{round_number}\x00{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def choose_operator(seed: int, sample_id: str, round_number: int, weights: dict[str, float]) -> str:
    """Draw the operator that evolves `sample_id` in `round_number`."""
    rng = sample_rng(seed, sample_id, round_number)
    names = list(OPERATORS)
    return rng.choices(names, weights=[weights.get(n, 0.0) for n in names], k=1)[0]


def shard_of(sample_id: str, shards: int) -> int:
    """The shard (0 … shards-1) a seed belongs to, by a stable hash of its id."""
    digest = hashlib.sha256(sample_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards
