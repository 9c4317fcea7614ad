"""Rows of tables (parquet, arrow, CSV, JSON manifests) as records: which column plays which part, and how
image values become paths.

`--columns image=img,question=q,answer=a` names the columns; a part not named is found under its usual
names (`DEFAULT_NAMES`). A row is read as one of three things: a record in a known format (MMEvol native,
LLaVA or ShareGPT columns), a conversation column (LLaVA `from`/`value`, ShareGPT `role`/`content`, or
`user`/`assistant` turns), or plain question/answer columns. Image values may be path strings, Hugging Face
`Image` structs (`{"bytes", "path"}`), raw bytes, or lists of these (the first is the sample's image).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import orjson

from evolve.errors import RecordError, UsageError
from evolve.records import Format, Sample, Shape, known_format, parse_record, sample_from_fields
from evolve.sources.imagestore import ImageStore

PARTS = ("image", "question", "answer", "conversations", "id", "caption")
DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "image": ("image", "images", "image_path", "image_file", "img", "file_name", "filename", "path"),
    "question": ("question", "query", "prompt", "instruction"),
    "answer": ("answer", "response", "output", "completion"),
    "conversations": ("conversations", "messages", "conversation", "texts"),
    "id": ("id", "sample_id", "question_id", "uid"),
    "caption": ("caption",),
}
"""Column names tried, in order, for each part a `--columns` mapping does not name."""


@dataclass(frozen=True)
class ColumnMap:
    """The columns a user named for each part (`--columns`); the rest are found by their usual names."""

    named: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> ColumnMap:
        """Read `image=img,question=q,answer=a`; UsageError naming the bad entry."""
        named: dict[str, str] = {}
        for entry in (text or "").split(","):
            if not entry.strip():
                continue
            part, sep, column = (s.strip() for s in entry.partition("="))
            if not sep or not column:
                raise UsageError(f"--columns: {entry.strip()!r} is not part=column")
            if part not in PARTS:
                raise UsageError(f"--columns: unknown part {part!r}; expected {', '.join(PARTS)}")
            named[part] = column
        return cls(named)

    def resolve(self, names: Collection[str], where: str) -> Columns:
        """Pick the column of each part among `names` (a table's columns); RecordError if a named one is absent."""
        chosen: dict[str, str | None] = {}
        for part in PARTS:
            if part in self.named:
                if self.named[part] not in names:
                    listed = ", ".join(sorted(names)[:20])
                    raise RecordError(where, f"--columns {part}={self.named[part]}: no such column ({listed})")
                chosen[part] = self.named[part]
            else:
                chosen[part] = next((name for name in DEFAULT_NAMES[part] if name in names), None)
        return Columns(**chosen, explicit=frozenset(self.named))


@dataclass(frozen=True)
class Columns:
    """The column of each part in one table (None: absent), and which parts the user named."""

    image: str | None
    question: str | None
    answer: str | None
    conversations: str | None
    id: str | None
    caption: str | None
    explicit: frozenset[str] = frozenset()

    def used(self) -> set[str]:
        """The columns that play a part (the others go to the sample's meta when they are plain values)."""
        return {c for c in (self.image, self.question, self.answer, self.conversations, self.id, self.caption) if c}

    def remaps(self) -> bool:
        """True when the user named the text parts, so a row is read through the mapping, not as a format."""
        return bool(self.explicit & {"question", "answer", "conversations"})


@dataclass(frozen=True)
class RowSample:
    """A sample read from a row: its shape and whether its image was written to the image store."""

    sample: Sample
    shape: Shape
    stored_image: bool


def sample_from_row(
    row: dict[str, Any], columns: Columns, store: ImageStore | None, where: str, fmt: Format | None = None
) -> RowSample:
    """Read one table row as a sample (`fmt` forces the format of conversation rows); raises RecordError."""
    try:
        image, extra_images, stored = _images(row.get(columns.image) if columns.image else None, store)
    except ValueError as exc:
        raise RecordError(where, f"column {columns.image!r}: {exc}") from exc
    by_columns = bool(columns.explicit & {"question", "answer"} and columns.question and columns.answer)
    turns = None if by_columns or not columns.conversations else row.get(columns.conversations)
    text_columns = {columns.image, columns.conversations, columns.question, columns.answer}
    if by_columns or (turns is None and not _is_native(row)):
        if not (columns.question and columns.answer):
            raise RecordError(
                where,
                "not a known record: no conversations, messages, conversations_v0 or question/answer columns "
                f"(found: {', '.join(list(row)[:20])}); name them with --columns question=...,answer=...",
            )
        others = _plain_columns(row, text_columns | {columns.id, columns.caption})
        caption = row.get(columns.caption) if columns.caption else None
        fields = {
            "id": row.get(columns.id) if columns.id else None,
            "image": image,
            "caption": caption if isinstance(caption, str) and caption else None,
            "qa": _question_answers(row[columns.question], row[columns.answer], where),
            "meta": {**others, **({"extra_images": extra_images} if extra_images else {})},
        }
        return RowSample(sample_from_fields(fields, where), "qa-columns", stored)
    record = _plain_columns(row, text_columns)
    if turns is not None:
        record.update(_turns(turns, where))
    if columns.id and row.get(columns.id) is not None:
        record["id"] = row[columns.id]
    if "messages" in record:
        record["images"] = [image, *extra_images] if image else []
    else:
        record["image"] = image
        if extra_images:
            record["extra_images"] = extra_images
    sample, shape = parse_record(record, where, fmt)
    return RowSample(sample, shape, stored)


def _is_native(row: dict[str, Any]) -> bool:
    """True for MMEvol native rows (`conversations_v0` … columns)."""
    return known_format(row) == "mmevol"


def _plain_columns(row: dict[str, Any], skip: set[str | None]) -> dict[str, Any]:
    """The row's other columns that JSON can hold (bytes and image structs are left out)."""
    return {k: plain for k, v in row.items() if k not in skip and (plain := _plain(v)) is not _SKIP}


_SKIP = object()


def _images(value: Any, store: ImageStore | None) -> tuple[str | None, list[str], bool]:
    """(the sample's image, further images, stored?) from an image column's value."""
    values = value if isinstance(value, list) else [value]
    refs: list[str] = []
    stored = False
    for item in values:
        ref, from_bytes = _image_ref(item, store)
        if ref is not None:
            refs.append(ref)
            stored = stored or (from_bytes and len(refs) == 1)
    return (refs[0] if refs else None), refs[1:], stored


def _image_ref(value: Any, store: ImageStore | None) -> tuple[str | None, bool]:
    if value is None or value == "":
        return None, False
    if isinstance(value, str):
        return value, False
    name: str | None = None
    data: Any = value
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
        if not data:
            if isinstance(name, str) and name:
                return name, False
            return None, False
    if isinstance(data, bytes | bytearray | memoryview):
        if store is None:
            raise ValueError("images arrive as bytes: give a folder to write them to (--image-cache)")
        return str(store.put(bytes(data), name)), True
    raise ValueError(f"expected an image path or an Image struct {{bytes, path}}, got {type(value).__name__}")


def _turns(value: Any, where: str) -> dict[str, Any]:
    """The record keys a conversation column's value stands for: `conversations` or `messages` turns."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise RecordError(where, f"conversation column is not a JSON list: {exc}") from exc
    if not isinstance(value, list) or not all(isinstance(turn, dict) for turn in value):
        raise RecordError(where, "the conversation column must hold a list of turns")
    if value and all("role" in turn for turn in value):
        return {"messages": value}
    if value and all("user" in turn or "assistant" in turn for turn in value):
        pairs = (({"role": "user", "content": t.get("user")}, {"role": "assistant", "content": t.get("assistant")})
                 for t in value)  # fmt: skip
        return {"messages": [turn for pair in pairs for turn in pair]}
    return {"conversations": value}


def _question_answers(question: Any, answer: Any, where: str) -> list[dict[str, Any]]:
    """Q&A items from question/answer cells: one pair, or two lists of the same length."""
    if isinstance(question, list) and isinstance(answer, list):
        if len(question) != len(answer):
            raise RecordError(where, f"{len(question)} questions but {len(answer)} answers")
        return [{"question": q, "answer": a} for q, a in zip(question, answer, strict=True)]
    if question in (None, "") or answer in (None, ""):
        raise RecordError(where, "empty question or answer")
    return [{"question": question, "answer": answer}]


def _plain(value: Any) -> Any:
    """`value` as JSON can hold it, or _SKIP for what meta cannot keep (bytes, images)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list):
        items = [_plain(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else items
    if isinstance(value, dict):
        if "bytes" in value:
            return _SKIP
        pairs = {str(k): _plain(v) for k, v in value.items()}
        return _SKIP if any(v is _SKIP for v in pairs.values()) else pairs
    return _SKIP
