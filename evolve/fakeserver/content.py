"""The fake model's "mind": classify a prompt and write a deterministic answer.

Prompt contract (the project's templates follow it), applied to the text of the last user message:

- judge: the text has the heading line ``### Original Q&A&S``; the rewritten items are the JSON array in
  the first ```json fence after the LAST ``### Rewritten Q&A&S`` heading. Answer: a fenced JSON list of
  one verdict ``{"improved", "score", "reason"}`` per rewritten item.
- evolve: else, the text has ``### Given Q&A&S``; the given items are the JSON array in the first ```json
  fence after its LAST occurrence. Answer: a fenced JSON array with one rewritten Q&A&S per given item.
- other: a short plain answer.

Everything is a pure function of the prompt text (and the settings passed in): stable hashes come from
hashlib, never from Python's salted ``hash()``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Kind = Literal["evolve", "judge", "other"]

JUDGE_HEADING = "### Original Q&A&S"
REWRITTEN_HEADING = "### Rewritten Q&A&S"
GIVEN_HEADING = "### Given Q&A&S"
QAS_KEYS = ("image_position", "objects", "skills", "format", "question", "steps", "answer")

_FENCE = re.compile(r"```json[ \t]*\r?\n?", re.IGNORECASE)
_DECODER = json.JSONDecoder()

VERBS = (
    "Identify", "Describe", "Compare", "Locate", "Count", "Estimate", "Explain", "Determine",
    "Examine", "Analyze", "Measure", "Trace", "Infer", "Evaluate", "Classify", "Outline",
)  # fmt: skip
COLORS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "grey", "brown")
NOUNS = (
    "umbrella", "bench", "bicycle", "lamp", "dog", "cat", "cup", "sign", "tree", "window", "car",
    "book", "clock", "bottle", "chair", "kite", "boat", "bird", "backpack", "vase", "fence", "truck",
)  # fmt: skip
RELATIONS = (
    "left of", "right of", "above", "below", "behind", "in front of", "next to", "near", "under",
    "beside",
)  # fmt: skip
FOLLOW_UPS = (
    "explain what this suggests about the scene",
    "describe how it relates to the rest of the image",
    "justify your answer with visible evidence",
    "state how many similar objects appear nearby",
    "reason about why it is placed there",
    "compare its size with the surrounding objects",
    "infer what happened just before the photo was taken",
    "estimate its distance from the camera",
)  # fmt: skip
SKILLS = (
    "Grounding", "Referencing", "Calculating", "OCR", "Relationship Description",
    "Context Understanding", "Counting", "Spatial Reasoning", "Color Recognition", "Commonsense",
    "Attribute Recognition", "Depth Estimation", "Scene Understanding", "Comparison",
)  # fmt: skip
FORMATS = (
    "Norm", "multi_choice", "fill_in_the_blank", "region_selection", "depth_order",
    "relative_distance", "text_image_matching", "rationales_generation", "coreference_resolution",
)  # fmt: skip
MANIPULATIONS = ("Grounding_{i}({t})->bbx_{i}", "Referring_{i}(bbx_{i})->tgt_{i}", "Calculate({t})->res_{i}",
                 "OCR_{i}({t})->txt_{i}", None)  # fmt: skip
REASONS_YES = (
    "The rewrite asks for more visual detail and more reasoning steps.",
    "The rewrite adds spatial relations and a clearer target.",
    "The rewrite is longer and needs the image to be answered.",
)
REASONS_NO = (
    "The rewrite can be answered without looking at the image.",
    "The rewrite adds length but no real complexity.",
    "The rewrite drifts away from the content of the image.",
)
MALFORMED_TEXT = (
    "I am sorry, but I cannot rewrite these questions right now. Please try again later with a different image."
)


@dataclass(frozen=True)
class Settings:
    """The parts of the server configuration that shape answers."""

    reject_ratio: float = 0.0
    score_min: int = 5
    score_max: int = 9


def stable_hash(*parts: object) -> int:
    """A 64-bit integer hash of the parts' text, stable across processes and runs."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


def stable_fraction(*parts: object) -> float:
    """A stable number in [0, 1) derived from the parts."""
    return stable_hash(*parts) / 2**64


def messages_sha256(messages: Any) -> str:
    """sha256 hex of the canonical JSON of ``messages`` (sorted keys, compact, UTF-8)."""
    try:
        canonical = orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a lone surrogate: orjson refuses it, the stdlib writes it escaped
        canonical = json.dumps(messages, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def _parts_text(content: Any) -> tuple[str, bool]:
    """The text of one message content (string or list of parts) and whether it holds an image."""
    if isinstance(content, str):
        return content, False
    if not isinstance(content, list):
        return "", False
    texts: list[str] = []
    has_image = False
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image", "image"):
            has_image = True
    return "\n".join(texts), has_image


@dataclass(frozen=True)
class PromptInfo:
    """What the server learns from a request's messages."""

    text: str
    has_image: bool
    prompt_chars: int
    images: int


def read_messages(messages: list[Any]) -> PromptInfo:
    """Text of the last user message, image presence and size of the whole conversation."""
    last_user = ""
    has_image = False
    chars = 0
    images = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        text, image = _parts_text(message.get("content"))
        chars += len(text)
        if image:
            has_image = True
            images += sum(
                1
                for p in message.get("content") or []
                if isinstance(p, dict) and p.get("type") in ("image_url", "input_image", "image")
            )
        if message.get("role") == "user":
            last_user = text
    return PromptInfo(text=last_user, has_image=has_image, prompt_chars=chars, images=images)


def _has_heading_line(text: str, heading: str) -> bool:
    """Whether ``heading`` starts a line of ``text`` (str.find: a MULTILINE regex is slow on long text)."""
    pos = text.find(heading)
    while pos >= 0:
        line_start = text.rfind("\n", 0, pos) + 1
        end = pos + len(heading)
        at_word_end = end == len(text) or not (text[end].isalnum() or text[end] == "_")
        if not text[line_start:pos].strip(" \t") and at_word_end:
            return True
        pos = text.find(heading, end)
    return False


def classify(text: str) -> Kind:
    """Which of the three prompt kinds ``text`` is."""
    if _has_heading_line(text, JUDGE_HEADING):
        return "judge"
    if GIVEN_HEADING in text:
        return "evolve"
    return "other"


def items_after(text: str, heading: str) -> list[Any] | None:
    """The JSON array in the first ```json fence after the last ``heading``, or None if absent/invalid."""
    start = text.rfind(heading)
    if start < 0:
        return None
    fence = _FENCE.search(text, start + len(heading))
    if fence is None:
        return None
    pos = fence.end()
    close = text.find("```", pos)
    try:  # the usual case: the fence holds exactly the array
        value = orjson.loads(text[pos : close if close >= 0 else len(text)])
    except orjson.JSONDecodeError:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        try:
            value, _ = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, list) else None


def fenced(value: list[Any]) -> str:
    """A list as JSON in a ```json fence, one element per line (the C encoder: ``indent=`` is slow)."""
    body = ",\n  ".join(orjson.dumps(v).decode() for v in value)
    return "```json\n[\n  " + body + "\n]\n```" if value else "```json\n[]\n```"


def _draws(*parts: object) -> bytes:
    """64 stable bytes from the parts (one blake2b per rewritten item: each byte is one cheap choice)."""
    return hashlib.blake2b("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass"), digest_size=64).digest()


def _text_of(item: Any, key: str) -> str:
    if isinstance(item, dict):
        value = item.get(key)
        if isinstance(value, str):
            return value
    return ""


def rewrite_item(given: Any, seed: str, index: int) -> dict[str, Any]:
    """One rewritten Q&A&S: longer than ``given``, with objects, skills and steps, chosen by hash."""
    b = _draws(seed, index)
    verb, color = VERBS[b[0] % len(VERBS)], COLORS[b[1] % len(COLORS)]
    noun, other = NOUNS[b[2] % len(NOUNS)], NOUNS[b[3] % len(NOUNS)]
    if other == noun:
        other = NOUNS[(b[2] + 1) % len(NOUNS)]
    relation, follow = RELATIONS[b[4] % len(RELATIONS)], FOLLOW_UPS[b[5] % len(FOLLOW_UPS)]
    old_q = _text_of(given, "question").strip()
    old_a = _text_of(given, "answer").strip()
    question = f"{verb} the {color} {noun} {relation} the {other} and {follow}."
    if old_q:
        question += f" Also consider: {old_q}"
    answer = f"The {color} {noun} is {relation} the {other}, which the image shows clearly."
    if old_a:
        answer += f" {old_a}"
    skills = list(dict.fromkeys(SKILLS[b[8 + k] % len(SKILLS)] for k in range(1 + b[6] % 3)))
    target = f"{color} {noun}"
    objects = [target, other]
    if isinstance(given, dict) and isinstance(given.get("objects"), list):
        objects += [o for o in given["objects"] if isinstance(o, str) and o and o not in objects][:2]
    steps = []
    for k in range(1 + b[7] % 4):
        template = MANIPULATIONS[b[16 + k] % len(MANIPULATIONS)]
        thing = target if k % 2 == 0 else other
        manipulation = None if template is None else template.format(i=k + 1, t=thing)
        steps.append({"manipulation": manipulation, "description": f"Find the {thing} and check its position."})
    return {
        "image_position": _text_of(given, "image_position") or "single",
        "objects": objects,
        "skills": skills,
        "format": FORMATS[b[24] % len(FORMATS)],
        "question": question,
        "steps": steps,
        "answer": answer,
    }


def judge_item(item: Any, index: int, settings: Settings) -> dict[str, Any]:
    """One verdict: rejected when the stable hash of the question falls below ``reject_ratio``."""
    question = _text_of(item, "question")
    rejected = stable_fraction("judge", question) < settings.reject_ratio
    low, high = sorted((settings.score_min, settings.score_max))
    b = _draws("score", question, index)
    reasons = REASONS_NO if rejected else REASONS_YES
    return {
        "improved": "no" if rejected else "yes",
        "score": low + int.from_bytes(b[:8], "big") % (high - low + 1),
        "reason": reasons[b[8] % len(reasons)],
    }


@dataclass(frozen=True)
class Answer:
    """The model's answer: its text and what the server learnt doing it."""

    kind: Kind
    content: str
    n_items: int | None


def answer(text: str, settings: Settings) -> Answer:
    """The deterministic answer to the prompt ``text``."""
    kind = classify(text)
    if kind == "judge":
        items = items_after(text, REWRITTEN_HEADING)
        if items is None:
            return Answer(kind, "fakeserver: no ```json array after the last '### Rewritten Q&A&S'.", None)
        return Answer(kind, fenced([judge_item(it, i, settings) for i, it in enumerate(items)]), len(items))
    if kind == "evolve":
        items = items_after(text, GIVEN_HEADING)
        if items is None:
            return Answer(kind, "fakeserver: no ```json array after the last '### Given Q&A&S'.", None)
        seed = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return Answer(kind, fenced([rewrite_item(it, seed, i) for i, it in enumerate(items)]), len(items))
    snippet = " ".join(text.split()[:12])
    return Answer(kind, f"This is a short answer from the fake model about: {snippet}", None)
