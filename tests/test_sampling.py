"""Reservoir sampling (uniform, seeded, bounded) and the 95% margin of error of a sampled share."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from evolve.sampling import Reservoir, margin_of_error


def test_short_stream_is_kept_whole_in_order() -> None:
    reservoir: Reservoir[int] = Reservoir(10, random.Random(1))
    for value in range(7):
        reservoir.offer(value)
    assert reservoir.items == list(range(7)) and reservoir.seen == 7


def test_sample_is_bounded_and_reproducible() -> None:
    def draw(seed: int) -> list[int]:
        reservoir: Reservoir[int] = Reservoir(50, random.Random(seed))
        for value in range(100_000):
            reservoir.offer(value)
        assert len(reservoir.items) == 50 and reservoir.seen == 100_000
        return reservoir.items

    first = draw(3)
    assert draw(3) == first
    assert draw(4) != first
    assert len(set(first)) == 50
    assert max(first) > 50_000  # late items get in too


def test_offer_from_builds_only_the_kept_items() -> None:
    plain: Reservoir[str] = Reservoir(100, random.Random(5))
    lazy: Reservoir[str] = Reservoir(100, random.Random(5))
    built: list[int] = []

    def make(value: int) -> str:
        built.append(value)
        return f"item {value}"

    for value in range(50_000):
        plain.offer(f"item {value}")
        lazy.offer_from(make, value)
    assert lazy.items == plain.items and lazy.seen == plain.seen == 50_000
    # Algorithm L keeps about size * (1 + ln(N / size)) items in all: here ~720 of 50,000
    assert 100 < len(built) < 2_000
    assert set(lazy.items) <= {f"item {v}" for v in built}


def test_every_position_is_equally_likely() -> None:
    """2,000 samples of 10 out of 100: each position is kept ~200 times (chi-square, 99 d.o.f., p > 0.001)."""
    rng = random.Random(11)
    hits: Counter[int] = Counter()
    for _ in range(2000):
        reservoir: Reservoir[int] = Reservoir(10, rng)
        for value in range(100):
            reservoir.offer(value)
        hits.update(reservoir.items)
    expected = 2000 * 10 / 100
    chi2 = sum((hits[v] - expected) ** 2 / expected for v in range(100))
    assert chi2 < 148.2  # the 0.999 quantile of chi-square with 99 degrees of freedom
    assert min(hits.values()) > 150 and max(hits.values()) < 250


def test_reservoir_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Reservoir(0, random.Random(0))


def test_margin_of_error() -> None:
    # the textbook value for p = 0.5, n = 100 of a huge population: 1.96 * 0.05
    assert margin_of_error(0.5, 100, 10**12) == pytest.approx(0.098, abs=1e-3)
    # finite population correction: 100 of 400
    assert margin_of_error(0.5, 100, 400) == pytest.approx(0.098 * math.sqrt(300 / 399), abs=1e-3)
    assert margin_of_error(0.2, 100, 10**12) == pytest.approx(1.96 * 0.04, abs=1e-3)
    assert margin_of_error(0.5, 400, 400) == 0.0  # the whole population: exact
    assert margin_of_error(0.0, 100, 10_000) == 0.0
    assert margin_of_error(0.5, 0, 10) == 0.0
