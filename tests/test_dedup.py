"""Near-duplicate questions: the measure, the round's stage, `evolve dedup` over files and over run folders."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from evolve import dedup_pass
from evolve.cli import app
from evolve.dedup import DEFAULT_THRESHOLD, dedup_sample, find_twins, question_words, shingles, similarity
from evolve.dedup_pass import EXACT_CLASS, NEAR_CLASS, band_layout, dedup_files
from evolve.errors import UsageError
from evolve.fakeserver import ThreadedServer
from evolve.manifest import RunManifest, read_manifest, summarize_round, write_manifest
from evolve.parse import parse_qas
from evolve.records import QAS, Drop, Outcome, Sample
from evolve.runfolder import RunFolder, run_lock, write_final
from tests.test_run import SEEDS as RUN_SEEDS
from tests.test_run import evolve

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEMO_SEEDS = SHARED / "mmevol_demo_seeds.jsonl"
RESPONSES = SHARED / "gpt4o_mini_round1_responses.jsonl"

LONG = (
    "Identify the red umbrella to the left of the wooden bench and explain what its position suggests about "
    "the weather in the scene"
)
LONG_ONE_WORD = LONG.replace("wooden", "metal")
LONG_OTHER_WORD = LONG.replace("weather", "season")


def lines(path: Path) -> list[dict[str, Any]]:
    """Decoded JSONL lines of a file (none if it is missing)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under a folder (the lock file aside), by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "run.lock"
    }


def dedup(*args: str) -> Any:
    """`evolve dedup ...` in-process."""
    return CliRunner().invoke(app, ["dedup", *args])


# --------------------------------------------------------------------------- the measure


def test_normalisation_ignores_case_punctuation_whitespace_and_apostrophes() -> None:
    assert question_words("What's the  COLOUR, of the bus?!") == ["whats", "the", "colour", "of", "the", "bus"]
    assert similarity("What color is the bus?", "  what COLOR is the bus ") == 1.0
    assert shingles(["a", "b", "c"]) == {"a", "b", "c", "a b", "b c"}


def test_one_changed_word_repeats_a_long_question_but_not_a_short_one() -> None:
    assert similarity(LONG, LONG_ONE_WORD) >= DEFAULT_THRESHOLD
    assert similarity("What color is the dog?", "What color is the car?") < 0.7
    # word pairs keep a little order: the same words swapped are no exact repeat, yet still a near one (a limit)
    assert 0.8 < similarity("Is the dog left of the cat?", "Is the cat left of the dog?") < 1.0
    # a character ratio would call these near twins (rapidfuzz ratio 0.85); word shingles do not
    moon = "Imagine the Moon suddenly increased in mass during a lunar eclipse. What would happen?"
    assert similarity(moon, "Imagine if the Moon suddenly disappeared during a solar eclipse. What would happen?") < 0.5


def test_band_layout_keeps_pairs_at_the_threshold_likely_candidates() -> None:
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = band_layout(threshold)
        assert bands * rows <= 128
        assert 1 - (1 - threshold**rows) ** bands >= 0.98
        assert 1 - (1 - threshold ** (rows + 1)) ** (128 // (rows + 1)) < 0.98  # the most rows that still do
    assert band_layout(0.8) == (18, 7)


# --------------------------------------------------------------------------- the round's stage


def test_find_twins_names_a_reference_or_an_earlier_sibling() -> None:
    references = ["What color is the bus?", LONG_OTHER_WORD, LONG + " today"]
    questions = [
        "How many windows does the bus have?",
        "what COLOR is the bus",
        LONG_ONE_WORD.replace("umbrella", "parasol"),
        "How many windows does the bus have ?",
        LONG,
    ]
    twins = find_twins(questions, references)
    assert twins[0] is None
    assert twins[1] is not None and (twins[1].source, twins[1].index, twins[1].exact) == ("reference", 0, True)
    assert twins[2] is None  # two words changed: below 0.8 against every reference
    assert twins[3] is not None and (twins[3].source, twins[3].index, twins[3].exact) == ("sibling", 0, True)
    # LONG is near references 1 and 2: the most similar wins; between equals, the first
    assert twins[4] is not None and (twins[4].source, twins[4].index) == ("reference", 2)
    assert twins[4].similarity == pytest.approx(similarity(LONG, references[2]))
    assert twins[4].similarity > similarity(LONG, references[1]) >= DEFAULT_THRESHOLD
    [tie] = find_twins([LONG], [LONG_OTHER_WORD, LONG.replace("weather", "mood")])
    assert tie is not None and tie.index == 0
    assert "near duplicate (0." in twins[4].describe(questions, references)
    assert (
        twins[3].describe(questions, references)
        == 'exact duplicate of rewrite #1: "How many windows does the bus have?"'
    )


def test_a_repeat_is_no_near_twin_but_its_exact_copies_name_it() -> None:
    questions = ["What color is the bus?", "What colour is the bus?", "What colour is the bus?"]
    twins = find_twins(questions, [], threshold=0.5)
    assert twins[0] is None
    assert twins[1] is not None and (twins[1].index, twins[1].exact) == (0, False)
    assert twins[2] is not None and (twins[2].index, twins[2].exact) == (1, True)


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_threshold_outside_zero_to_one_is_refused(threshold: float) -> None:
    with pytest.raises(UsageError, match="threshold"):
        find_twins(["a"], ["a"], threshold)


def test_dedup_sample_returns_survivors_and_one_drop_per_repeat() -> None:
    seed = Sample(id="s1", qa=[QAS(question="What color is the bus?", answer="Red.")])
    earlier = Sample(id="s1@r1", seed_id="s1", round=1, qa=[QAS(question=LONG, answer="Dry.")])
    child = Sample(
        id="s1@r2", seed_id="s1", round=2, operator="reasoning", parent_id="s1@r1",
        qa=[QAS(question="WHAT COLOR IS THE BUS", answer="Red."), QAS(question="Is it raining?", answer="No."),
            QAS(question=LONG_ONE_WORD, answer="Dry.")],
    )  # fmt: skip
    survivor, drops = dedup_sample(child, [seed, earlier])
    assert survivor is not None and [item.question for item in survivor.qa] == ["Is it raining?"]
    assert [d.stage for d in drops] == ["dedup", "dedup"]
    assert all(isinstance(d, Drop) and d.id == "s1@r2" and d.round == 2 and d.operator == "reasoning" for d in drops)
    assert drops[0].reason == 'exact duplicate of s1#1: "What color is the bus?"'
    assert drops[1].reason.startswith("near duplicate (0.") and f'of s1@r1#1: "{LONG}"' in drops[1].reason
    assert drops[1].sample is not None and drops[1].sample.qa[0].twin == drops[1].reason
    alone = child.model_copy(update={"qa": child.qa[:1]})
    assert dedup_sample(alone, [seed]) == (None, dedup_sample(alone, [seed])[1])


# --------------------------------------------------------------------------- real data


def _exact_pairs(texts: list[str], threshold: float) -> int:
    """Pairs of distinct normalised texts at or above the threshold, found exactly (no hashing) by prefix
    filtering: sets with Jaccard >= t share a token among their |s| - ceil(t |s|) + 1 rarest ones."""
    sets = [shingles(t.split()) for t in texts]
    frequency: dict[str, int] = defaultdict(int)
    for s in sets:
        for token in s:
            frequency[token] += 1
    postings: dict[str, list[int]] = defaultdict(list)
    found = 0
    for i, s in enumerate(sets):
        prefix = sorted(s, key=lambda token: (frequency[token], token))[: len(s) - math.ceil(threshold * len(s)) + 1]
        candidates = {j for token in prefix for j in postings[token]}
        found += sum(1 for j in candidates if len(s & sets[j]) / len(s | sets[j]) >= threshold)
        for token in prefix:
            postings[token].append(i)
    return found


def test_demo_seeds_report_exact_and_near_repeats() -> None:
    if not DEMO_SEEDS.exists():
        pytest.skip(f"real demo seeds not found at {DEMO_SEEDS}")
    result = dedup(str(DEMO_SEEDS), "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    questions: list[str] = []
    for line in DEMO_SEEDS.read_text(encoding="utf-8").splitlines():
        questions += [item["question"] for item in json.loads(line)["conversations_v0"]]
    distinct = sorted({" ".join(question_words(q)) for q in questions})
    assert report["questions"] == len(questions) == 9878
    assert report["distinct"] == len(distinct)
    [seeds] = report["rounds"]
    assert seeds["exact"] == len(questions) - len(distinct) == 1515  # 15.3 %: the templated LLaVA prompts
    assert report["near_pairs"] == _exact_pairs(distinct, DEFAULT_THRESHOLD)  # MinHash LSH missed none
    assert 20 <= seeds["near"] <= report["near_pairs"]
    assert report["most_repeated"][0]["count"] >= 100
    for pair in report["near_examples"]:
        assert pair["similarity"] == pytest.approx(similarity(pair["question"], pair["twin_question"]), abs=1e-4)
        assert DEFAULT_THRESHOLD <= pair["similarity"] < 1.0


def test_real_rewrites_repeat_no_question_of_their_seed() -> None:
    if not (RESPONSES.exists() and DEMO_SEEDS.exists()):
        pytest.skip(f"real answers or seeds not found in {SHARED}")
    seeds = {}
    for line in DEMO_SEEDS.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        seeds[record["hash_id"]] = [item["question"] for item in record["conversations_v0"]]
    rewrites = 0
    for line in RESPONSES.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        questions = [item.question for item in parse_qas(record["evolution_response"])]
        rewrites += len(questions)
        assert find_twins(questions, seeds[record["hash_id"]]) == [None] * len(questions)
        # at a much lower threshold the same measure does flag some: the default is a choice, not a no-op
    assert rewrites > 200
    flagged = 0
    for line in RESPONSES.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        questions = [item.question for item in parse_qas(record["evolution_response"])]
        flagged += sum(t is not None for t in find_twins(questions, seeds[record["hash_id"]], threshold=0.5))
    assert flagged >= 3


# --------------------------------------------------------------------------- run folders


def make_run(
    root: Path,
    seeds: dict[str, list[str]],
    rounds: dict[int, dict[str, list[str]]],
    *,
    status: str = "done",
    reverse: bool = False,
) -> RunFolder:
    """A finished run folder as `evolve run` writes it (seeds in MMEvol format beside it); `reverse` writes every
    round file's lines in the opposite order (as a merge of shards might)."""
    seed_file = root.parent / f"{root.name}-seeds.jsonl"
    seed_lines = [
        json.dumps({"id": sid, "conversations_v0": [{"question": q, "answer": "a"} for q in qs]})
        for sid, qs in seeds.items()
    ]
    seed_file.write_text("\n".join(seed_lines) + "\n", encoding="utf-8")
    folder = RunFolder(root)
    for number, samples in rounds.items():
        files = folder.round(number)
        files.folder.mkdir(parents=True, exist_ok=True)
        kept, outcomes = [], []
        for sid, questions in samples.items():
            items = [QAS(question=q, answer="a", improved=True, score=7.0 + k) for k, q in enumerate(questions)]
            sample = Sample(id=f"{sid}@r{number}", seed_id=sid, round=number, operator="perceptual", qa=items)
            kept.append(sample.model_dump_json())
            outcomes.append(
                Outcome(
                    seed_id=sid,
                    round=number,
                    operator="perceptual",
                    kept=True,
                    items={
                        "evolved": len(items) + 1,
                        "judged": len(items) + 1,
                        "improved": len(items),
                        "kept": len(items),
                        "dropped_eliminate": 1,
                    },
                    scores=[i.score or 0.0 for i in items],
                    reasons=["eliminate: not improved"],
                ).model_dump_json()
            )
        rejected = Drop(id=f"x@r{number}", seed_id="x", round=number, stage="eliminate", reason="1 of 2 rejected")
        dropped = [rejected.model_dump_json()]
        for name, text in (("kept", kept), ("outcomes", outcomes), ("dropped", dropped)):
            ordered = list(reversed(text)) if reverse else text
            files[name].write_text("".join(line + "\n" for line in ordered), encoding="utf-8")
    write_final(folder, max(rounds))
    manifest = RunManifest(status=status, seeds=[str(seed_file)])  # type: ignore[arg-type]
    for number in rounds:
        manifest.rounds[str(number)] = summarize_round(folder, number, None)
    manifest.final_samples = len(lines(folder.final))
    write_manifest(folder, manifest)
    return folder


SEEDS = {
    "a": ["What color is the hotel sign?", "How many trees are on the sidewalk?"],
    "b": ["Describe the following image."],
    "c": ["What is the man holding?"],
    "d": ["Where is the cat?"],
}
ROUNDS = {
    1: {
        "a": ["Identify the green hotel sign and explain how its color contrasts with the street.", "Is it noon?"],
        "b": ["How many trees are on the sidewalk?"],  # exact: seed a's second question
        "c": [LONG],
        "d": [LONG_ONE_WORD, "Where does the cat sleep, judging by the blanket?"],  # near: c@r1 (c < d)
    },
    2: {
        "a": [LONG_OTHER_WORD, "What would change at night?"],  # near: c@r1, an earlier round
        "b": ["Describe the following image in detail, naming every object."],
    },
}


def test_run_pass_moves_repeats_to_dropped_and_keeps_every_count_right(tmp_path: Path) -> None:
    folder = make_run(tmp_path / "run", SEEDS, ROUNDS)
    result = dedup(str(folder.root))
    assert result.exit_code == 0, result.output
    assert "1 exact and 2 near repeats among 14 questions" in result.output

    kept1 = {r["id"]: [i["question"] for i in r["qa"]] for r in lines(folder.round(1).kept)}
    assert kept1 == {"a@r1": ROUNDS[1]["a"], "c@r1": [LONG], "d@r1": [ROUNDS[1]["d"][1]]}
    kept2 = {r["id"]: [i["question"] for i in r["qa"]] for r in lines(folder.round(2).kept)}
    assert kept2 == {"a@r2": ["What would change at night?"], "b@r2": ROUNDS[2]["b"]}
    assert folder.final.read_text() == folder.round(1).kept.read_text() + folder.round(2).kept.read_text()

    dropped1 = lines(folder.round(1)["dropped"])
    assert dropped1[0]["stage"] == "eliminate"  # what was there stays
    dedups = {d["id"]: d for d in dropped1 if d["stage"] == "dedup"}
    assert dedups["b@r1"]["reason"] == 'exact duplicate of a#2: "How many trees are on the sidewalk?"'
    assert (
        dedups["d@r1"]["reason"].startswith("near duplicate (0.8")
        and f'of c@r1#1: "{LONG}"' in dedups["d@r1"]["reason"]
    )
    assert [i["question"] for i in dedups["d@r1"]["sample"]["qa"]] == [LONG_ONE_WORD]
    assert dedups["d@r1"]["sample"]["qa"][0]["twin"] == dedups["d@r1"]["reason"]
    [a2] = [d for d in lines(folder.round(2)["dropped"]) if d["stage"] == "dedup"]
    assert a2["id"] == "a@r2" and "of c@r1#1" in a2["reason"]

    outcomes = {o["seed_id"]: o for o in lines(folder.round(1)["outcomes"])}
    assert outcomes["b"]["kept"] is False and outcomes["b"]["scores"] == []
    assert outcomes["b"]["items"]["kept"] == 0 and outcomes["b"]["items"]["dropped_dedup"] == 1
    assert outcomes["b"]["reasons"] == ["eliminate: not improved", EXACT_CLASS]
    assert outcomes["d"]["kept"] is True and outcomes["d"]["items"]["kept"] == 1 and outcomes["d"]["scores"] == [8.0]
    assert outcomes["d"]["reasons"][-1] == NEAR_CLASS
    assert outcomes["a"] == json.loads(Outcome(**outcomes["a"]).model_dump_json())  # untouched lines stay valid

    manifest = read_manifest(folder)
    assert manifest is not None
    assert manifest.rounds["1"].kept_items == 4 and manifest.rounds["1"].kept_samples == 3
    assert manifest.rounds["2"].kept_items == 2
    assert manifest.rounds["1"].items["dropped_dedup"] == 2
    assert manifest.final_samples == 5

    before = digests(folder.root)
    again = dedup(str(folder.root))
    assert again.exit_code == 0, again.output
    assert "no repeats among the 11 questions" in again.output
    assert digests(folder.root) == before  # idempotent: not a byte changes


def test_dry_run_reports_and_changes_nothing(tmp_path: Path) -> None:
    folder = make_run(tmp_path / "run", SEEDS, ROUNDS)
    before = digests(folder.root)
    result = dedup(str(folder.root), "--dry-run", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(r["round"], r["questions"], r["exact"], r["near"]) for r in report["rounds"]] == [
        (0, 5, 0, 0), (1, 6, 1, 1), (2, 3, 0, 1)
    ]  # fmt: skip
    assert report["written"] is False
    assert digests(folder.root) == before


def _drop_set(folder: RunFolder) -> set[tuple[str, str]]:
    return {(d["id"], d["reason"]) for n in (1, 2) for d in lines(folder.round(n)["dropped"]) if d["stage"] == "dedup"}


def _kept_set(folder: RunFolder) -> set[str]:
    return {json.dumps(r, sort_keys=True) for n in (1, 2) for r in lines(folder.round(n).kept)}


def test_which_twin_survives_does_not_depend_on_line_order(tmp_path: Path) -> None:
    straight = make_run(tmp_path / "straight", SEEDS, ROUNDS)
    reverse = make_run(tmp_path / "reverse", dict(reversed(SEEDS.items())), ROUNDS, reverse=True)
    for folder in (straight, reverse):
        assert dedup(str(folder.root)).exit_code == 0
    assert _drop_set(straight) == _drop_set(reverse) and len(_drop_set(straight)) == 3
    assert _kept_set(straight) == _kept_set(reverse)


def test_a_pass_killed_between_replacements_is_finished_by_the_next(tmp_path: Path) -> None:
    done = make_run(tmp_path / "done", SEEDS, ROUNDS)
    assert dedup(str(done.root)).exit_code == 0
    finished = digests(done.root)
    # the states a kill can leave: dropped.jsonl replaced, then outcomes.jsonl, then kept.jsonl, round by round
    states = [("dropped",), ("dropped", "outcomes"), ("dropped", "outcomes", "kept")]
    for k, names in enumerate(states):
        folder = make_run(tmp_path / f"killed{k}", SEEDS, ROUNDS)
        for name in names:
            shutil.copy(done.round(1)[name], folder.round(1)[name])
        result = dedup(str(folder.root))
        assert result.exit_code == 0, result.output
        now = digests(folder.root)
        assert {p: d for p, d in now.items() if p != "run.json"} == {
            p: d for p, d in finished.items() if p != "run.json"
        }
        ours, theirs = json.loads(folder.run_json.read_text()), json.loads(done.run_json.read_text())
        for manifest in (ours, theirs):
            manifest.pop("updated")
            manifest.pop("created")
            manifest.pop("seeds")
        assert ours == theirs


def test_refuses_unfinished_runs_missing_seeds_and_locked_folders(tmp_path: Path) -> None:
    running = make_run(tmp_path / "running", SEEDS, ROUNDS, status="running")
    result = dedup(str(running.root))
    assert result.exit_code == 2 and "finish" in result.output

    folder = make_run(tmp_path / "run", SEEDS, ROUNDS)
    moved = tmp_path / "moved-seeds.jsonl"
    (tmp_path / "run-seeds.jsonl").rename(moved)
    result = dedup(str(folder.root))
    assert result.exit_code == 2 and "--seeds" in result.output
    with run_lock(folder):
        locked = dedup(str(folder.root), "--seeds", str(moved))
    assert locked.exit_code == 4 and "already running" in locked.output
    result = dedup(str(folder.root), "--seeds", str(moved))
    assert result.exit_code == 0 and "1 exact and 2 near" in result.output

    assert dedup(str(moved), "--dry-run").exit_code == 2  # --dry-run is for run folders
    assert dedup(str(folder.root), "--threshold", "1.5").exit_code == 2


def test_a_merged_sharded_run_loses_the_same_rewrites_as_one_run(server: ThreadedServer, tmp_path: Path) -> None:
    # the test model's round-2 question embeds its round-1 parent: at 0.5 the pass drops it as a near repeat
    common = ["--rounds", "2", "--seed", "5", "--images", "skip"]
    assert evolve(server, str(RUN_SEEDS), *common, "--out", str(tmp_path / "one")).exit_code == 0
    shards = [tmp_path / f"shard{k}" for k in range(2)]
    for k, shard in enumerate(shards):
        assert evolve(server, str(RUN_SEEDS), *common, "--shard", f"{k}/2", "--out", str(shard)).exit_code == 0
    merged = tmp_path / "merged"
    assert CliRunner().invoke(app, ["merge", *map(str, shards), "--out", str(merged)]).exit_code == 0
    for root in (tmp_path / "one", merged):
        result = dedup(str(root), "--threshold", "0.5")
        assert result.exit_code == 0, result.output
    one, both = RunFolder(tmp_path / "one"), RunFolder(merged)
    assert _drop_set(one) == _drop_set(both) and len(_drop_set(one)) >= 5
    assert all(reason.startswith("near duplicate (0.") for _, reason in _drop_set(one))
    assert sum("@r1#" in reason for _, reason in _drop_set(one)) >= 5  # mostly their own round-1 parents
    assert _kept_set(one) == _kept_set(both)
    assert sorted(lines(one.final), key=str) == sorted(lines(both.final), key=str)
    first, second = read_manifest(one), read_manifest(both)
    assert first is not None and second is not None
    assert first.rounds["2"].kept_items == second.rounds["2"].kept_items
    assert first.rounds["2"].items.get("dropped_dedup", 0) >= 5


def test_band_files_split_by_key_range_find_the_same_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    if not DEMO_SEEDS.exists():
        pytest.skip(f"real demo seeds not found at {DEMO_SEEDS}")
    whole = dedup_files([DEMO_SEEDS])
    monkeypatch.setattr(dedup_pass, "PARTITION_RECORDS", 300)  # 8,363 texts: 32 key ranges per band
    split = dedup_files([DEMO_SEEDS])
    assert split.candidate_pairs == whole.candidate_pairs and split.near_pairs == whole.near_pairs == 32
    assert split.rounds == whole.rounds


def test_dedup_has_help() -> None:
    result = CliRunner().invoke(app, ["dedup", "--help"])
    assert result.exit_code == 0 and "--threshold" in result.output and "--dry-run" in result.output
    assert "dedup" in CliRunner().invoke(app, ["--help"]).output
