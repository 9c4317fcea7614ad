"""Generated inputs: synthetic MMEvol-native seed files and a file of realistic evolve/judge prompts.

Every workload starts from the demo seeds: the real ones in ../shared/data when they are there, else
(``ensure_demo_seeds``) 1,612 generated records of the same shape: the same distributions of Q&A items per
sample, question and answer lengths, captions and boxes, read from ``bench/workload_shape.json`` (lengths
only, no text; ``python -m bench.workload --shape`` rewrites it from ../shared). Row 9's real-length evolved
questions (``rewrite_seed_file``) follow the length distribution of real gpt-4o-mini rewrites, from
../shared's responses when present, else from the same summary. The text is made of a fixed vocabulary by a
small grammar (imperative and wh- questions, follow-up sentences such as "Let's think step by step."), so
spaCy parses sentences of the real lengths and shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import DATA, DEMO_SEEDS, HAVE_SHARED, REPO, SHARED_REWRITES, SHARED_SEEDS

SHAPE = REPO / "bench" / "workload_shape.json"
VERBS = (
    "describe",
    "identify",
    "explain",
    "estimate",
    "compare",
    "determine",
    "analyze",
    "count",
    "examine",
    "infer",
    "evaluate",
    "locate",
    "measure",
    "classify",
    "outline",
    "predict",
    "trace",
    "read",
    "list",
    "name",
    "assess",
    "interpret",
    "summarize",
    "justify",
)
OBJECTS = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "kite",
    "skateboard",
    "surfboard",
    "bottle",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "pizza",
    "cake",
    "chair",
    "couch",
    "bed",
    "table",
    "toilet",
    "laptop",
    "mouse",
    "keyboard",
    "phone",
    "microwave",
    "oven",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "teddy bear",
    "sign",
    "building",
    "road",
    "window",
    "tree",
    "sky",
    "shadow",
    "wall",
    "fence",
    "lamp",
    "street",
    "river",
    "mountain",
)
ADJECTIVES = (
    "red",
    "small",
    "large",
    "wooden",
    "distant",
    "bright",
    "old",
    "blue",
    "metal",
    "white",
    "crowded",
    "empty",
    "green",
    "tall",
    "narrow",
    "busy",
    "quiet",
    "broken",
    "shiny",
    "dark",
)
WH_STARTS = (
    ("What", "might", "the"),
    ("How", "does", "the"),
    ("Why", "would", "the"),
    ("Which", "part", "of", "the"),
    ("Where", "is", "the"),
    ("How", "many", "of", "the"),
    ("What", "can", "you", "infer", "about", "the"),
)
FOLLOW_UPS = (
    "Let's think step by step.",
    "Think carefully.",
    "Explain your reasoning.",
    "Justify your answer.",
    "Use the boxes to support it.",
    "Consider the context of the scene.",
)
SKILLS = (
    "Grounding Ability",
    "Referencing Ability",
    "Calculating Ability",
    "OCR Ability",
    "Existence Ability",
    "Relationship Description Ability",
    "Context Understanding Ability",
    "Knowledge Integration Ability",
)


def ensure_demo_seeds() -> Path:
    """The demo seeds' path, generating the demo-shaped set first when ../shared is absent."""
    if HAVE_SHARED or DEMO_SEEDS.exists():
        return DEMO_SEEDS
    DATA.mkdir(parents=True, exist_ok=True)
    seeds = _shape()["seeds"]
    rng = random.Random(1612)
    tmp = DEMO_SEEDS.with_name(DEMO_SEEDS.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(int(seeds["samples"])):
            f.write(json.dumps(_demo_record(rng, i, seeds), ensure_ascii=False) + "\n")
    os.replace(tmp, DEMO_SEEDS)
    return DEMO_SEEDS


def demo_records() -> list[dict[str, Any]]:
    """The demo seeds: 1,612 real MMEvol records from ../shared, else the generated set of the same shape."""
    with open(ensure_demo_seeds(), encoding="utf-8") as f:
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


# --------------------------------------------------------------------------- generated text of real lengths


def _shape() -> dict[str, Any]:
    """The shipped length distributions (bench/workload_shape.json)."""
    data: dict[str, Any] = json.loads(SHAPE.read_text(encoding="utf-8"))
    return data


def _draw(rng: random.Random, counted: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """One entry of a ``[value..., count]`` histogram, drawn with weight count."""
    entry = rng.choices(counted, weights=[row[-1] for row in counted])[0]
    return tuple(int(v) for v in entry[:-1])


def _filler(rng: random.Random, room: int) -> list[str]:
    """A phrase of at most `room` (>= 1) words that can end a noun phrase."""
    if room < 3:
        return rng.choice((["today"], ["here"], ["clearly"], ["in", "view"], ["right", "now"]))[:room]
    obj = rng.choice(OBJECTS).split()
    options = [
        ["near", "the", *obj],
        ["behind", "the", rng.choice(ADJECTIVES), *obj],
        ["in", "the", "image"],
        ["and", "the", *obj],
        ["on", "the", "left"],
        ["in", "the", "background"],
        ["with", "the", rng.choice(ADJECTIVES), *obj],
    ]
    fitting = [o for o in options if len(o) <= room]
    return rng.choice(fitting) if fitting else ["in", "the", "image"]


def _sentence(rng: random.Random, words: int, question: bool) -> str:
    """A sentence of exactly `words` words (at least 1): an imperative or a wh-question about objects."""
    obj = rng.choice(OBJECTS).split()
    if words < 4:
        out = [rng.choice(VERBS), "it", "briefly"][:words]
    elif question and words >= 6:
        out = [*rng.choice(WH_STARTS), *obj, rng.choice(VERBS), "the", *rng.choice(OBJECTS).split()]
    else:
        out = [rng.choice(VERBS), "the", rng.choice(ADJECTIVES), *obj]
    out = out[:words]
    while len(out) < words:
        out += _filler(rng, words - len(out))
    out = out[:words]
    out[0] = out[0].capitalize()
    return " ".join(out) + ("?" if question and words >= 4 else ".")


def question_text(rng: random.Random, total: int, first: int) -> str:
    """A question of `total` words whose first sentence has `first` words, the rest follow-up sentences."""
    first = max(1, min(first, total))
    parts = [_sentence(rng, first, question=rng.random() < 0.7)]
    left = total - first
    while left > 0:
        cue = rng.choice(FOLLOW_UPS)
        if len(cue.split()) <= left and rng.random() < 0.6:
            parts.append(cue)
            left -= len(cue.split())
            continue
        size = min(left, rng.randint(4, 14))
        parts.append(_sentence(rng, size, question=False))
        left -= size
    return " ".join(parts)


def _words(rng: random.Random, n: int) -> str:
    pool = (*VERBS, *ADJECTIVES, "the", "a", "is", "of", "and", "with", "near", "image", "scene")
    return " ".join(rng.choices(pool, k=max(1, n)))


def _demo_record(rng: random.Random, index: int, seeds: dict[str, Any]) -> dict[str, Any]:
    """One generated seed in MMEvol's native format, drawn from the demo seeds' distributions."""
    items = []
    for _ in range(max(1, _draw(rng, seeds["qa_per_sample_count"])[0])):
        total, first = _draw(rng, seeds["question_words_first_sentence_count"])
        answer = _draw(rng, seeds["answer_words_by_ten_count"])[0] + rng.randint(1, 10)
        items.append(
            {
                "image_position": "single",
                "objects": [],
                "skills": [],
                "format": "Norm",
                "question": question_text(rng, total, first),
                "steps": [],
                "answer": _words(rng, answer),
            }
        )
    image = f"generated/{index:06d}.jpg"
    record: dict[str, Any] = {"id": f"gen-{index}", "image": image, "conversations_v0": items, "caption": [], "det": []}
    if rng.random() < seeds["with_caption"] / seeds["samples"]:
        words = _draw(rng, seeds["caption_words_by_ten_count"])[0] + rng.randint(1, 10)
        record["caption"] = [
            {"from": "human", "value": "<image>\nDescribe the image in detail."},
            {"from": "gpt", "value": _words(rng, words)},
        ]
        boxes = max(1, _draw(rng, [r for r in seeds["boxes_per_sample_count"] if r[0] > 0])[0])
        record["det"] = [_box(rng) for _ in range(boxes)]
    record["hash_id"] = f"{index}_{image.replace('/', '_')}"
    return record


def _box(rng: random.Random) -> dict[str, Any]:
    x, y = rng.random() * 0.8, rng.random() * 0.8
    w, h = 0.05 + rng.random() * 0.15, 0.05 + rng.random() * 0.15
    label = rng.choice(OBJECTS[:59])  # COCO-80 labels only
    return {"label": label, "bbox": [round(x, 3), round(y, 3), round(x + w, 3), round(y + h, 3)]}


def rewrite_lengths() -> tuple[str, list[list[int]]]:
    """(source, [[words, first-sentence words, count], ...]) of real gpt-4o-mini rewrite questions."""
    if SHARED_REWRITES.is_file():
        return f"real rewrites in {SHARED_REWRITES.name}", _question_lengths(_shared_rewrite_questions())
    return "the shipped summary of real rewrites (bench/workload_shape.json)", _shape()["rewrite_questions"][
        "words_first_sentence_count"
    ]


def _shared_rewrite_questions() -> list[str]:
    from evolve.parse import parse_qas

    out: list[str] = []
    with open(SHARED_REWRITES, encoding="utf-8") as f:
        for line in f:
            out += [qa.question for qa in parse_qas(json.loads(line)["evolution_response"])]
    return out


def _question_lengths(questions: Sequence[str]) -> list[list[int]]:
    from evolve.verbnoun import clip_question

    counts = Counter((len(q.split()), len(clip_question(q).split())) for q in questions)
    return sorted([total, first, n] for (total, first), n in counts.items())


def rewrite_seed_file(questions: int, per_sample: int = 4) -> tuple[Path, str]:
    """``.bench/data/rewrites-N.jsonl``: MMEvol-native records of `per_sample` evolved-looking Q&A&S items each,
    `questions` in all, question lengths drawn from real rewrites. Returns the path and the length source."""
    source, lengths = rewrite_lengths()
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"rewrites-{questions}-{'shared' if SHARED_REWRITES.is_file() else 'shipped'}.jsonl"
    if path.exists():
        return path, source
    rng = random.Random(questions)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", buffering=1 << 20) as f:
        for start in range(0, questions, per_sample):
            items = []
            for _ in range(min(per_sample, questions - start)):
                total, first, _count = rng.choices(lengths, weights=[row[2] for row in lengths])[0]
                names = [rng.choice(OBJECTS) for _ in range(rng.randint(1, 3))]
                items.append(
                    {
                        "image_position": "single",
                        "objects": names,
                        "skills": rng.sample(SKILLS, rng.randint(1, 2)),
                        "format": "Norm",
                        "question": question_text(rng, total, first),
                        "steps": [
                            {
                                "manipulation": f"grounding_{k}({names[0]})->bbx_{k}",
                                "description": f"Locate the {names[0]}.",
                            }
                            for k in (1, 2)
                        ],
                        "answer": _words(rng, rng.randint(10, 30)),
                    }
                )
            f.write(json.dumps({"id": f"rw-{start}", "conversations_v0": items}) + "\n")
    os.replace(tmp, path)
    return path, source


def summarise_shared() -> dict[str, Any]:
    """The length distributions of ../shared's real data (what bench/workload_shape.json holds)."""
    qa_per: Counter[int] = Counter()
    answers: Counter[int] = Counter()
    captions: Counter[int] = Counter()
    boxes: Counter[int] = Counter()
    questions: list[str] = []
    samples = with_caption = 0
    with open(SHARED_SEEDS, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            samples += 1
            items = record.get("conversations_v0") or []
            qa_per[len(items)] += 1
            questions += [qa["question"] for qa in items]
            answers.update(min(len(qa["answer"].split()) // 10 * 10, 400) for qa in items)
            if record.get("caption"):
                with_caption += 1
                captions[min(len(record["caption"][1]["value"].split()) // 10 * 10, 400)] += 1
            boxes[len(record.get("det") or [])] += 1

    def rows(counts: Counter[int]) -> list[list[int]]:
        return sorted([k, n] for k, n in counts.items())

    return {
        "about": "Length distributions of the real data in ../shared/data (numbers only, no text): bench/workload.py "
        "generates workloads of the same shape from them when ../shared is absent. python -m bench.workload --shape",
        "rewrite_questions": {
            "source": f"{SHARED_REWRITES.name}: the questions of 50 real gpt-4o-mini round-1 rewrites",
            "words_first_sentence_count": _question_lengths(_shared_rewrite_questions()),
        },
        "seeds": {
            "source": f"{SHARED_SEEDS.name}: 1,612 real MMEvol seeds",
            "samples": samples,
            "with_caption": with_caption,
            "qa_per_sample_count": rows(qa_per),
            "question_words_first_sentence_count": _question_lengths(questions),
            "answer_words_by_ten_count": rows(answers),
            "caption_words_by_ten_count": rows(captions),
            "boxes_per_sample_count": rows(boxes),
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Bench workloads.")
    parser.add_argument("--shape", action="store_true", help="rewrite bench/workload_shape.json from ../shared")
    if parser.parse_args().shape:
        SHAPE.write_text(json.dumps(summarise_shared(), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {SHAPE}")
