"""Process-wide tuning of Python's cyclic garbage collector for evolve's processes (CLI, workers, Ray actors)."""

from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 20, 100)
"""The cyclic collector runs after 50,000 net allocations instead of Python's 700: evolve's records, answers and
requests hold no reference cycles, so the default spends ~12% of a run's CPU walking live objects for nothing
(measured: -16% CPU per request at L = 0, the same peak RSS)."""


def tune_gc() -> None:
    """Collect cycles less often (see `GC_THRESHOLDS`); reference counting still frees everything else at once."""
    gc.set_threshold(*GC_THRESHOLDS)
