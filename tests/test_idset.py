"""The compact id set behind duplicate-id renaming: exact answers across its merges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolve import idset
from evolve.idset import CompactIdSet
from evolve.records import Loaded, read_samples


@pytest.fixture
def small_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idset, "MERGE_EVERY", 100)


@pytest.mark.usefixtures("small_merges")
def test_membership_is_exact_before_and_after_merges() -> None:
    ids = CompactIdSet()
    added = [f"sample-{i}" for i in range(0, 1000, 2)]  # 500 ids: five merges into the sorted array
    for text in added:
        assert text not in ids
        assert ids.add_new(text)
    assert all(text in ids for text in added)
    assert not any(ids.add_new(text) for text in added[::7])
    assert not any(f"sample-{i}" in ids for i in range(1, 1000, 2))
    assert "" not in ids and 17 not in ids
    assert ids.add_new("ünïcödé \ud800")  # a lone surrogate is an id too
    assert "ünïcödé \ud800" in ids


@pytest.mark.usefixtures("small_merges")
def test_duplicate_ids_renamed_across_merges(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    ids = [f"s{i}" for i in range(250)] + ["s3", "s3", "s249", "s3~2"]
    seeds.write_text("".join(json.dumps({"id": i, "qa": [{"question": "q?", "answer": "a"}]}) + "\n" for i in ids))
    got = [item.sample.id for item in read_samples(seeds) if isinstance(item, Loaded)]
    assert got[:250] == ids[:250]
    assert got[250:] == ["s3~2", "s3~3", "s249~2", "s3~2~2"]
    assert len(set(got)) == len(got)


def test_offset_index_finds_every_line_of_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [f"seed-{i % 300}" for i in range(900)]  # each key on three lines
    index = idset.OffsetIndex((key, 10 * n) for n, key in enumerate(keys))
    assert len(index) == 900
    assert index.offsets("seed-7") == [70, 3070, 6070] and index.offsets("nope") == []
    monkeypatch.setattr(idset, "_digest", lambda text: 42)  # every key collides: the caller tells them apart
    colliding = idset.OffsetIndex([("a", 0), ("b", 5)])
    assert colliding.offsets("zzz") == [0, 5]
