"""A set of strings in about 8 bytes each, for the ids of seed files with millions of lines.

Each id is kept as a 64-bit blake2b digest: the latest ones in a Python set, older ones in a few sorted
`array('Q')` runs of doubling sizes (merged like a binary counter, so each digest is copied O(log n)
times). A Python `set[str]` costs ~120 bytes per id (1M ids: ~120 MB); this costs ~8 plus one merge's
copy (1M ids: ~16 MB at the peak). Two different ids share a digest with probability about n² / 2⁶⁵
(2.7e-8 for a million ids); such an id would be treated as a duplicate and get a `~2` suffix.
"""

from __future__ import annotations

import hashlib
import heapq
from array import array
from bisect import bisect_left

MERGE_EVERY = 1 << 14


def _digest(text: str) -> int:
    raw = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "little")


class CompactIdSet:
    """`in` and `add_new` for strings, in about 8 bytes per element (see the module docstring)."""

    def __init__(self) -> None:
        self._recent: set[int] = set()
        self._runs: list[array[int]] = []  # sorted, largest first

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self._has(_digest(text))

    def add_new(self, text: str) -> bool:
        """Remember `text`; False (and nothing changes) when it was already there."""
        digest = _digest(text)
        if self._has(digest):
            return False
        self._recent.add(digest)
        if len(self._recent) >= MERGE_EVERY:
            self._flush_recent()
        return True

    def _has(self, digest: int) -> bool:
        if digest in self._recent:
            return True
        for run in self._runs:
            i = bisect_left(run, digest)
            if i < len(run) and run[i] == digest:
                return True
        return False

    def _flush_recent(self) -> None:
        run = array("Q", sorted(self._recent))
        self._recent = set()
        while self._runs and len(self._runs[-1]) <= len(run):
            run = array("Q", heapq.merge(self._runs.pop(), run))
        self._runs.append(run)
