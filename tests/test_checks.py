"""Rule checks before the judge: each rule on real and hand-made text, the registry, and `evolve check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from evolve.checks import (
    RULES,
    Violation,
    check_sample,
    coordinate_quadruples,
    counting_or_location,
    named_letters,
    parse_checks,
    parse_options,
)
from evolve.cli import app
from evolve.errors import UsageError
from evolve.fakeserver import ThreadedServer
from evolve.records import QAS, Box, Loaded, Sample, Step, read_samples

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BOXES = [Box(label="cat", bbox=(0.251, 0.172, 0.274, 0.239)), Box(label="dog", bbox=(0.5, 0.25, 0.75, 1.0))]


def qas(question: str = "What colour is the bus?", answer: str = "Red.", steps: int = 0, fmt: str = "Norm") -> QAS:
    """An item with `steps` numbered steps."""
    step_list = [Step(description=f"step {n}") for n in range(steps)]
    return QAS(question=question, answer=answer, steps=step_list, format=fmt)


def sample(items: list[QAS], *, boxes: list[Box] | None = None, operator: str | None = None, id: str = "s") -> Sample:
    """A sample holding `items` and `boxes`."""
    return Sample(id=id, qa=items, objects=boxes or [], operator=operator)


def violations(
    rule: str, child: QAS, parent: list[QAS] | None = None, boxes: list[Box] | None = None, operator: str = "perceptual"
) -> list[Violation]:
    """The violations of one rule for a one-item child of a parent holding `parent` (default: one plain item)."""
    parent_sample = sample(parent if parent is not None else [qas("Is it day?")], boxes=boxes, id="p")
    child_sample = sample([child], boxes=boxes, operator=operator, id="p@r1")
    return check_sample(child_sample, parent_sample, parse_checks(rule))[0]


# --------------------------------------------------------------------------- box_copied


def test_coordinate_quadruples_reads_boxes_not_other_lists() -> None:
    text = "cat at [0.251, 0.172, 0.274, 0.239], `[0.5, .25, 0.75, 1]`, (0.1, 0.2, 0.3, 0.4); list [1, 2, 3, 4]"
    assert coordinate_quadruples(text) == [
        ("0.251", "0.172", "0.274", "0.239"),
        ("0.500", "0.250", "0.750", "1.000"),
        ("0.100", "0.200", "0.300", "0.400"),
    ]
    assert coordinate_quadruples("pixels [120.5, 45, 300, 210] and a point [0.1, 0.2]") == []


def test_box_copied_accepts_the_samples_boxes_to_three_decimals() -> None:
    copied = qas(answer="The cat sits at [0.251, 0.172, 0.274, 0.239] and the dog at [0.50, 0.25, 0.75, 1.0].")
    assert violations("box_copied", copied, boxes=BOXES) == []
    step = QAS(question="Where?", answer="Left.", steps=[Step(manipulation="Referring_1([0.251,0.172,0.274,0.239])")])
    assert violations("box_copied", step, boxes=BOXES) == []


def test_box_copied_flags_invented_or_rounded_coordinates() -> None:
    off = qas(answer="The cat sits at [0.25, 0.172, 0.274, 0.239].")  # 0.250 is not 0.251
    assert violations("box_copied", off, boxes=BOXES) == [
        Violation("box_copied", "[0.250, 0.172, 0.274, 0.239] in the answer is not one of the sample's 2 boxes")
    ]
    invented = qas(question="What is inside [0.1, 0.2, 0.3, 0.4]?")
    [found] = violations("box_copied", invented, boxes=[])
    assert found.detail == "[0.100, 0.200, 0.300, 0.400] in the question is not one of the sample's 0 boxes"


def test_box_copied_accepts_a_region_the_given_item_quoted() -> None:
    parent = [qas("Please provide a short description for this region: [0.61, 0.44, 0.7, 0.53].")]
    child = qas("What is the texture of the object in the region [0.610, 0.440, 0.700, 0.530]?")
    assert violations("box_copied", child, parent=parent, boxes=[]) == []


# --------------------------------------------------------------------------- no_count_without_boxes

COUNTING_OR_LOCATION = [
    ("How many cups are on the table?", "how many"),
    ("Count the birds on the wire.", "count"),
    ("What is the number of people on the bench?", "what is the number of"),
    ("What number of gray things are the same material as the small brown object?", "what number of"),
    ("Where is the cat sitting?", "where is"),
    ("Where's the Trachea? a. D b. B c. C d. A", "where's"),
    ("Locate the red car and describe it.", "locate"),
    ("Can you locate the keys?", "can you locate"),
    ("What is the position of the giraffe relative to the doorway?", "position of"),
    ("Describe the scene and identify the location of the key objects.", "location of"),
    ("Please provide the bounding box coordinate of the region this sentence describes: a bird.", "bounding box"),
    ("Please provide a short description for this region: [0.61, 0.44, 0.7, 0.53].", "coordinates"),
]
NEITHER = [
    "What number is written on the bus?",
    "What is the number of the bus?",
    "Give a number of reasons why the street looks busy.",
    "What are some potential challenges that could arise from the growing number of private hire vehicles?",
    "Where was this photo taken?",
    "Where is this event taking place?",
    "What essential information should be provided at baggage claim areas to help passengers locate their luggage?",
    "Imagine you are navigating with a task to locate a magazine and place it on a side table.",
    "If we place this trapezoid in a coordinate plane, what is its area?",
    "Two numbers count as neighbours if they share an edge; what is the sum?",
    "How many degrees are in the measure of the smaller angle?",
    "What is on the kitchen counter, and how does it affect the account?",
    "Where might you usually store a remote control in this scene?",
    "How might the sink's location influence kitchen workflow efficiency?",
]


@pytest.mark.parametrize(("question", "phrase"), COUNTING_OR_LOCATION)
def test_counting_and_location_questions_are_detected(question: str, phrase: str) -> None:
    assert counting_or_location(question) == phrase


@pytest.mark.parametrize("question", NEITHER)
def test_other_questions_are_not_taken_for_counting_or_location(question: str) -> None:
    assert counting_or_location(question) is None


def test_no_count_without_boxes_applies_to_perceptual_and_reasoning_only() -> None:
    count = qas("How many cups are on the table?", steps=2)
    [found] = violations("no_count_without_boxes", count, boxes=[], operator="df_cot")  # the official tag works too
    assert found.detail == '"how many" in the question, but the sample has no boxes'
    assert len(violations("no_count_without_boxes", count, boxes=[], operator="perceptual")) == 1
    assert violations("no_count_without_boxes", count, boxes=BOXES, operator="reasoning") == []
    assert violations("no_count_without_boxes", count, boxes=[], operator="interaction") == []


# --------------------------------------------------------------------------- choice_named


def test_parse_options_in_the_layouts_models_and_seeds_use() -> None:
    assert parse_options("Which one? A) Pollination B) Soil Formation C) Nutrient Recycling") == {
        "A": "Pollination",
        "B": "Soil Formation",
        "C": "Nutrient Recycling",
    }
    assert parse_options("Which letter? \nA) A \nB) C \nC) E \nD) F") == {"A": "A", "B": "C", "C": "E", "D": "F"}
    assert parse_options("Identify the category. \nOptions: (a) Cartoon (b) Photograph") == {
        "A": "Cartoon",
        "B": "Photograph",
    }
    assert parse_options("How many pseudopods? a. 8 b. 6 c. 5 d. 7") == {"A": "8", "B": "6", "C": "5", "D": "7"}
    assert parse_options("Is vitamin A. good for the eyes?") == {}


def test_named_letters() -> None:
    assert named_letters("C") == {"C"}
    assert named_letters("A) Drawer 1") == {"A"}
    assert named_letters("A, B") == {"A", "B"}
    assert named_letters("The correct answer is C, smart phone.") == {"C"}
    assert named_letters("Answer: (b)") == {"B"}
    assert named_letters("A dog sits in Figure (c).") == set()  # an article and a figure panel


def test_choice_named_by_letter_or_by_option_text() -> None:
    question = "What ecological process does the beetle show? A) Pollination B) Soil Formation C) Nutrient Recycling"
    for answer in ("C", "C) Nutrient Recycling", "It shows nutrient recycling.", "A, C"):
        assert violations("choice_named", qas(question, answer, fmt="multi-choice")) == [], answer
    [wrong] = violations("choice_named", qas(question, "E"))
    assert wrong.detail == "the answer names E, not one of the options A, B, C"
    [none] = violations("choice_named", qas(question, "The beetle rolls dung."))
    assert none.detail == "the answer names none of the options A, B, C"


def test_choice_named_matches_option_text_as_whole_words() -> None:
    question = "How many legs does it have? a. 8 b. 6 c. 4"
    assert violations("choice_named", qas(question, "It has 6 legs.")) == []
    assert len(violations("choice_named", qas(question, "It has 18 legs."))) == 1


def test_choice_format_without_options_is_flagged_and_plain_items_are_not() -> None:
    [found] = violations("choice_named", qas("Which colour is the bus?", "Red", fmt="multi_choice"))
    assert found.detail == "format multi_choice but the question lists no lettered options"
    assert violations("choice_named", qas("Which colour is the bus?", "Red")) == []


# --------------------------------------------------------------------------- steps, wording, fields


def test_more_steps_for_reasoning_rewrites_matched_by_position() -> None:
    parent = [qas("Q one?", steps=2), qas("Q two?", steps=0)]
    child = sample(
        [qas("New one?", steps=2), qas("New two?", steps=1), qas("New three?", steps=0)], operator="reasoning"
    )
    found = check_sample(child, sample(parent), parse_checks("more_steps"))
    assert found == [[Violation("more_steps", "2 steps, its parent item has 2")], [], []]  # the 3rd has no parent
    child.operator = "perceptual"
    assert check_sample(child, sample(parent), parse_checks("more_steps")) == [[], [], []]


def test_source_names_the_parent_item_when_set() -> None:
    parent = sample([qas("Q one?", steps=3), qas("Q two?", steps=0)])
    rewrite = qas("New two?", steps=1)
    rewrite.source = 1  # rewrites the second parent item, though it comes first
    found = check_sample(sample([rewrite], operator="reasoning"), parent, parse_checks("more_steps"))
    assert found == [[]]


def test_a_parent_given_new_items_is_read_again() -> None:
    parent = sample([qas("Is it day?")])
    child = sample([qas("Is it night?")])
    rules = parse_checks("question_changed")
    assert check_sample(child, parent, rules) == [[]]
    parent.qa = [qas("Is it night?")]  # the same object with other items: no stale answer
    assert check_sample(child, parent, rules) == [[Violation("question_changed", "same question as parent item 1")]]


ORIGINAL_REFERENCES = [
    ("Compared to the original question, what else can be seen?", '"the original question" in the question'),
    ("As in the original, name the animal.", '"As in the original" in the question'),
    ("Is the scene busier than the original?", '"than the original" in the question'),
    ("This rewritten question asks for colours: what are they?", '"rewritten question" in the question'),
]


@pytest.mark.parametrize(("question", "detail"), ORIGINAL_REFERENCES)
def test_references_to_the_original_are_flagged(question: str, detail: str) -> None:
    assert violations("no_original_reference", qas(question)) == [Violation("no_original_reference", detail)]


@pytest.mark.parametrize(
    "answer",
    [
        "With the original .fla files missing, Maria turns to a decompiler.",  # seen in the demo seeds
        "The original owner of the car painted it red.",
        "Returning the bowl to its original or a suitable location keeps order.",  # seen in a real rewrite
    ],
)
def test_the_word_original_in_content_is_not_a_reference(answer: str) -> None:
    assert violations("no_original_reference", qas(answer=answer)) == []


def test_question_changed_compares_with_every_parent_question() -> None:
    parent = [qas("What colour is the bus?"), qas("Is it raining?")]
    [found] = violations("question_changed", qas("  is it RAINING ??"), parent=parent)
    assert found == Violation("question_changed", "same question as parent item 2")
    assert violations("question_changed", qas("Is it raining heavily?"), parent=parent) == []


def test_fields_present() -> None:
    assert violations("fields_present", qas("  ", "Red.")) == [Violation("fields_present", "empty question")]
    assert violations("fields_present", qas("Why?", "", steps=1), operator="reasoning") == [
        Violation("fields_present", "empty answer")
    ]
    assert violations("fields_present", qas("Why?", "Because."), operator="reasoning") == [
        Violation("fields_present", "empty steps")
    ]
    assert violations("fields_present", qas("Why?", "Because."), operator="perceptual") == []


# --------------------------------------------------------------------------- registry and selection


def test_parse_checks() -> None:
    assert [rule.name for rule in parse_checks("all")] == list(RULES)
    assert parse_checks("none") == ()
    assert [rule.name for rule in parse_checks(" more_steps, box_copied,more_steps ")] == ["more_steps", "box_copied"]
    with pytest.raises(UsageError, match="unknown check 'boxes'; expected all, none or a comma list of: box_copied"):
        parse_checks("boxes,more_steps")
    with pytest.raises(UsageError, match="no check named"):
        parse_checks(" , ")


def test_rule_names_are_the_stable_ones() -> None:
    assert list(RULES) == [
        "box_copied",
        "no_count_without_boxes",
        "choice_named",
        "more_steps",
        "no_original_reference",
        "question_changed",
        "fields_present",
    ]


def test_check_sample_gives_every_violation_per_item() -> None:
    parent = sample([qas("How many cats?"), qas("Is it day?")], id="p")
    child = sample([qas("How many cats?"), qas("Is the sky clear?", steps=1)], operator="reasoning", id="p@r1")
    found = check_sample(child, parent, parse_checks("all"))
    assert [[v.rule for v in item] for item in found] == [
        ["no_count_without_boxes", "more_steps", "question_changed", "fields_present"],
        [],
    ]
    assert check_sample(child, parent, parse_checks("none")) == [[], []]


# --------------------------------------------------------------------------- evolve check


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    """Write records as JSONL."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def canonical(sample_: Sample, parent_id: str | None = None) -> dict[str, Any]:
    """A sample as an evolved-file record."""
    record: dict[str, Any] = json.loads(sample_.model_dump_json())
    record["parent_id"] = parent_id
    return record


def small_files(tmp_path: Path) -> tuple[Path, Path]:
    """An evolved file of two samples (four items; three break rules) and its parents file."""
    parents = [sample([qas("What is on the table?")], boxes=BOXES, id="a"), sample([qas("Is it day?")], id="b")]
    children = [
        sample([qas("What colour is the cat?", "Grey, at [0.9, 0.1, 0.95, 0.2].")], boxes=BOXES, id="a@r1"),
        sample(
            [
                qas("How many clouds are there?", steps=1),
                qas("Is it day?", steps=2),
                qas("What is the weather?", steps=3),
            ],
            operator="reasoning",
            id="b@r1",
        ),
    ]
    evolved = write_jsonl(tmp_path / "evolved.jsonl", [canonical(c, c.id.split("@")[0]) for c in children])
    return evolved, write_jsonl(tmp_path / "parents.jsonl", [canonical(p) for p in parents])


def test_check_command_table_and_json(tmp_path: Path) -> None:
    evolved, parents = small_files(tmp_path)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["check", str(evolved), "--parents", str(parents), "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    assert "4" in rows["items checked"] and "1 │ 25.0%" in rows["box_copied"] and "1 │ 25.0%" in rows["items passing"]
    report = json.loads(out.read_text())
    assert (report["samples"], report["items"], report["passing"], report["skipped_records"]) == (2, 4, 1, 0)
    assert {name: counts["items"] for name, counts in report["rules"].items()} == {
        "box_copied": 1,
        "no_count_without_boxes": 1,
        "choice_named": 0,
        "more_steps": 0,
        "no_original_reference": 0,
        "question_changed": 1,
        "fields_present": 0,
    }
    assert [(f["id"], f["item"], [v["rule"] for v in f["violations"]]) for f in report["flagged"]] == [
        ("a@r1", 0, ["box_copied"]),
        ("b@r1", 0, ["no_count_without_boxes"]),
        ("b@r1", 1, ["question_changed"]),
    ]


def test_check_command_chosen_checks_and_json_on_stdout(tmp_path: Path) -> None:
    evolved, parents = small_files(tmp_path)
    result = CliRunner().invoke(
        app, ["check", str(evolved), "--parents", str(parents), "--checks", "question_changed", "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report["rules"]) == ["question_changed"] and report["passing"] == 3


def test_embedded_native_record_is_checked_against_its_previous_version(tmp_path: Path) -> None:
    record = {
        "id": "7",
        "hash_id": "7_img.jpg",
        "image": "img.jpg",
        "det": [],
        "conversations_v0": [{"question": "Is the cat asleep?", "answer": "Yes."}],
        "conversations_v1": [{"question": "is the cat asleep", "answer": "Yes, curled up."}],
    }
    evolved = write_jsonl(tmp_path / "native.jsonl", [record])
    result = CliRunner().invoke(app, ["check", str(evolved), "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["flagged"] == [
        {
            "id": "7_img.jpg@r1",
            "item": 0,
            "operator": None,
            "question": "is the cat asleep",
            "violations": [{"rule": "question_changed", "detail": "same question as parent item 1"}],
        }
    ]


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    evolved, parents = small_files(tmp_path)
    unknown = CliRunner().invoke(app, ["check", str(evolved), "--parents", str(parents), "--checks", "boxes"])
    assert unknown.exit_code == 2 and "unknown check 'boxes'" in unknown.stderr and "fields_present" in unknown.stderr
    missing = CliRunner().invoke(app, ["check", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and missing.stderr.strip().endswith("nope.jsonl: no such file")
    orphans = CliRunner().invoke(app, ["check", str(evolved)])  # canonical records need --parents
    assert orphans.exit_code == 2, orphans.output
    assert "parent 'a' not found (give --parents FILE)" in orphans.stderr
    assert "no record could be checked (2 skipped" in orphans.stderr and "Traceback" not in orphans.output


def test_records_without_parent_are_skipped_and_counted(tmp_path: Path) -> None:
    evolved, parents = small_files(tmp_path)
    with evolved.open("a") as fp:
        fp.write('{"id": "c@r1", "seed_id": "c", "parent_id": "c", "qa": [{"question": "Q?", "answer": "A"}]}\n')
        fp.write("not json\n")
    result = CliRunner().invoke(app, ["check", str(evolved), "--parents", str(parents), "--json", "-"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["skipped_records"] == 2
    assert "parent 'c' not found" in result.stderr and "evolved.jsonl:4: invalid JSON" in result.stderr


def test_help_names_every_rule() -> None:
    result = CliRunner().invoke(app, ["check", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    assert all(name in text for name in RULES), text


def test_check_reads_a_real_run(server: ThreadedServer, tmp_path: Path) -> None:
    seeds = REPO / "seeds" / "demo.jsonl"
    base = ["--base-url", server.base_url, "--api-key", "test-key", "--model", "fake-vlm"]
    run = CliRunner().invoke(app, ["run", str(seeds), "--rounds", "1", "--out", str(tmp_path / "run"), *base])
    assert run.exit_code == 0, run.output
    evolved = tmp_path / "run" / "round-1" / "evolved.jsonl"
    result = CliRunner().invoke(app, ["check", str(evolved), "--parents", str(seeds), "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    children = [json.loads(line) for line in evolved.read_text().splitlines()]
    assert report["samples"] == len(children) and report["items"] == sum(len(c["qa"]) for c in children)
    assert report["skipped_records"] == 0
    assert report["passing"] + len(report["flagged"]) == report["items"]


# --------------------------------------------------------------------------- real data: gpt-4o-mini's round 1


@pytest.fixture(scope="module")
def real_round1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 50 real gpt-4o-mini answers as an evolved file, written by scripts/real_round1.py."""
    if not (SHARED / "gpt4o_mini_round1_responses.jsonl").is_file():
        pytest.skip(f"real data not found in {SHARED} (the shared data folder beside the repository)")
    out = tmp_path_factory.mktemp("real") / "real_round1.jsonl"
    script = REPO / "scripts" / "real_round1.py"
    done = subprocess.run([sys.executable, str(script), str(SHARED), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"50 evolved samples (228 items) in {out}") and done.stderr == ""
    return out


def test_real_round1_answers_break_no_rule(real_round1: Path) -> None:
    seeds = SHARED / "mmevol_demo_seeds.jsonl"
    result = CliRunner().invoke(app, ["check", str(real_round1), "--parents", str(seeds), "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["samples"], report["items"], report["passing"], report["skipped_records"]) == (50, 228, 228, 0)
    assert {counts["items"] for counts in report["rules"].values()} == {0}


def test_real_round1_with_one_coordinate_moved(real_round1: Path, tmp_path: Path) -> None:
    """Moving one real copied coordinate by 0.001 is caught, on that item only."""
    records = [json.loads(line) for line in real_round1.read_text().splitlines()]
    moved = next(
        (r, i) for r in records for i in r["qa"] if "[0.372, 0.777, 0.517, 0.990]" in i["answer"]
    )  # the sports ball of sample 102, copied by the model
    moved[1]["answer"] = moved[1]["answer"].replace("[0.372, 0.777, 0.517, 0.990]", "[0.372, 0.777, 0.517, 0.991]")
    evolved = write_jsonl(tmp_path / "moved.jsonl", records)
    seeds = SHARED / "mmevol_demo_seeds.jsonl"
    result = CliRunner().invoke(app, ["check", str(evolved), "--parents", str(seeds), "--json", "-"])
    report = json.loads(result.stdout)
    assert [(f["id"], [v["detail"] for v in f["violations"]]) for f in report["flagged"]] == [
        (moved[0]["id"], ["[0.372, 0.777, 0.517, 0.991] in the answer is not one of the sample's 17 boxes"])
    ]


@pytest.fixture(scope="module")
def demo_seeds() -> list[Sample]:
    """The 1,612 real demo seeds."""
    path = SHARED / "mmevol_demo_seeds.jsonl"
    if not path.is_file():
        pytest.skip(f"real data not found in {SHARED} (the shared data folder beside the repository)")
    return [item.sample for item in read_samples(path) if isinstance(item, Loaded)]


def test_choice_rule_on_the_real_multiple_choice_seeds(demo_seeds: list[Sample]) -> None:
    """Of the 847 seed items with lettered options, 3 answers name none (read by hand: two paraphrase an option,
    one refuses); the rest name a letter or an option's text."""
    rules = parse_checks("choice_named")
    choice = flagged = 0
    for seed in demo_seeds:
        for item, found in zip(seed.qa, check_sample(seed, None, rules), strict=True):
            choice += bool(parse_options(item.question))
            flagged += bool(found)
    assert (choice, flagged) == (847, 3)


def test_counting_detector_on_the_real_seed_questions(demo_seeds: list[Sample]) -> None:
    """On the 5,122 questions of the seeds without boxes the detector fires 373 times (how many, where is,
    regions and bounding boxes; read by hand, one borderline: "anything unusual about the position of the
    umbrella")."""
    questions = [item.question for s in demo_seeds if not s.objects for item in s.qa]
    assert (len(questions), sum(1 for q in questions if counting_or_location(q))) == (5122, 373)
