"""A set of strings in about 8 bytes each, for the ids of seed files with millions of lines.

Each id is kept as a 64-bit blake2b digest: the latest ones in a Python set, older ones in a few sorted
`array('Q')` runs of doubling sizes (merged like a binary counter, so each digest is copied O(log n)
times). A Python `set[str]` costs ~120 bytes per id (1M ids: ~120 MB); this costs ~8 plus one merge's
copy (1M ids: ~16 MB at the peak). Two different ids share a digest with probability about n² / 2⁶⁵
(2.7e-8 for a million ids); such an id would be treated as a duplicate and get a `~2` suffix.

`OffsetIndex` maps ids to byte offsets of JSONL lines the same way, in 16 bytes per line (for exports that join
a run's seeds with each round's kept records without loading them).
"""

from __future__ import annotations

import hashlib
import heapq
from array import array
from bisect import bisect_left
from collections.abc import Iterable

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


class OffsetIndex:
    """Byte offsets of the lines of a JSONL file by a string key (a seed id), in 16 bytes per line.

    Keys are kept as 64-bit digests in one sorted array beside their offsets; `offsets(key)` gives every
    offset whose digest matches, so a caller that reads the line can tell a digest collision apart.
    """

    def __init__(self, pairs: Iterable[tuple[str, int]]) -> None:
        import numpy as np  # only exports index lines (numpy is ~14 MB that a run does not need)

        digests = array("Q")
        offsets = array("Q")
        for key, offset in pairs:
            digests.append(_digest(key))
            offsets.append(offset)
        keys = np.frombuffer(digests, dtype=np.uint64) if digests else np.zeros(0, dtype=np.uint64)
        order = np.argsort(keys, kind="stable")
        self._digests = keys[order]
        self._offsets = (np.frombuffer(offsets, dtype=np.uint64) if offsets else np.zeros(0, np.uint64))[order]

    def __len__(self) -> int:
        return len(self._digests)

    def offsets(self, key: str) -> list[int]:
        """The offsets of the lines that may hold `key` (usually one, or none)."""
        digest = self._digests.dtype.type(_digest(key))
        start = int(self._digests.searchsorted(digest, side="left"))
        end = int(self._digests.searchsorted(digest, side="right"))
        return [int(offset) for offset in self._offsets[start:end]]
