"""Uniform samples of a stream in bounded memory, and the margin of error of shares estimated from them.

:class:`Reservoir` keeps a uniform random sample of at most ``size`` items of a stream of unknown length
(Li's Algorithm L: after the reservoir fills, it draws how many items to skip, so an item costs a counter
increment and a comparison; memory is the ``size`` items). The draws come from a ``random.Random`` seeded by
the caller, so the same seed and stream give the same sample on every run and machine.

:func:`margin_of_error` is the half-width of the normal-approximation 95% confidence interval of a share
``p`` measured on a simple random sample of ``n`` of ``population`` items (drawn without replacement, hence
the finite-population correction ``sqrt((N - n) / (N - 1))``; zero when the sample is the whole population).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Generic, TypeVar

Z_95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""

T = TypeVar("T")
S = TypeVar("S")


def _same(item: T) -> T:
    return item


class Reservoir(Generic[T]):
    """A uniform sample of at most `size` items of everything offered (Algorithm L)."""

    def __init__(self, size: int, rng: random.Random) -> None:
        if size < 1:
            raise ValueError("a reservoir holds at least one item")
        self.size = size
        self.items: list[T] = []
        self.seen = 0
        self._rng = rng
        self._w = 1.0
        self._next = 0

    def offer(self, item: T) -> None:
        """Count `item` and keep it with the probability that keeps the sample uniform."""
        self.offer_from(_same, item)

    def offer_from(self, make: Callable[[S], T], source: S) -> None:
        """As `offer(make(source))`, calling `make` only when the item is kept (most are not, once it is full)."""
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(make(source))
            if len(self.items) == self.size:
                self._w = math.exp(math.log(self._uniform()) / self.size)
                self._schedule()
        elif self.seen == self._next:
            self.items[self._rng.randrange(self.size)] = make(source)
            self._w *= math.exp(math.log(self._uniform()) / self.size)
            self._schedule()

    def _uniform(self) -> float:
        return 1.0 - self._rng.random()  # in (0, 1]: never log(0)

    def _schedule(self) -> None:
        """Draw the position of the next item to keep (geometric skip)."""
        if self._w >= 1.0:
            self._next = self.seen + 1
            return
        skip = math.floor(math.log(self._uniform()) / math.log1p(-self._w)) if self._w > 0 else math.inf
        self._next = self.seen + 1 + int(min(skip, 1 << 62))


def margin_of_error(share: float, n: int, population: int) -> float:
    """95% margin of error of `share` measured on a uniform sample of `n` of `population` items."""
    if n <= 0 or population <= 1 or n >= population:
        return 0.0
    correction = math.sqrt((population - n) / (population - 1))
    return Z_95 * math.sqrt(max(0.0, share * (1.0 - share)) / n) * correction
