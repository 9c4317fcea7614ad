"""Prices: cached input at its price, the Batch API at half, image tokens by model and detail; and the
dry run's estimates of the cacheable share."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from evolve.accounting import BATCH_DISCOUNT, Prices, TokenUsage, estimate_cost, image_tokens, prices_for
from evolve.cli import app
from tests.test_run import SEEDS


def test_cached_input_and_batch_calls_are_priced_as_billed() -> None:
    prices = prices_for("gpt-4o-mini", None, None)
    assert prices == Prices(0.15, 0.075, 0.60)
    live = TokenUsage()
    live.add_call(1_000_000, 1_000_000, cached=False, cached_tokens=400_000)
    assert estimate_cost(live, prices) == pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.60)
    batch = TokenUsage()
    batch.add_call(1_000_000, 1_000_000, cached=False, cached_tokens=400_000, batch=True)
    assert estimate_cost(batch, prices) == pytest.approx(BATCH_DISCOUNT * estimate_cost(live, prices))  # type: ignore[operator]
    hit = TokenUsage()
    hit.add_call(1_000_000, 1_000_000, cached=True)  # from the response cache: free
    assert estimate_cost(hit, prices) == 0 and hit.cached == 1
    assert prices_for("my-local-model", None, None) is None
    assert prices_for("my-local-model", 1.0, 2.0) == Prices(1.0, 1.0, 2.0)  # no cached price known: the full one
    assert prices_for("gpt-4.1", None, None, 0.4) == Prices(2.0, 0.4, 8.0)


@pytest.mark.parametrize(
    ("model", "size", "detail", "tokens"),
    [
        ("gpt-4o", (512, 384), "low", 85),
        ("gpt-4o", (512, 384), "high", 255),
        ("gpt-4o", (1024, 1024), "high", 765),
        ("gpt-4o", (2048, 4096), "high", 1105),
        ("gpt-4o", (1024, 768), "auto", 765),
        ("gpt-4o", (512, 512), "auto", 85),
        ("gpt-4o-mini", (512, 384), "low", 2833),
        ("gpt-4o-mini", (1024, 1024), "high", 2833 + 4 * 5667),
        ("gpt-4.1", (1024, 1024), "low", 1024),
        ("gpt-4.1-mini", (1024, 1024), "high", round(1024 * 1.62)),
        ("gpt-4.1", (4096, 4096), "high", 1536),
    ],
)
def test_image_tokens_follow_the_published_rules(model: str, size: tuple[int, int], detail: str, tokens: int) -> None:
    assert image_tokens(model, *size, detail) == tokens


def test_dry_run_estimates_the_cacheable_share_and_the_batch_price() -> None:
    live = CliRunner().invoke(app, ["run", str(SEEDS), "--dry-run", "--api-key", "k", "--model", "gpt-4o-mini"])
    assert live.exit_code == 0, live.output
    assert "cacheable input share" in live.output and "(layout cached)" in live.output
    first = CliRunner().invoke(
        app, ["run", str(SEEDS), "--dry-run", "--api-key", "k", "--model", "gpt-4o-mini", "--prompt-layout",
              "image-first"],
    )  # fmt: skip
    assert first.exit_code == 0
    share = float(live.output.split("cacheable input share ")[1].split("%")[0])
    share_first = float(first.output.split("cacheable input share ")[1].split("%")[0])
    assert share > 15 and share_first < share / 2  # 10 seeds: a first call of each prefix pays in full
    batch = CliRunner().invoke(app, ["run", str(SEEDS), "--dry-run", "--batch", "--api-key", "k", "--model",
                                     "gpt-4o-mini"])  # fmt: skip
    assert batch.exit_code == 0 and "Batch API (half price)" in batch.output
    for engine, named in ((["--workers", "2"], "live, 2 worker processes"), (["--executor", "ray"], "Ray executor")):
        other = CliRunner().invoke(app, ["run", str(SEEDS), "--dry-run", *engine, "--api-key", "k"])
        assert other.exit_code == 0 and named in other.output
    assert "· live\n" in live.output or "· live " in live.output
