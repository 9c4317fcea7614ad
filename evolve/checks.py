"""Rule checks between evolve and judge: mechanical failures of a rewrite caught without a call.

Each rule is a pure function of (item, its parent item or None, the child sample, the parent sample or None,
the operator) that returns a short detail when the item breaks it, else None. Parent items are matched by
`source`, else by position. `check_sample` runs a chosen set of rules over every item of a child;
`check_file` runs them over an evolved file (parents by `parent_id` from a parents file, or embedded in MMEvol
native records) for `evolve check`.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evolve.errors import InputError, UsageError
from evolve.operators import OFFICIAL_TAGS
from evolve.records import QAS, Sample

RuleFunc = Callable[[QAS, QAS | None, Sample, Sample | None, str | None], str | None]
"""(item, parent item or None, child sample, parent sample or None, operator) -> detail of a violation or None."""


@dataclass(frozen=True)
class Rule:
    """A named check with a one-line summary (shown in reports) and its function."""

    name: str
    summary: str
    check: RuleFunc


@dataclass(frozen=True)
class Violation:
    """One rule an item broke, with a short detail saying how."""

    rule: str
    detail: str


RULES: dict[str, Rule] = {}
"""Every rule by its stable name, in the order reports list them."""


def _rule(name: str, summary: str) -> Callable[[RuleFunc], RuleFunc]:
    """Register a rule function under a stable name."""

    def register(func: RuleFunc) -> RuleFunc:
        RULES[name] = Rule(name, summary, func)
        return func

    return register


# --------------------------------------------------------------------------- text helpers


def _operator(name: str | None) -> str | None:
    """Our operator name for an official tag (df_cot → reasoning) or our own name."""
    return OFFICIAL_TAGS.get(name, name) if name else None


def _texts(item: QAS) -> Iterator[tuple[str, str]]:
    """(where, text) for every piece of text an item shows: question, steps, answer."""
    yield "question", item.question
    for number, step in enumerate(item.steps, start=1):
        yield f"step {number}", f"{step.manipulation or ''} {step.description}"
    yield "answer", item.answer


_NOT_WORD = re.compile(r"[\W_]+")


def _normalized(text: str) -> str:
    """Case, spacing and punctuation folded away, for comparing questions."""
    folded = (text if text.isascii() else unicodedata.normalize("NFKC", text)).casefold()
    return " ".join(_NOT_WORD.sub(" ", folded).split())


class _Facts:
    """What the rules need of a sample, each worked out once when first asked: its boxes as 3-decimal strings
    (as format_boxes shows them), the quadruples its items quote, and its normalised questions."""

    def __init__(self, sample: Sample) -> None:
        self.sample = sample
        self.parts = (sample.qa, sample.objects)  # a sample given new items or boxes is a new entry

    def describes(self, sample: Sample) -> bool:
        """These are the facts of this very sample object, with the same item and box lists."""
        return self.sample is sample and self.parts[0] is sample.qa and self.parts[1] is sample.objects

    @cached_property
    def boxes(self) -> frozenset[tuple[str, ...]]:
        """The sample's boxes, each as four 3-decimal strings."""
        return frozenset(tuple(f"{v:.3f}" for v in box.bbox) for box in self.sample.objects)

    @cached_property
    def quoted(self) -> frozenset[tuple[str, ...]]:
        """Every coordinate quadruple the sample's own items write."""
        return frozenset(q for item in self.sample.qa for _, text in _texts(item) for q in coordinate_quadruples(text))

    @cached_property
    def questions(self) -> tuple[str, ...]:
        """The sample's questions, normalised, in order."""
        return tuple(_normalized(item.question) for item in self.sample.qa)


class _LastFacts:
    """A one-entry cache: the rules run item after item against the same parent, so its facts are kept until
    another sample is asked about (the entry holds the sample, so the identity test is safe)."""

    entry: _Facts | None = None

    @classmethod
    def of(cls, sample: Sample) -> _Facts:
        """The facts of `sample`, reused while the same sample object is asked about."""
        entry = cls.entry
        if entry is None or not entry.describes(sample):
            entry = cls.entry = _Facts(sample)
        return entry


def _shown(child: Sample, parent: Sample | None) -> _Facts:
    """The facts of the sample the evolution prompt showed: the parent (or the child when there is none)."""
    return _LastFacts.of(parent if parent is not None else child)


# --------------------------------------------------------------------------- boxes

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_QUADRUPLE = re.compile(rf"[\[(]\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*[\])]")


def coordinate_quadruples(text: str) -> list[tuple[str, ...]]:
    """Every [x1, y1, x2, y2] (or parenthesised) quadruple of 0–1 fractions in a text, as 3-decimal strings.

    A quadruple counts as coordinates only when all four numbers lie in 0–1 and one has a decimal point, so
    lists such as [1, 2, 3, 4] are not taken for boxes.
    """
    found: list[tuple[str, ...]] = []
    if "," not in text or ("[" not in text and "(" not in text):  # most texts quote no coordinates
        return found
    for match in _QUADRUPLE.finditer(text):
        numbers = match.groups()
        values = [float(n) for n in numbers]
        if all(0.0 <= v <= 1.0 for v in values) and any("." in n for n in numbers):
            found.append(tuple(f"{v:.3f}" for v in values))
    return found


@_rule("box_copied", "every coordinate quadruple is one of the sample's boxes (3 decimals)")
def box_copied(
    item: QAS, parent_item: QAS | None, child: Sample, parent: Sample | None, operator: str | None
) -> str | None:
    """Coordinates may only be copied from the Object Locations list (or from the given items' own text)."""
    facts = _shown(child, parent)
    for where, text in _texts(item):
        for quad in coordinate_quadruples(text):
            if quad not in facts.boxes and (parent is None or quad not in facts.quoted):
                box = "[" + ", ".join(quad) + "]"
                return f"{box} in the {where} is not one of the sample's {len(facts.boxes)} boxes"
    return None


# --------------------------------------------------------------------------- counting and location

_UNITS = (
    r"(?:square\s+|cubic\s+)?(?:degrees?|percent|per\s+cent|cm|mm|km|meters?|metres?|centimet(?:er|re)s?|"
    r"millimet(?:er|re)s?|kilomet(?:er|re)s?|inch(?:es)?|feet|foot|miles?|yards?|grams?|kilograms?|kg|pounds?|"
    r"ounces?|liters?|litres?|ml|calories|dollars|euros|cents|seconds?|minutes?|hours?|days?|weeks?|months?|years?)"
)
_COUNTING = re.compile(
    # "how many cups", not a measurement ("how many degrees", "how many $\mathrm{cm}^2$", "how many years")
    rf"\bhow\s+many\b(?!\s+(?:\$|{_UNITS}\b))"
    r"|\bcount(?:s|ed|ing)?\b(?!\s+(?:on|as)\b)"  # not "count on" nor "count as"
    # asking for a number of things, not mentioning one ("the growing number of taxis")
    r"|(?:^|\bwhat\s+(?:is\s+|was\s+|are\s+)?(?:the\s+)?|\b(?:find|count|compute|calculate|determine|give|state|"
    r"tell\s+me|estimate)\s+the\s+|\btotal\s+)(?:exact\s+|total\s+)?number\s+of\b"
    r"(?!\s+(?:the|this|that|its|his|her|their)\b)",  # "the number of the bus" names a number
    re.IGNORECASE,
)
_SCENE = r"(?:this|the|that)\s+(?:photo(?:graph)?|picture|image|scene|place|setting|shot|video|frame|event|activity)"
_LOCATION = re.compile(
    # "where is the cat", not "where was this photo taken" nor "where is the game taking place"
    rf"\bwhere(?:\s+(?:is|are|was|were)|'s)\b(?!\s+{_SCENE}\b)(?![^?.!]*\btaking\s+place\b)"
    # "Locate the cat", "can you locate", not "help passengers locate their luggage"
    r"|(?:^|[.?!:;]\s*)(?:please\s+)?locate\b|\b(?:can|could|would)\s+you\s+(?:please\s+)?locate\b"
    rf"|\b(?:location|position)s?\s+of\b(?!\s+{_SCENE}\b)"
    r"|\bbounding\s+box(?:es)?\b|\bbbox(?:es)?\b"
    # box coordinates, not a coordinate plane nor the coordinates of point E
    r"|\bcoordinates?\b(?!\s+(?:plane|system|axis|axes|grid|geometry)\b)(?!\s+of\s+(?:the\s+)?points?\b)",
    re.IGNORECASE,
)


_COUNTING_WORDS = ("many", "count", "number")  # a cheap test before the slower patterns
_LOCATION_WORDS = ("where", "locat", "position", "box", "coordinate")


def counting_or_location(question: str) -> str | None:
    """The phrase that makes a question a counting or location question (or asks for coordinates), else None."""
    lowered = question.lower()
    for pattern, words in ((_COUNTING, _COUNTING_WORDS), (_LOCATION, _LOCATION_WORDS)):
        match = pattern.search(question) if any(word in lowered for word in words) else None
        if match is not None:
            return " ".join(match.group(0).lower().split())
    if coordinate_quadruples(question):
        return "coordinates"
    return None


@_rule("no_count_without_boxes", "no counting or location question when the sample has no boxes")
def no_count_without_boxes(
    item: QAS, parent_item: QAS | None, child: Sample, parent: Sample | None, operator: str | None
) -> str | None:
    """The perceptual and reasoning prompts forbid counts and locations when no boxes were shown."""
    if _operator(operator) not in ("perceptual", "reasoning") or _shown(child, parent).boxes:
        return None
    phrase = counting_or_location(item.question)
    return None if phrase is None else f'"{phrase}" in the question, but the sample has no boxes'


# --------------------------------------------------------------------------- multiple choice

_OPTION_MARKS = (  # capitals "A. … B) …", or lower case "(a) … (b) …" / "a. … b. …"
    re.compile(r"(?:^|(?<=[\s(\[:]))\(?([A-J])[.)]\s+"),
    re.compile(r"(?:^|(?<=[\s\[:]))\(?([a-j])[.)]\s+"),
)
_CHOICE_FORMATS = frozenset({"multichoice", "multiplechoice", "multiplechoices", "multichoices", "mcq", "choice"})
_LETTER_ONLY = re.compile(r"^\W*([A-Ja-j])\W*$")
_LETTER_LIST = re.compile(r"^\W*[A-J](?:\s*(?:,|&|and|or)\s*[A-J])+\W*$")
_LETTER_LEAD = re.compile(r"^\W*\(?([A-Ja-j])[.):](?:\s|$)")
_LETTER_NAMED = re.compile(r"\b(?i:option|answer|choice)\s*(?:is\s*)?:?\s*\(?([A-Ja-j])\b(?![a-z'])")


def parse_options(question: str) -> dict[str, str]:
    """The lettered options ("A. …", "A) …", "(a) …") of a question, by capital letter; {} unless A and B are."""
    if not any(mark in question for mark in ("A.", "A)", "a.", "a)")):  # a cheap test before the patterns
        return {}
    for pattern in _OPTION_MARKS:
        chosen: list[re.Match[str]] = []
        for mark in pattern.finditer(question):  # the run A, B, C … in order, skipping stray letters
            if mark.group(1).upper() == chr(ord("A") + len(chosen)):
                chosen.append(mark)
        if len(chosen) >= 2:
            ends = [mark.start() for mark in chosen[1:]] + [len(question)]
            return {
                mark.group(1).upper(): question[mark.end() : end].strip(" \t\n,;")
                for mark, end in zip(chosen, ends, strict=True)
            }
    return {}


def named_letters(answer: str) -> set[str]:
    """The option letters an answer names, in capitals: "C", "A) Drawer 1", "A, B", "the answer is (b)"; a
    bare "(c)" inside a sentence is more often a figure panel than a choice, so it is not taken."""
    text = answer.strip()
    if _LETTER_LIST.match(text):
        return set(re.findall(r"\b[A-J]\b", text))
    letters: set[str] = set()
    for match in (_LETTER_ONLY.match(text), _LETTER_LEAD.match(text)):
        if match is not None:
            letters.add(match.group(1).upper())
    for match in _LETTER_NAMED.finditer(text):
        letters.add(match.group(1).upper())
    return letters


def _choice_format(item: QAS) -> bool:
    """The item's format says multiple choice (multi_choice, multi-choice, Multiple Choice …)."""
    return _is_choice_format(item.format)


@functools.lru_cache(maxsize=1024)
def _is_choice_format(name: str) -> bool:
    """A format name that means multiple choice (formats repeat: each name is looked at once)."""
    return _normalized(name).replace(" ", "") in _CHOICE_FORMATS


@_rule("choice_named", "a multiple-choice answer names one of its options")
def choice_named(
    item: QAS, parent_item: QAS | None, child: Sample, parent: Sample | None, operator: str | None
) -> str | None:
    """The answer of a multiple-choice item must name one of the question's letters or option texts."""
    options = parse_options(item.question)
    if not options:
        if _choice_format(item):
            return f"format {item.format} but the question lists no lettered options"
        return None
    letters = named_letters(item.answer)
    if letters & options.keys():
        return None
    answer = f" {_normalized(item.answer)} "
    for text in options.values():
        option = f" {_normalized(text)} "
        if option.strip() and (option in answer or (len(answer) > 3 and answer in option)):
            return None
    shown = ", ".join(options)
    if letters:
        return f"the answer names {', '.join(sorted(letters))}, not one of the options {shown}"
    return f"the answer names none of the options {shown}"


# --------------------------------------------------------------------------- steps, wording, fields


@_rule("more_steps", "a reasoning rewrite has more steps than its parent item")
def more_steps(
    item: QAS, parent_item: QAS | None, child: Sample, parent: Sample | None, operator: str | None
) -> str | None:
    """Cognitive reasoning evolution must lengthen the chain of steps."""
    if _operator(operator) != "reasoning" or parent_item is None:
        return None
    if len(item.steps) > len(parent_item.steps):
        return None
    return f"{len(item.steps)} steps, its parent item has {len(parent_item.steps)}"


_ORIGINAL = re.compile(
    # "the original question", "compared to the original.", "this rewritten question"; not "the original .fla files"
    r"\b(?:the|this|that|its|an?)\s+original\s+(?:question|item|answer|q\s*&\s*a(?:\s*&\s*s)?|qas|prompt|query|instruction)s?\b"
    r"|\b(?:as\s+in|than|compared\s+(?:to|with)|unlike)\s+the\s+original\b(?=\s*(?:[,;:!?)\"']|\.(?!\w)|$))"
    r"|\b(?:rewritten|evolved)\s+(?:question|item|version|q\s*&\s*a)\b",
    re.IGNORECASE,
)


@_rule("no_original_reference", 'no reference to "the original" question or item')
def no_original_reference(
    item: QAS, parent_item: QAS | None, child: Sample, parent: Sample | None, operator: str | None
) -> str | None:
    """A training item must stand alone: it cannot point at the item it was rewritten from."""
    for where, text in _texts(item):
        lowered = text.lower()
        has_words = "original" in lowered or "rewritten" in lowered or "evolved" in lowered
        match = _ORIGINAL.search(text) if has_words else None
        if match is not None:
            return f'"{" ".join(match.group(0).split())}" in the {where}'
    return None


@_rule("question_changed", "the question differs from every question of the parent")
def question_changed(
    item: QAS, parent_item: QAS | None, child: Sample, parent: Sample | None, operator: str | None
) -> str | None:
    """A rewrite that keeps a parent's question (case, spacing and punctuation aside) changed nothing."""
    if parent is None:
        return None
    mine = _normalized(item.question)
    for number, other in enumerate(_LastFacts.of(parent).questions, start=1):
        if mine == other:
            return f"same question as parent item {number}"
    return None


@_rule("fields_present", "question and answer non-empty; steps non-empty for reasoning")
def fields_present(
    item: QAS, parent_item: QAS | None, child: Sample, parent: Sample | None, operator: str | None
) -> str | None:
    """Required fields are present and non-empty (the schema already makes steps a list)."""
    missing = [name for name, value in (("question", item.question), ("answer", item.answer)) if not value.strip()]
    steps_said = any(step.description.strip() or (step.manipulation or "").strip() for step in item.steps)
    if _operator(operator) == "reasoning" and not steps_said:
        missing.append("steps")
    return f"empty {', '.join(missing)}" if missing else None


# --------------------------------------------------------------------------- choosing and running rules


def parse_checks(text: str) -> tuple[Rule, ...]:
    """The rules a --checks value names: `all`, `none`, or a comma list of rule names."""
    value = text.strip()
    if value == "all":
        return tuple(RULES.values())
    if value == "none":
        return ()
    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [name for name in names if name not in RULES]
    if unknown or not names:
        known = ", ".join(RULES)
        what = f"unknown check {unknown[0]!r}" if unknown else "no check named"
        raise UsageError(f"--checks: {what}; expected all, none or a comma list of: {known}")
    return tuple(RULES[name] for name in dict.fromkeys(names))


def check_sample(child: Sample, parent: Sample | None, rules: Sequence[Rule]) -> list[list[Violation]]:
    """Per item of the child, in order: the violations of the given rules.

    An item's parent item is the one its `source` names (its 0-based position in the parent), else the one at
    the same position; None when the parent has no such item.
    """
    operator = child.operator
    results: list[list[Violation]] = []
    for index, item in enumerate(child.qa):
        position = index if item.source is None else item.source
        parent_item = parent.qa[position] if parent is not None and 0 <= position < len(parent.qa) else None
        found = []
        for rule in rules:
            detail = rule.check(item, parent_item, child, parent, operator)
            if detail is not None:
                found.append(Violation(rule.name, detail))
        results.append(found)
    return results


# --------------------------------------------------------------------------- evolve check: a file


MAX_PROBLEMS_KEPT = 20


@dataclass
class CheckReport:
    """What `evolve check` found over a file: counts per rule, and every flagged item."""

    rules: list[str]
    keep_flagged: bool = True
    samples: int = 0
    items: int = 0
    passing: int = 0
    skipped: int = 0
    per_rule: dict[str, int] = field(default_factory=dict)
    flagged: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def skip(self, problem: str) -> None:
        """Count a record that could not be checked, keeping the first few reasons."""
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(problem)

    def add(self, child: Sample, violations: list[list[Violation]]) -> None:
        """Count one checked sample."""
        self.samples += 1
        self.items += len(violations)
        for index, found in enumerate(violations):
            if not found:
                self.passing += 1
                continue
            for violation in found:
                self.per_rule[violation.rule] = self.per_rule.get(violation.rule, 0) + 1
            if not self.keep_flagged:
                continue
            self.flagged.append(
                {
                    "id": child.id,
                    "item": index,
                    "operator": child.operator,
                    "question": child.qa[index].question,
                    "violations": [{"rule": v.rule, "detail": v.detail} for v in found],
                }
            )

    def as_dict(self) -> dict[str, Any]:
        """Numbers (with shares of the items checked) and the flagged items, for --json."""
        items = self.items
        return {
            "samples": self.samples,
            "items": items,
            "passing": self.passing,
            "passing_share": round(self.passing / items, 4) if items else None,
            "skipped_records": self.skipped,
            "rules": {
                name: {
                    "items": self.per_rule.get(name, 0),
                    "share": round(self.per_rule.get(name, 0) / items, 4) if items else None,
                }
                for name in self.rules
            },
            "flagged": self.flagged,
        }

    def to_json(self) -> str:
        """as_dict as indented JSON text."""
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n"


def check_file(
    evolved: Path,
    parents_file: Path | None,
    rules: Sequence[Rule],
    *,
    keep_flagged: bool = True,
    progress: bool = False,
) -> CheckReport:
    """Run the rules over every (parent, child) pair of an evolved file; a record without a parent is skipped."""
    from evolve.eliminate import iter_pairs, load_parents  # here: the run's stages import this module

    if not evolved.is_file():
        raise InputError(f"{evolved}: no such file")
    parents = load_parents(parents_file) if parents_file else None
    report = CheckReport(rules=[rule.name for rule in rules], keep_flagged=keep_flagged)
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("checking {task.completed:,} samples"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not (progress and console.is_terminal),  # never on cron's pipes
    )
    with bar:
        task = bar.add_task("check", total=None)
        for parent, child in iter_pairs(evolved, parents, report.skip):
            report.add(child, check_sample(child, parent, rules))
            bar.advance(task)
    if report.samples == 0 and report.skipped:
        raise InputError(
            f"{evolved}: no record could be checked ({report.skipped:,} skipped; first: {report.problems[0]})"
        )
    return report


def render_table(report: CheckReport) -> Table:
    """The terminal table: items checked, items breaking each rule (and their share), items passing."""
    table = Table(title="evolve check", title_justify="left")
    table.add_column("")
    table.add_column("requires")
    table.add_column("items", justify="right")
    table.add_column("share", justify="right")

    def share(count: int) -> str:
        return f"{count / report.items:.1%}" if report.items else "–"

    table.add_row("items checked", f"in {report.samples:,} samples", f"{report.items:,}", "")
    for name in report.rules:
        count = report.per_rule.get(name, 0)
        table.add_row(name, RULES[name].summary, f"{count:,}", share(count))
    table.add_row("items passing", "every rule chosen", f"{report.passing:,}", share(report.passing))
    if report.skipped:
        table.add_row("records skipped", "unreadable or without a parent", f"{report.skipped:,}", "")
    return table
