"""Tolerant extraction of model answers (pure functions, no I/O): Q&A&S items, judge verdicts,
annotations (objects, skills, steps per item), claims per item and verdicts per claim.

A model is asked for a JSON array but answers with fences, prose, comments, trailing commas, curly or
single quotes, triple-quoted strings, wrapper objects, or an answer cut off by the token limit. The flow:

1. fast path: the fenced block (or the whole text) goes straight to ``json.loads``;
2. otherwise a tolerant scanner finds the array (or object) and splits it into its top-level elements,
   knowing which were closed before the text ended: a cut-off last element is dropped, never completed;
3. each closed element is read with ``json.loads``, then after our own normalisation (strings in any
   quotes rewritten as JSON strings, comments and trailing commas removed, Python literals mapped), then
   with ``json_repair``; whatever a repair produced is kept only if it validates (a QAS with a question
   or an answer, or a verdict).

Answers about given items (annotations, claims, claim verdicts) are matched to the items by position:
by each element's own ``index`` (or ``id``) when every element has a distinct one, else in order; an
item with no readable element gets the empty value (None, [] or None).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import json_repair
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evolve.errors import AnswerParseError
from evolve.records import QAS, Step

T = TypeVar("T")
Looks = Callable[[dict[str, Any]], bool]
Validate = Callable[[dict[str, Any]], T | str]

_FENCE_OPENER = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n`]*\n?")
_OPENER = re.compile(r"""\[\s*(?:(?://[^\n]*|/\*.*?\*/)\s*)*[{\[]|\{\s*(?:["'“”]|[A-Za-z_]\w*\s*:)""", re.DOTALL)
_SPECIAL = re.compile(r"""["'“”„\[\]{},/]""")
_UNESCAPED_QUOTE = re.compile(r'(?<!\\)"')
_PY_LITERAL = re.compile(r"\b(?:True|False|None)\b")
_PY_JSON = {"True": "true", "False": "false", "None": "null"}
_SCORE = re.compile(r"(-?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?")
_STRING_END = {
    '"': re.compile(r'[\\"]'),
    "'": re.compile(r"[\\']"),
    "“": re.compile(r"[\\”“]"),
}
_CLOSE_FOLLOW = frozenset(",:}]/\n")
_MAX_CANDIDATES = 8
_VERDICT_FIELDS = ("improved", "score", "reason")
_PREFERRED = re.compile(r"rewrit|evolv|new|output|result|verdict|annotat|claim", re.IGNORECASE)
_ANNOTATION_FIELDS = frozenset({"objects", "skills", "steps"})
_CLAIM_FIELDS = frozenset({"claims", "claim_list", "facts"})
_VERDICT_WORD_FIELDS = ("verdict", "answer", "label", "result", "judgement", "judgment", "value")
_INDEX_FIELDS = ("index", "id", "item", "number", "claim_id", "n")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s*")
_UNSURE = re.compile(r"\W*(?:unsure|not sure|uncertain|unknown|unclear|undetermined|cannot|can't|can not|maybe|n/a)\b")
_YES_WORDS = frozenset({"yes", "y", "true", "correct", "supported", "right", "confirmed"})
_NO_WORDS = frozenset({"no", "n", "false", "incorrect", "wrong", "unsupported", "contradicted", "refuted"})

SKILLS: tuple[str, ...] = (
    "Grounding", "Referencing", "Calculating", "OCR", "Existence", "Relationship Description",
    "Context Understanding", "Behaviour Prediction", "Knowledge Integration",
)  # fmt: skip
_SKILL_NAMES = {name.lower(): name for name in SKILLS} | {"behavior prediction": "Behaviour Prediction"}


# --------------------------------------------------------------------------- public models


@dataclass
class ParseResult(Generic[T]):
    """What was read from an answer: the valid items, the repairs it took, and how many were skipped."""

    items: list[T]
    repairs: list[str] = field(default_factory=list)
    dropped: int = 0


class Verdict(BaseModel):
    """The judge's word on one rewrite: improved or not, a 0–10 score and why."""

    model_config = ConfigDict(extra="ignore")

    improved: bool
    score: float
    reason: str = ""

    @field_validator("improved", mode="before")
    @classmethod
    def _yes_no(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            word = re.match(r"\W*([A-Za-z]+)", value)
            token = word.group(1).lower() if word else ""
            if token in ("yes", "y", "true", "improved"):
                return True
            if token in ("no", "n", "false", "not"):
                return False
        raise ValueError(f"expected yes or no, got {value!r}")

    @field_validator("score", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        if isinstance(value, str):
            found = _SCORE.search(value)
            if found is None:
                raise ValueError(f"expected a number, got {value!r}")
            number = float(found.group(1))
            scale = float(found.group(2)) if found.group(2) else 10.0
            value = number * 10.0 / scale if scale > 0 else number
        if isinstance(value, int | float):
            if math.isnan(value):
                raise ValueError("score is not a number")
            return min(10.0, max(0.0, float(value)))
        raise ValueError(f"expected a number, got {type(value).__name__}")

    @field_validator("reason", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return "" if value is None else _joined(value)


def _name_list(value: Any) -> Any:
    """Objects or skills as a list of names: a lone string, a comma list or None are accepted."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [_joined(v).strip() for v in value if v is not None and _joined(v).strip()]
    return value


class Annotation(BaseModel):
    """What the annotator filled in for one item: the objects, skills and solution steps."""

    model_config = ConfigDict(extra="ignore")

    objects: list[str] = Field(default_factory=list)
    skills: list[str] = Field(default_factory=list)
    steps: list[Step] = Field(default_factory=list)

    @field_validator("objects", mode="before")
    @classmethod
    def _objects(cls, value: Any) -> Any:
        return _name_list(value)

    @field_validator("skills", mode="before")
    @classmethod
    def _skills(cls, value: Any) -> Any:
        names = _name_list(value)
        if not isinstance(names, list):
            return names
        return list(dict.fromkeys(_SKILL_NAMES.get(n.lower(), n) for n in names))

    @field_validator("steps", mode="before")
    @classmethod
    def _step_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [{"description": value}] if value.strip() else []
        if isinstance(value, dict):
            return [value]
        if isinstance(value, list):
            return [{"description": v} if isinstance(v, str) else v for v in value if v is not None]
        return value

    @property
    def empty(self) -> bool:
        """True when nothing was filled in (the model could not annotate the item)."""
        return not (self.objects or self.skills or self.steps)

    def apply(self, item: QAS) -> QAS:
        """`item` with these objects, skills and steps; its question and answer untouched."""
        return item.model_copy(update={"objects": self.objects, "skills": self.skills, "steps": self.steps})


# --------------------------------------------------------------------------- public functions


def parse_qas(text: str) -> list[QAS]:
    """The valid Q&A&S items of an evolution answer; raises AnswerParseError when there are none."""
    return parse_qas_detailed(text).items


def parse_qas_detailed(text: str) -> ParseResult[QAS]:
    """parse_qas, plus the repairs applied and the number of items skipped (for logging)."""
    return _extract(text, _looks_like_qas, _validate_qas, "Q&A&S")


def parse_verdicts(text: str, expected: int) -> list[Verdict]:
    """One verdict per rewrite, in order; raises AnswerParseError unless exactly `expected` are read."""
    return parse_verdicts_detailed(text, expected).items


def parse_verdicts_detailed(text: str, expected: int) -> ParseResult[Verdict]:
    """parse_verdicts, plus the repairs applied and the number of verdicts skipped."""
    try:
        result = _extract(text, _looks_like_verdict, _validate_verdict, "verdict")
    except AnswerParseError as exc:
        raise AnswerParseError(f"{exc.reason} (expected {expected} verdicts)", raw=text) from None
    found = len(result.items)
    if found != expected:
        skipped = f" ({result.dropped} more unreadable)" if result.dropped else ""
        raise AnswerParseError(f"judge returned {found} verdicts for {expected} rewrites{skipped}", raw=text)
    return result


def parse_annotations(text: str, n_items: int) -> list[Annotation | None]:
    """One annotation per given item, position-matched; None for an item the model could not annotate
    (empty lists, an unreadable element, or cut off). Raises AnswerParseError when none can be read."""
    result = _extract(text, _looks_like_annotation, _validate_annotation, "annotation")
    return _place(result.items, n_items, lambda: None)


def parse_claims(text: str, n_items: int) -> list[list[str]]:
    """The claims of each given item, position-matched ([] where none were read). Raises
    AnswerParseError when the answer holds no claims element at all."""
    result = _extract(text, _looks_like_claims, _validate_claims, "claims")
    return _place(result.items, n_items, list)


def parse_claim_verdicts(text: str, n_claims: int) -> list[bool | None]:
    """One verdict per claim, position-matched: True (yes), False (no) or None (unsure, or unread).
    Also reads a bare JSON array of words. Raises AnswerParseError when no verdict can be read."""
    try:
        result = _extract(text, _looks_like_claim_verdict, _validate_claim_verdict, "claim verdict")
    except AnswerParseError:
        words = _word_array(text)
        if words is None:
            raise
        return _place([_Indexed(None, _verdict_word(w)) for w in words], n_claims, lambda: None)
    return _place(result.items, n_claims, lambda: None)


@dataclass(frozen=True)
class _Indexed(Generic[T]):
    """An element read from an answer about numbered items, with the number it gave itself (if any)."""

    index: int | None
    value: T


def _place(found: list[_Indexed[T]], n: int, empty: Callable[[], T]) -> list[T]:
    """Position-match elements to n items: by their own numbers when every element has a distinct
    one in 1..n (or 0..n-1), else in order; items with no element get ``empty()``."""
    out = [empty() for _ in range(n)]
    numbers = [f.index for f in found]
    if found and None not in numbers and len(set(numbers)) == len(numbers):
        known = [i for i in numbers if i is not None]
        base = 0 if min(known) == 0 else 1
        if all(0 <= i - base < n for i in known):
            for element, number in zip(found, known, strict=True):
                out[number - base] = element.value
            return out
    for position, element in enumerate(found[:n]):
        out[position] = element.value
    return out


def _number(item: dict[str, Any]) -> int | None:
    """The item number an element gives itself (``index``, ``id`` ...), if it is an integer."""
    for name in _INDEX_FIELDS:
        value = item.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
    return None


def _verdict_word(value: Any) -> bool | None:
    """yes / no / unsure (and their usual variants) as True / False / None; anything else is None."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return bool(value) if value in (0, 1) else None
    text = str(value).strip().lower()
    if _UNSURE.match(text):
        return None
    word = re.match(r"\W*([a-z]+)", text)
    token = word.group(1) if word else ""
    if token in _YES_WORDS:
        return True
    if token in _NO_WORDS or token == "not":
        return False
    return None


def _word_array(text: str) -> list[Any] | None:
    """A JSON array of plain words (["yes", "no", ...]) in a fence or in the whole text, or None."""
    for region, _, _ in _regions(text):
        start = region.find("[")
        if start < 0:
            continue
        span = _scan(region, start)
        value = _load(region[start : len(region) if span.end is None else span.end], [])
        if isinstance(value, list) and value and all(isinstance(v, str | bool) or v is None for v in value):
            return value
    return None


# --------------------------------------------------------------------------- validation per kind


def _looks_like_qas(item: dict[str, Any]) -> bool:
    keys = {_key(k) for k in item}
    return bool(keys & {"question", "answer", "answers"})


def _looks_like_verdict(item: dict[str, Any]) -> bool:
    keys = {_key(k) for k in item}
    return bool(keys & {"improved", "score"})


def _validate_qas(raw: dict[str, Any]) -> QAS | str:
    item = _normalized_keys(raw)
    for name in _VERDICT_FIELDS:  # a rewriter does not get to score itself
        item.pop(name, None)
    if "answer" not in item and "answers" in item:
        item["answer"] = item.pop("answers")
    for name in ("question", "answer"):
        value = item.get(name)
        if isinstance(value, bool):
            item[name] = "Yes" if value else "No"
        elif isinstance(value, int | float) or (name == "question" and isinstance(value, list | dict)):
            item[name] = _joined(value)
    for name in ("format", "image_position"):
        value = item.get(name)
        if value is not None and not isinstance(value, str):
            item[name] = _joined(value)
    steps = item.get("steps")
    if isinstance(steps, str):
        item["steps"] = [steps] if steps.strip() else []
    elif isinstance(steps, dict):
        item["steps"] = [steps] if {"manipulation", "description"} & steps.keys() else list(steps.values())
    if isinstance(item.get("steps"), list):
        item["steps"] = [s if isinstance(s, str | dict) else _joined(s) for s in item["steps"]]
    try:
        qas = QAS.model_validate(item)
    except ValidationError as exc:
        return _compact(exc)
    if not (qas.question.strip() or qas.answer.strip()):
        return "empty question and answer"
    return qas


def _validate_verdict(raw: dict[str, Any]) -> Verdict | str:
    try:
        return Verdict.model_validate(_normalized_keys(raw))
    except ValidationError as exc:
        return _compact(exc)


def _looks_like_annotation(item: dict[str, Any]) -> bool:
    return bool({_key(k) for k in item} & _ANNOTATION_FIELDS)


def _validate_annotation(raw: dict[str, Any]) -> _Indexed[Annotation | None] | str:
    item = _normalized_keys(raw)
    try:
        annotation = Annotation.model_validate(item)
    except ValidationError as exc:
        return _compact(exc)
    return _Indexed(_number(item), None if annotation.empty else annotation)


def _looks_like_claims(item: dict[str, Any]) -> bool:
    return bool({_key(k) for k in item} & _CLAIM_FIELDS)


def _validate_claims(raw: dict[str, Any]) -> _Indexed[list[str]] | str:
    item = _normalized_keys(raw)
    value = next((item[k] for k in _CLAIM_FIELDS if k in item), None)
    if isinstance(value, str):
        value = value.splitlines()
    if value is None:
        value = []
    if not isinstance(value, list):
        return "claims: expected a list"
    claims: list[str] = []
    for element in value:
        if isinstance(element, dict):
            element = next((element[k] for k in ("claim", "text", "statement") if k in element), None)
        if isinstance(element, str):
            element = _BULLET.sub("", element).strip()
            if element:
                claims.append(element)
    return _Indexed(_number(item), claims)


def _looks_like_claim_verdict(item: dict[str, Any]) -> bool:
    return any(_key(k) in _VERDICT_WORD_FIELDS for k in item)


def _validate_claim_verdict(raw: dict[str, Any]) -> _Indexed[bool | None] | str:
    item = _normalized_keys(raw)
    word = next((item[k] for k in _VERDICT_WORD_FIELDS if k in item), None)
    number = _number(item)
    if number is None and isinstance(item.get("claim"), int) and not isinstance(item.get("claim"), bool):
        number = item["claim"]
    return _Indexed(number, _verdict_word(word))


_PLAIN_KEYS = frozenset(
    {"image_position", "objects", "skills", "format", "question", "steps", "answer", "improved", "score", "reason",
     "index", "id", "claims", "claim", "verdict"}
)  # fmt: skip


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _normalized_keys(raw: dict[str, Any]) -> dict[str, Any]:
    if raw.keys() <= _PLAIN_KEYS:  # the common case: keys exactly as the schema names them
        return dict(raw)
    item: dict[str, Any] = {}
    for name, value in raw.items():
        key = _key(str(name))
        if key not in item or key == name:
            item[key] = value
    return item


def _joined(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(_joined(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_joined(v)}" for k, v in value.items())
    return str(value)


def _compact(exc: ValidationError) -> str:
    first = exc.errors()[0]
    place = ".".join(str(p) for p in first["loc"]) or "item"
    if first["type"] == "missing":
        return f"missing {place}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{place}: {message}"


# --------------------------------------------------------------------------- extraction


@dataclass
class _Candidate(Generic[T]):
    """What one JSON value in the text gave: items (valid), rejection reasons, and repairs."""

    items: list[T] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    truncated: bool = False
    cut_off: int = 0
    shape: str | None = None  # set when the value held no items at all
    end: int | None = None

    @property
    def dropped(self) -> int:
        """Items seen but not kept: invalid ones and a cut-off last one."""
        return len(self.rejected) + self.cut_off


def _extract(text: str, looks: Looks, validate: Validate[T], noun: str) -> ParseResult[T]:
    if not text or not text.strip():
        raise AnswerParseError("empty answer", raw=text)
    failures: list[_Candidate[T]] = []
    partial: ParseResult[T] | None = None  # from a value cut off by the end of its region
    cut_fence = False  # a value ran past the end of its fence: truncated, or a fence inside a string
    for region, repairs, fenced in _regions(text):
        if cut_fence and fenced:
            continue  # later fences would be pieces of the value a fence inside a string cut: read the whole text
        fast = _fast(region, looks, validate)
        if fast is not None and fast.items:
            return _result(fast, repairs)
        if fast is not None:
            failures.append(fast)
            continue
        pos = 0
        for _ in range(_MAX_CANDIDATES):
            found = _OPENER.search(region, pos)
            if found is None:
                break
            cand = _scan_candidate(region, found.start(), looks, validate)
            if cand.items:
                prose = region[: found.start()].strip() or region[cand.end or len(region) :].strip()
                result = _result(cand, [*repairs, "prose around JSON"] if prose else repairs)
                if cand.end is not None:
                    return result
                # cut off: the answer was truncated, or a fence inside a string ended the region early;
                # the next region (the whole text) tells which
                if partial is None or len(result.items) > len(partial.items):
                    partial = result
                cut_fence = cut_fence or fenced
                break
            failures.append(cand)
            if cand.end is None:
                cut_fence = cut_fence or fenced
                break
            pos = cand.end
    if partial is not None:
        return partial
    raise AnswerParseError(_failure_reason(text, failures, noun), raw=text)


def _result(cand: _Candidate[T], repairs: list[str]) -> ParseResult[T]:
    return ParseResult(cand.items, list(dict.fromkeys(repairs + cand.repairs)), cand.dropped)


@dataclass(frozen=True)
class _Fence:
    """One fenced block: its language tag, body and span (the closing ``` included when present)."""

    language: str
    body: str
    start: int
    end: int
    closed: bool


def _fences(text: str) -> list[_Fence]:
    """The fenced blocks of ``text`` in order; an unclosed last fence runs to the end of the text.

    str.find instead of one lazy DOTALL regex: the regex costs tens of microseconds per answer.
    """
    found: list[_Fence] = []
    pos = text.find("```")
    while pos >= 0:
        opener = _FENCE_OPENER.match(text, pos)
        assert opener is not None  # the pattern matches any "```"
        close = text.find("```", opener.end())
        if close < 0:
            found.append(_Fence(opener.group(1), text[opener.end() :], pos, len(text), False))
            break
        found.append(_Fence(opener.group(1), text[opener.end() : close], pos, close + 3, True))
        pos = text.find("```", close + 3)
    return found


def _regions(text: str) -> Iterator[tuple[str, list[str], bool]]:
    """(region, repairs, fenced): fenced blocks first (```json ones before others), then the whole text."""
    fences = list(enumerate(_fences(text), start=1))
    fences.sort(key=lambda nf: nf[1].language.lower() != "json")
    for number, fence in fences:
        body = fence.body.strip()
        if not body:
            continue
        notes = [] if len(fences) == 1 else [f"fence {number} of {len(fences)}"]
        if not fence.closed:
            notes.append("no closing fence")
        if text[: fence.start].strip() or text[fence.end :].strip():
            notes.append("prose around JSON")
        yield body, notes, True
    yield text.strip(), (["ignored fences"] if fences else []), False


def _fast(region: str, looks: Looks, validate: Validate[T]) -> _Candidate[T] | None:
    """json.loads on a whole region; None when it is not JSON as it stands."""
    if region[:1] not in "[{":
        return None
    try:
        value = orjson.loads(region)
    except orjson.JSONDecodeError:
        try:  # control characters inside strings: orjson is strict, models are not
            value = json.loads(region, strict=False)
        except ValueError:
            return None
    cand: _Candidate[T] = _Candidate(end=len(region))
    _take(value, looks, validate, cand)
    return cand


def _take(value: Any, looks: Looks, validate: Validate[T], cand: _Candidate[T]) -> None:
    """Validate the items a decoded value holds, into cand."""
    dicts = _unwrap(value, looks, cand.repairs)
    if dicts is None:
        cand.shape = _shape(value)
        return
    for raw in dicts:
        checked = validate(raw)
        if isinstance(checked, str):
            cand.rejected.append(checked)
        else:
            cand.items.append(checked)


def _unwrap(value: Any, looks: Looks, repairs: list[str], depth: int = 0) -> list[dict[str, Any]] | None:
    """The list of item dicts a value holds: itself, a single item, or a wrapper's list."""
    if isinstance(value, str) and depth == 0 and value.strip()[:1] in ("[", "{"):
        try:
            inner = json.loads(value, strict=False)
        except ValueError:
            return None
        repairs.append("JSON inside a string")
        return _unwrap(inner, looks, repairs, depth + 1)
    if isinstance(value, list):
        dicts: list[dict[str, Any]] = []
        for element in value:
            if isinstance(element, dict):
                dicts.append(element)
            elif isinstance(element, list):
                dicts.extend(e for e in element if isinstance(e, dict))
        return dicts if any(looks(d) for d in dicts) else None
    if not isinstance(value, dict):
        return None
    if looks(value):
        repairs.append("single object")
        return [value]
    if depth >= 2:
        return None
    for key, inner in sorted(value.items(), key=lambda kv: _PREFERRED.search(str(kv[0])) is None):
        if isinstance(inner, list | dict):
            found = _unwrap(inner, looks, [], depth + 1)
            if found:
                repairs.append(f"wrapper key {key!r}")
                return found
    members = [v for v in value.values() if isinstance(v, dict)]
    if members and len(members) == len(value) and all(looks(v) for v in members):
        repairs.append("object of items")
        return members
    return None


def _shape(value: Any) -> str:
    if isinstance(value, dict):
        keys = ", ".join(str(k) for k in list(value)[:5])
        return f"a JSON object with keys {keys}" if keys else "an empty JSON object"
    if isinstance(value, list):
        first = next((v for v in value if isinstance(v, dict)), None)
        if first is not None:
            keys = ", ".join(str(k) for k in list(first)[:5]) or "none"
            return f"a JSON array of {len(value)} values (first object's keys: {keys})"
        return f"a JSON array of {len(value)} values, none an object" if value else "an empty JSON array"
    return f"a JSON {type(value).__name__}"


def _failure_reason(text: str, failures: list[_Candidate[Any]], noun: str) -> str:
    worst = next((c for c in failures if c.rejected), None)
    if worst is not None:
        common, _ = Counter(worst.rejected).most_common(1)[0]
        count = len(worst.rejected)
        cut = " (and the last was cut off)" if worst.cut_off else ""
        return f"{count} item{'s' if count != 1 else ''}, none valid: {common}{cut}"
    if any(c.truncated for c in failures):
        return "the answer ends inside its first item (no complete item)"
    shape = next((c.shape for c in failures if c.shape), None)
    if shape:
        return f"no {noun} items in {shape}"
    start = " ".join(text.split())[:40]
    return f'no JSON array found in {len(text)} chars starting "{start}"'


# --------------------------------------------------------------------------- the tolerant scanner


@dataclass
class _Span:
    """A scanned JSON value: where it ends (None if the text ended first) and its parts."""

    end: int | None
    elements: list[tuple[int, int, bool]]  # array: (start, end, closed) of each element
    arrays: list[int]  # object: where its direct array members start


def _value_position(text: str, at: int) -> bool:
    """True when a quote at `at` opens a key or value (after [ { , : or at the start)."""
    k = at - 1
    while k >= 0 and text[k] in " \t\r\n":
        k -= 1
    return k < 0 or text[k] in "[{,:"


def _skip_string(text: str, at: int, quote: str) -> int | None:
    """Index after the string opened at `at`, or None if the text ends inside it.

    A quote closes the string only when a delimiter follows it (, : } ] / or a line end), so an
    unescaped quote inside the text does not end it early.
    """
    if text.startswith(quote * 3, at):
        end = text.find(quote * 3, at + 3)
        return None if end < 0 else end + 3
    pattern = _STRING_END["“" if quote in "“”„" else quote]
    n = len(text)
    i = at + 1
    while True:
        found = pattern.search(text, i)
        if found is None:
            return None
        j = found.start()
        if text[j] == "\\":
            i = j + 2
            continue
        k = j + 1
        while k < n and text[k] in " \t\r":
            k += 1
        if k >= n or text[k] in _CLOSE_FOLLOW:
            return j + 1
        i = j + 1


def _scan(text: str, start: int) -> _Span:
    """Walk the value opening at `start`, skipping strings and comments, tracking nesting."""
    closer = {"[": "]", "{": "}"}
    stack: list[str] = []
    root = text[start]
    elements: list[tuple[int, int, bool]] = []
    arrays: list[int] = []
    element_start = start + 1
    closed = False
    i = start
    n = len(text)
    while True:
        found = _SPECIAL.search(text, i)
        if found is None:
            break
        j = found.start()
        c = text[j]
        if c in "\"'“”„":
            if not _value_position(text, j):
                i = j + 1
                continue
            after = _skip_string(text, j, c)
            if after is None:
                break
            i = after
            continue
        if c == "/":
            nxt = text[j + 1 : j + 2]
            if nxt == "/":
                end = text.find("\n", j)
                i = n if end < 0 else end
            elif nxt == "*":
                end = text.find("*/", j + 2)
                i = n if end < 0 else end + 2
            else:
                i = j + 1
            continue
        if c in "[{":
            if len(stack) == 1 and root == "{" and c == "[":
                arrays.append(j)
            elif len(stack) == 1:
                closed = False  # a new element opens (even without a comma before it)
            stack.append(closer[c])
        elif c in "]}":
            if stack:
                stack.pop()
            if not stack:
                if root == "[":
                    elements.append((element_start, j, True))
                return _Span(j + 1, elements, arrays)
            if len(stack) == 1:
                closed = True
        elif c == "," and len(stack) == 1 and root == "[":
            elements.append((element_start, j, True))
            element_start = j + 1
            closed = False
        i = j + 1
    if root == "[":
        elements.append((element_start, n, closed))
    return _Span(None, elements, arrays)


def _load(piece: str, repairs: list[str]) -> Any:
    """One element's text as a value: json.loads, then our normalisation, then json_repair."""
    try:
        return json.loads(piece, strict=False)
    except ValueError:
        pass
    try:
        value = json.loads(_normalize(piece), strict=False)
    except ValueError:
        pass
    else:
        repairs.append("normalised quotes, comments or commas")
        return value
    try:
        value = json_repair.repair_json(piece, return_objects=True, skip_json_loads=True)
    except Exception:  # json_repair is a heuristic library; whatever it trips on is a failed repair
        return None
    repairs.append("json_repair")
    return value


def _string_value(body: str, quote: str) -> str:
    """A JSON string literal for the body of a string written between `quote`s."""
    if quote == "'":
        body = body.replace("\\'", "'")
    escaped = _UNESCAPED_QUOTE.sub(r'\\"', body)
    try:
        json.loads(f'"{escaped}"', strict=False)
    except ValueError:
        return json.dumps(body, ensure_ascii=False)
    return f'"{escaped}"'


def _normalize(text: str) -> str:
    """JSON-ish to JSON: every string (straight, curly, single or triple quoted, with unescaped quotes
    inside) rewritten as a JSON string; comments and trailing commas removed; True/False/None mapped."""
    out: list[str] = []
    comma: int | None = None  # index in out of a comma that a closer may make a trailing one
    i = 0
    n = len(text)
    while i < n:
        found = _SPECIAL.search(text, i)
        j = n if found is None else found.start()
        run = text[i:j]
        if run.strip():
            comma = None
            run = _PY_LITERAL.sub(lambda m: _PY_JSON[m.group(0)], run)
        out.append(run)
        if found is None:
            break
        c = text[j]
        if c in "\"'“”„" and _value_position(text, j):
            comma = None
            after = _skip_string(text, j, c)
            width = 3 if text.startswith(c * 3, j) else 1
            body = text[j + width : n if after is None else after - width]
            out.append(_string_value(body, '"' if c == '"' else c))
            i = n if after is None else after
            continue
        if c == "/" and text[j + 1 : j + 2] in ("/", "*"):
            end = text.find("\n", j) if text[j + 1] == "/" else text.find("*/", j + 2)
            i = n if end < 0 else (end if text[j + 1] == "/" else end + 2)
            continue
        if c in "]}" and comma is not None:
            out[comma] = ""
        if c == ",":
            comma = len(out)
        elif not c.isspace():
            comma = None
        out.append(c)
        i = j + 1
    return "".join(out)


def _scan_candidate(region: str, start: int, looks: Looks, validate: Validate[T]) -> _Candidate[T]:
    """Read the value opening at `start`: whole if it is closed, element by element otherwise."""
    span = _scan(region, start)
    cand: _Candidate[T] = _Candidate(end=span.end)
    if region[start] == "{":
        if span.end is not None:
            value = _load(region[start : span.end], cand.repairs)
            _take(value, looks, validate, cand)
            return cand
        cand.truncated = True
        for inner in span.arrays:  # a cut-off wrapper: read its list of items
            sub = _scan_candidate(region, inner, looks, validate)
            if sub.items or sub.rejected:
                sub.repairs.insert(0, "truncated wrapper object")
                sub.end = None
                return sub
        return cand
    repairs: list[str] = []
    values: list[Any] = []
    for first, last, closed in span.elements:
        piece = region[first:last].strip()
        if not piece or (piece.startswith(("//", "/*")) and not _has_value(piece)):
            continue
        if not closed:
            cand.truncated = True
            cand.cut_off += 1
            repairs.append("dropped a cut-off last item")
            continue
        values.append(_load(piece, repairs))
    cand.repairs.extend(dict.fromkeys(repairs))
    if span.end is None and not cand.truncated:
        cand.repairs.append("closed a cut-off array")
    held = _unwrap(values, looks, cand.repairs)
    if held is None:
        if not cand.truncated:
            cand.shape = _shape(values)
        return cand
    for raw in held:
        checked = validate(raw)
        if isinstance(checked, str):
            cand.rejected.append(checked)
        else:
            cand.items.append(checked)
    return cand


def _has_value(piece: str) -> bool:
    """True when an element that starts with a comment holds something after it."""
    stripped = re.sub(r"//[^\n]*|/\*.*?(?:\*/|\Z)", "", piece, flags=re.DOTALL)
    return bool(stripped.strip())
