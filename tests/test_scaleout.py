"""Sharded runs, `evolve merge` and `--workers`: the same records as one plain run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from evolve.cli import app
from evolve.fakeserver import ThreadedServer
from evolve.operators import shard_of
from tests.test_run import SEEDS, evolve, lines

ROUND_FILES = ("evolved", "judged", "kept", "dropped", "outcomes")


def canonical(folder: Path, rounds: int) -> dict[str, list[str]]:
    """Every round file and final.jsonl as sorted canonical lines."""
    found = {"final": sorted(json.dumps(r, sort_keys=True) for r in lines(folder / "final.jsonl"))}
    for number in range(1, rounds + 1):
        for name in ROUND_FILES:
            path = folder / f"round-{number}" / f"{name}.jsonl"
            found[f"{number}/{name}"] = sorted(
                json.dumps({k: v for k, v in r.items() if k != "usage"}, sort_keys=True) for r in lines(path)
            )  # an outcome's token usage depends on what was cached
    return found


def test_shards_partition_the_seeds() -> None:
    ids = [f"seed-{i}" for i in range(3000)]
    counts = [sum(1 for i in ids if shard_of(i, 3) == k) for k in range(3)]
    assert sum(counts) == 3000 and min(counts) > 900
    assert all(shard_of(i, 3) == shard_of(i, 3) for i in ids[:50])


def test_three_shards_merged_equal_one_run(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(reject_ratio=0.3, flawed_ratio=0.2, echo_ratio=0.2, false_claim_ratio=0.2)
    common = ["--rounds", "2", "--seed", "5", "--images", "skip", "--verify", "claims"]
    assert evolve(server, str(SEEDS), *common, "--out", str(tmp_path / "one")).exit_code == 0
    stages = {d["stage"] for n in (1, 2) for d in lines(tmp_path / "one" / f"round-{n}" / "dropped.jsonl")}
    assert {"check", "eliminate", "verify", "dedup"} <= stages, stages
    shard_dirs = []
    for k in range(3):
        shard_dir = tmp_path / f"shard{k}"
        result = evolve(server, str(SEEDS), *common, "--shard", f"{k}/3", "--out", str(shard_dir))
        assert result.exit_code == 0, result.output
        shard_dirs.append(shard_dir)
    assert sorted(len(lines(d / "round-1" / "evolved.jsonl")) for d in shard_dirs) != [0, 0, 10]
    merged = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge", *map(str, shard_dirs), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    assert canonical(merged, 2) == canonical(tmp_path / "one", 2)
    one = json.loads((tmp_path / "one" / "run.json").read_text())
    both = json.loads((merged / "run.json").read_text())
    assert both["usage"]["requests"] == one["usage"]["requests"]
    assert both["rounds"]["1"]["kept_items"] == one["rounds"]["1"]["kept_items"]


def test_merge_refuses_other_settings(server: ThreadedServer, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert (
        evolve(server, str(SEEDS), "--rounds", "1", "--shard", "0/2", "--out", str(a), "--images", "skip").exit_code
        == 0
    )
    assert (
        evolve(
            server, str(SEEDS), "--rounds", "1", "--shard", "1/2", "--seed", "9", "--out", str(b), "--images", "skip"
        )
    ).exit_code == 0
    result = CliRunner().invoke(app, ["merge", str(a), str(b), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "different seed" in result.output
    result = CliRunner().invoke(app, ["merge", str(a), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "every shard" in result.output


def test_workers_equal_one_run(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(flawed_ratio=0.2, echo_ratio=0.2, false_claim_ratio=0.2)
    stages = ["--verify", "claims"]
    common = ["--rounds", "2", "--images", "skip", "--base-url", server.base_url, "--api-key", "k", "--model", "m",
              *stages]  # fmt: skip
    one = evolve(server, str(SEEDS), "--rounds", "2", "--images", "skip", *stages, "--out", str(tmp_path / "one"))
    assert one.exit_code == 0
    done = subprocess.run(
        [sys.executable, "-m", "evolve", "run", str(SEEDS), *common, "--workers", "2", "--out", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert canonical(tmp_path / "w", 2) == canonical(tmp_path / "one", 2)


def test_a_bad_seed_line_is_reported_by_exactly_one_shard(server: ThreadedServer, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    bad = ['{"id": "cut off', '{"id": "x", "qa": "not a list"}', "[1, 2", "{}"]
    seeds.write_text((SEEDS / "demo.jsonl").read_text() + "\n".join(bad) + "\n")
    common = ["--rounds", "1", "--images", "skip"]
    assert evolve(server, str(seeds), *common, "--out", str(tmp_path / "one")).exit_code == 0
    shard_dirs = [tmp_path / f"shard{k}" for k in range(3)]
    for k, shard_dir in enumerate(shard_dirs):
        assert evolve(server, str(seeds), *common, "--shard", f"{k}/3", "--out", str(shard_dir)).exit_code == 0
    assert sum(len(lines(d / "rejected.jsonl")) for d in shard_dirs) == len(bad)
    merged = tmp_path / "merged"
    assert CliRunner().invoke(app, ["merge", *map(str, shard_dirs), "--out", str(merged)]).exit_code == 0
    one_rejected = sorted(r["reason"] for r in lines(tmp_path / "one" / "rejected.jsonl"))
    assert sorted(r["reason"] for r in lines(merged / "rejected.jsonl")) == one_rejected
    assert len(one_rejected) == len(bad)
    assert json.loads((merged / "run.json").read_text())["rejected_seeds"] == len(bad)
