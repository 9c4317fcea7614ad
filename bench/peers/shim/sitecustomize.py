"""Bench peers only: a tiktoken stand-in counting one token per 4 characters (no encoding downloads offline).

Put this folder on PYTHONPATH; Python imports ``sitecustomize`` at start-up.
"""

from __future__ import annotations

from typing import Any


class _Len4Encoding:
    """Just enough of ``tiktoken.Encoding``: token counts are len(text) // 4 (at least 1 for non-empty text)."""

    name = "len4-standin"
    max_token_value = 100_000
    eot_token = 0

    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]:
        return [0] * max(1 if text else 0, len(text) // 4)

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode(text)

    def encode_batch(self, texts: list[str], *args: Any, **kwargs: Any) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, tokens: list[int], *args: Any, **kwargs: Any) -> str:
        return "x" * (4 * len(tokens))


def _install() -> None:
    try:
        import tiktoken
        import tiktoken.registry
    except ImportError:
        return
    encoding = _Len4Encoding()

    def get_encoding(name: str = "cl100k_base") -> _Len4Encoding:
        return encoding

    def encoding_for_model(model: str = "") -> _Len4Encoding:
        return encoding

    tiktoken.get_encoding = get_encoding  # type: ignore[assignment]
    tiktoken.encoding_for_model = encoding_for_model  # type: ignore[assignment]
    tiktoken.registry.get_encoding = get_encoding  # type: ignore[assignment]
    try:
        import tiktoken.model

        tiktoken.model.encoding_for_model = encoding_for_model  # type: ignore[assignment]
    except ImportError:
        pass


_install()
