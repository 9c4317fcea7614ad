"""`evolve show`: one seed's lineage in the terminal, through the CLI, on the session's demo run."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from typer.testing import CliRunner

from evolve.cli import app
from evolve.lineage import word_diff
from evolve.show import diff_text, load_lineage, render

ROUND_TITLE = re.compile(r"round (\d) (perceptual|reasoning|interaction)")


def lines(path: Path) -> list[dict[str, Any]]:
    """Decoded JSONL lines of a file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def flat(text: str) -> str:
    """The words of a rendering, without panel borders (a narrow terminal wraps lines inside them)."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def show(*args: str) -> Any:
    """`evolve show ...` in-process, on a wide terminal."""
    return CliRunner().invoke(app, ["show", *args], env={"COLUMNS": "160"})


def test_a_seed_with_every_round(demo_run: Path) -> None:
    drop = next(r for r in lines(demo_run / "round-1" / "dropped.jsonl") if r["stage"] == "eliminate")
    seed_id = drop["seed_id"]
    result = show(str(demo_run), seed_id)
    assert result.exit_code == 0, result.output
    text = result.output
    assert seed_id in text
    assert [int(n) for n, _ in ROUND_TITLE.findall(text)] == [1, 2, 3]
    first = ROUND_TITLE.findall(text)[0]
    assert first[1] == drop["operator"]
    assert "dropped at eliminate: " + drop["reason"] in flat(text)
    assert "judge:" in text
    assert "demo.jsonl:" in text  # where the seed came from
    evolved = lines(demo_run / "round-1" / "evolved.jsonl")
    rewrite = next(r for r in evolved if r["seed_id"] == seed_id)["qa"][0]["question"]
    assert rewrite.split()[0] in text


def test_one_round_only(demo_run: Path) -> None:
    seed_id = lines(demo_run / "round-2" / "judged.jsonl")[0]["seed_id"]
    result = show(str(demo_run), seed_id, "--round", "2")
    assert result.exit_code == 0, result.output
    assert [n for n, _ in ROUND_TITLE.findall(result.output)] == ["2"]
    result = show(str(demo_run), seed_id, "--round", "9")
    assert result.exit_code == 2
    assert "has rounds 1, 2, 3" in result.output


def test_random_is_repeatable_with_a_seed(demo_run: Path) -> None:
    picks = set()
    for number in range(6):
        first, again = (show(str(demo_run), "--random", "--seed", str(number)) for _ in range(2))
        assert first.exit_code == 0, first.output
        assert first.output == again.output
        picks.add(first.output.split("seed ", 1)[1].split()[0])
    assert len(picks) > 1
    known = {r["seed_id"] for r in lines(demo_run / "round-1" / "evolved.jsonl")}
    assert picks <= known


def test_unknown_id_is_one_line_with_a_hint(demo_run: Path) -> None:
    result = show(str(demo_run), "no-such-seed")
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "unknown seed id 'no-such-seed'" in message and "--random" in message
    assert any(r["seed_id"] in message for r in lines(demo_run / "round-1" / "evolved.jsonl"))
    assert show(str(demo_run)).exit_code == 2  # neither an id nor --random
    assert show(str(demo_run), "x", "--random").exit_code == 2


def test_the_word_diff_is_coloured(demo_run: Path) -> None:
    assert word_diff("How many cups are there?", "How many red cups are there now?") == [
        ("=", "How many"), ("+", "red"), ("=", "cups are"), ("-", "there?"), ("+", "there now?"),
    ]  # fmt: skip
    seed_id = lines(demo_run / "round-1" / "kept.jsonl")[0]["seed_id"]
    run, lineage = load_lineage(demo_run, seed_id)
    item = lineage.rounds[0].items[0]
    text = diff_text(item)
    added = [text.plain[span.start : span.end] for span in text.spans if "green" in str(span.style)]
    assert added and all(part in item.fields["question"] for part in added)
    console = Console(record=True, width=140, force_terminal=True, color_system="truecolor")
    console.print(render(run, lineage))
    assert "\x1b[" in console.export_text(styles=True)  # colours reach the terminal


def test_fields_of_newer_stages_are_shown(demo_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    kept = lines(run / "round-1" / "kept.jsonl")[0]
    item = {
        **kept["qa"][0],
        "question": "Is the red book on the top shelf?",
        "claims": [{"claim": "there is a red book", "verdict": False}, {"claim": "it is on a shelf", "verdict": None}],
        "votes": [{"improved": True, "score": 7}, {"improved": False, "score": 4}],
        "twin": "other@r1",
        "violations": ["answer_leaks_question"],
        "novelty": 0.42,
    }
    drop = {"id": kept["id"], "seed_id": kept["seed_id"], "round": 1, "stage": "verify", "reason": "a claim failed",
            "operator": kept["operator"], "raw": None, "sample": {**kept, "qa": [item]}}  # fmt: skip
    with (run / "round-1" / "dropped.jsonl").open("a") as fp:
        fp.write(json.dumps(drop) + "\n")
    result = show(str(run), kept["seed_id"], "--round", "1")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    for expected in ("[false] there is a red book", "[unsure] it is on a shelf", "votes: ✓7, ✗4",
                     "near-duplicate of: other@r1", "answer_leaks_question", "novelty: 0.42",
                     "dropped at verify: a claim failed"):  # fmt: skip
        assert expected in flat
