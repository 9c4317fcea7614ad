"""Row 10: peak RSS and time of `evolve dedup` over a synthetic finished run folder, 1M questions vs 100k.

The folders are generated once under .bench/data/ (and copied before each measured pass, which rewrites them):
MMEvol seeds of four questions (12 % of them copies of another seed's question, a fifth on short one-slot
templates, like the LLaVA prompts of the demo seeds) and three rounds of kept rewrites of four longer questions.
Among the rewrites, 3 % are planted exact repeats (case and punctuation changed) and 3 % planted near repeats (one
word replaced or inserted, at least 0.8 similar) of a random earlier question: the row reports the share of them
the pass drops (recall), and how many other questions it found repeating by chance.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DATA, LOGS, evolve_cmd, run
from bench.rows import Outcome, Row, Sizes, _fail

GENERATOR = "v1"
QUESTIONS_PER_SAMPLE = 4
ROUNDS = 3
PLANTED_EXACT = 0.03
PLANTED_NEAR = 0.03
SEED_COPIES = 0.12
SEED_TEMPLATES = 0.2
VOCABULARY = 30_000
OPENINGS = (
    "what is the", "how many", "what color is the", "can you describe the", "where is the", "why might the",
    "identify the", "explain how the", "compare the", "describe the", "what does the", "how does the",
    "which of the", "is there a", "what kind of", "considering the", "based on the", "estimate the",
    "analyze the", "what would happen if the", "imagine the", "determine whether the", "locate the",
    "count the", "what can you infer about the", "how might the", "in what way does the", "examine the",
)  # fmt: skip
TEMPLATES = (
    "what color is the {}", "how many {} are in the image", "where is the {} located", "what is the {} doing",
    "is there a {} in the picture", "what type of {} is shown", "describe the {} in the image",
    "what is on the {}", "what is next to the {}", "can you see a {} here",
)  # fmt: skip


def _vocabulary(rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Pseudo-words with Zipf-like frequencies (a flattened head, as in questions)."""
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]  # 80
    words = [
        syllables[i % 80] + syllables[(i // 80) % 80] + (syllables[i // 6400] if i >= 6400 else "")
        for i in range(VOCABULARY)
    ]
    weights = 1.0 / (np.arange(VOCABULARY) + 10.0) ** 1.05
    return words, weights / weights.sum()


class _Writer:
    """Question texts drawn in bulk from the vocabulary."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.words, self.p = _vocabulary(self.rng)
        self._pool = self.rng.choice(VOCABULARY, size=1 << 22, p=self.p)
        self._at = 0

    def _draw(self, n: int) -> list[str]:
        if self._at + n > len(self._pool):
            self._pool, self._at = self.rng.choice(VOCABULARY, size=1 << 22, p=self.p), 0
        picked = self._pool[self._at : self._at + n]
        self._at += n
        return [self.words[i] for i in picked]

    def seed_question(self) -> str:
        """A short question: a one-slot template, or an opening and a few words."""
        if self.rng.random() < SEED_TEMPLATES:
            noun = self.words[int(self.rng.integers(2000, 12000))]
            return TEMPLATES[int(self.rng.integers(len(TEMPLATES)))].format(noun).capitalize() + "?"
        opening = OPENINGS[int(self.rng.integers(len(OPENINGS)))]
        return f"{opening} {' '.join(self._draw(3 + int(self.rng.poisson(8))))}?".capitalize()

    def rewrite_question(self) -> str:
        """A longer question, as evolved ones are."""
        opening = OPENINGS[int(self.rng.integers(len(OPENINGS)))]
        return f"{opening} {' '.join(self._draw(12 + int(self.rng.poisson(14))))}?".capitalize()

    def near_copy(self, question: str) -> str:
        """One word replaced (or, one time in three, inserted)."""
        words = question.rstrip("?").split()
        at = int(self.rng.integers(1, len(words)))
        new = self._draw(1)[0]
        words[at : at + 1] = [words[at], new] if self.rng.random() < 1 / 3 else [new]
        return " ".join(words) + "?"


def _sample_line(sample_id: str, seed_id: str, number: int, questions: list[str]) -> str:
    qa = [
        {"question": q, "answer": "A short answer.", "objects": [], "skills": [], "steps": [], "format": "Norm",
         "image_position": "single", "improved": True, "score": 7.0, "reason": "ok"}
        for q in questions
    ]  # fmt: skip
    record = {"id": sample_id, "image": None, "caption": None, "objects": [], "qa": qa, "round": number,
              "operator": "perceptual", "parent_id": None, "seed_id": seed_id, "meta": {}}  # fmt: skip
    return json.dumps(record, ensure_ascii=False)


def dedup_run_folder(questions: int) -> tuple[Path, list[dict[str, Any]]]:
    """`.bench/data/dedup-run-N/`, a finished run of about N questions, and its planted repeats (generated once)."""
    from evolve.dedup import similarity
    from evolve.manifest import RunManifest, summarize_round, write_manifest
    from evolve.records import Outcome as OutcomeLine
    from evolve.runfolder import RunFolder, write_final

    root = DATA / f"dedup-run-{questions}"
    planted_file = DATA / f"dedup-run-{questions}.planted.json"
    marker = root / f".generated-{GENERATOR}"
    if marker.exists() and planted_file.exists():
        return root, json.loads(planted_file.read_text())
    shutil.rmtree(root, ignore_errors=True)
    writer = _Writer(seed=questions)
    rng = writer.rng
    samples = max(1, questions // (QUESTIONS_PER_SAMPLE * (ROUNDS + 1)))
    seed_ids = [f"s{i:07d}" for i in range(samples)]
    earlier: list[str] = []
    long_earlier: list[str] = []
    seed_file = DATA / f"dedup-run-{questions}-seeds.jsonl"
    root.mkdir(parents=True)
    with seed_file.open("w", encoding="utf-8") as fp:
        for sid in seed_ids:
            items = []
            for _ in range(QUESTIONS_PER_SAMPLE):
                copy = earlier and rng.random() < SEED_COPIES
                question = earlier[int(rng.integers(len(earlier)))] if copy else writer.seed_question()
                earlier.append(question)
                items.append({"question": question, "answer": "A short answer.", "objects": [], "skills": [],
                              "steps": [], "format": "Norm", "image_position": "single"})  # fmt: skip
            fp.write(json.dumps({"id": sid, "conversations_v0": items}) + "\n")
    folder = RunFolder(root)
    planted: list[dict[str, Any]] = []
    for number in range(1, ROUNDS + 1):
        files = folder.round(number)
        files.folder.mkdir(parents=True, exist_ok=True)
        with files.kept.open("w", encoding="utf-8") as kept, files["outcomes"].open("w", encoding="utf-8") as outs:
            for sid in seed_ids:
                questions_now = []
                for pos in range(QUESTIONS_PER_SAMPLE):
                    draw = rng.random()
                    question = writer.rewrite_question()
                    kind = None
                    if draw < PLANTED_EXACT:
                        question, kind = earlier[int(rng.integers(len(earlier)))].upper().rstrip("?") + " ?", "exact"
                    elif draw < PLANTED_EXACT + PLANTED_NEAR and long_earlier:
                        source = long_earlier[int(rng.integers(len(long_earlier)))]
                        candidate = writer.near_copy(source)
                        if similarity(candidate, source) >= 0.8:
                            question, kind = candidate, "near"
                    if kind is not None:
                        planted.append({"id": f"{sid}@r{number}", "position": pos, "kind": kind, "question": question})
                    else:
                        long_earlier.append(question)
                    earlier.append(question)
                    questions_now.append(question)
                kept.write(_sample_line(f"{sid}@r{number}", sid, number, questions_now) + "\n")
                outcome = OutcomeLine(seed_id=sid, round=number, operator="perceptual", kept=True,
                                      items={"evolved": 4, "judged": 4, "improved": 4, "kept": 4},
                                      scores=[7.0] * 4)  # fmt: skip
                outs.write(outcome.model_dump_json() + "\n")
        files["dropped"].write_text("", encoding="utf-8")
    write_final(folder, ROUNDS)
    manifest = RunManifest(status="done", seeds=[str(seed_file)])
    for number in range(1, ROUNDS + 1):
        manifest.rounds[str(number)] = summarize_round(folder, number, None)
    write_manifest(folder, manifest)
    planted_file.write_text(json.dumps(planted))
    marker.write_text(f"{len(earlier)} questions\n")
    return root, planted


def _measure(questions: int) -> dict[str, Any]:
    """One pass of `evolve dedup` over a fresh copy of the folder: rusage, report, recall of the planted repeats."""
    pristine, planted = dedup_run_folder(questions)
    work = DATA / f"dedup-work-{questions}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    report_path = LOGS / f"dedup-{questions}.json"
    report_path.unlink(missing_ok=True)
    p = run([*evolve_cmd(), "dedup", str(work), "--quiet", "--json", str(report_path)], timeout=1200,
            log=LOGS / f"dedup-{questions}.log")  # fmt: skip
    result: dict[str, Any] = {"rc": p.rc, "wall": p.wall, "cpu": p.cpu, "maxrss_mb": p.maxrss_mb,
                              "timed_out": p.timed_out, "stderr_tail": p.stderr[-1000:]}  # fmt: skip
    if p.rc != 0 or p.timed_out or not report_path.exists():
        return result
    report = json.loads(report_path.read_text())
    dropped: set[tuple[str, str]] = set()
    for number in range(1, ROUNDS + 1):
        with (work / f"round-{number}" / "dropped.jsonl").open(encoding="utf-8") as fp:
            for line in fp:
                record = json.loads(line)
                if record["stage"] == "dedup":
                    dropped.update((record["id"], item["question"]) for item in record["sample"]["qa"])
    for kind in ("exact", "near"):
        wanted = [(p["id"], p["question"]) for p in planted if p["kind"] == kind]
        result[f"planted_{kind}"] = len(wanted)
        result[f"found_{kind}"] = sum(1 for key in wanted if key in dropped)
    result["questions"] = report["questions"]
    result["dropped"] = len(dropped)
    result["exact"] = sum(r["exact"] for r in report["rounds"])
    result["near"] = sum(r["near"] for r in report["rounds"])
    result["candidate_pairs"] = report["candidate_pairs"]
    shutil.rmtree(work, ignore_errors=True)
    return result


def row10(sizes: Sizes) -> Outcome:
    """Peak RSS of `evolve dedup` on 1M questions vs 100k (flat: ≤ 1.5), its time, and recall of planted repeats."""
    quick = sizes == Sizes.quick()
    small, large = (20_000, 200_000) if quick else (100_000, 1_000_000)
    out = Outcome()
    for n in (small, large):
        out.data[f"dedup-{n}"] = _measure(n)
    a, b = out.data[f"dedup-{small}"], out.data[f"dedup-{large}"]
    setting = f"run folder, {large:,} vs {small:,} questions (seeds + 3 rounds)"
    if "questions" not in a or "questions" not in b:
        why = next((d["stderr_tail"] for d in (a, b) if "questions" not in d), "")
        out.rows.append(_fail("10 peak RSS: evolve dedup", setting, why or "dedup failed (see .bench/logs)"))
        return out
    planted = b["planted_exact"] + b["planted_near"]
    recall = (b["found_exact"] + b["found_near"]) / planted if planted else 0.0
    chance = b["dropped"] - b["found_exact"] - b["found_near"]
    note = (
        f"planted repeats found {recall:.1%} (exact {b['found_exact']:,}/{b['planted_exact']:,}, near "
        f"{b['found_near']:,}/{b['planted_near']:,}); {chance:,} more found by chance; "
        f"{b['candidate_pairs']:,} candidate pairs"
    )
    ratio = b["maxrss_mb"] / a["maxrss_mb"]
    out.rows.append(Row("10 peak RSS: evolve dedup", setting, f"{b['maxrss_mb']:.0f} MB", f"{a['maxrss_mb']:.0f} MB",
                        ratio, "≤ 1.5 (flat)", ratio <= 1.5, note))  # fmt: skip
    budget = 180.0 * large / 1_000_000
    rate = b["questions"] / b["wall"]
    out.rows.append(Row("10 time: evolve dedup", f"{large:,} questions", f"{b['wall']:.0f} s",
                        f"budget {budget:.0f} s", b["wall"] / budget, "≤ 1 (3 min per million)", b["wall"] <= budget,
                        f"{rate:,.0f} questions/s; {small:,} in {a['wall']:.1f} s; CPU {b['cpu']:.0f} s"))  # fmt: skip
    return out
