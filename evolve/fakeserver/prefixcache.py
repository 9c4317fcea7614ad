"""Provider prompt caching, emulated: how many leading tokens of a request were seen before.

As OpenAI reports it (``usage.prompt_tokens_details.cached_tokens``): the longest prefix of the request's
token stream that an earlier request of the same model shared, counted in 128-token blocks and only from
1,024 tokens on (below that, 0). Tokens are estimated as elsewhere in the fake server: 4 characters of text
each, an image 85 tokens keyed by its URL. Memory is bounded: one hash per 128-token block boundary, kept in
an LRU of ``capacity`` entries.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

BLOCK_TOKENS = 128
MIN_TOKENS = 1024
CHARS_PER_TOKEN = 4
_BLOCK = BLOCK_TOKENS * CHARS_PER_TOKEN  # characters of the stream per block
_MIN_BLOCKS = MIN_TOKENS // BLOCK_TOKENS


class PrefixCache:
    """An LRU of prefix hashes at 128-token boundaries, with hit counters."""

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[int, None] = OrderedDict()
        self.requests = 0  # requests long enough to be cached (>= 1,024 tokens)
        self.hits = 0
        self.cached_tokens = 0

    def lookup(self, model: str, stream: str) -> int:
        """Cached tokens for this request's stream (0 if none), then remember its prefixes."""
        blocks = len(stream) // _BLOCK
        if blocks < _MIN_BLOCKS:
            return 0
        self.requests += 1
        seen = self._seen
        cut = _MIN_BLOCKS * _BLOCK
        digest = hash((model, stream[:cut]))  # the first 1,024 tokens never count alone: one hash
        matched = 0
        found = True
        block = _MIN_BLOCKS
        while True:
            if found and digest in seen:
                seen.move_to_end(digest)
                matched = block
            else:
                found = False  # past the first miss every longer prefix is new as well
                seen[digest] = None
            if block == blocks:
                break
            digest = hash((digest, stream[cut : cut + _BLOCK]))
            cut += _BLOCK
            block += 1
        while len(seen) > self.capacity:
            seen.popitem(last=False)
        tokens = matched * BLOCK_TOKENS
        if tokens:
            self.hits += 1
            self.cached_tokens += tokens
        return tokens

    def clear(self) -> None:
        """Forget every prefix and reset the counters."""
        self._seen.clear()
        self.requests = self.hits = self.cached_tokens = 0

    def stats(self) -> dict[str, Any]:
        """Counters for /_control/stats."""
        return {
            "requests": self.requests,
            "hits": self.hits,
            "cached_tokens": self.cached_tokens,
            "entries": len(self._seen),
            "capacity": self.capacity,
        }
