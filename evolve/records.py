"""The canonical record (Sample of QAS items), the three formats it is read from, and the JSON reader.

Formats, detected per record:
- ``mmevol``: MMEvol native (``conversations_v0`` … ``conversations_vN``, ``caption``, ``det``);
- ``llava``: ``conversations`` of ``from``/``value`` turns, ``<image>`` in the first human turn;
- ``sharegpt``: ``messages`` of ``role``/``content`` (or LLaMA-Factory's ``conversations`` with an
  ``images`` list).
A line that cannot be a record (invalid JSON or UTF-8, nesting deeper than MAX_NESTING, a number Python will
not read, a lone surrogate) is a Rejected with file:line and a reason, never an exception. Seeds of every kind
(parquet, datasets folders, manifests) are read by `evolve.sources`; exports are written by `evolve.export`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evolve.errors import InputError, RecordError
from evolve.idset import CompactIdSet

Format = Literal["mmevol", "llava", "sharegpt"]
FORMATS: tuple[Format, ...] = ("mmevol", "llava", "sharegpt")
MAX_RECORD_BYTES = 4 * 1024 * 1024
MAX_NESTING = 100
"""Deepest nesting of lists and objects accepted in a record (the JSON writers stop near 255)."""
_SURROGATE = re.compile("[\ud800-\udfff]")
_IMAGE_TOKEN = re.compile(r"\s*<image>\s*")
_NATIVE_KEY = re.compile(r"^conversations_v(\d+)$")


def _as_text(value: Any) -> Any:
    """Join list- or dict-valued text fields into one string (models sometimes answer that way)."""
    if isinstance(value, list):
        return "\n".join(str(_as_text(v)) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_as_text(v)}" for k, v in value.items())
    return value


class Step(BaseModel):
    """One reasoning step: a pseudo-function manipulation (or None) and what it does."""

    model_config = ConfigDict(extra="ignore")

    manipulation: str | None = None
    description: str = ""

    @field_validator("manipulation", "description", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return None if value is None else str(_as_text(value))


class Vote(BaseModel):
    """One judge vote on an item (with --judge-votes N the item's verdict is their majority)."""

    model_config = ConfigDict(extra="ignore")

    improved: bool
    score: float


class Claim(BaseModel):
    """A yes/no claim an answer makes about the image, and what the check with the image said (None: unsure)."""

    model_config = ConfigDict(extra="ignore")

    claim: str
    verdict: bool | None = None


def _unset(value: Any) -> bool:
    return value is None


class QAS(BaseModel):
    """One question-answer-steps item, with the judge's verdict once judged.

    The optional fields after `reason` are only written when set: `source` (the position of the parent item it
    rewrites), `violations` (rule checks it failed), `votes`, `claims` (claim verification) and `twin` (the
    question it nearly repeats).
    """

    model_config = ConfigDict(extra="ignore")

    question: str
    answer: str
    objects: list[str] = Field(default_factory=list)
    skills: list[str] = Field(default_factory=list)
    steps: list[Step] = Field(default_factory=list)
    format: str = "Norm"
    image_position: str = "single"
    improved: bool | None = None
    score: float | None = None
    reason: str | None = None
    source: int | None = Field(default=None, exclude_if=_unset)
    violations: list[str] | None = Field(default=None, exclude_if=_unset)
    votes: list[Vote] | None = Field(default=None, exclude_if=_unset)
    claims: list[Claim] | None = Field(default=None, exclude_if=_unset)
    twin: str | None = Field(default=None, exclude_if=_unset)

    @field_validator("answer", mode="before")
    @classmethod
    def _answer_text(cls, value: Any) -> Any:
        return _as_text(value)

    @field_validator("objects", "skills", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value.strip() else []
        if isinstance(value, list):
            return [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value]
        return value

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, list):
            return [{"description": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("format", "image_position", mode="before")
    @classmethod
    def _label(cls, value: Any) -> Any:
        return "Norm" if value is None else value

    def survives(self, min_score: float) -> bool:
        """The keep rule: the judge said improved, with a score of at least min_score."""
        return bool(self.improved) and (self.score or 0.0) >= min_score

    def core(self) -> dict[str, Any]:
        """The seven Q&A&S fields a prompt shows (no verdict: the score must not leak into prompts)."""
        return self.model_dump(include=_CORE_FIELDS)


_CORE_FIELDS = {"image_position", "objects", "skills", "format", "question", "steps", "answer"}


class Box(BaseModel):
    """An object in the image: its label and box (x1, y1, x2, y2) in 0–1 coordinates."""

    model_config = ConfigDict(extra="ignore")

    label: str
    bbox: tuple[float, float, float, float]


class Sample(BaseModel):
    """One image with its Q&A&S items and where it came from."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    image: str | None = None
    caption: str | None = None
    objects: list[Box] = Field(default_factory=list)
    qa: list[QAS] = Field(min_length=1)
    round: int = 0
    operator: str | None = None
    parent_id: str | None = None
    seed_id: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        if not self.seed_id:
            self.seed_id = self.id


Shape = Literal["mmevol", "llava", "sharegpt", "qa-columns"]
"""The shape a record was read in: one of the three formats, or plain question/answer columns of a table."""


@dataclass(frozen=True)
class Loaded:
    """A record read from a seed source, with the shape it was detected as and where it stood.

    `base` is the folder its relative image path starts from (the seed file's folder); `stored_image` is True
    when its image arrived as bytes and `sample.image` is the absolute path of the copy in the image store.
    `source` and `index` name the seed input (file or folder) it came from and that input's place in the list.
    """

    sample: Sample
    format: Shape
    where: str
    base: Path | None = None
    stored_image: bool = False
    source: Path | None = None
    index: int = 0


@dataclass(frozen=True)
class Rejected:
    """A line that could not be read; reported, counted and skipped (or fatal with --strict)."""

    where: str
    reason: str
    source: Path | None = None
    index: int = 0


# --------------------------------------------------------------------------- detection and conversion


def detect_format(raw: dict[str, Any]) -> Format:
    """Tell which of the three formats a decoded record is in."""
    if any(_NATIVE_KEY.match(key) for key in raw):
        return "mmevol"
    if isinstance(raw.get("messages"), list):
        return "sharegpt"
    if isinstance(raw.get("conversations"), list):
        return "sharegpt" if "images" in raw and "image" not in raw else "llava"
    if {"qa", "id"} <= raw.keys():
        return "mmevol"
    raise ValueError("not a known record: expected conversations_v0, conversations or messages")


def known_format(raw: dict[str, Any]) -> Format | None:
    """The format of a decoded record, or None when it is none of the three."""
    try:
        return detect_format(raw)
    except ValueError:
        return None


def _caption_text(caption: Any) -> str | None:
    if isinstance(caption, str):
        return caption or None
    if isinstance(caption, list):
        answers = [t.get("value") for t in caption if isinstance(t, dict) and t.get("from") == "gpt"]
        return str(answers[-1]) if answers else None
    if caption is None:
        return None
    raise ValueError("caption must be a string, a list of turns or []")


def _pair_turns(turns: list[tuple[Any, Any]], where: str) -> list[dict[str, Any]]:
    """Pair user/assistant turns into question/answer dicts, dropping system turns."""
    items: list[dict[str, Any]] = []
    question: str | None = None
    for role, content in turns:
        text = _turn_text(content)
        if role in ("human", "user"):
            question = _IMAGE_TOKEN.sub(" ", text).strip()
        elif role in ("gpt", "assistant"):
            if question is None:
                raise ValueError(f"an answer turn with no question before it ({where})")
            items.append({"question": question, "answer": text})
            question = None
        elif role != "system":
            raise ValueError(f"unknown turn role {role!r}")
    return items


def _turn_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI-style content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise ValueError("a turn's content must be a string")


def _from_native(raw: dict[str, Any]) -> dict[str, Any]:
    versions = sorted((int(m.group(1)), key) for key in raw if (m := _NATIVE_KEY.match(key)) is not None)
    qa: Any = []
    for _, key in reversed(versions):
        value = raw[key]
        if not isinstance(value, list):
            raise ValueError(f"{key} must be a list of Q&A&S items")
        if value:
            qa = value
            break
    if "qa" in raw and not versions:
        qa = raw["qa"]
    det = raw.get("det") or []
    if not isinstance(det, list):
        raise ValueError("det must be a list of {label, bbox}")
    known = {"id", "image", "caption", "det", "qa", "hash_id", *(k for _, k in versions)}
    sample_id = raw.get("hash_id") or raw.get("id")
    meta = {k: v for k, v in raw.items() if k not in known}
    if raw.get("hash_id") and raw.get("id") is not None:
        meta["source_id"] = raw["id"]
    return {
        "id": sample_id,
        "image": raw.get("image") or None,
        "caption": _caption_text(raw.get("caption")),
        "objects": det,
        "qa": qa,
        "meta": meta,
    }


def _from_llava(raw: dict[str, Any], where: str) -> dict[str, Any]:
    turns = [(t.get("from"), t.get("value")) for t in raw["conversations"] if isinstance(t, dict)]
    if len(turns) != len(raw["conversations"]):
        raise ValueError("conversations must be a list of {from, value} turns")
    meta = {k: v for k, v in raw.items() if k not in {"id", "image", "conversations"}}
    return {
        "id": raw.get("id"),
        "image": raw.get("image") or None,
        "qa": _pair_turns(turns, where),
        "meta": meta,
    }


def _from_sharegpt(raw: dict[str, Any], where: str) -> dict[str, Any]:
    if "messages" in raw:
        messages = raw["messages"]
        keys = ("role", "content")
    else:
        messages = raw["conversations"]
        keys = ("from", "value")
    if not all(isinstance(m, dict) for m in messages):
        raise ValueError("messages must be a list of {role, content} turns")
    images = raw.get("images") or []
    if not isinstance(images, list):
        raise ValueError("images must be a list of paths")
    meta = {k: v for k, v in raw.items() if k not in {"id", "images", "messages", "conversations"}}
    if len(images) > 1:
        meta["extra_images"] = images[1:]
    return {
        "id": raw.get("id"),
        "image": images[0] if images else None,
        "qa": _pair_turns([(m.get(keys[0]), m.get(keys[1])) for m in messages], where),
        "meta": meta,
    }


def _is_canonical(raw: dict[str, Any]) -> bool:
    return "qa" in raw and "seed_id" in raw


def parse_record(raw: Any, where: str, fmt: Format | None = None) -> tuple[Sample, Format]:
    """Turn one decoded JSON value into a Sample; raises RecordError with a one-line reason."""
    if not isinstance(raw, dict):
        raise RecordError(where, f"expected a JSON object, got {type(raw).__name__}")
    if _is_canonical(raw) and fmt in (None, "mmevol"):
        return sample_from_fields(raw, where), "mmevol"
    found: Format | None = fmt
    try:
        found = fmt or detect_format(raw)
        if found == "mmevol":
            fields = _from_native(raw)
        elif found == "llava":
            fields = _from_llava(raw, where)
        else:
            fields = _from_sharegpt(raw, where)
    except RecursionError:
        raise RecordError(where, f"nested more than {MAX_NESTING} levels deep") from None
    except KeyError as exc:  # a field the format needs is missing (str(exc) would be just its quoted name)
        raise RecordError(where, f"no {exc.args[0]!r} field, which the {found} format needs") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise RecordError(where, str(exc) or type(exc).__name__) from exc
    return sample_from_fields(fields, where), found


def sample_from_fields(fields: dict[str, Any], where: str) -> Sample:
    """Validate Sample fields (id defaulting to the place, e.g. `seeds.jsonl:3`); RecordError with one line."""
    try:
        if fields.get("id") in (None, ""):
            fields["id"] = where.rsplit("/", 1)[-1]
        elif not isinstance(fields["id"], str):
            fields["id"] = str(fields["id"])
        if not fields["qa"]:
            raise ValueError("no Q&A items")
        _check_value(where, fields.get("meta"), strings=False)
        return Sample.model_validate(fields)
    except ValidationError as exc:
        raise RecordError(where, _compact(exc)) from exc
    except RecursionError:
        raise RecordError(where, f"nested more than {MAX_NESTING} levels deep") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RecordError(where, str(exc) or type(exc).__name__) from exc


def _compact(exc: ValidationError) -> str:
    """One line out of a pydantic error: the first problem and how many more."""
    errors = exc.errors()
    first = errors[0]
    place = ".".join(str(p) for p in first["loc"]) or "record"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{place}: {first['msg']}{more}"


# --------------------------------------------------------------------------- reading files


READ_BUFFER = 1 << 20
"""Bytes read at a time from a JSONL file. Lines of records are kilobytes long; with the default 8 KiB buffer,
iterating over a file's lines cost four times as much CPU (0.6 s vs 0.15 s for 577 MB)."""


def open_lines(path: Path) -> BinaryIO:
    """`path` opened for reading line by line (binary, a large buffer)."""
    return path.open("rb", buffering=READ_BUFFER)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open_lines(path) as fp:
        yield from enumerate(fp, start=1)


def _decode(where: str, raw: bytes, max_bytes: int | None) -> Any:
    if max_bytes is not None and len(raw) > max_bytes:
        size = len(raw) / 1024 / 1024
        raise RecordError(where, f"line is {size:.1f} MB, over the {max_bytes // 1024 // 1024} MB limit")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # the stdlib decides (NaN, huge integers, lone surrogates) and words the error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(where, f"not UTF-8 text (byte {exc.start})") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if not text.endswith("\n"):
            raise RecordError(where, f"truncated or invalid JSON: {exc.msg}") from exc
        raise RecordError(where, f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
    except RecursionError:
        raise RecordError(where, f"nested more than {MAX_NESTING} levels deep") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise RecordError(where, f"unusable number: {exc}") from None
    _check_value(where, value, strings=True)
    return value


def _check_value(where: str, value: Any, *, strings: bool) -> None:
    """Refuse what the writers cannot write: nesting deeper than MAX_NESTING, and (with `strings`) a lone
    surrogate in a string (JSON can spell one as \\ud800, UTF-8 cannot encode it)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
            if strings:
                children = [*item.keys(), *children]
        elif isinstance(item, list):
            children = item
        else:
            found = _SURROGATE.search(item) if strings and isinstance(item, str) and not item.isascii() else None
            if found is not None:
                code = f"\\u{ord(found.group()):04x}"
                raise RecordError(where, f"a string holds a lone surrogate ({code}): not valid Unicode text")
            continue
        if depth > MAX_NESTING:
            raise RecordError(where, f"nested more than {MAX_NESTING} levels deep")
        stack.extend((child, depth + 1) for child in children)


def _first_byte(path: Path) -> bytes:
    with path.open("rb") as fp:
        while chunk := fp.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _json_array(path: Path) -> list[Any]:
    data = path.read_bytes()
    try:
        values = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            values = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a valid JSON array ({exc})") from exc
        except RecursionError:
            raise InputError(f"{path}: nested more than {MAX_NESTING} levels deep") from None
        except ValueError as exc:
            raise InputError(f"{path}: unusable number ({exc})") from None
    if not isinstance(values, list):
        raise InputError(f"{path}: expected a JSON array of records")
    return values


def iter_raw(path: Path, max_bytes: int | None = MAX_RECORD_BYTES) -> Iterator[tuple[str, Any] | Rejected]:
    """Yield (where, decoded JSON) per record of a JSONL file or a JSON array, or a Rejected."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    first = _first_byte(path)
    if first == b"":
        raise InputError(f"{path}: empty file, no records")
    if first == b"[":
        for index, value in enumerate(_json_array(path), start=1):
            where = f"{path}:item {index}"
            try:
                _check_value(where, value, strings=True)
            except RecordError as exc:
                yield Rejected(exc.where, exc.reason)
                continue
            yield where, value
        return
    for lineno, raw in _lines(path):
        where = f"{path}:{lineno}"
        if not raw.strip():
            continue
        try:
            yield where, _decode(where, raw, max_bytes)
        except RecordError as exc:
            yield Rejected(exc.where, exc.reason)


def read_samples(
    path: Path | str,
    *,
    fmt: Format | None = None,
    max_bytes: int | None = MAX_RECORD_BYTES,
) -> Iterator[Loaded | Rejected]:
    """Stream the records of one JSON/JSONL file as Loaded or Rejected, in file order; ids made unique per file.

    Seeds of a run are read by `evolve.sources.read_seed_files` (every format, ids unique across files);
    this reads one file of records, such as evolve's own output (`max_bytes=None`: no line size limit).
    """
    path = Path(path)
    seen = CompactIdSet()
    for item in iter_raw(path, max_bytes):
        if isinstance(item, Rejected):
            yield item
            continue
        where, raw = item
        try:
            sample, found = parse_record(raw, where, fmt)
        except RecordError as exc:
            yield Rejected(exc.where, exc.reason)
            continue
        unique_id(sample, seen)
        yield Loaded(sample, found, where, base=path.parent, source=path)


def unique_id(sample: Sample, seen: CompactIdSet) -> None:
    """Rename `sample` to `id~2`, `id~3` ... when its id was seen already (deterministic in reading order)."""
    if seen.add_new(sample.id):
        return
    base, n = sample.id, 2
    while not seen.add_new(f"{base}~{n}"):
        n += 1
    sample.id = sample.seed_id = f"{base}~{n}"


def load_samples(path: Path | str, *, strict: bool = False) -> Iterator[Sample]:
    """Only the good samples of a file; a bad line raises with --strict, else is skipped silently."""
    for item in read_samples(path):
        if isinstance(item, Rejected):
            if strict:
                raise RecordError(item.where, item.reason)
            continue
        yield item.sample


# --------------------------------------------------------------------------- writing and export


def write_samples(path: Path, samples: Iterable[Sample]) -> int:
    """Write samples as canonical JSONL (replacing the file); returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as fp:
        for sample in samples:
            fp.write(sample.model_dump_json() + "\n")
            count += 1
    return count


DropStage = Literal["input", "annotate", "evolve", "check", "judge", "eliminate", "verify", "dedup"]
"""Where something was dropped: a seed line (input), a failed call or unreadable answer (annotate, evolve,
judge), a rule (check), the judge's verdict (eliminate), a contradicted claim (verify), a near twin (dedup)."""


class Drop(BaseModel):
    """Why something did not survive: a rejected seed line, a failed call, an unreadable answer, or
    rewrites the judge did not accept. Written to `dropped.jsonl` (or `rejected.jsonl` for seeds)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    seed_id: str
    round: int
    stage: DropStage
    reason: str
    operator: str | None = None
    raw: str | None = None
    sample: Sample | None = None


class Outcome(BaseModel):
    """The last line a sample-round writes (round-N/outcomes.jsonl): it marks the sample-round complete and holds
    its counts, so a resume knows what is done and run.json's numbers come from these lines alone.

    `retry`: a call failed (endpoint or image): the next invocation redoes the sample-round. `unreadable`: an
    answer could not be read (final, unless `--reask-unreadable`, which asks again with `attempt` + 1).
    """

    model_config = ConfigDict(extra="ignore")

    seed_id: str
    round: int
    operator: str | None = None
    attempt: int = 0
    kept: bool = False
    failed: str | None = None
    """The stage whose call failed or whose answer could not be read, if any."""
    retry: bool = False
    unreadable: bool = False
    items: dict[str, int] = Field(default_factory=dict)
    """Item counts: parent, evolved, judged, improved, kept; and dropped per stage (check, eliminate, ...)."""
    rules: dict[str, int] = Field(default_factory=dict)
    """Rule-check violations by rule."""
    answers: dict[str, int] = Field(default_factory=dict)
    """Answer counts: calls, cut_off (finish_reason length), reasked items, lost items."""
    scores: list[float] = Field(default_factory=list)
    """Scores of the items kept (the mean accepted score)."""
    agreement: list[float] = Field(default_factory=list)
    """Per judged item, the share of votes agreeing with the majority (with --judge-votes > 1)."""
    reasons: list[str] = Field(default_factory=list)
    """The reasons of its drops, without particulars (counted in run.json)."""
    usage: dict[str, int] = Field(default_factory=dict)
