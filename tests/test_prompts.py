"""Prompt templates and their renderer: real seeds, the heading contract, verbatim data, user overrides."""

from __future__ import annotations

import hashlib
import json
import re
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evolve.errors import UsageError
from evolve.fakeserver import ThreadedServer, stable_fraction
from evolve.fakeserver.content import answer_claims
from evolve.parse import parse_annotations, parse_claim_verdicts, parse_claims, parse_qas, parse_verdicts
from evolve.prompts import OPERATORS, PromptParts, PromptSet, copy_templates, default_prompts_dir
from evolve.records import QAS, Box, Sample, Step, parse_record

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_SEEDS = SHARED / "data" / "mmevol_demo_seeds.jsonl"  # the real demo seeds (1,612 lines)
SEEDS = SHARED_SEEDS if SHARED_SEEDS.is_file() else Path(__file__).parent / "data" / "mmevol_seeds_head.jsonl"
GIVEN = "### Given Q&A&S"
ORIGINAL = "### Original Q&A&S"
REWRITTEN = "### Rewritten Q&A&S"
ANNOTATE = "### Q&A&S to Annotate"
SPLIT = "### Q&A&S to Split"
CHECK = "### Claims to Check"
FENCE = re.compile(r"```json\n(.*?)\n```", re.DOTALL)
ORDER = ("image_position", "objects", "skills", "format", "question", "steps", "answer")
TEMPLATES = (
    "_prefix.j2", "_context.j2", "_rules.j2", "perceptual.j2", "reasoning.j2", "interaction.j2", "judge.j2",
    "annotate.j2", "claims_split.j2", "claims_check.j2", "system.txt",
)  # fmt: skip


@pytest.fixture(scope="module")
def prompts() -> PromptSet:
    return PromptSet.load()


def _seeds(limit: int) -> list[Sample]:
    out = []
    with SEEDS.open(encoding="utf-8") as fp:
        for lineno, line in enumerate(islice(fp, limit), start=1):
            out.append(parse_record(json.loads(line), f"{SEEDS}:{lineno}")[0])
    return out


@pytest.fixture(scope="module")
def seeds() -> list[Sample]:
    return _seeds(120)


@pytest.fixture(scope="module")
def rich(seeds: list[Sample]) -> Sample:
    """A real seed with a caption and boxes."""
    return next(s for s in seeds if s.caption and s.objects)


@pytest.fixture(scope="module")
def bare(seeds: list[Sample]) -> Sample:
    """A real seed with neither caption nor boxes."""
    return next(s for s in seeds if not s.caption and not s.objects)


def block_after(text: str, heading: str) -> Any:
    """The JSON of the ```json fence right after the LAST line `heading` (as the test server reads it)."""
    start = text.rfind(heading)
    assert start >= 0, f"no {heading!r}"
    rest = text[start + len(heading) :]
    assert rest.startswith("\n```json\n"), rest[:40]
    match = FENCE.match(rest, 1)
    assert match is not None
    return json.loads(match.group(1))


def raw_block_after(text: str, heading: str) -> str:
    rest = text[text.rfind(heading) + len(heading) :]
    match = FENCE.match(rest, 1)
    assert match is not None
    return match.group(1)


def ordered_core(item: QAS) -> dict[str, Any]:
    core = item.core()
    return {k: core[k] for k in ORDER}


def judged_fields(sample: Sample, operator: str | None = None) -> list[dict[str, Any]]:
    """What the judge is shown of each item: question, answer, format, and the operator's own field."""
    out: list[dict[str, Any]] = []
    for q in sample.qa:
        shown: dict[str, Any] = {"question": q.question, "answer": q.answer, "format": q.format}
        if operator == "perceptual":
            shown["objects"] = q.objects
        elif operator == "reasoning":
            shown["steps"] = [s.model_dump() for s in q.steps]
        out.append(shown)
    return out


def child_of(parent: Sample) -> Sample:
    items = [
        QAS(
            question=f"Rewritten {i}: {q.question} Think it through step by step.",
            answer=f"First, look closely. {q.answer}",
            objects=["tree", "sign"],
            skills=["Grounding", "OCR"],
            steps=[Step(manipulation="OCR_1(sign)->txt_1", description="Read the sign.")],
            format="multi_choice" if i % 2 else "Norm",
        )
        for i, q in enumerate(parent.qa)
    ]
    return parent.model_copy(update={"id": parent.id + "@r1", "qa": items[:-1] or items, "round": 1})


# --------------------------------------------------------------------------- real seeds and the contract


@pytest.mark.parametrize("operator", OPERATORS)
def test_evolution_prompt_of_a_real_seed(prompts: PromptSet, rich: Sample, operator: str) -> None:
    text = prompts.render_evolution(operator, rich)
    assert block_after(text, GIVEN) == [q.core() for q in rich.qa]
    assert raw_block_after(text, GIVEN) == json.dumps([ordered_core(q) for q in rich.qa], ensure_ascii=False, indent=1)
    assert ORIGINAL not in text and REWRITTEN not in text
    assert text.count(GIVEN) == 1
    assert "### Objective" in text and "### Constraints" in text
    assert text.index("### Objective") < text.index("### Constraints") < text.index(GIVEN)
    assert rich.caption is not None and rich.caption in text
    first = rich.objects[0]
    x1, y1, x2, y2 = first.bbox
    assert f"{first.label}: [{x1:.3f}, {y1:.3f}, {x2:.3f}, {y2:.3f}]\n" in text
    box_lines = re.findall(r"^[^:\n]+: \[\d\.\d{3}, \d\.\d{3}, \d\.\d{3}, \d\.\d{3}\]$", text, re.M)
    assert len(box_lines) == len(rich.objects) + 6  # the sample's boxes + the six example boxes
    tail = text[text.rfind(GIVEN) :].split("\n```\n", 1)[1]
    assert f"JSON array of {len(rich.qa)} rewritten Q&A&S objects, one per given item" in tail


@pytest.mark.parametrize("operator", OPERATORS)
def test_evolution_prompt_without_caption_or_boxes(prompts: PromptSet, bare: Sample, operator: str) -> None:
    text = prompts.render_evolution(operator, bare)
    assert block_after(text, GIVEN) == [q.core() for q in bare.qa]
    described = text.split("### Image Description\n", 1)[1].split("\n\n", 1)[0]
    assert "No description is available" in described
    located = text.split("### Object Locations\n", 1)[1].split("\n\n", 1)[0]
    assert "No object boxes are available" in located


def test_reasoning_forbids_counting_only_without_boxes(prompts: PromptSet, rich: Sample, bare: Sample) -> None:
    assert "do not ask for counts" in prompts.render_evolution("reasoning", bare)
    assert "do not ask for counts" not in prompts.render_evolution("reasoning", rich)


def test_each_operator_has_its_own_objective(prompts: PromptSet, rich: Sample) -> None:
    texts = {op: prompts.render_evolution(op, rich) for op in OPERATORS}
    assert "perceptual evolution" in texts["perceptual"]
    assert "step by step" in texts["reasoning"]
    assert "fill_in_the_blank" in texts["interaction"] and "multi_choice" in texts["interaction"]
    assert len({t.split("### Objective", 1)[1] for t in texts.values()}) == 3


def test_judge_prompt_of_a_real_seed(prompts: PromptSet, rich: Sample) -> None:
    child = child_of(rich)
    text = prompts.render_judge(rich, child)
    assert re.search(r"^### Original Q&A&S$", text, re.M)
    assert block_after(text, ORIGINAL) == judged_fields(rich)
    assert block_after(text, REWRITTEN) == judged_fields(child)
    assert text.index(ORIGINAL) < text.rindex(REWRITTEN)
    assert GIVEN not in text
    assert f"exactly {len(child.qa)} objects" in text
    for word in ('"improved"', '"score"', '"reason"'):
        assert word in text.split(REWRITTEN)[-1]


def test_all_real_seeds_keep_the_contract(prompts: PromptSet, seeds: list[Sample]) -> None:
    for sample in seeds:
        for operator in OPERATORS:
            text = prompts.render_evolution(operator, sample)
            assert block_after(text, GIVEN) == [q.core() for q in sample.qa]
            assert ORIGINAL not in text
        assert block_after(prompts.render_judge(sample, sample), REWRITTEN) == judged_fields(sample)


def test_system_message(prompts: PromptSet) -> None:
    assert prompts.system and "\n" not in prompts.system
    assert "annotator" in prompts.system


def test_unknown_operator(prompts: PromptSet, rich: Sample) -> None:
    with pytest.raises(UsageError, match="unknown operator"):
        prompts.render_evolution("breadth", rich)


# --------------------------------------------------------------------------- data rendered verbatim, no leaks

NASTY = (
    "Braces {x} {{ caption }} {% if 1 %}x{% endif %} {# c #} \"quoted\" 'single' back\\slash "
    "\\n \\u0041 tab\t ünïcødé 漢字 🙂 ```json [1] ``` {{ raise('x') }}"
)


def nasty_sample(text: str = NASTY) -> Sample:
    return Sample(
        id="nasty",
        caption=text,
        objects=[Box(label="cup {{ x }}", bbox=(0.1234, 0.5, 0.99951, 1.0))],
        qa=[
            QAS(
                question=text,
                answer=text + " answer",
                objects=[text],
                skills=["{% raw %}"],
                steps=[Step(manipulation=text, description=text), Step(description="plain")],
                format="{{ format }}",
                image_position="top left",
            )
        ],
    )


@pytest.mark.parametrize("operator", OPERATORS)
def test_template_syntax_in_seed_text_is_verbatim(prompts: PromptSet, operator: str) -> None:
    sample = nasty_sample()
    text = prompts.render_evolution(operator, sample)
    assert NASTY in text  # the caption, as is
    assert "cup {{ x }}: [0.123, 0.500, 1.000, 1.000]" in text
    assert block_after(text, GIVEN) == [sample.qa[0].core()]
    judge = prompts.render_judge(sample, sample)
    assert block_after(judge, REWRITTEN) == judged_fields(sample)
    item = sample.qa[0]
    assert block_after(prompts.render_annotation(sample), ANNOTATE)[0]["question"] == item.question
    assert block_after(prompts.render_claim_split(sample), SPLIT)[0]["answer"] == item.answer
    assert block_after(prompts.render_claim_check(sample, [[NASTY]]), CHECK) == [{"id": 1, "claim": NASTY}]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80), st.text(max_size=30))
def test_any_text_round_trips_exactly(prompts: PromptSet, question: str, answer: str) -> None:
    sample = Sample(
        id="h",
        caption=question or None,
        qa=[QAS(question=question, answer=answer, objects=[answer], steps=[Step(description=question)])],
    )
    text = prompts.render_evolution("perceptual", sample)
    if "Q&A&S" not in question + answer:
        expected = json.dumps([ordered_core(q) for q in sample.qa], ensure_ascii=False, indent=1)
        assert raw_block_after(text, GIVEN) == expected
    assert block_after(text, GIVEN) == [sample.qa[0].core()]
    assert ORIGINAL not in text
    assert block_after(prompts.render_judge(sample, sample), REWRITTEN) == judged_fields(sample)
    assert block_after(prompts.render_claim_split(sample), SPLIT) == [
        {"index": 1, "question": question, "answer": answer}
    ]
    assert block_after(prompts.render_claim_check(sample, [[answer]]), CHECK) == [{"id": 1, "claim": answer}]


@pytest.mark.parametrize("heading", [GIVEN, ORIGINAL, REWRITTEN, "#" + ORIGINAL, "\n" + REWRITTEN + "\n"])
def test_reserved_headings_in_seed_text_cannot_break_the_contract(prompts: PromptSet, heading: str) -> None:
    sample = Sample(
        id="h",
        caption=f"A photo.\n{heading}\nmore",
        objects=[Box(label=heading, bbox=(0, 0, 1, 1))],
        qa=[QAS(question=f"Q {heading}", answer=heading, objects=[heading])],
    )
    for operator in OPERATORS:
        text = prompts.render_evolution(operator, sample)
        assert ORIGINAL not in text
        assert block_after(text, GIVEN) == [sample.qa[0].core()]
    judge = prompts.render_judge(sample, sample)
    assert block_after(judge, REWRITTEN) == judged_fields(sample)
    assert block_after(judge, ORIGINAL) == judged_fields(sample)
    assert len(re.findall(r"^### Original Q&A&S$", judge, re.M)) == 1


def test_a_label_with_a_line_break_stays_on_one_line(prompts: PromptSet) -> None:
    sample = Sample(
        id="l", objects=[Box(label="fire\nhydrant", bbox=(0, 0.25, 0.5, 1))], qa=[QAS(question="q", answer="a")]
    )
    assert "\nfire hydrant: [0.000, 0.250, 0.500, 1.000]\n" in prompts.render_evolution("reasoning", sample)


def test_no_verdict_leaks_into_evolution_prompts(prompts: PromptSet, rich: Sample) -> None:
    judged = [q.model_copy(update={"improved": True, "score": 9.0, "reason": "SECRET-VERDICT-REASON"}) for q in rich.qa]
    sample = rich.model_copy(update={"qa": judged})
    for operator in OPERATORS:
        text = prompts.render_evolution(operator, sample)
        assert "SECRET-VERDICT-REASON" not in text
        block = raw_block_after(text, GIVEN)
        assert '"score"' not in block and '"improved"' not in block and '"reason"' not in block
        assert all(set(item) == set(ORDER) for item in block_after(text, GIVEN))
    judge = prompts.render_judge(sample, sample)
    assert "SECRET-VERDICT-REASON" not in judge


# --------------------------------------------------------------------------- the in-context examples


EXAMPLE_BOX = re.compile(r"\[\d\.\d{3}, \d\.\d{3}, \d\.\d{3}, \d\.\d{3}\]")
LETTERED_FORMATS = ("region_selection", "missing_object_selection", "text_image_matching", "multi_choice")


def fixed_examples(prompts: PromptSet, operator: str, sample: Sample) -> tuple[list[Any], list[str]]:
    """The JSON blocks of an operator's fixed part and the boxes the example boxes list holds."""
    fixed = prompts.render_evolution_parts(operator, sample).fixed
    blocks = [json.loads(m) for m in FENCE.findall(fixed)]
    listed = re.findall(r"^\w+: (\[.*\])$", fixed.split("### Example Items")[0], re.M)
    return blocks, listed


@pytest.mark.parametrize("operator", OPERATORS)
def test_in_context_examples_are_valid_items(prompts: PromptSet, rich: Sample, operator: str) -> None:
    blocks, listed = fixed_examples(prompts, operator, rich)
    examples = blocks[0]
    assert 4 <= len(examples) <= 6  # the prefix's list
    items = examples + blocks[1:]
    assert all(set(e) == set(ORDER) for e in items)
    parsed = [QAS.model_validate(e) for e in items]
    shown = set(EXAMPLE_BOX.findall(json.dumps(items)))
    assert shown and shown <= set(listed)  # examples use only the example boxes, never the sample's
    assert {i.format for i in parsed} >= {"Norm", "multi_choice"}
    skills = {s for i in parsed for s in i.skills}
    assert skills <= {
        "Grounding", "Referencing", "Calculating", "OCR", "Existence", "Relationship Description",
        "Context Understanding", "Behaviour Prediction", "Knowledge Integration",
    }  # fmt: skip


def test_interaction_demonstrates_a_dozen_formats_with_definite_answers(prompts: PromptSet, rich: Sample) -> None:
    blocks, _ = fixed_examples(prompts, "interaction", rich)
    worked = [QAS.model_validate(b) for b in blocks[1:]]
    formats = [w.format for w in worked]
    assert len(set(formats)) >= 12 and len(formats) == len(set(formats))
    listed = re.findall(r"^- (\w+): ", prompts.render_evolution("interaction", rich), re.M)
    assert set(formats) <= set(listed)
    for item in worked:
        assert item.answer and item.steps
        if item.format in LETTERED_FORMATS:
            letter = item.answer[0]
            assert item.answer[1] == "." and f"{letter}. " in item.question, item.answer
    matching = next(w for w in worked if w.format == "object_region_matching")
    assert re.fullmatch(r"\d-[a-c], \d-[a-c], \d-[a-c]", matching.answer.split(":")[0])


def test_reasoning_has_a_long_chain_of_thought_example(prompts: PromptSet, bare: Sample) -> None:
    blocks, _ = fixed_examples(prompts, "reasoning", bare)
    (example,) = [QAS.model_validate(b) for b in blocks[1:]]
    assert len(example.steps) >= 6 and len(example.skills) >= 3
    assert example.question.endswith("Think it through step by step.")
    assert re.findall(r"Step (\d):", example.answer) == ["1", "2", "3", "4", "5"]
    assert "Conclusion:" in example.answer
    computed = [s for s in example.steps if (s.manipulation or "").startswith("Calculate")]
    assert len(computed) == 3


def test_perceptual_forbids_counts_and_locations_without_boxes(prompts: PromptSet, rich: Sample, bare: Sample) -> None:
    with_boxes = prompts.render_evolution("perceptual", rich)
    without = prompts.render_evolution("perceptual", bare)
    assert "do not ask where things are located, do not ask for counts" in without
    assert "do not ask for counts" not in with_boxes
    assert "exact number of small items" in with_boxes and "exact number" not in without
    for text in (with_boxes, without):
        assert "cannot be determined" not in text  # no longer forbidden: the question must be settled instead
        assert "instead of guessing" in text


def test_official_clauses_in_every_operator(prompts: PromptSet, rich: Sample, bare: Sample) -> None:
    for sample in (rich, bare):
        for operator in OPERATORS:
            constraints = prompts.render_evolution(operator, sample).split("### Constraints", 1)[1]
            constraints = constraints.split("\n\n", 1)[0]
            assert '"the original question"' in constraints
            assert "no padding" in constraints and "Add content, not length" in constraints
            assert '"image_position"' in constraints


def test_judge_has_score_anchors_and_criteria(prompts: PromptSet, rich: Sample) -> None:
    text = prompts.render_judge(rich, rich)
    for criterion in ("Length", "Semantic complexity", "visual information", "Format variety", "Visual independence"):
        assert criterion in text
    assert "9 to 10" in text and "1 to 2" in text


# --------------------------------------------------------------------------- user templates


def test_default_dir_is_the_repository_prompts() -> None:
    folder = default_prompts_dir()
    assert folder.is_dir()
    assert {p.name for p in folder.iterdir()} >= set(TEMPLATES)


def test_hashes_and_sources(prompts: PromptSet) -> None:
    hashes = prompts.hashes()
    assert set(hashes) == set(TEMPLATES)
    for name, digest in hashes.items():
        assert digest == hashlib.sha256((default_prompts_dir() / name).read_bytes()).hexdigest()
    assert set(prompts.sources().values()) == {str(default_prompts_dir())}


def test_override_dir_replaces_one_file(tmp_path: Path, rich: Sample) -> None:
    (tmp_path / "perceptual.j2").write_text(
        "MY OWN PROMPT about {{ n_items }} items\n" + GIVEN + "\n```json\n{{ given_qa }}\n```\n", encoding="utf-8"
    )
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    mine = PromptSet.load(tmp_path)
    default = PromptSet.load()
    text = mine.render_evolution("perceptual", rich)
    assert text.startswith(f"MY OWN PROMPT about {len(rich.qa)} items\n")
    assert block_after(text, GIVEN) == [q.core() for q in rich.qa]
    assert mine.render_evolution("reasoning", rich) == default.render_evolution("reasoning", rich)
    assert mine.render_judge(rich, rich) == default.render_judge(rich, rich)
    assert mine.sources()["perceptual.j2"] == str(tmp_path)
    assert mine.sources()["reasoning.j2"] == str(default_prompts_dir())
    changed = {k for k in default.hashes() if mine.hashes()[k] != default.hashes()[k]}
    assert changed == {"perceptual.j2"}


def test_override_prefix_and_own_partial(tmp_path: Path, rich: Sample) -> None:
    (tmp_path / "_prefix.j2").write_text('PREFIX {% include "_mine.j2" %}\n', encoding="utf-8")
    (tmp_path / "_mine.j2").write_text("PARTIAL {{ caption is none }}", encoding="utf-8")
    (tmp_path / "system.txt").write_text("  Be brief.\n", encoding="utf-8")
    mine = PromptSet.load(tmp_path)
    for operator in OPERATORS:
        text = mine.render_evolution(operator, rich)
        assert text.startswith("PREFIX PARTIAL False\n")
        assert block_after(text, GIVEN) == [q.core() for q in rich.qa]
    assert mine.system == "Be brief."
    assert mine.sources()["_mine.j2"] == str(tmp_path)
    assert "_mine.j2" in mine.hashes()


def test_judge_override_may_show_the_context(tmp_path: Path, rich: Sample) -> None:
    (tmp_path / "judge.j2").write_text(
        "{{ caption }}\n{{ locations }}\n"
        + ORIGINAL
        + "\n```json\n{{ original_qa }}\n```\n"
        + REWRITTEN
        + "\n```json\n{{ rewritten_qa }}\n```\n",
        encoding="utf-8",
    )
    text = PromptSet.load(tmp_path).render_judge(rich, rich)
    assert rich.caption is not None and text.startswith(rich.caption)
    assert block_after(text, REWRITTEN) == judged_fields(rich)


@pytest.mark.parametrize(
    ("name", "body", "line", "pattern"),
    [
        ("perceptual.j2", "ok\n\n{% if given_qa %}\nno end\n", 4, "perceptual.j2 line"),
        ("reasoning.j2", "line one\n{{ given_qa }}\n{{ no_such_variable }}\n", 3, "no_such_variable"),
        ("judge.j2", "a\n{{ rewritten_qa | no_such_filter }}\n", 2, "no_such_filter"),
        ("_prefix.j2", "{% for x in %}\n", 1, "_prefix.j2 line"),
        ("interaction.j2", '{% include "_nowhere.j2" %}\n{{ given_qa }}\n', 1, "_nowhere.j2"),
        ("reasoning.j2", "{{ given_qa }}\n\n{{ n_items / 0 }}\n", 3, "division by zero"),
        ("perceptual.j2", "{{ given_qa }}\n{{ caption.upper() }}\n", 2, "upper"),  # caption may be none
    ],
)
def test_a_broken_user_template_is_a_usage_error(tmp_path: Path, name: str, body: str, line: int, pattern: str) -> None:
    (tmp_path / name).write_text(body, encoding="utf-8")
    with pytest.raises(UsageError, match=pattern) as info:
        PromptSet.load(tmp_path)
    message = str(info.value)
    assert str(tmp_path / name) in message
    assert f"line {line}" in message


def test_a_template_that_never_shows_the_items_is_refused(tmp_path: Path) -> None:
    (tmp_path / "interaction.j2").write_text("Rewrite the questions.\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"interaction\.j2.*given_qa"):
        PromptSet.load(tmp_path)
    (tmp_path / "interaction.j2").unlink()
    (tmp_path / "judge.j2").write_text("{{ original_qa }}\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"judge\.j2.*rewritten_qa"):
        PromptSet.load(tmp_path)
    (tmp_path / "judge.j2").write_text("{{ rewritten_qa }}\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"judge\.j2.*original_qa"):
        PromptSet.load(tmp_path)


def test_bad_override_folders(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such folder"):
        PromptSet.load(tmp_path / "missing")
    with pytest.raises(UsageError, match="no template files"):
        PromptSet.load(tmp_path)
    (tmp_path / "judge.j2").write_bytes(b"\xff\xfe bad")
    with pytest.raises(UsageError, match="cannot read"):
        PromptSet.load(tmp_path)


def test_copy_templates(tmp_path: Path, rich: Sample) -> None:
    dest = tmp_path / "my-prompts"
    written = copy_templates(dest)
    assert sorted(p.name for p in written) == sorted(TEMPLATES)
    for path in written:
        assert path.read_bytes() == (default_prompts_dir() / path.name).read_bytes()
    assert PromptSet.load(dest).hashes() == PromptSet.load().hashes()
    (dest / "judge.j2").write_text("edited", encoding="utf-8")
    with pytest.raises(UsageError, match="already exist"):
        copy_templates(dest)
    assert (dest / "judge.j2").read_text(encoding="utf-8") == "edited"
    copy_templates(dest, force=True)
    assert (dest / "judge.j2").read_bytes() == (default_prompts_dir() / "judge.j2").read_bytes()
    assert PromptSet.load(dest).render_evolution("reasoning", rich) == PromptSet.load().render_evolution(
        "reasoning", rich
    )


# --------------------------------------------------------------------------- the cacheable layout


def all_parts(prompts: PromptSet, sample: Sample) -> dict[str, tuple[PromptParts, str]]:
    """Every kind of prompt for a sample: its parts and the plain render."""
    child = child_of(sample).model_copy(update={"operator": "reasoning"})
    claims = [[f"Claim {i}a."] for i in range(len(sample.qa))]
    out = {op: (prompts.render_evolution_parts(op, sample), prompts.render_evolution(op, sample)) for op in OPERATORS}
    out["judge"] = (prompts.render_judge_parts(sample, child), prompts.render_judge(sample, child))
    out["annotate"] = (prompts.render_annotation_parts(sample), prompts.render_annotation(sample))
    out["claims_split"] = (prompts.render_claim_split_parts(sample), prompts.render_claim_split(sample))
    out["claims_check"] = (prompts.render_claim_check_parts(sample, claims), prompts.render_claim_check(sample, claims))
    return out


def test_parts_add_up_to_the_prompt_and_the_fixed_part_is_shared(prompts: PromptSet, seeds: list[Sample]) -> None:
    fixed: dict[tuple[str, bool], set[str]] = {}
    for sample in seeds:
        for kind, (parts, plain) in all_parts(prompts, sample).items():
            assert parts.fixed + parts.sample == parts.text == plain
            assert parts.fixed and parts.fixed.endswith("\n\n")
            fixed.setdefault((kind, bool(sample.objects)), set()).add(parts.fixed)
            if kind in ("annotate", *OPERATORS):
                assert parts.sample.startswith("### Image Description\n")
                assert "### Image Description" not in parts.fixed and "### Object Locations" not in parts.fixed
    assert all(len(v) == 1 for v in fixed.values()), {k: len(v) for k, v in fixed.items()}  # byte-identical
    kinds = {kind for kind, _ in fixed}
    assert kinds == {*OPERATORS, "judge", "annotate", "claims_split", "claims_check"}
    for kind in kinds:  # boxes pick the variant of the evolution and annotation prompts, nothing else
        variants = fixed[(kind, True)] | fixed[(kind, False)]
        assert len(variants) == (2 if kind in (*OPERATORS, "annotate") else 1)
    prefix = {next(iter(fixed[(op, True)])).split("### Objective")[0] for op in (*OPERATORS, "annotate")}
    assert len(prefix) == 1  # the evolution and annotation prompts open with the same text


def test_judge_criterion_follows_the_childs_operator(prompts: PromptSet, rich: Sample) -> None:
    child = child_of(rich)
    texts = {}
    for operator in (None, *OPERATORS, "df_cot", "bf_in_breath", "df_format", "something else"):
        parts = prompts.render_judge_parts(rich, child.model_copy(update={"operator": operator}))
        texts[operator] = parts
    assert "What These Rewrites Were Asked To Do" not in texts[None].fixed
    assert texts["something else"] == texts[None]
    assert texts["df_cot"] == texts["reasoning"] and texts["bf_in_breath"] == texts["perceptual"]
    assert texts["df_format"] == texts["interaction"]
    assert len({texts[op].fixed for op in (None, *OPERATORS)}) == 4
    assert "rarer or smaller objects" in texts["perceptual"].fixed and "need not be harder" in texts["perceptual"].fixed
    assert "every step is correct" in texts["reasoning"].fixed
    assert "well-formed" in texts["interaction"].fixed and "definite" in texts["interaction"].fixed
    for operator in (None, *OPERATORS):
        text = texts[operator].text
        assert block_after(text, ORIGINAL) == judged_fields(rich, operator)
        assert block_after(text, REWRITTEN) == judged_fields(child, operator)
        assert GIVEN not in text


def test_new_prompts_show_their_items(prompts: PromptSet, rich: Sample) -> None:
    annotate = prompts.render_annotation(rich)
    expected = [
        {"index": i, "image_position": q.image_position, "question": q.question, "answer": q.answer}
        for i, q in enumerate(rich.qa, start=1)
    ]
    assert block_after(annotate, ANNOTATE) == expected
    assert "Grounding_i(tgt)->bbx_i" in annotate and "Never change, correct or restate" in annotate
    assert f"JSON array of {len(rich.qa)} objects, one per item" in annotate
    split = prompts.render_claim_split(rich)
    assert block_after(split, SPLIT) == [{k: v for k, v in e.items() if k != "image_position"} for e in expected]
    assert "At most 5 claims per item" in split and "### Object Locations" not in split
    claims = [["A cat sits on the mat.", "The mat is red."], [], ["There are two cups."]]
    check = prompts.render_claim_check(rich, claims)
    assert block_after(check, CHECK) == [
        {"id": 1, "claim": "A cat sits on the mat."},
        {"id": 2, "claim": "The mat is red."},
        {"id": 3, "claim": "There are two cups."},
    ]
    assert "JSON array of 3 objects, one per claim" in check and '"unsure"' in check
    for text in (annotate, split, check):
        assert GIVEN not in text and ORIGINAL not in text and REWRITTEN not in text


@pytest.mark.parametrize("heading", [ANNOTATE, SPLIT, CHECK, GIVEN, "#" + CHECK])
def test_new_reserved_headings_in_seed_text_are_escaped(prompts: PromptSet, heading: str) -> None:
    sample = Sample(
        id="h",
        caption=f"A photo.\n{heading}\nmore",
        objects=[Box(label=heading, bbox=(0, 0, 1, 1))],
        qa=[QAS(question=f"Q\n{heading}", answer=f"{heading}\nanswer.")],
    )
    annotate = prompts.render_annotation(sample)
    assert block_after(annotate, ANNOTATE)[0]["question"] == sample.qa[0].question
    assert len(re.findall(rf"^{re.escape(ANNOTATE)}$", annotate, re.M)) == 1
    split = prompts.render_claim_split(sample)
    assert block_after(split, SPLIT)[0]["answer"] == sample.qa[0].answer
    check = prompts.render_claim_check(sample, [[f"{heading} claim."]])
    assert block_after(check, CHECK) == [{"id": 1, "claim": f"{heading} claim."}]
    for operator in OPERATORS:
        assert block_after(prompts.render_evolution(operator, sample), GIVEN) == [sample.qa[0].core()]


def test_a_template_without_blocks_is_all_sample(tmp_path: Path, rich: Sample) -> None:
    (tmp_path / "perceptual.j2").write_text("PLAIN {{ n_items }}\n" + GIVEN + "\n```json\n{{ given_qa }}\n```\n")
    (tmp_path / "claims_check.j2").write_text(
        "{% block fixed %}FIXED for {{ caption }}\n{% endblock %}{% block sample %}\n{{ claims_json }}{% endblock %}"
    )
    mine = PromptSet.load(tmp_path)
    parts = mine.render_evolution_parts("perceptual", rich)
    assert (
        parts.fixed == ""
        and parts.sample.startswith("PLAIN ")
        and parts.sample == mine.render_evolution("perceptual", rich)
    )
    other = rich.model_copy(update={"caption": "Another description."})
    first = mine.render_claim_check_parts(rich, [["c."]])
    second = mine.render_claim_check_parts(other, [["c."]])
    assert first.fixed == f"FIXED for {rich.caption}\n" and second.fixed == "FIXED for Another description.\n"
    assert first.sample == second.sample  # a fixed block that uses sample data is rendered per sample


@pytest.mark.parametrize(
    ("body", "line", "pattern"),
    [
        (
            "{% block fixed %}a{% endblock %}\nstray text {{ given_qa }}\n{% block sample %}b{% endblock %}",
            2,
            "text outside",
        ),
        ("{% block sample %}{{ given_qa }}{% endblock %}\n{% block fixed %}a{% endblock %}", None, "must come first"),
        ('{% include "_prefix.j2" %}\n{% block sample %}{{ given_qa }}{% endblock %}', 1, "text outside"),
    ],
)
def test_a_bad_block_layout_is_a_usage_error(tmp_path: Path, body: str, line: int | None, pattern: str) -> None:
    (tmp_path / "reasoning.j2").write_text(body, encoding="utf-8")
    with pytest.raises(UsageError, match=pattern) as info:
        PromptSet.load(tmp_path)
    assert str(tmp_path / "reasoning.j2") in str(info.value)
    if line is not None:
        assert f"line {line}:" in str(info.value)


def test_new_templates_are_checked_at_load(tmp_path: Path) -> None:
    (tmp_path / "annotate.j2").write_text("{% block fixed %}x{% endblock %}{% block sample %}y{% endblock %}")
    with pytest.raises(UsageError, match=r"annotate\.j2.*items_qa"):
        PromptSet.load(tmp_path)
    (tmp_path / "annotate.j2").unlink()
    (tmp_path / "claims_check.j2").write_text("{% block sample %}{{ claims_json }} {{ nope }}{% endblock %}\n")
    with pytest.raises(UsageError, match=r"claims_check\.j2 line 1.*nope"):
        PromptSet.load(tmp_path)


# --------------------------------------------------------------------------- through the test server


def ask(server: ThreadedServer, system: str, parts: PromptParts, image: bool, **body: Any) -> dict[str, Any]:
    """Send a prompt as the client does: [system] [user: fixed text, image, sample text] (or plain text)."""
    content: Any = parts.text
    if image:
        url = "data:image/png;base64,iVBORw0KGgo="
        content = [
            {"type": "text", "text": parts.fixed},
            {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
            {"type": "text", "text": parts.sample},
        ]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
    response = httpx.post(server.base_url + "/chat/completions", json={"model": "m", "messages": messages, **body})
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def text_of(reply: dict[str, Any]) -> str:
    content: str = reply["choices"][0]["message"]["content"]
    return content


@pytest.mark.parametrize("image", [True, False])
def test_every_kind_round_trips_through_the_test_server(
    server: ThreadedServer, prompts: PromptSet, rich: Sample, bare: Sample, image: bool
) -> None:
    server.set_config(false_claim_ratio=0.5)
    for sample in (rich, bare):
        n = len(sample.qa)
        for operator in OPERATORS:
            items = parse_qas(
                text_of(ask(server, prompts.system, prompts.render_evolution_parts(operator, sample), image))
            )
            assert len(items) == n
        child = sample.model_copy(update={"qa": items, "operator": "interaction"})
        verdicts = parse_verdicts(
            text_of(ask(server, prompts.system, prompts.render_judge_parts(sample, child), image)), n
        )
        assert all(v.improved for v in verdicts)
        notes = parse_annotations(
            text_of(ask(server, prompts.system, prompts.render_annotation_parts(sample), image)), n
        )
        assert all(note is not None and note.objects and note.skills and note.steps for note in notes)
        split = prompts.render_claim_split_parts(sample)
        claims = parse_claims(text_of(ask(server, prompts.system, split, False)), n)
        assert claims == [answer_claims(q.answer) for q in sample.qa]
        check = prompts.render_claim_check_parts(sample, claims)
        flat = [c for item in claims for c in item]
        found = parse_claim_verdicts(text_of(ask(server, prompts.system, check, image)), len(flat))
        assert found == [stable_fraction("claim", c) >= 0.5 for c in flat]
    log = server.log()
    kinds = [*OPERATORS, "judge", "annotate", "claims_split", "claims_check"]
    expected = ["evolve" if k in OPERATORS else k for k in kinds] * 2
    assert [e["kind"] for e in log] == expected
    assert [e["has_image"] for e in log] == [image and k != "claims_split" for k in kinds] * 2
    rich_claims = sum(len(answer_claims(q.answer)) for q in rich.qa)
    assert [e["n_items"] for e in log][: len(kinds)] == [len(rich.qa)] * (len(kinds) - 1) + [rich_claims]


def test_fixed_parts_are_long_enough_to_be_cached(prompts: PromptSet, rich: Sample, bare: Sample) -> None:
    """Providers cache from 1,024 tokens on (about 4 characters each): the system prompt and the fixed part of
    the evolution, annotation and judge prompts reach that, so every such call after the first is a hit."""
    for sample in (rich, bare):
        for kind, (parts, _) in all_parts(prompts, sample).items():
            if kind not in ("claims_split", "claims_check"):  # short prompts: nothing to cache
                assert (len(prompts.system) + len(parts.fixed)) / 4 >= 1024, kind
    verdicts = json.loads(FENCE.findall(prompts.render_judge_parts(rich, rich).fixed)[0])
    assert len(verdicts) == 5 and {v["verdict"]["improved"] for v in verdicts} == {"yes", "no"}
    assert all(1 <= v["verdict"]["score"] <= 10 and v["verdict"]["reason"] for v in verdicts)
