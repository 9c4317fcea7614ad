"""Readers of the three seed formats, bad input, the canonical writer and export round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolve.errors import InputError, RecordError
from evolve.export import llava_record, sharegpt_record
from evolve.records import (
    Loaded,
    Rejected,
    Sample,
    load_samples,
    parse_record,
    read_samples,
    write_samples,
)

DATA = Path(__file__).parent / "data"
NATIVE = DATA / "mmevol_seeds_head.jsonl"

LLAVA = {
    "id": "000000033471",
    "image": "coco/train2017/000000033471.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features an advertisement."},
    ],
}
SHAREGPT = {
    "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "<image>How many dogs are there?"},
        {"role": "assistant", "content": "Two dogs."},
    ],
    "images": ["pets/dogs.jpg"],
}


def _write(tmp_path: Path, name: str, lines: list[str | bytes]) -> Path:
    path = tmp_path / name
    with path.open("wb") as fp:
        for line in lines:
            fp.write(line if isinstance(line, bytes) else line.encode())
    return path


def test_native_records_load_with_caption_boxes_and_ids() -> None:
    loaded = [item for item in read_samples(NATIVE) if isinstance(item, Loaded)]
    assert [item.format for item in loaded] == ["mmevol"] * 5
    first = loaded[0].sample
    assert first.id == "0_coco_train2017_000000203269.jpg"  # hash_id: ids repeat in MMEvol data
    assert first.meta["source_id"] == "000000203269"
    assert first.image == "coco/train2017/000000203269.jpg"
    assert len(first.qa) == 7 and first.qa[1].question == "What color is the hotel sign?"
    assert first.caption is not None and first.caption.startswith("The image captures a tranquil street scene")
    assert len(first.objects) == 20 and all(0 <= v <= 1 for v in first.objects[0].bbox)
    no_caption = loaded[1].sample
    assert no_caption.caption is None and no_caption.objects == []


def test_native_uses_newest_non_empty_version() -> None:
    raw = json.loads(NATIVE.read_text().splitlines()[4])
    raw["conversations_v1"] = [{"question": "Newer?", "answer": "Yes.", "score": 7}]
    raw["conversations_v2"] = []
    sample, fmt = parse_record(raw, "x:1")
    assert fmt == "mmevol"
    assert [q.question for q in sample.qa] == ["Newer?"] and sample.qa[0].score == 7


def test_a_forced_format_names_the_field_a_record_lacks() -> None:
    raw = json.loads(NATIVE.read_text().splitlines()[0])
    with pytest.raises(RecordError) as caught:
        parse_record(raw, "x:1", "llava")
    assert caught.value.reason == "no 'conversations' field, which the llava format needs"


def test_llava_and_sharegpt_detected_per_line(tmp_path: Path) -> None:
    native_line = NATIVE.read_text().splitlines()[0]
    path = _write(tmp_path, "mixed.jsonl", [json.dumps(LLAVA) + "\n", json.dumps(SHAREGPT) + "\n", native_line + "\n"])
    loaded = [item for item in read_samples(path) if isinstance(item, Loaded)]
    assert [item.format for item in loaded] == ["llava", "sharegpt", "mmevol"]
    llava = loaded[0].sample
    assert [q.question for q in llava.qa] == [
        "What are the colors of the bus in the image?",
        "What feature can be seen on the back of the bus?",
    ]
    sharegpt = loaded[1].sample
    assert sharegpt.image == "pets/dogs.jpg" and sharegpt.qa[0].answer == "Two dogs."
    assert sharegpt.qa[0].question == "How many dogs are there?"
    assert sharegpt.id == f"{path.name}:2"


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps([LLAVA, SHAREGPT]))
    items = list(read_samples(path))
    assert all(isinstance(i, Loaded) for i in items) and len(items) == 2
    assert items[1].where.endswith("seeds.json:item 2")


def test_duplicate_ids_made_unique(tmp_path: Path) -> None:
    path = _write(tmp_path, "dup.jsonl", [json.dumps(LLAVA) + "\n"] * 3)
    ids = [s.id for s in load_samples(path)]
    assert ids == ["000000033471", "000000033471~2", "000000033471~3"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"id": "a", "conversations": [{"from": "human", "value": "Hi"}', "truncated or invalid JSON"),
        (b'{"id": "a", "conversations_v0": "not a list"}\n', "conversations_v0 must be a list"),
        (b'{"id": "a", "conversations_v0": [{"question": 5, "answer": "x"}]}\n', "qa.0.question"),
        (b'{"id": "a", "conversations_v0": []}\n', "no Q&A items"),
        (b"\x89PNG\x1a\x00\x00\xff\xfe\xc3\x28 garbage\n", "not UTF-8 text"),
        (b"[1, 2]\n", "expected a JSON object"),
        (b'{"hello": "world"}\n', "not a known record"),
        (b'{"id": "a", "conversations": [{"from": "gpt", "value": "orphan"}]}\n', "no question before it"),
    ],
)
def test_bad_lines_are_one_line_messages(tmp_path: Path, line: bytes, reason: str) -> None:
    good = json.dumps(LLAVA) + "\n"
    torn = not line.endswith(b"\n")  # a torn line can only be the last one
    path = _write(tmp_path, "bad.jsonl", [good, good, line] if torn else [good, line, good])
    items = list(read_samples(path))
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert len(rejected) == 1 and len([i for i in items if isinstance(i, Loaded)]) == 2
    message = f"{rejected[0].where}: {rejected[0].reason}"
    assert message.startswith(f"{path}:{3 if torn else 2}: ") and reason in message and "\n" not in message


def test_huge_line_rejected_without_parsing(tmp_path: Path) -> None:
    big = json.dumps({**LLAVA, "pad": "x" * (10 * 1024 * 1024)}) + "\n"
    path = _write(tmp_path, "big.jsonl", [big, json.dumps(LLAVA) + "\n"])
    items = list(read_samples(path))
    assert isinstance(items[0], Rejected) and "10.0 MB, over the 4 MB limit" in items[0].reason
    assert isinstance(items[1], Loaded)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = _write(tmp_path, "empty.jsonl", ["\n  \n"])
    with pytest.raises(InputError, match="empty file"):
        list(read_samples(empty))
    with pytest.raises(InputError, match="no such file"):
        list(read_samples(tmp_path / "nope.jsonl"))


def test_strict_raises_at_first_bad_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.jsonl", [json.dumps(LLAVA) + "\n", "{oops\n"])
    with pytest.raises(RecordError, match=r"bad.jsonl:2: invalid JSON"):
        list(load_samples(path, strict=True))


def test_canonical_round_trip_and_exports(tmp_path: Path) -> None:
    samples = list(load_samples(NATIVE))
    out = tmp_path / "canonical.jsonl"
    assert write_samples(out, samples) == 5
    again = list(load_samples(out))
    assert again == samples

    llava = tmp_path / "llava.jsonl"
    llava.write_text("".join(json.dumps(llava_record(s, s.image, False)) + "\n" for s in samples))
    back = [s for s in load_samples(llava)]
    assert [[(q.question, q.answer) for q in s.qa] for s in back] == [
        [(q.question, q.answer) for q in s.qa] for s in samples
    ]
    assert json.loads(llava.read_text().splitlines()[0])["conversations"][0]["value"].startswith("<image>\n")

    share = tmp_path / "share.jsonl"
    share.write_text("".join(json.dumps(sharegpt_record(s, s.image, False)) + "\n" for s in samples))
    back = list(load_samples(share))
    assert [s.image for s in back] == [s.image for s in samples]
    assert [[q.question for q in s.qa] for s in back] == [[q.question for q in s.qa] for s in samples]


def test_sample_is_strict_on_what_we_write() -> None:
    with pytest.raises(ValueError, match="unexpected"):
        Sample.model_validate({"id": "a", "qa": [{"question": "q", "answer": "a"}], "unexpected": 1})
