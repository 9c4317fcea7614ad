"""Generated inputs: synthetic MMEvol-native seed files and a file of realistic evolve/judge prompts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.common import DATA, DEMO_SEEDS


def demo_records() -> list[dict[str, Any]]:
    """The shared demo seeds (1,612 real MMEvol records)."""
    with open(DEMO_SEEDS, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def seed_file(lines: int) -> Path:
    """``.bench/data/seeds-N.jsonl``: the demo records cycled and re-identified (unique id and hash_id).

    Written once and reused; each line is a real record with a fresh ``id`` and ``hash_id``.
    """
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"seeds-{lines}.jsonl"
    if path.exists():
        return path
    records = demo_records()
    # The record minus its two id fields, serialized once: each line is a cheap string join.
    tails = []
    for rec in records:
        rest = {k: v for k, v in rec.items() if k not in ("id", "hash_id")}
        tails.append((str(rec["id"]), str(rec["hash_id"]), json.dumps(rest, ensure_ascii=False)[1:]))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", buffering=1 << 20) as f:
        chunk: list[str] = []
        for i in range(lines):
            rid, hid, tail = tails[i % len(tails)]
            chunk.append(f'{{"id": "{rid}-b{i}", "hash_id": "b{i}_{hid}", {tail}\n')
            if len(chunk) >= 10_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))
    os.replace(tmp, path)
    return path


def _variant(question: str, copy: int) -> str:
    """The question made distinct for the ``copy``-th cycle: " in photo N" before the first line's end."""
    first, sep, rest = question.partition("\n")
    first = first.rstrip()
    first = first[:-1] + f" in photo {copy}?" if first.endswith("?") else first + f" (photo {copy})"
    return first + sep + rest


def distinct_seed_file(target_questions: int) -> tuple[Path, int]:
    """``.bench/data/distinct-N.jsonl``: demo records cycled until ``target_questions`` questions; from the
    second cycle on, every question gets " in photo N" so no text repeats (stats caches repeated questions).

    Returns the path and the number of questions.
    """
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"distinct-{target_questions}.jsonl"
    records = demo_records()
    total = lines = 0
    while total < target_questions:
        total += len(records[lines % len(records)].get("conversations_v0") or [])
        lines += 1
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for i in range(lines):
                rec = dict(records[i % len(records)])
                copy = i // len(records)
                rec["id"] = f"{rec['id']}-d{i}"
                rec["hash_id"] = f"d{i}_{rec['hash_id']}"
                if copy:
                    rec["conversations_v0"] = [
                        {**qa, "question": _variant(str(qa["question"]), copy)} for qa in rec["conversations_v0"]
                    ]
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    return path, total


def questions_file(count: int | None) -> tuple[Path, int]:
    """``.bench/data/questions-N.jsonl``: {"question": ...} lines, the demo seeds' questions (cycled to ``count``).

    ``count=None`` keeps every demo question once. Returns the path and the number of questions.
    """
    DATA.mkdir(parents=True, exist_ok=True)
    base = [qa["question"] for rec in demo_records() for qa in rec.get("conversations_v0", [])]
    n = len(base) if count is None else count
    path = DATA / f"questions-{'demo' if count is None else count}.jsonl"
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for i in range(n):
                f.write(json.dumps({"question": base[i % len(base)]}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    return path, n


def prompts_file(count: int = 400) -> Path:
    """``.bench/data/prompts.jsonl``: alternating evolution and judge prompts as evolve renders them.

    Rendered with evolve's own templates (the judge's rewrite is the fake server's answer, parsed by evolve),
    so the raw loop and the peers send requests of the same size and kind as ``evolve run``.
    """
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"prompts-{count}.jsonl"
    if path.exists():
        return path
    from evolve.fakeserver.content import Settings, answer
    from evolve.operators import OPERATORS
    from evolve.parse import parse_qas
    from evolve.prompts import PromptSet
    from evolve.records import parse_record

    prompts = PromptSet.load()
    records = demo_records()
    rows: list[dict[str, str]] = []
    i = 0
    while len(rows) < count:
        sample, _ = parse_record(records[i % len(records)], f"demo:{i}")
        evolution = prompts.render_evolution(OPERATORS[i % len(OPERATORS)], sample)
        child = sample.model_copy(update={"qa": parse_qas(answer(evolution, Settings()).content)})
        rows.append({"kind": "evolve", "system": prompts.system, "text": evolution})
        rows.append({"kind": "judge", "system": prompts.system, "text": prompts.render_judge(sample, child)})
        i += 1
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows[:count]:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
