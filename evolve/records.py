"""The canonical record (Sample of QAS items) and the three seed formats it is read from and exported to.

Formats, detected per record:
- ``mmevol``: MMEvol native (``conversations_v0`` … ``conversations_vN``, ``caption``, ``det``);
- ``llava``: ``conversations`` of ``from``/``value`` turns, ``<image>`` in the first human turn;
- ``sharegpt``: ``messages`` of ``role``/``content`` (or LLaMA-Factory's ``conversations`` with an
  ``images`` list).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evolve.errors import InputError, RecordError
from evolve.idset import CompactIdSet

Format = Literal["mmevol", "llava", "sharegpt"]
FORMATS: tuple[Format, ...] = ("mmevol", "llava", "sharegpt")
MAX_RECORD_BYTES = 4 * 1024 * 1024
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


class QAS(BaseModel):
    """One question-answer-steps item, with the judge's verdict once judged."""

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

    def to_json(self) -> str:
        """The canonical one-line JSON form written to every JSONL file."""
        return self.model_dump_json(exclude_none=False)


@dataclass(frozen=True)
class Loaded:
    """A record read from a file, with the format it was detected as and where it stood."""

    sample: Sample
    format: Format
    where: str


@dataclass(frozen=True)
class Rejected:
    """A line that could not be read; reported, counted and skipped (or fatal with --strict)."""

    where: str
    reason: str


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
    try:
        if _is_canonical(raw) and fmt in (None, "mmevol"):
            return Sample.model_validate(raw), "mmevol"
        found = fmt or detect_format(raw)
        if found == "mmevol":
            fields = _from_native(raw)
        elif found == "llava":
            fields = _from_llava(raw, where)
        else:
            fields = _from_sharegpt(raw, where)
        if fields.get("id") in (None, ""):
            fields["id"] = where.rsplit("/", 1)[-1]
        elif not isinstance(fields["id"], str):
            fields["id"] = str(fields["id"])
        if not fields["qa"]:
            raise ValueError("no Q&A items")
        return Sample.model_validate(fields), found
    except ValidationError as exc:
        raise RecordError(where, _compact(exc)) from exc
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


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fp:
        yield from enumerate(fp, start=1)


def _decode(where: str, raw: bytes, max_bytes: int) -> Any:
    if len(raw) > max_bytes:
        size = len(raw) / 1024 / 1024
        raise RecordError(where, f"line is {size:.1f} MB, over the {max_bytes // 1024 // 1024} MB limit")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # the stdlib decides (NaN, huge integers) and words the error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(where, f"not UTF-8 text (byte {exc.start})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if not text.endswith("\n"):
            raise RecordError(where, f"truncated or invalid JSON: {exc.msg}") from exc
        raise RecordError(where, f"invalid JSON: {exc.msg} at column {exc.colno}") from exc


def _first_byte(path: Path) -> bytes:
    with path.open("rb") as fp:
        while chunk := fp.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""


def iter_raw(path: Path, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[tuple[str, Any] | Rejected]:
    """Yield (where, decoded JSON) per record of a JSONL file or a JSON array, or a Rejected."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    first = _first_byte(path)
    if first == b"":
        raise InputError(f"{path}: empty file, no records")
    if first == b"[":
        try:
            values = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a valid JSON array ({exc})") from exc
        if not isinstance(values, list):
            raise InputError(f"{path}: expected a JSON array of records")
        for index, value in enumerate(values, start=1):
            yield f"{path}:item {index}", value
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
    max_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[Loaded | Rejected]:
    """Stream the records of one file as Loaded or Rejected, in file order; ids made unique per file."""
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
        if not seen.add_new(sample.id):
            base, n = sample.id, 2
            while not seen.add_new(f"{base}~{n}"):
                n += 1
            sample.id = sample.seed_id = f"{base}~{n}"
        yield Loaded(sample, found, where)


def load_samples(path: Path | str, *, strict: bool = False) -> Iterator[Sample]:
    """Only the good samples of a file; a bad line raises with --strict, else is skipped silently."""
    for item in read_samples(path):
        if isinstance(item, Rejected):
            if strict:
                raise RecordError(item.where, item.reason)
            continue
        yield item.sample


# --------------------------------------------------------------------------- writing and export


class JsonlWriter:
    """Append canonical JSON lines to a file, flushing after each record."""

    def __init__(self, path: Path, mode: str = "a") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fp: IO[str] = path.open(mode, encoding="utf-8")

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        """Write one record as one line and flush it to the OS."""
        if isinstance(record, BaseModel):
            line = record.model_dump_json()
        else:
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        self._fp.write(line + "\n")
        self._fp.flush()

    def close(self) -> None:
        """Close the file."""
        self._fp.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_samples(path: Path, samples: Iterable[Sample]) -> int:
    """Write samples as canonical JSONL (replacing the file); returns how many."""
    count = 0
    with JsonlWriter(path, mode="w") as writer:
        for sample in samples:
            writer.write(sample)
            count += 1
    return count


def _dialogue(sample: Sample, image_token: str) -> Iterator[tuple[str, str]]:
    """(question, answer) turns, the image token before the first question when there is an image."""
    for index, item in enumerate(sample.qa):
        prefix = image_token if index == 0 and sample.image else ""
        yield prefix + item.question, item.answer


def to_llava(sample: Sample) -> dict[str, Any]:
    """A LLaVA training record: ``<image>`` on the first human turn when there is an image."""
    turns = [
        turn
        for question, answer in _dialogue(sample, "<image>\n")
        for turn in ({"from": "human", "value": question}, {"from": "gpt", "value": answer})
    ]
    record: dict[str, Any] = {"id": sample.id, "conversations": turns}
    if sample.image:
        record["image"] = sample.image
    return record


def to_sharegpt(sample: Sample) -> dict[str, Any]:
    """A ShareGPT record as LLaMA-Factory reads it: ``messages`` and an ``images`` list."""
    messages = [
        turn
        for question, answer in _dialogue(sample, "<image>")
        for turn in ({"role": "user", "content": question}, {"role": "assistant", "content": answer})
    ]
    return {"id": sample.id, "messages": messages, "images": [sample.image] if sample.image else []}


def to_mmevol(sample: Sample) -> dict[str, Any]:
    """The canonical record itself, as a dict."""
    return sample.model_dump()


EXPORTERS = {"llava": to_llava, "sharegpt": to_sharegpt, "mmevol": to_mmevol}


Stage = Literal["input", "evolve", "judge", "eliminate"]


class Drop(BaseModel):
    """Why something did not survive: a rejected seed line, a failed call, an unreadable answer, or
    rewrites the judge did not accept. Written to `dropped.jsonl` (or `rejected.jsonl` for seeds)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    seed_id: str
    round: int
    stage: Stage
    reason: str
    operator: str | None = None
    raw: str | None = None
    sample: Sample | None = None
