"""The quality stages of a round, end to end through the CLI against the test server: annotation (round 0),
chunked calls and cut-off re-asks, rule checks, judge votes, claim verification and near-duplicates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from evolve.cli import app
from evolve.fakeserver import ThreadedServer, stable_fraction
from evolve.records import Sample, read_samples
from tests.test_run import SEEDS, lines

DEMO = SEEDS / "demo.jsonl"
BASE = ["--api-key", "test-key", "--model", "fake-vlm", "--images", "skip"]


def evolve(server: ThreadedServer, *args: str) -> Any:
    """`evolve ...` in-process against the test server."""
    result = CliRunner().invoke(app, [*args, "--base-url", server.base_url, *BASE])
    assert result.exit_code in (0, 3), result.output
    return result


def manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "run.json").read_text())


def by_kind(server: ThreadedServer, kind: str) -> list[dict[str, Any]]:
    return [e for e in server.log() if e["kind"] == kind]


# ---------------------------------------------------------------------------------------- annotation


def test_annotate_fills_what_is_missing_and_never_the_text(server: ThreadedServer, tmp_path: Path) -> None:
    bare = tmp_path / "bare.jsonl"
    seeds = [item.sample for item in read_samples(DEMO) if not isinstance(item, Exception) and hasattr(item, "sample")]
    with bare.open("w") as fp:
        for seed in seeds:
            items = [i.model_copy(update={"objects": [], "skills": [], "steps": []}) for i in seed.qa]
            fp.write(seed.model_copy(update={"qa": items}).model_dump_json() + "\n")
    out = tmp_path / "annotated.jsonl"
    evolve(server, "annotate", str(bare), "--out", str(out))
    annotated = [Sample.model_validate(r) for r in lines(out)]
    assert len(annotated) == len(seeds) and len(by_kind(server, "annotate")) == len(seeds)
    for before, after in zip(seeds, annotated, strict=True):
        assert [(i.question, i.answer) for i in after.qa] == [(i.question, i.answer) for i in before.qa]
        assert all(i.objects and i.skills and i.steps for i in after.qa)
    calls = len(server.log())
    evolve(server, "annotate", str(bare), "--out", str(out))  # resumable: done sample-rounds are not redone
    assert len(server.log()) == calls
    skills = CliRunner().invoke(app, ["stats", str(bare), str(out), "--json", "-", "--quiet"])
    assert skills.exit_code == 0, skills.output
    columns = json.loads(skills.stdout)["columns"]
    assert columns[0]["skills_length_mean"] == 0 and columns[1]["skills_length_mean"] > 0
    assert columns[1]["step_length_mean"] > 0


def test_run_with_annotate_evolves_the_annotated_seeds(server: ThreadedServer, tmp_path: Path) -> None:
    out = tmp_path / "run"
    evolve(server, "run", str(DEMO), "--annotate", "--rounds", "1", "--out", str(out))
    annotated = {r["seed_id"]: r for r in lines(out / "round-0" / "annotated.jsonl")}
    assert len(annotated) == 10 and "0" in manifest(out)["rounds"]
    for record in lines(out / "round-1" / "evolved.jsonl"):
        assert record["parent_id"] == record["seed_id"]
    prompts = [e for e in server.log() if e["kind"] == "evolve"]
    assert len(prompts) == 10
    # seeds that already had everything took no call
    needing = sum(
        any(not (i["objects"] and i["skills"] and i["steps"]) for i in r["conversations_v0"]) for r in lines(DEMO)
    )
    assert len(by_kind(server, "annotate")) == needing


# ---------------------------------------------------------------------------------------- chunked calls


def many_items(path: Path, count: int) -> Path:
    seed = next(item.sample for item in read_samples(DEMO) if hasattr(item, "sample"))
    items = [seed.qa[0].model_copy(update={"question": f"Question number {k} about the street?"}) for k in range(count)]
    path.write_text(seed.model_copy(update={"qa": items}).model_dump_json() + "\n")
    return path


def test_items_per_call_splits_and_joins_in_order(server: ThreadedServer, tmp_path: Path) -> None:
    seeds = many_items(tmp_path / "ten.jsonl", 10)
    out = tmp_path / "run"
    evolve(server, "run", str(seeds), "--rounds", "1", "--items-per-call", "4", "--out", str(out))
    assert [e["n_items"] for e in by_kind(server, "evolve")] == [4, 4, 2]
    assert sorted(e["n_items"] for e in by_kind(server, "judge")) == [2, 4, 4]
    [child] = lines(out / "round-1" / "evolved.jsonl")
    assert [i["source"] for i in child["qa"]] == list(range(10))  # joined in order, each knowing its parent item
    assert all(f"number {k} " in i["question"] for k, i in enumerate(child["qa"]))


def test_a_cut_off_answer_keeps_its_items_and_asks_once_for_the_rest(server: ThreadedServer, tmp_path: Path) -> None:
    """8 items of ~500 tokens do not fit in 2,500: the answer is cut, the missing items are asked for again."""
    server.set_config(item_tokens=500)
    seeds = many_items(tmp_path / "eight.jsonl", 8)
    found = {}
    for per_call in ("0", "3"):
        out = tmp_path / f"run-{per_call}"
        evolve(server, "run", str(seeds), "--rounds", "1", "--items-per-call", per_call, "--max-tokens", "2500",
               "--checks", "none", "--out", str(out))  # fmt: skip
        answers = manifest(out)["rounds"]["1"]["answers"]
        items = manifest(out)["rounds"]["1"]["items"]
        found[per_call] = (answers, items)
    one_call, chunked = found["0"], found["3"]
    assert one_call[0]["cut_off"] >= 1 and one_call[0]["reasked"] > 0  # the tail was asked for again
    assert one_call[1]["evolved"] > 8 - one_call[0]["reasked"]  # and some of it was recovered
    assert chunked[0].get("cut_off", 0) == 0 and chunked[1]["evolved"] == 8 and chunked[1].get("lost", 0) == 0


# ---------------------------------------------------------------------------------------- rule checks


def test_rule_checks_drop_items_before_the_judge(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(flawed_ratio=0.4)
    out = tmp_path / "run"
    evolve(server, "run", str(DEMO), "--rounds", "1", "--dedup-threshold", "0", "--out", str(out))
    dropped = [d for d in lines(out / "round-1" / "dropped.jsonl") if d["stage"] == "check"]
    flagged = [i for d in dropped for i in d["sample"]["qa"]]
    assert flagged and all(v.startswith("no_original_reference") for i in flagged for v in i["violations"])
    judged_questions = {i["question"] for r in lines(out / "round-1" / "judged.jsonl") for i in r["qa"]}
    assert not judged_questions & {i["question"] for i in flagged}  # the judge never saw them
    summary = manifest(out)["rounds"]["1"]
    assert summary["checks"]["no_original_reference"] == len(flagged) == summary["items"]["dropped_check"]
    plain = tmp_path / "plain"
    evolve(server, "run", str(DEMO), "--rounds", "1", "--checks", "none", "--out", str(plain))
    assert not [d for d in lines(plain / "round-1" / "dropped.jsonl") if d["stage"] == "check"]


# ---------------------------------------------------------------------------------------- judge votes


def test_votes_take_the_majority_and_report_agreement(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(verdict_noise=0.3)
    out = tmp_path / "run"
    evolve(server, "run", str(DEMO), "--rounds", "1", "--judge-votes", "3", "--judge-temperature", "0.7",
           "--out", str(out))  # fmt: skip
    judges = by_kind(server, "judge")
    assert len(judges) == 3 * len(lines(out / "round-1" / "evolved.jsonl"))
    shares = []
    for record in lines(out / "round-1" / "judged.jsonl"):
        for item in record["qa"]:
            votes = item["votes"]
            yes = sum(v["improved"] for v in votes)
            assert len(votes) == 3 and item["improved"] == (yes >= 2)
            assert abs(item["score"] - sum(v["score"] for v in votes) / 3) < 0.01
            shares.append(max(yes, 3 - yes) / 3)
    assert any(s < 1 for s in shares), "verdict noise should make some votes disagree"
    agreement = manifest(out)["rounds"]["1"]["vote_agreement"]
    assert abs(agreement - sum(shares) / len(shares)) < 1e-3


# ---------------------------------------------------------------------------------------- claim verification


def test_verify_drops_exactly_the_items_with_a_false_claim(server: ThreadedServer, tmp_path: Path) -> None:
    ratio = 0.3
    server.set_config(false_claim_ratio=ratio)
    out = tmp_path / "run"
    evolve(server, "run", str(DEMO), "--rounds", "1", "--verify", "claims", "--out", str(out))
    kept = [i for r in lines(out / "round-1" / "kept.jsonl") for i in r["qa"]]
    dropped = [i for d in lines(out / "round-1" / "dropped.jsonl") if d["stage"] == "verify" for i in d["sample"]["qa"]]
    assert kept and dropped
    for item in kept + dropped:
        false = [c for c in item["claims"] if stable_fraction("claim", c["claim"]) < ratio]
        assert [c["claim"] for c in item["claims"] if c["verdict"] is False] == [c["claim"] for c in false]
        assert (item in dropped) == bool(false)
    assert (
        len(by_kind(server, "claims_split"))
        == len(by_kind(server, "claims_check"))
        == len({r["seed_id"] for r in lines(out / "round-1" / "judged.jsonl")})
    )


# ---------------------------------------------------------------------------------------- near-duplicates


def test_near_duplicates_of_the_lineage_are_dropped(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(echo_ratio=0.4)
    out = tmp_path / "run"
    evolve(server, "run", str(DEMO), "--rounds", "1", "--out", str(out))
    twins = [i for d in lines(out / "round-1" / "dropped.jsonl") if d["stage"] == "dedup" for i in d["sample"]["qa"]]
    assert twins and all(i["question"].endswith(" Explain.") and "duplicate" in i["twin"] for i in twins)
    kept = [i["question"] for r in lines(out / "round-1" / "kept.jsonl") for i in r["qa"]]
    assert not [q for q in kept if q.endswith(" Explain.")]
    off = tmp_path / "off"
    evolve(server, "run", str(DEMO), "--rounds", "1", "--dedup-threshold", "0", "--out", str(off))
    assert any(i["question"].endswith(" Explain.") for r in lines(off / "round-1" / "kept.jsonl") for i in r["qa"])
