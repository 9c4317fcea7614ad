"""evolve.parse on the 50 real gpt-4o-mini answers of round 1, on mutations of them, and on hand-made cases."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

import evolve.parse as parse_module
from evolve.errors import AnswerParseError
from evolve.parse import (
    SKILLS,
    Annotation,
    Verdict,
    parse_annotations,
    parse_claim_verdicts,
    parse_claims,
    parse_qas,
    parse_qas_detailed,
    parse_verdicts,
    parse_verdicts_detailed,
)
from evolve.records import QAS, Step

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpt4o_mini_round1_responses.jsonl"
ROWS: list[dict[str, Any]] = (
    [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    if DATA.is_file()
    else []
)
BY_ID = {row["hash_id"]: row for row in ROWS}
IDS = [row["hash_id"] for row in ROWS]
needs_data = pytest.mark.skipif(not ROWS, reason=f"{DATA} is not available")

# Answers that no careful reader could use, with why. Every one of the 50 real answers is readable:
# 1028 opens with "I'm unable to directly provide a rewritten Q&A&S" but then gives one complete item
# under "### Example Rewritten Q&A&S", and the judge scored that one item; it is kept.
UNREADABLE: dict[str, str] = {}

# Counted by hand (items in the answer, judge verdicts in order).
HAND_COUNTS = {
    "0_coco_train2017_000000203269.jpg": 5,
    "1010_ai2d_images_1152.png": 10,
    "1013_ai2d_images_3189.png": 3,  # prose before and after the fence
    "1019_alfworld_alf-image-id-3_episode-163-step-33-image.png": 7,  # prose before the fence
    "1021_alfworld_alf-image-id-0_episode-7-step-37-image.png": 2,  # prose before and after
    "1023_alfworld_alf-image-id-0_episode-127-step-40-image.png": 1,  # a single object, not a list
    "1028_alfworld_alf-image-id-1_episode-91-step-33-image.png": 1,  # a "refusal" holding one example
    "1032_alfworld_alf-image-id-2_episode-0-step-14-image.png": 3,  # headings and prose around
}
HAND_VERDICTS_1019 = [(True, 6), (False, 4), (False, 5), (True, 5), (True, 5), (False, 6), (True, 4)]


def _dumps(items: list[Any]) -> list[dict[str, Any]]:
    return [item.model_dump() for item in items]


# --------------------------------------------------------------------------- real answers


def test_real_data_is_all_there() -> None:
    if not DATA.is_file():
        pytest.skip(f"{DATA} is not available")
    assert len(ROWS) == 50
    assert set(HAND_COUNTS) <= set(BY_ID)


@needs_data
@pytest.mark.parametrize("hash_id", IDS)
def test_every_evolution_answer_parses(hash_id: str) -> None:
    text = BY_ID[hash_id]["evolution_response"]
    if hash_id in UNREADABLE:
        with pytest.raises(AnswerParseError):
            parse_qas(text)
        return
    result = parse_qas_detailed(text)
    assert result.dropped == 0
    # one item per "question" key: the answers are clean enough for this independent count
    assert len(result.items) == text.count('"question"') >= 1
    raw = json.loads(text[text.index("```json") + 7 : text.rindex("```")])
    raw = raw if isinstance(raw, list) else [raw]
    assert [(i.question, i.answer, i.objects, len(i.steps)) for i in result.items] == [
        (
            r["question"],
            r["answer"] if isinstance(r["answer"], str) else "\n".join(r["answer"]),
            r["objects"],
            len(r["steps"]),
        )
        for r in raw
    ]
    for item in result.items:
        assert item.question.strip() and item.answer.strip()
        assert all(step.description for step in item.steps)
        assert item.improved is None and item.score is None
    if hash_id in HAND_COUNTS:
        assert len(result.items) == HAND_COUNTS[hash_id]


@needs_data
@pytest.mark.parametrize("hash_id", IDS)
def test_every_judge_answer_parses(hash_id: str) -> None:
    row = BY_ID[hash_id]
    expected = len(parse_qas(row["evolution_response"]))
    assert row["judge_response"].count('"improved"') == expected  # no count mismatch in the real data
    verdicts = parse_verdicts(row["judge_response"], expected)
    assert len(verdicts) == expected
    for verdict in verdicts:
        assert 0 <= verdict.score <= 10 and verdict.score == int(verdict.score)
        assert verdict.reason
    with pytest.raises(AnswerParseError) as info:
        parse_verdicts(row["judge_response"], expected + 1)
    assert info.value.reason == f"judge returned {expected} verdicts for {expected + 1} rewrites"
    assert info.value.raw == row["judge_response"]


@needs_data
def test_hand_checked_items_and_verdicts() -> None:
    # a real list-valued answer, joined by records.QAS
    winter = parse_qas(BY_ID["1003_ai2d_images_2523.png"]["evolution_response"])[1]
    assert winter.answer.startswith("The Winter Solstice, marked by 'E', occurs on December 21, 2013")
    assert "\nThis labeling method is typical" in winter.answer
    row = BY_ID["1019_alfworld_alf-image-id-3_episode-163-step-33-image.png"]
    items = parse_qas(row["evolution_response"])
    assert items[0].format == "multi-choice" and items[0].answer == "A"
    assert items[2].steps[0].manipulation == "imagination_1(recipe_1)->output_1"
    assert items[6].question.startswith("Does the text 'The green vegetable is cabbage")
    verdicts = parse_verdicts(row["judge_response"], 7)
    assert [(v.improved, v.score) for v in verdicts] == HAND_VERDICTS_1019
    single = parse_qas_detailed(
        BY_ID["1023_alfworld_alf-image-id-0_episode-127-step-40-image.png"]["evolution_response"]
    )
    assert single.repairs == ["single object"] and len(single.items[0].steps) == 5


@needs_data
def test_clean_answers_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def spy(text: str, **kwargs: Any) -> Any:
        calls.append(text)
        raise AssertionError("json_repair must not run on clean answers")

    monkeypatch.setattr(parse_module.json_repair, "repair_json", spy)
    for row in ROWS:
        result = parse_qas_detailed(row["evolution_response"])
        assert "json_repair" not in result.repairs
        parse_verdicts(row["judge_response"], len(result.items))
    assert calls == []


def _element_ends(text: str) -> list[int]:
    """Where each top-level item of a clean answer ends (exclusive), by json's own decoder."""
    decoder = json.JSONDecoder()
    start = text.index("```json") + len("```json")
    while text[start] in " \n":
        start += 1
    if text[start] == "{":
        return [decoder.raw_decode(text, start)[1]]
    ends: list[int] = []
    pos = start + 1
    while True:
        while text[pos] in " \n,":
            pos += 1
        if text[pos] == "]":
            return ends
        pos = decoder.raw_decode(text, pos)[1]
        ends.append(pos)


@needs_data
def test_truncated_real_answers_keep_exactly_the_complete_items() -> None:
    checked = 0
    for row in ROWS:
        text = row["evolution_response"]
        full = _dumps(parse_qas(text))
        ends = _element_ends(text)
        assert len(ends) == len(full)
        for cut in range(7, len(text), 101):
            closed = sum(1 for end in ends if end <= cut)
            if closed == 0:
                with pytest.raises(AnswerParseError) as info:
                    parse_qas(text[:cut])
                assert "no complete item" in info.value.reason or "no JSON array" in info.value.reason
            else:
                result = parse_qas_detailed(text[:cut])
                assert _dumps(result.items) == full[:closed], (row["hash_id"], cut)
            checked += 1
    assert checked > 1500


@needs_data
def test_real_answers_survive_mutations() -> None:
    for row in ROWS:
        text = row["evolution_response"]
        full = _dumps(parse_qas(text))
        body = text[text.index("```json") + 7 : text.rindex("```")].strip()
        # trailing commas after every last member and item, no fence, prose around
        commas = re.sub(r'"\s*\n(\s*)\}', r'",\n\1}', body)
        commas = re.sub(r"\}\s*\]\s*$", "},\n]", commas)
        assert _dumps(parse_qas(f"Sure, here you go:\n{commas}\nHope it helps!")) == full
        # comments of both kinds
        commented = body.replace('"answer":', '/* the answer */ "answer":').replace(
            '"question":', '// the question\n"question":'
        )
        assert _dumps(parse_qas(commented)) == full
        # a Python literal (single quotes, True/None)
        assert _dumps(parse_qas(repr(json.loads(body)))) == full
        # curly quotes as JSON quotes (every string rewritten “like this”)
        curly = re.sub(r'"((?:[^"\\]|\\.)*)"', r"“\1”", body)
        assert _dumps(parse_qas(curly)) == full
        # quotes inside strings left unescaped
        assert _dumps(parse_qas(body.replace('\\"', '"'))) == full
        # wrapped, in a plain fence, after another fence with an unrelated object
        wrapped = '```\n{"note": "original"}\n```\n```\n{"Rewritten Q&A&S": ' + body + "}\n```"
        assert _dumps(parse_qas(wrapped)) == full


# --------------------------------------------------------------------------- hand-made: repairs


def _qa(result: list[Any]) -> list[tuple[str, str]]:
    return [(item.question, item.answer) for item in result]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('```json\n[{"question": "q", "answer": "a"}]\n```', [("q", "a")]),
        ('```\n[{"question": "q", "answer": "a"}]\n```', [("q", "a")]),
        ('```JSON\n[{"question": "q", "answer": "a"}]', [("q", "a")]),  # no closing fence
        ('Here it is:\n[{"question": "q", "answer": "a"}]\nEnjoy!', [("q", "a")]),
        ('[{"question": "q", "answer": "a",},]', [("q", "a")]),
        ("[{“question”: “q”, “answer”: “a”}]", [("q", "a")]),
        ('[{"question": "the “big” dog", "answer": "a"}]', [("the “big” dog", "a")]),
        (
            '[\n  // first\n  {"question": "q", /* x */ "answer": "a"}, // tail\n  {"question": "r", "answer": "b"}\n]',
            [("q", "a"), ("r", "b")],
        ),
        ('[{"question": "line one\nline two", "answer": "tab\there"}]', [("line one\nline two", "tab\there")]),
        ('[{"question": """He said "hi" """, "answer": "a"}]', [('He said "hi" ', "a")]),
        ("[{'question': 'What's this?', 'answer': 'a', 'objects': None}]", [("What's this?", "a")]),
        ('{"question": "q", "answer": "a"}', [("q", "a")]),
        ('{"qas": [{"question": "q", "answer": "a"}]}', [("q", "a")]),
        ('{"Rewritten Q&A&S": [{"question": "q", "answer": "a"}]}', [("q", "a")]),
        ('{"original": {"x": 1}, "result": {"items": [{"question": "q", "answer": "a"}]}}', [("q", "a")]),
        ('[{"question": "q", "answers": "a"}]', [("q", "a")]),
        ('[{"Question": "q", "Answer": "a"}]', [("q", "a")]),
        ('[{"question": "q", "answer": ["x", "y"]}]', [("q", "x\ny")]),
        ('[{"question": "q", "answer": {"left": "cat", "right": "dog"}}]', [("q", "left: cat; right: dog")]),
        ('[{"question": 12, "answer": 3.5}]', [("12", "3.5")]),
        ('[{"question": "q", "answer": "7"}]', [("q", "7")]),
        ('[{"question": "what is {x} and [y], \\"z\\"?", "answer": "b}]"}]', [('what is {x} and [y], "z"?', "b}]")]),
        (
            '[{"question": "The sign reads "STOP", right?", "answer": "a {b}"}, {"question": "r", "answer": "s"}]',
            [('The sign reads "STOP", right?', "a {b}"), ("r", "s")],
        ),
        ('"[{\\"question\\": \\"q\\", \\"answer\\": \\"a\\"}]"', [("q", "a")]),  # JSON inside a string
    ],
)
def test_repairs(text: str, expected: list[tuple[str, str]]) -> None:
    assert _qa(parse_qas(text)) == expected


def test_steps_given_as_strings_and_other_shapes() -> None:
    items = parse_qas(
        '[{"question": "q", "answer": "a", "steps": ["look", "count"]},'
        ' {"question": "r", "answer": "b", "steps": "just look"},'
        ' {"question": "s", "answer": "c", "steps": {"manipulation": "OCR_1(bbx)->txt", "description": "read"}},'
        ' {"question": "t", "answer": "d", "objects": "cat", "skills": null, "format": null}]'
    )
    assert [s.description for s in items[0].steps] == ["look", "count"]
    assert [s.description for s in items[1].steps] == ["just look"]
    assert items[2].steps[0].manipulation == "OCR_1(bbx)->txt"
    assert items[3].objects == ["cat"] and items[3].skills == [] and items[3].format == "Norm"


def test_a_rewriter_cannot_score_itself() -> None:
    (item,) = parse_qas('[{"question": "q", "answer": "a", "improved": "yes", "score": "high", "reason": 1}]')
    assert item.improved is None and item.score is None and item.reason is None


def test_several_fences_pick_the_one_with_items() -> None:
    text = (
        'The original was:\n```json\n{"note": "nothing here"}\n```\nand the rewrite:\n'
        '```json\n[{"question": "q", "answer": "a"}]\n```'
    )
    result = parse_qas_detailed(text)
    assert _qa(result.items) == [("q", "a")]
    assert "fence 2 of 2" in result.repairs


def test_a_fence_inside_a_string_does_not_cut_the_answer() -> None:
    text = (
        "Here:\n```json\n"
        '[{"question": "Write code", "answer": "```python\\nprint(1)\\n```"}, {"question": "b", "answer": "c"}]'
        "\n```\nDone."
    )
    assert _qa(parse_qas(text)) == [("Write code", "```python\nprint(1)\n```"), ("b", "c")]


def test_invalid_items_are_skipped_and_counted() -> None:
    result = parse_qas_detailed(
        '[{"question": "q", "answer": "a"}, {"foo": 1}, {"question": "r"}, {"question": "", "answer": ""}]'
    )
    assert _qa(result.items) == [("q", "a")]
    assert result.dropped == 3


# --------------------------------------------------------------------------- hand-made: truncation


def test_truncated_mid_string_drops_the_cut_item() -> None:
    result = parse_qas_detailed('```json\n[{"question": "q", "answer": "a"}, {"question": "r", "answer": "b is cu')
    assert _qa(result.items) == [("q", "a")]
    assert result.dropped == 1
    assert "dropped a cut-off last item" in result.repairs


def test_truncated_inside_a_nested_list_drops_the_cut_item() -> None:
    text = '[{"question": "q", "answer": "a"}, {"question": "r", "answer": "b", "steps": [{"description": "x"}'
    assert _qa(parse_qas(text)) == [("q", "a")]


def test_truncated_before_the_closing_brace_drops_the_item() -> None:
    # json_repair would happily complete this item; a half element is never accepted
    text = '[{"question": "q", "answer": "a"}, {"question": "r", "answer": "b"'
    assert _qa(parse_qas(text)) == [("q", "a")]


def test_truncated_between_elements_keeps_all() -> None:
    assert _qa(parse_qas('[{"question": "q", "answer": "a"},\n  ')) == [("q", "a")]
    assert _qa(parse_qas('[{"question": "q", "answer": "a"}, {"question": "r", "answer": "b"}')) == [
        ("q", "a"),
        ("r", "b"),
    ]


def test_truncated_wrapper_object() -> None:
    result = parse_qas_detailed('{"qas": [{"question": "q", "answer": "a"}, {"question": "r", "ans')
    assert _qa(result.items) == [("q", "a")]
    assert result.dropped == 1


def test_truncated_inside_the_only_item_raises() -> None:
    with pytest.raises(AnswerParseError) as info:
        parse_qas('{"question": "q", "steps": [{"description": "x"}], "ans')
    assert info.value.reason == "the answer ends inside its first item (no complete item)"
    with pytest.raises(AnswerParseError) as info:
        parse_qas('```json\n[\n  {"question": "q", "answer": "a is')
    assert info.value.reason == "the answer ends inside its first item (no complete item)"


# --------------------------------------------------------------------------- hand-made: failures


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty answer"),
        ("  \n ", "empty answer"),
        ("I'm sorry, I can't help with that.", "no JSON array found in 34 chars starting \"I'm sorry, I can"),
        ("Here is some prose [with brackets] and {braces}.", "no JSON array found"),
        ('```json\n{"foo": 1, "bar": [1, 2]}\n```', "no Q&A&S items in a JSON object with keys foo, bar"),
        ("[1, 2, 3]", "no Q&A&S items in a JSON array of 3 values, none an object"),
        ('[{"foo": 1}]', "no Q&A&S items in a JSON array of 1 values (first object's keys: foo)"),
        (
            '[{"question": "a"}, {"question": "b"}, {"question": "c", "answer": null}]',
            "3 items, none valid: missing answer",
        ),
        ('[{"question": "", "answer": ""}]', "1 item, none valid: empty question and answer"),
        ('[{"question": "q", "answer": null}]', "1 item, none valid: answer: Input should be a valid string"),
    ],
)
def test_unreadable_answers(text: str, reason: str) -> None:
    with pytest.raises(AnswerParseError) as info:
        parse_qas(text)
    assert info.value.reason.startswith(reason)
    assert info.value.raw == text


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("value", "improved"),
    [
        ('"yes"', True),
        ('"Yes"', True),
        ('"YES"', True),
        ('"y"', True),
        ("true", True),
        ('"Yes, clearly"', True),
        ('"no"', False),
        ('"No"', False),
        ('"n"', False),
        ("false", False),
        ("0", False),
        ("1", True),
    ],
)
def test_verdict_yes_no(value: str, improved: bool) -> None:
    (verdict,) = parse_verdicts(f'[{{"improved": {value}, "score": 5, "reason": "r"}}]', 1)
    assert verdict.improved is improved


@pytest.mark.parametrize(
    ("value", "score"),
    [
        ("7", 7.0),
        ('"7"', 7.0),
        ('"7/10"', 7.0),
        ('"7 / 10"', 7.0),
        ("7.5", 7.5),
        ('"8 out of 10"', 8.0),
        ('"4/5"', 8.0),
        ("12", 10.0),
        ("-1", 0.0),
        ('"Score: 6"', 6.0),
    ],
)
def test_verdict_scores(value: str, score: float) -> None:
    (verdict,) = parse_verdicts(f'[{{"improved": "yes", "score": {value}}}]', 1)
    assert verdict.score == score and verdict.reason == ""


@pytest.mark.parametrize(
    ("item", "why"),
    [
        ('{"improved": "maybe", "score": 5}', "improved: expected yes or no"),
        ('{"improved": "yes"}', "missing score"),
        ('{"improved": "yes", "score": "N/A"}', "score: expected a number"),
        ('{"improved": "yes", "score": true}', "score: expected a number, got a boolean"),
    ],
)
def test_bad_verdicts(item: str, why: str) -> None:
    with pytest.raises(AnswerParseError) as info:
        parse_verdicts(f"[{item}]", 1)
    assert info.value.reason.startswith(f"1 item, none valid: {why}")
    assert info.value.reason.endswith("(expected 1 verdicts)")


def test_verdict_shapes_and_repairs() -> None:
    text = (
        'Verdicts:\n```json\n{"verdicts": [{"Improved": "yes", "Score": "9/10", "Reason": "more steps",},\n'
        '  // second\n  {"improved": False, "score": None, "reason": "same"}, {"improved": "no", "score": 2}]}\n```'
    )
    result = parse_verdicts_detailed(text, 2)
    assert [(v.improved, v.score, v.reason) for v in result.items] == [(True, 9.0, "more steps"), (False, 2.0, "")]
    assert result.dropped == 1
    (single,) = parse_verdicts('{"improved": "yes", "score": 6, "reason": "ok"}', 1)
    assert single == Verdict(improved=True, score=6, reason="ok")


def test_verdict_count_mismatch_and_truncation() -> None:
    two = '[{"improved": "yes", "score": 6}, {"improved": "no", "score": 3}]'
    with pytest.raises(AnswerParseError) as info:
        parse_verdicts(two, 3)
    assert info.value.reason == "judge returned 2 verdicts for 3 rewrites"
    cut = '```json\n[{"improved": "yes", "score": 6}, {"improved": "no", "sco'
    with pytest.raises(AnswerParseError) as info:
        parse_verdicts(cut, 2)
    assert info.value.reason == "judge returned 1 verdicts for 2 rewrites (1 more unreadable)"
    with pytest.raises(AnswerParseError) as info:
        parse_verdicts("I cannot judge these.", 2)
    assert info.value.reason.startswith("no JSON array found") and info.value.reason.endswith("(expected 2 verdicts)")


def test_verdict_model_clamps() -> None:
    assert Verdict.model_validate({"improved": "y", "score": 99}).score == 10.0
    assert Verdict.model_validate({"improved": "n", "score": "-3"}).score == 0.0
    assert Verdict.model_validate({"improved": True, "score": 5, "reason": ["a", "b"]}).reason == "a\nb"


@needs_data
def test_damaged_real_answers_never_crash() -> None:
    """Random damage (deleted or stray quotes, brackets, commas, backslashes): items or AnswerParseError."""
    rng = random.Random(7)
    read = 0
    for row in ROWS:
        for _ in range(10):
            chars = list(row["evolution_response"])
            for _ in range(rng.randrange(1, 6)):
                at = rng.randrange(len(chars))
                if rng.random() < 0.5:
                    del chars[at]
                else:
                    chars.insert(at, rng.choice("\"{}[],:'“”\n\\/*"))
            try:
                items = parse_qas("".join(chars))
            except AnswerParseError as exc:
                assert exc.reason
                continue
            read += 1
            assert all(item.question.strip() or item.answer.strip() for item in items)
    assert read > 400  # most damage is local: the other items still come through


# --------------------------------------------------------------------------- annotations

ANNOTATED = """```json
[
 {"index": 1, "objects": ["dog", "kite"], "skills": ["Grounding", "Behaviour Prediction"],
  "steps": [{"manipulation": "Grounding_1(dog)->bbx_1", "description": "The dog is at the bottom."}]},
 {"index": 2, "objects": [], "skills": [], "steps": []},
 {"index": 3, "objects": ["boat"], "skills": ["OCR"], "steps": [{"manipulation": null, "description": "Read it."}]}
]
```"""


def test_annotations_clean() -> None:
    first, second, third = parse_annotations(ANNOTATED, 3)
    assert first is not None and third is not None
    assert first.objects == ["dog", "kite"] and first.skills == ["Grounding", "Behaviour Prediction"]
    assert first.steps == [Step(manipulation="Grounding_1(dog)->bbx_1", description="The dog is at the bottom.")]
    assert second is None  # empty lists: the model could not annotate it
    assert third.steps[0].manipulation is None
    item = QAS(question="What does the hull say?", answer="MARLIN 7.")
    annotated = third.apply(item)
    assert (annotated.question, annotated.answer, annotated.objects) == (item.question, item.answer, ["boat"])


def test_annotations_messy() -> None:
    text = """Sure! Here are the annotations:
    [
      {'index': '2', 'objects': 'boat, hull', 'skills': 'ocr, grounding', 'steps': 'OCR_1(hull)->txt_1: reads MARLIN',},
      // the first item
      {"Index": 1, "Objects": ["dog"], "Skills": ["behavior prediction", "Behaviour Prediction", "Counting"],
       "Steps": ["Look at the dog.", {"manipulation": "Referring_1(bbx)->tgt_1", "description": "zoom"}],},
    ]
    Hope this helps."""
    first, second = parse_annotations(text, 2)
    assert first is not None and second is not None
    assert first.skills == ["Behaviour Prediction", "Counting"]  # canonical names, duplicates merged
    assert [s.description for s in first.steps] == ["Look at the dog.", "zoom"]
    assert second.objects == ["boat", "hull"] and second.skills == ["OCR", "Grounding"]
    assert second.steps == [Step(description="OCR_1(hull)->txt_1: reads MARLIN")]
    assert all(name in SKILLS for name in second.skills)


def test_annotations_by_position_without_indexes_and_wrapped() -> None:
    text = '{"annotations": [{"objects": ["a"]}, {"objects": ["b"], "skills": ["OCR"]}]}'
    found = parse_annotations(text, 3)
    assert [a.objects if a else None for a in found] == [["a"], ["b"], None]
    zero_based = '[{"index": 0, "objects": ["x"]}, {"index": 1, "objects": ["y"]}]'
    assert [a.objects if a else None for a in parse_annotations(zero_based, 2)] == [["x"], ["y"]]
    too_many = '[{"objects": ["1"]}, {"objects": ["2"]}, {"objects": ["3"]}]'
    assert [a.objects if a else None for a in parse_annotations(too_many, 2)] == [["1"], ["2"]]
    out_of_range = '[{"index": 7, "objects": ["p"]}, {"index": 1, "objects": ["q"]}]'
    assert [a.objects if a else None for a in parse_annotations(out_of_range, 2)] == [["p"], ["q"]]


def test_annotations_truncated_and_nulls() -> None:
    cut = ANNOTATED[: ANNOTATED.index('"boat"')]
    assert [a is not None for a in parse_annotations(cut, 3)] == [True, False, False]
    nulls = '[{"index": 1, "objects": ["a"]}, null, {"index": 3, "objects": ["c"]}]'
    assert [a.objects if a else None for a in parse_annotations(nulls, 3)] == [["a"], None, ["c"]]


@pytest.mark.parametrize("text", ["", "I cannot annotate these.", '[{"question": "q", "answer": "a"}]'])
def test_annotations_unreadable(text: str) -> None:
    with pytest.raises(AnswerParseError):
        parse_annotations(text, 2)


def test_annotation_model() -> None:
    assert Annotation.model_validate({"objects": None, "skills": None, "steps": None}).empty
    assert Annotation.model_validate({"steps": {"manipulation": "OCR_1(x)->txt_1", "description": "d"}}).steps[0]
    assert Annotation.model_validate({"objects": [1, None, " cup "]}).objects == ["1", "cup"]


# --------------------------------------------------------------------------- claims


def test_claims_clean_and_messy() -> None:
    clean = '```json\n[{"index": 1, "claims": ["A dog runs.", "The ball is red."]}, {"index": 2, "claims": []}]\n```'
    assert parse_claims(clean, 2) == [["A dog runs.", "The ball is red."], []]
    messy = """Here you go:
    {"items": [
      {"index": 2, "claims": "- There is a bench.\n- The bench is green.\n\n"},
      {"index": 1, "claims": [{"claim": "A kite flies."}, {"text": "The sky is clear."}, "", 3]},
    ]}"""
    assert parse_claims(messy, 3) == [
        ["A kite flies.", "The sky is clear."],
        ["There is a bench.", "The bench is green."],
        [],
    ]
    assert parse_claims('[{"claims": ["one."]}]', 2) == [["one."], []]


def test_claims_truncated_and_unreadable() -> None:
    text = '[{"index": 1, "claims": ["A."]}, {"index": 2, "claims": ["B.", "C'
    assert parse_claims(text, 3) == [["A."], [], []]
    with pytest.raises(AnswerParseError):
        parse_claims("No claims.", 1)


def test_claim_verdicts() -> None:
    clean = '```json\n[{"id": 1, "verdict": "yes"}, {"id": 2, "verdict": "no"}, {"id": 3, "verdict": "unsure"}]\n```'
    assert parse_claim_verdicts(clean, 3) == [True, False, None]
    shuffled = '[{"id": 3, "verdict": "No."}, {"id": 1, "answer": "YES, it is"}, {"claim": 2, "verdict": "not sure"}]'
    assert parse_claim_verdicts(shuffled, 4) == [True, None, False, None]
    words = 'Answers: ["yes", "No", "unsure", true, "false", "cannot tell", "maybe"]'
    assert parse_claim_verdicts(words, 7) == [True, False, None, True, False, None, None]
    cut = '[{"id": 1, "verdict": "yes"}, {"id": 2, "verdict": "no"}, {"id": 3, "verd'
    assert parse_claim_verdicts(cut, 3) == [True, False, None]
    assert parse_claim_verdicts("[{'id': '2', 'verdict': 'correct'}]", 2) == [None, True]


@pytest.mark.parametrize("text", ["", "All claims are true.", '[{"id": 1}]', "[1, 2]"])
def test_claim_verdicts_unreadable(text: str) -> None:
    with pytest.raises(AnswerParseError):
        parse_claim_verdicts(text, 2)


def test_fences_inside_strings_of_one_item_per_line() -> None:
    """An answer echoing code blocks (as for a real demo seed's HTML tutorial), one item per line: the fences
    inside its strings cut the outer fence into pieces, one of which holds a complete item; the whole text
    holds them all."""
    items = [
        {"question": "How is the page built?", "answer": "With HTML:\n\n```html\n<p>Hi</p>\n```\nand CSS."},
        {"question": "And the style?", "answer": "Plain CSS."},
        {"question": "Third?", "answer": "See ```css\np {}\n```"},
        {"question": "Fourth?", "answer": "Done."},
    ]
    text = "```json\n[\n  " + ",\n  ".join(json.dumps(item) for item in items) + "\n]\n```"
    assert [item.question for item in parse_qas(text)] == [item["question"] for item in items]
