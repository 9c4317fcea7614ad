"""The fake model's "mind": classify a prompt and write a deterministic answer.

Prompt contract (the project's templates follow it), applied to the text of the last user message (its
text parts concatenated, so a prompt split around an image reads as one). The last of these heading lines
decides the kind (``### Rewritten Q&A&S`` means judge only with an ``### Original Q&A&S`` heading line):

- judge: the text has the heading line ``### Original Q&A&S``; the rewritten items are the JSON array in
  the first ```json fence after the LAST ``### Rewritten Q&A&S`` heading. Answer: a fenced JSON list of
  one verdict ``{"improved", "score", "reason"}`` per rewritten item. With ``verdict_noise`` > 0 and an
  integer ``seed`` in the request body, each verdict's ``improved`` flips when
  ``stable_fraction("verdict_noise", question, seed) < verdict_noise`` and its score moves by ±1 or ±2
  (kept within 1–10), so N votes sent with seeds 0..N-1 disagree in a computable way.
- claims_check: a heading line ``### Claims to Check``; the claims ``[{"id", "claim"}]`` follow in a fence.
  Answer: ``[{"id", "verdict"}]``, "no" iff ``stable_fraction("claim", claim) < false_claim_ratio``.
- claims_split: a heading line ``### Q&A&S to Split``; items ``[{"index", "question", "answer"}]``.
  Answer: ``[{"index", "claims"}]``, the claims being the first 1–3 sentences of each answer.
- annotate: a heading line ``### Q&A&S to Annotate``; items ``[{"index", "question", "answer", ...}]``.
  Answer: ``[{"index", "objects", "skills", "steps"}]``: objects from the nouns of the question, 1–3
  skills and 1–3 steps chosen by hash; an item with an empty question gets empty lists.
- evolve: the text has ``### Given Q&A&S``; the given items are the JSON array in the first ```json fence
  after its LAST occurrence. Answer: a fenced JSON array with one rewritten Q&A&S per given item, each
  answer padded to about ``item_tokens`` tokens when that is set. The rewrites follow what the prompt
  asks (its ``### Objective`` and ``### Object Locations``): no counting or location question for a
  perceptual or reasoning rewrite without boxes, more steps than the given item for a reasoning one,
  lettered options and a lettered answer for multiple choice.
- other: a short plain answer.

Everything is a pure function of the prompt text (and the settings and seed passed in): stable hashes come
from hashlib, never from Python's salted ``hash()``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Kind = Literal["evolve", "judge", "annotate", "claims_split", "claims_check", "other"]
KINDS: tuple[Kind, ...] = ("evolve", "judge", "annotate", "claims_split", "claims_check", "other")

JUDGE_HEADING = "### Original Q&A&S"
REWRITTEN_HEADING = "### Rewritten Q&A&S"
GIVEN_HEADING = "### Given Q&A&S"
ANNOTATE_HEADING = "### Q&A&S to Annotate"
SPLIT_HEADING = "### Q&A&S to Split"
CHECK_HEADING = "### Claims to Check"
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
# Without boxes the perceptual and reasoning prompts forbid counting and location questions: these are
# what the fake rewriter asks instead.
UNBOXED_VERBS = tuple(v for v in VERBS if v not in ("Locate", "Count"))
UNBOXED_FOLLOW_UPS = tuple(f for f in FOLLOW_UPS if "how many" not in f)
OBJECTIVES = (
    ("Fine-grained perceptual evolution", "perceptual"),
    ("Cognitive reasoning evolution", "reasoning"),
    ("Interactive evolution", "interaction"),
)
NO_BOXES = "No object boxes are available"
LOCATIONS_HEADING = "### Object Locations\n"
OBJECTIVE_HEADING = "### Objective\n"
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
ATOMIC_PROPOSITIONS = (
    "Grounding", "Referencing", "Calculating", "OCR", "Existence", "Relationship Description",
    "Context Understanding", "Behaviour Prediction", "Knowledge Integration",
)  # fmt: skip
ANNOTATION_STEPS = ("Grounding_{i}({t})->bbx_{i}", "Referring_{i}(bbx_{i})->tgt_{i}", "Calculate({t})->res_{i}",
                    "OCR_{i}({t})->txt_{i}")  # fmt: skip
PADDING = (
    "Looking again at the {a}, its edge lines up with the {b}, which confirms the first observation.",
    "The light on the {a} falls from the same side as on the {b}, so both belong to the same scene.",
    "Compared with the {b}, the {a} is drawn with finer detail, which rules out the other reading.",
    "Nothing between the {a} and the {b} hides either of them, so the comparison holds.",
)  # fmt: skip
# Words that are not object names, for the annotator's "nouns of the question".
_NOT_NOUN_WORDS = """a an the this that these those there here it its they them their what which who whom
    whose where when why how is are was were be been being do does did can could would should will shall may
    might must has have had of in on at to for from by with about into onto over under between behind near
    next above below and or but not no yes any some each every all many much more most few several other
    another such than then also only very just see seen shown show shows visible appear appears appearing look
    looks looking image picture photo photograph scene describe identify explain tell name count number kind
    type sort part color colour one two three four five six seven eight nine ten first second third left right
    top bottom front back side main different same like likely possible please provide give doing being you
    your we our"""
NOT_NOUNS = frozenset(_NOT_NOUN_WORDS.split()) | frozenset(COLORS)
_WORD = re.compile(r"[A-Za-z]+")
_LETTERED = re.compile(r"(?:^|\s)\(?[Aa][.)]\s.*\s\(?[Bb][.)]\s", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MALFORMED_TEXT = (
    "I am sorry, but I cannot rewrite these questions right now. Please try again later with a different image."
)


@dataclass(frozen=True)
class Settings:
    """The parts of the server configuration that shape answers."""

    reject_ratio: float = 0.0
    score_min: int = 5
    score_max: int = 9
    verdict_noise: float = 0.0
    false_claim_ratio: float = 0.0
    item_tokens: int = 0
    flawed_ratio: float = 0.0
    echo_ratio: float = 0.0


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


IMAGE_TOKENS = 85
_IMAGE_KINDS = frozenset({"image_url", "input_image", "image"})
_IMAGE_MARK = "\ue000"  # a private-use character: image units never equal text


def image_units(part: dict[str, Any]) -> str:
    """An image in the prompt's token stream: 85 tokens (4 characters each) keyed by its URL's hash."""
    value = part.get("image_url", part.get("image"))
    if isinstance(value, dict):
        value = value.get("url")
    key = hash(value) if isinstance(value, str) else hash(repr(value))
    return (_IMAGE_MARK + format(key & 0xFFFF_FFFF_FFFF_FFFF, "016x")) * (IMAGE_TOKENS * 4 // 17)


def _parts_text(content: Any, stream: list[str] | None = None) -> tuple[str, int]:
    """The text of one message content (a string, or a list of parts whose text parts are concatenated)
    and how many images it holds; appends the content's token stream to `stream` when given."""
    if isinstance(content, str):
        if stream is not None:
            stream.append(content)
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts: list[str] = []
    images = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
                if stream is not None:
                    stream.append(text)
        elif kind in _IMAGE_KINDS:
            images += 1
            if stream is not None:
                stream.append(image_units(part))
    return "".join(texts), images


@dataclass(frozen=True)
class PromptInfo:
    """What the server learns from a request's messages."""

    text: str
    has_image: bool
    prompt_chars: int
    images: int
    stream: str = ""  # every message's text with images as 340 characters: the prefix cache's input


def read_messages(messages: list[Any], stream: bool = False) -> PromptInfo:
    """Text of the last user message, image presence and size of the whole conversation (and, if asked,
    its token stream in order)."""
    last_user = ""
    chars = 0
    images = 0
    pieces: list[str] | None = [] if stream else None
    for message in messages:
        if not isinstance(message, dict):
            continue
        text, found = _parts_text(message.get("content"), pieces)
        chars += len(text)
        images += found
        if message.get("role") == "user":
            last_user = text
    joined = "".join(pieces) if pieces else ""
    return PromptInfo(text=last_user, has_image=images > 0, prompt_chars=chars, images=images, stream=joined)


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
    """Which prompt kind ``text`` is: its last known heading line decides (scanned from the end, so only
    the sample's part is read; a last ``### Rewritten Q&A&S`` means judge when the text has an
    ``### Original Q&A&S`` heading line); without one, evolve if ``### Given Q&A&S`` is anywhere."""
    end = len(text)
    while True:
        pos = text.rfind("### ", 0, end)
        if pos < 0:
            break
        end = pos
        if pos and text[pos - 1] != "\n" and text[text.rfind("\n", 0, pos) + 1 : pos].strip(" \t"):
            continue  # not at the start of a line
        for heading, kind in _LAST_HEADINGS:
            stop = pos + len(heading)
            if text.startswith(heading, pos) and (stop == len(text) or not (text[stop].isalnum() or text[stop] == "_")):
                if kind != "judge" or _has_heading_line(text, JUDGE_HEADING):
                    return kind
                break
    return "evolve" if GIVEN_HEADING in text else "other"


_LAST_HEADINGS: tuple[tuple[str, Kind], ...] = (
    (REWRITTEN_HEADING, "judge"),
    (GIVEN_HEADING, "evolve"),
    (CHECK_HEADING, "claims_check"),
    (SPLIT_HEADING, "claims_split"),
    (ANNOTATE_HEADING, "annotate"),
)


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


@dataclass(frozen=True)
class Brief:
    """What an evolution prompt asks, as the fake rewriter reads it (None: the prompt does not say)."""

    operator: str | None = None
    boxes: bool | None = None


def read_brief(text: str) -> Brief:
    """The operator (the line after ``### Objective``) and whether the sample has boxes (the first line after
    the last ``### Object Locations``) of an evolution prompt."""
    locations = text.rfind(LOCATIONS_HEADING)
    boxes = None if locations < 0 else not text.startswith(NO_BOXES, locations + len(LOCATIONS_HEADING))
    objective = text.rfind(OBJECTIVE_HEADING, 0, locations if locations >= 0 else len(text))
    operator = None
    if objective >= 0:
        start = objective + len(OBJECTIVE_HEADING)
        operator = next((op for phrase, op in OBJECTIVES if text.startswith(phrase, start)), None)
    return Brief(operator, boxes)


def rewrite_item(given: Any, seed: str, index: int, item_tokens: int = 0, brief: Brief = Brief()) -> dict[str, Any]:
    """One rewritten Q&A&S: longer than ``given``, with objects, skills and steps, chosen by hash, and
    following the brief: no counting or location question for a perceptual or reasoning rewrite without
    boxes, more steps than the given item for a reasoning one, lettered options for multiple choice; its
    answer padded to ``item_tokens`` tokens (4 characters each) when that is more than it has."""
    b = _draws(seed, index)
    unboxed = brief.boxes is False and brief.operator in ("perceptual", "reasoning")
    verbs, follow_ups = (UNBOXED_VERBS, UNBOXED_FOLLOW_UPS) if unboxed else (VERBS, FOLLOW_UPS)
    verb, color = verbs[b[0] % len(verbs)], COLORS[b[1] % len(COLORS)]
    noun, other = NOUNS[b[2] % len(NOUNS)], NOUNS[b[3] % len(NOUNS)]
    if other == noun:
        other = NOUNS[(b[2] + 1) % len(NOUNS)]
    relation, follow = RELATIONS[b[4] % len(RELATIONS)], follow_ups[b[5] % len(follow_ups)]
    old_q = "" if unboxed else _text_of(given, "question").strip()  # the old one may count or locate
    if ("A." in old_q or "A)" in old_q or "a)" in old_q) and _LETTERED.search(old_q):  # cheap test first
        old_q = ""  # its options would need an answer naming one of them
    old_a = _text_of(given, "answer").strip()
    question = f"{verb} the {color} {noun} {relation} the {other} and {follow}."
    if old_q:
        question += f" Also consider: {old_q}"
    answer = f"The {color} {noun} is {relation} the {other}, which the image shows clearly."
    if old_a:
        answer += f" {old_a}"
    form = FORMATS[b[24] % len(FORMATS)]
    if form == "multi_choice":
        choices = [other, *(n for n in NOUNS[b[25] % 8 :: 7] if n not in (noun, other))][:3]
        right = b[26] % len(choices)
        choices[0], choices[right] = choices[right], choices[0]
        question += f" Which object is the {color} {noun} {relation}? " + " ".join(
            f"{'ABC'[k]}. the {choice}" for k, choice in enumerate(choices)
        )
        answer = f"{'ABC'[right]}. {answer}"
    if item_tokens > 0:
        answer = padded(answer, 4 * item_tokens, noun, other)
    skills = list(dict.fromkeys(SKILLS[b[8 + k] % len(SKILLS)] for k in range(1 + b[6] % 3)))
    target = f"{color} {noun}"
    objects = [target, other]
    if isinstance(given, dict) and isinstance(given.get("objects"), list):
        objects += [o for o in given["objects"] if isinstance(o, str) and o and o not in objects][:2]
    n_steps = 1 + b[7] % 4
    if brief.operator == "reasoning":
        given_steps = given.get("steps") if isinstance(given, dict) else None
        n_steps = (len(given_steps) if isinstance(given_steps, list) else 0) + 1 + b[7] % 2
    steps = []
    for k in range(n_steps):
        template = MANIPULATIONS[b[(16 + k) % len(b)] % len(MANIPULATIONS)]
        thing = target if k % 2 == 0 else other
        manipulation = None if template is None else template.format(i=k + 1, t=thing)
        steps.append({"manipulation": manipulation, "description": f"Find the {thing} and check its position."})
    return {
        "image_position": _text_of(given, "image_position") or "single",
        "objects": objects,
        "skills": skills,
        "format": form,
        "question": question,
        "steps": steps,
        "answer": answer,
    }


def flawed(item: dict[str, Any], given: Any, seed: str, index: int, settings: Settings) -> dict[str, Any]:
    """A rewrite made worse on purpose, for tests of the stages after evolve: with `echo_ratio` it nearly
    repeats the given question (a near duplicate); with `flawed_ratio` it refers to "the original question"
    (a rule violation). Chosen by a stable hash of (seed, index)."""
    draw = stable_fraction("flawed", seed, index)
    old_q = _text_of(given, "question").strip()
    if old_q and draw < settings.echo_ratio:
        return {**item, "question": f"{old_q} Explain."}
    if draw < settings.echo_ratio + settings.flawed_ratio:
        return {**item, "question": item["question"] + " Answer it as the original question asked."}
    return item


def padded(text: str, chars: int, a: str, b: str) -> str:
    """``text`` lengthened with filler sentences about objects a and b to exactly ``chars`` characters
    (unchanged when it is already that long)."""
    if len(text) >= chars:
        return text
    pieces = [text]
    size = len(text)
    k = 0
    while size < chars:
        sentence = " " + PADDING[k % len(PADDING)].format(a=a, b=b)
        pieces.append(sentence)
        size += len(sentence)
        k += 1
    return "".join(pieces)[:chars]


def judge_item(item: Any, index: int, settings: Settings, seed: int | None = None) -> dict[str, Any]:
    """One verdict: rejected when the stable hash of the question falls below ``reject_ratio``; with
    ``verdict_noise`` and a request ``seed``, flipped and re-scored per (question, seed)."""
    question = _text_of(item, "question")
    rejected = stable_fraction("judge", question) < settings.reject_ratio
    low, high = sorted((settings.score_min, settings.score_max))
    b = _draws("score", question, index)
    score = low + int.from_bytes(b[:8], "big") % (high - low + 1)
    if seed is not None and settings.verdict_noise > 0:
        if stable_fraction("verdict_noise", question, seed) < settings.verdict_noise:
            rejected = not rejected
        noise = _draws("verdict_noise_score", question, seed)
        step = 1 + noise[0] % 2
        score = min(10, max(1, score + (step if noise[1] % 2 else -step)))
    reasons = REASONS_NO if rejected else REASONS_YES
    return {
        "improved": "no" if rejected else "yes",
        "score": score,
        "reason": reasons[b[8] % len(reasons)],
    }


def _item_number(item: Any, key: str, position: int) -> int:
    """The number an item carries under ``key`` (an int), else its 1-based position."""
    value = item.get(key) if isinstance(item, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else position + 1


def question_nouns(question: str, limit: int = 3) -> list[str]:
    """The first distinct words of a question that are neither function words, colours nor past
    participles ("parked"): the annotator's objects."""
    found: list[str] = []
    for word in _WORD.findall(question.lower()):
        participle = len(word) > 4 and word.endswith("ed")
        if len(word) >= 3 and not participle and word not in NOT_NOUNS and word not in found:
            found.append(word)
            if len(found) == limit:
                break
    return found


def annotate_item(item: Any, position: int) -> dict[str, Any]:
    """One annotation: objects from the question's nouns, 1–3 skills and 1–3 steps chosen by hash; an
    item without a question gets empty lists (the model "could not annotate" it)."""
    number = _item_number(item, "index", position)
    question = _text_of(item, "question").strip()
    if not question:
        return {"index": number, "objects": [], "skills": [], "steps": []}
    objects = question_nouns(question) or ["image"]
    b = _draws("annotate", question, position)
    skills = list(dict.fromkeys(ATOMIC_PROPOSITIONS[b[2 + k] % len(ATOMIC_PROPOSITIONS)] for k in range(1 + b[0] % 3)))
    steps = []
    for k in range(1 + b[1] % 3):
        thing = objects[k % len(objects)]
        manipulation = ANNOTATION_STEPS[b[8 + k] % len(ANNOTATION_STEPS)].format(i=k + 1, t=thing)
        steps.append({"manipulation": manipulation, "description": f"Look at the {thing} to answer."})
    return {"index": number, "objects": objects, "skills": skills, "steps": steps}


def answer_claims(answer_text: str) -> list[str]:
    """The claims an answer asserts, as the fake splitter sees them: its first 1–3 sentences."""
    return [s.strip() for s in _SENTENCE_END.split(answer_text.strip()) if s.strip()][:3]


def split_item(item: Any, position: int) -> dict[str, Any]:
    """One item's claims: the first 1–3 sentences of its answer."""
    return {"index": _item_number(item, "index", position), "claims": answer_claims(_text_of(item, "answer"))}


def check_claim(item: Any, position: int, settings: Settings) -> dict[str, Any]:
    """One claim's verdict: "no" iff ``stable_fraction("claim", claim) < false_claim_ratio``; "unsure"
    for a claim without text."""
    claim = _text_of(item, "claim")
    if not claim.strip():
        verdict = "unsure"
    else:
        verdict = "no" if stable_fraction("claim", claim) < settings.false_claim_ratio else "yes"
    return {"id": _item_number(item, "id", position), "verdict": verdict}


@dataclass(frozen=True)
class Answer:
    """The model's answer: its text and what the server learnt doing it."""

    kind: Kind
    content: str
    n_items: int | None


def answer(text: str, settings: Settings, seed: int | None = None) -> Answer:
    """The deterministic answer to the prompt ``text`` (``seed``: the request body's integer seed)."""
    kind = classify(text)
    if kind == "other":
        snippet = " ".join(text.split()[:12])
        return Answer(kind, f"This is a short answer from the fake model about: {snippet}", None)
    heading = _ITEMS_HEADING[kind]
    items = items_after(text, heading)
    if items is None:
        return Answer(kind, f"fakeserver: no ```json array after the last {heading!r}.", None)
    if kind == "judge":
        out = [judge_item(it, i, settings, seed) for i, it in enumerate(items)]
    elif kind == "evolve":
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        brief = read_brief(text)
        out = [flawed(rewrite_item(it, digest, i, settings.item_tokens, brief), it, digest, i, settings)
               for i, it in enumerate(items)]  # fmt: skip
    elif kind == "annotate":
        out = [annotate_item(it, i) for i, it in enumerate(items)]
    elif kind == "claims_split":
        out = [split_item(it, i) for i, it in enumerate(items)]
    else:
        out = [check_claim(it, i, settings) for i, it in enumerate(items)]
    return Answer(kind, fenced(out), len(items))


_ITEMS_HEADING: dict[Kind, str] = {
    "judge": REWRITTEN_HEADING,
    "evolve": GIVEN_HEADING,
    "annotate": ANNOTATE_HEADING,
    "claims_split": SPLIT_HEADING,
    "claims_check": CHECK_HEADING,
}
