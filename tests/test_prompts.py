"""Prompt templates and their renderer: real seeds, the heading contract, verbatim data, user overrides."""

from __future__ import annotations

import hashlib
import json
import re
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evolve.errors import UsageError
from evolve.prompts import OPERATORS, PromptSet, copy_templates, default_prompts_dir
from evolve.records import QAS, Box, Sample, Step, parse_record

SHARED_SEEDS = Path("/work/shared/data/mmevol_demo_seeds.jsonl")  # the real demo seeds (1,612 lines)
SEEDS = SHARED_SEEDS if SHARED_SEEDS.is_file() else Path(__file__).parent / "data" / "mmevol_seeds_head.jsonl"
GIVEN = "### Given Q&A&S"
ORIGINAL = "### Original Q&A&S"
REWRITTEN = "### Rewritten Q&A&S"
FENCE = re.compile(r"```json\n(.*?)\n```", re.DOTALL)
ORDER = ("image_position", "objects", "skills", "format", "question", "steps", "answer")
TEMPLATES = ("_prefix.j2", "perceptual.j2", "reasoning.j2", "interaction.j2", "judge.j2", "system.txt")


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


def judged_fields(sample: Sample) -> list[dict[str, Any]]:
    return [{"question": q.question, "answer": q.answer, "format": q.format} for q in sample.qa]


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


def test_in_context_examples_are_valid_items(prompts: PromptSet, rich: Sample) -> None:
    text = prompts.render_evolution("interaction", rich)
    head = text[: text.rfind(GIVEN)]
    blocks = [json.loads(m) for m in FENCE.findall(head)]
    assert len(blocks) >= 5  # the prefix's list and the interaction examples
    examples = blocks[0]
    assert 4 <= len(examples) <= 6
    items = [QAS.model_validate(e) for e in examples + blocks[1:]]
    assert all(set(e) == set(ORDER) for e in examples + blocks[1:])
    examples_text = head.split("### Image Description")[0] + head.split("### Objective")[1]
    example_boxes = re.findall(r"\[\d\.\d{3}, \d\.\d{3}, \d\.\d{3}, \d\.\d{3}\]", examples_text)
    listed = set(re.findall(r"^\w+: (\[.*\])$", head.split("### Example Items")[0], re.M))
    assert set(example_boxes) <= listed  # examples use only the example boxes
    assert {i.format for i in items} >= {"Norm", "multi_choice", "region_selection"}


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
