"""`evolve eliminate`: standalone judging, embedded parents, --rescore without calls, the seed baseline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from evolve.cli import app
from evolve.fakeserver import ThreadedServer
from tests.test_run import SEEDS, evolve, lines


def eliminate(server: ThreadedServer, *args: str) -> object:
    """Run `evolve eliminate` in-process against the test server."""
    base = ["--base-url", server.base_url, "--api-key", "test-key", "--model", "fake-vlm"]
    return CliRunner().invoke(app, ["eliminate", *args, *base])


def test_eliminate_with_parents_file(server: ThreadedServer, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert evolve(server, str(SEEDS), "--rounds", "1", "--out", str(run)).exit_code == 0
    server.reset()
    server.set_config(reject_ratio=0.4)
    out = tmp_path / "judged"
    result = eliminate(server, str(run / "round-1" / "evolved.jsonl"), "--parents", str(SEEDS / "demo.jsonl"),
                       "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    judged = lines(out / "judged.jsonl")
    assert len(judged) == 10 and server.stats()["by_kind"]["judge"] == 10
    kept = {r["id"]: r for r in lines(out / "kept.jsonl")}
    for record in judged:
        improved = [i["question"] for i in record["qa"] if i["improved"]]
        assert [i["question"] for i in kept[record["id"]]["qa"]] == improved if improved else record["id"] not in kept
    dropped = lines(out / "dropped.jsonl")
    assert {d["stage"] for d in dropped} == {"eliminate"}
    assert sum(len(d["sample"]["qa"]) for d in dropped) == sum(1 for r in judged for i in r["qa"] if not i["improved"])


def test_embedded_parents_in_native_records(server: ThreadedServer, tmp_path: Path) -> None:
    seed = json.loads((SEEDS / "demo.jsonl").read_text().splitlines()[0])
    seed["conversations_v1"] = [
        {"question": "How many wheels of the red car are visible, and where is the tree relative to it?",
         "answer": "Two wheels are visible; the tree stands to the left of the car.", "format": "Norm"}
    ]  # fmt: skip
    evolved = tmp_path / "native.jsonl"
    evolved.write_text(json.dumps(seed) + "\n")
    out = tmp_path / "out"
    result = eliminate(server, str(evolved), "--out", str(out), "--images", "skip")
    assert result.exit_code == 0, result.output
    judged = lines(out / "judged.jsonl")
    assert len(judged) == 1 and len(judged[0]["qa"]) == 1 and judged[0]["qa"][0]["improved"] is True
    assert judged[0]["parent_id"] == seed["hash_id"] and judged[0]["round"] == 1
    prompt_texts = server.log()
    assert len(prompt_texts) == 1 and prompt_texts[0]["kind"] == "judge"


def test_missing_parent_is_reported_not_fatal(server: ThreadedServer, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert evolve(server, str(SEEDS), "--rounds", "1", "--out", str(run), "--images", "skip").exit_code == 0
    only_some = tmp_path / "parents.jsonl"
    only_some.write_text("".join((SEEDS / "demo.jsonl").read_text().splitlines(keepends=True)[:4]))
    out = tmp_path / "out"
    result = eliminate(server, str(run / "round-1" / "evolved.jsonl"), "--parents", str(only_some), "--out",
                       str(out), "--images", "skip")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(lines(out / "judged.jsonl")) == 4
    assert result.output.count("not found (give --parents FILE)") == 6


def test_rescore_applies_threshold_without_calls(server: ThreadedServer, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert evolve(server, str(SEEDS), "--rounds", "2", "--out", str(run), "--images", "skip").exit_code == 0
    server.reset()
    result = CliRunner().invoke(app, ["eliminate", str(run), "--rescore", "--min-score", "7"])
    assert result.exit_code == 0, result.output
    assert server.stats()["total"] == 0
    for number in (1, 2):
        judged = lines(run / f"round-{number}" / "judged.jsonl")
        kept_items = [i for r in lines(run / f"round-{number}" / "kept.jsonl") for i in r["qa"]]
        expected = [i for r in judged for i in r["qa"] if i["improved"] and i["score"] >= 7]
        assert sorted(i["question"] for i in kept_items) == sorted(i["question"] for i in expected)
        assert 0 < len(expected) < sum(len(r["qa"]) for r in judged)
    final = lines(run / "final.jsonl")
    assert all(i["score"] >= 7 for r in final for i in r["qa"])


def test_baseline_needs_out_and_writes_nothing_beside_the_seeds(server: ThreadedServer, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    shutil.copy(SEEDS / "demo.jsonl", seeds / "demo.jsonl")
    result = eliminate(server, str(seeds / "demo.jsonl"), "--baseline", "--images", "skip")
    assert result.exit_code == 2 and "--out DIR is required" in result.output
    assert sorted(p.name for p in seeds.iterdir()) == ["demo.jsonl"]


def test_baseline_scores_seeds_against_themselves(server: ThreadedServer, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = eliminate(server, str(SEEDS / "demo.jsonl"), "--baseline", "--out", str(out), "--images", "skip")
    assert result.exit_code == 0, result.output
    baseline = lines(out / "baseline.jsonl")
    assert len(baseline) == 10
    assert all(i["score"] is not None for r in baseline for i in r["qa"])
    assert all(r["round"] == 0 for r in baseline)
    assert not (out / "kept.jsonl").exists() and not (out / "dropped.jsonl").exists()
