"""Diversity and complexity of seed and evolved files, side by side: one column per file (or per round).

Definitions (also in ``StatsReport.definitions``):

- *tokens*: whitespace-separated words (``len(text.split())``), for question and answer lengths.
- *skills length* / *step length*: ``len(item.skills)`` / ``len(item.steps)`` per Q&A item, zeros included.
- *judge numbers*: over the items of the column's judge source (``round-N/judged.jsonl`` for a round,
  ``baseline.jsonl`` for the seeds of a run folder, else the file itself) that carry a verdict. The
  improvement rate is ``improved is True`` over items with ``improved`` set; ``score_mean`` is over every
  scored item, ``accepted_score_mean`` over items judged improved (the paper's "mean accepted score").
- *verb–noun pairs*: one per question, from :mod:`evolve.verbnoun`. ``distinct_verbs`` counts verbs with or
  without a noun; pairs need both parts; entropy is ``-Σ p·log2 p`` in bits over the pair frequencies;
  ``no_pair_share`` is the share of questions without a complete pair.
- *objects*: each item's ``objects`` names, lowercased and whitespace-normalised, one mention per name per
  item. A column whose items name no object at all falls back to the detection-box labels (each distinct
  label once per sample) and says so in ``object_source``.
- *long-tail share*: the share of object mentions whose name is *not* among the top 20 % most frequent
  distinct names (``ceil(0.2 × distinct)`` names, ties broken alphabetically). Higher means the mentions are
  spread over rarer objects.

Memory: records are streamed; a column keeps only counters and its distinct question texts.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from evolve.errors import InputError
from evolve.records import Rejected, Sample, read_samples
from evolve.verbnoun import VerbNoun, VerbNounExtractor

TOP_VERBS = 20
TOP_NOUNS = 5
TOP_OBJECTS = 100
HEAD_SHARE = 0.2
CHUNK = 2000
_ROUND_DIR = re.compile(r"^round-(\d+)$")

DEFINITIONS = {
    "tokens": "whitespace-separated words",
    "skills_length": "len(skills) per Q&A item, zeros included",
    "step_length": "len(steps) per Q&A item, zeros included",
    "improvement_rate": "items judged improved / items with a verdict, in the column's judge source",
    "score_mean": "mean judge score over every scored item of the judge source",
    "accepted_score_mean": "mean judge score over items judged improved",
    "verb_noun": "root-closest verb and its first direct noun object of the question's first sentence",
    "pair_entropy_bits": "-sum p*log2(p) over verb–noun pair frequencies",
    "no_pair_share": "questions without both a verb and a noun / questions",
    "objects": "item objects names (lowercased), else detection box labels once per sample",
    "long_tail_share": "object mentions outside the ceil(20% x distinct) most frequent names / mentions",
}


class StatsInput(BaseModel):
    """One column: the files whose items are measured and where its judge numbers come from."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["file", "seeds", "round"] = "file"
    paths: tuple[Path, ...]
    judged: tuple[Path, ...] = ()
    """Files with the judge's verdicts; empty means the verdicts carried by `paths` themselves."""


class NameCount(BaseModel):
    """A name and how often it occurs."""

    name: str
    count: int


class VerbStat(BaseModel):
    """A root verb, the questions it heads, and its most frequent direct-object nouns."""

    verb: str
    count: int
    with_noun: int
    nouns: list[NameCount]


class ColumnStats(BaseModel):
    """Every number of one column of the table (see the module docstring for definitions)."""

    name: str
    kind: str
    files: list[str]
    judged_files: list[str]
    samples: int
    rejected_lines: int = Field(description="lines of the measured files that could not be read (skipped)")
    qa_items: int
    qa_per_sample: float | None
    question_tokens_mean: float | None
    answer_tokens_mean: float | None
    skills_length_mean: float | None
    step_length_mean: float | None
    skills_length_hist: dict[int, int]
    step_length_hist: dict[int, int]
    judged_items: int
    improvement_rate: float | None
    score_mean: float | None
    accepted_score_mean: float | None
    score_counts: dict[str, int] = Field(description="judge score (as text) → scored items")
    accepted_score_counts: dict[str, int] = Field(description="judge score → items judged improved")
    questions_with_verb: int
    questions_with_pair: int
    distinct_verbs: int
    distinct_pairs: int
    pair_entropy_bits: float | None
    no_pair_share: float | None
    top_verbs: list[VerbStat] = Field(description="verbs ranked by the questions they head")
    top_pair_verbs: list[VerbStat] = Field(description="verbs ranked by their complete verb–noun pairs")
    object_source: Literal["items", "boxes", "none"]
    object_mentions: int
    distinct_objects: int
    long_tail_share: float | None
    top_objects: list[NameCount]


class StatsReport(BaseModel):
    """The whole comparison; ``model_dump_json()`` is what ``evolve stats --json`` writes."""

    parser: str
    distinct_questions: int
    parse_seconds: float
    columns: list[ColumnStats]
    definitions: dict[str, str] = Field(default_factory=lambda: dict(DEFINITIONS))


# --------------------------------------------------------------------------- inputs


def resolve_inputs(paths: Sequence[Path]) -> list[StatsInput]:
    """Turn files and run folders into columns: a file is one column named by its stem; a run folder gives
    its seeds (``run.json`` ``"seeds"``, judged by ``baseline.jsonl`` when present) and each ``round-N``."""
    found: list[tuple[str, StatsInput]] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found.extend((path.name, item) for item in _run_folder(path))
        elif path.is_file():
            found.append((path.parent.name, StatsInput(name=path.stem, paths=(path,))))
        else:
            raise InputError(f"{path}: no such file or folder")
    counts = Counter(item.name for _, item in found)
    out: list[StatsInput] = []
    for prefix, item in found:
        if counts[item.name] > 1:
            item = item.model_copy(update={"name": f"{prefix}/{item.name}"})
        out.append(item)
    seen = Counter(item.name for item in out)
    for name, n in seen.items():
        if n > 1:
            raise InputError(f"two inputs would both be named {name!r}: pass them from different folders")
    return out


def _run_folder(folder: Path) -> list[StatsInput]:
    items: list[StatsInput] = []
    seeds = _seed_paths(folder)
    if seeds:
        baseline = folder / "baseline.jsonl"
        judged = (baseline,) if baseline.is_file() else ()
        items.append(StatsInput(name="seeds", kind="seeds", paths=tuple(seeds), judged=judged))
    rounds = sorted(
        (int(m.group(1)), child) for child in folder.iterdir() if child.is_dir() and (m := _ROUND_DIR.match(child.name))
    )
    for number, child in rounds:
        kept = child / "kept.jsonl"
        if not kept.is_file():
            continue
        judged_path = child / "judged.jsonl"
        judged = (judged_path,) if judged_path.is_file() else ()
        items.append(StatsInput(name=f"round-{number}", kind="round", paths=(kept,), judged=judged))
    if not items:
        raise InputError(f"{folder}: not a run folder (no run.json seeds and no round-N/kept.jsonl)")
    return items


def _seed_paths(folder: Path) -> list[Path]:
    manifest = folder / "run.json"
    if not manifest.is_file():
        return []
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{manifest}: unreadable ({exc})") from exc
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if isinstance(seeds, str):
        seeds = [seeds]
    if not isinstance(seeds, list):
        return []
    out: list[Path] = []
    for entry in seeds:
        candidate = Path(str(entry)).expanduser()
        if not candidate.is_absolute() and (folder / candidate).is_file():
            candidate = folder / candidate
        if not candidate.is_file():
            raise InputError(f"{manifest}: seed file {entry} not found (relative to the run folder or here)")
        out.append(candidate)
    return out


# --------------------------------------------------------------------------- accumulation


def _object_name(raw: str) -> str:
    text = raw.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            for key in ("name", "label", "object"):
                if isinstance(value.get(key), str):
                    text = value[key]
                    break
    return " ".join(text.lower().split()).strip(" .,;:")


def _score_key(score: float) -> str:
    return f"{score:g}"


class _Column:
    """Counters for one column, filled from streamed samples."""

    def __init__(self) -> None:
        self.samples = 0
        self.rejected = 0
        self.qa = 0
        self.question_tokens = 0
        self.answer_tokens = 0
        self.skills: Counter[int] = Counter()
        self.steps: Counter[int] = Counter()
        self.questions: Counter[str] = Counter()
        self.objects: Counter[str] = Counter()
        self.boxes: Counter[str] = Counter()
        self.verdicts = 0
        self.known = 0
        self.improved = 0
        self.scores: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.score_sum = 0.0
        self.accepted_sum = 0.0

    def add_items(self, sample: Sample) -> None:
        self.samples += 1
        for item in sample.qa:
            self.qa += 1
            self.question_tokens += len(item.question.split())
            self.answer_tokens += len(item.answer.split())
            self.skills[len(item.skills)] += 1
            self.steps[len(item.steps)] += 1
            self.questions[item.question] += 1
            names = {_object_name(o) for o in item.objects}
            names.discard("")
            self.objects.update(names)
        labels = {_object_name(box.label) for box in sample.objects}
        labels.discard("")
        self.boxes.update(labels)

    def add_verdicts(self, sample: Sample) -> None:
        for item in sample.qa:
            if item.improved is not None or item.score is not None:
                self.verdicts += 1
            if item.improved is not None:
                self.known += 1
                self.improved += item.improved
            if item.score is None or not math.isfinite(item.score):
                continue
            key = _score_key(item.score)
            self.scores[key] += 1
            self.score_sum += item.score
            if item.improved:
                self.accepted[key] += 1
                self.accepted_sum += item.score


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def entropy_bits(counts: Iterable[int]) -> float | None:
    """Shannon entropy in bits of a frequency distribution; None when it is empty."""
    values = [c for c in counts if c > 0]
    total = sum(values)
    if not total:
        return None
    return max(0.0, -sum(c / total * math.log2(c / total) for c in values))


def long_tail_share(counts: Counter[str], head_share: float = HEAD_SHARE) -> float | None:
    """Share of mentions outside the ``ceil(head_share × distinct)`` most frequent names (ties by name)."""
    total = sum(counts.values())
    if not total:
        return None
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    head = math.ceil(head_share * len(ranked))
    return sum(c for _, c in ranked[head:]) / total


def _top(counts: Counter[str], n: int) -> list[NameCount]:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [NameCount(name=k, count=v) for k, v in ranked]


def _verb_stats(questions: Counter[str], pairs: dict[str, VerbNoun]) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    verbs: Counter[str] = Counter()
    full: Counter[tuple[str, str]] = Counter()
    for question, n in questions.items():
        verb, noun = pairs[question]
        if verb is None:
            continue
        verbs[verb] += n
        if noun is not None:
            full[verb, noun] += n
    return verbs, full


def _finish(spec: StatsInput, col: _Column, pairs: dict[str, VerbNoun]) -> ColumnStats:
    verbs, full = _verb_stats(col.questions, pairs)
    by_verb: dict[str, Counter[str]] = {}
    for (verb, noun), n in full.items():
        by_verb.setdefault(verb, Counter())[noun] = n
    with_noun = Counter({verb: sum(nouns.values()) for verb, nouns in by_verb.items()})

    def stat(verb: str) -> VerbStat:
        nouns = by_verb.get(verb, Counter())
        return VerbStat(verb=verb, count=verbs[verb], with_noun=with_noun[verb], nouns=_top(nouns, TOP_NOUNS))

    if col.objects:
        source: Literal["items", "boxes", "none"] = "items"
        objects = col.objects
    elif col.boxes:
        source, objects = "boxes", col.boxes
    else:
        source, objects = "none", Counter()
    with_pair = sum(full.values())
    accepted = sum(col.accepted.values())
    return ColumnStats(
        name=spec.name,
        kind=spec.kind,
        files=[str(p) for p in spec.paths],
        judged_files=[str(p) for p in (spec.judged or spec.paths)],
        samples=col.samples,
        rejected_lines=col.rejected,
        qa_items=col.qa,
        qa_per_sample=_share(col.qa, col.samples),
        question_tokens_mean=_share(col.question_tokens, col.qa),
        answer_tokens_mean=_share(col.answer_tokens, col.qa),
        skills_length_mean=_share(sum(k * v for k, v in col.skills.items()), col.qa),
        step_length_mean=_share(sum(k * v for k, v in col.steps.items()), col.qa),
        skills_length_hist=dict(sorted(col.skills.items())),
        step_length_hist=dict(sorted(col.steps.items())),
        judged_items=col.verdicts,
        improvement_rate=_share(col.improved, col.known),
        score_mean=_share(col.score_sum, sum(col.scores.values())),
        accepted_score_mean=_share(col.accepted_sum, accepted),
        score_counts=dict(sorted(col.scores.items(), key=lambda kv: float(kv[0]))),
        accepted_score_counts=dict(sorted(col.accepted.items(), key=lambda kv: float(kv[0]))),
        questions_with_verb=sum(verbs.values()),
        questions_with_pair=with_pair,
        distinct_verbs=len(verbs),
        distinct_pairs=len(full),
        pair_entropy_bits=entropy_bits(full.values()),
        no_pair_share=_share(col.qa - with_pair, col.qa),
        top_verbs=[stat(item.name) for item in _top(verbs, TOP_VERBS)],
        top_pair_verbs=[stat(item.name) for item in _top(with_noun, TOP_VERBS)],
        object_source=source,
        object_mentions=sum(objects.values()),
        distinct_objects=len(objects),
        long_tail_share=long_tail_share(objects),
        top_objects=_top(objects, TOP_OBJECTS),
    )


def _stream(paths: Iterable[Path], col: _Column | None = None) -> Iterator[Sample]:
    """The good samples of `paths`, in order; unreadable lines are counted on `col` and skipped."""
    for path in paths:
        for loaded in read_samples(path):
            if isinstance(loaded, Rejected):
                if col is not None:
                    col.rejected += 1
                continue
            yield loaded.sample


def compute_stats(inputs: Sequence[StatsInput], extractor: VerbNounExtractor, progress: bool = True) -> StatsReport:
    """Read every column once (streaming), parse each distinct question once, and return the report."""
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not progress,
    )
    columns: list[_Column] = []
    with bar if progress else nullcontext():
        for spec in inputs:
            col = _Column()
            task = bar.add_task(f"reading {spec.name}", total=None)
            for sample in _stream(spec.paths, col):
                col.add_items(sample)
                if not spec.judged:
                    col.add_verdicts(sample)
                bar.advance(task)
            for sample in _stream(spec.judged):
                col.add_verdicts(sample)
                bar.advance(task)
            bar.update(task, total=bar.tasks[task].completed)
            columns.append(col)
        distinct = list(dict.fromkeys(q for col in columns for q in col.questions))
        task = bar.add_task(f"parsing questions ({extractor.name})", total=len(distinct))
        started = time.perf_counter()
        pairs: dict[str, VerbNoun] = {}
        for start in range(0, len(distinct), CHUNK):
            chunk = distinct[start : start + CHUNK]
            pairs.update(zip(chunk, extractor.pairs(chunk), strict=True))
            bar.advance(task, len(chunk))
        seconds = time.perf_counter() - started
    return StatsReport(
        parser=extractor.name,
        distinct_questions=len(distinct),
        parse_seconds=round(seconds, 3),
        columns=[_finish(spec, col, pairs) for spec, col in zip(inputs, columns, strict=True)],
    )


# --------------------------------------------------------------------------- table


def _int(value: int) -> str:
    return f"{value:,}"


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _verb_cell(col: ColumnStats, rank: int, nouns: int) -> Text:
    if rank >= len(col.top_verbs):
        return Text("")
    verb = col.top_verbs[rank]
    text = Text(f"{verb.verb} {verb.count:,}", style="bold", justify="left")
    names = ", ".join(n.name for n in verb.nouns[:nouns])
    if names:
        text.append(f"\n{names}", style="default")
    return text


def render_table(report: StatsReport, top: int = 10) -> Table:
    """One rich table, a column per input and a row per measure."""
    cols = report.columns
    table = Table(title=f"evolve stats (verb–noun parser: {report.parser})", show_lines=False)
    table.add_column("measure", style="bold", no_wrap=True)
    for col in cols:
        table.add_column(col.name, justify="right", overflow="fold", min_width=12, max_width=34)

    def row(label: str, cells: Iterable[str | Text]) -> None:
        table.add_row(label, *cells)

    row("samples", (_int(c.samples) for c in cols))
    if any(c.rejected_lines for c in cols):
        row("unreadable lines (skipped)", (_int(c.rejected_lines) for c in cols))
    row("Q&A items", (_int(c.qa_items) for c in cols))
    row("Q&A per sample", (_num(c.qa_per_sample) for c in cols))
    row("question length (tokens)", (_num(c.question_tokens_mean, 1) for c in cols))
    row("answer length (tokens)", (_num(c.answer_tokens_mean, 1) for c in cols))
    row("skills length", (_num(c.skills_length_mean) for c in cols))
    row("step length", (_num(c.step_length_mean) for c in cols))
    table.add_section()
    row("judged items", (_int(c.judged_items) if c.judged_items else "—" for c in cols))
    row("judge score mean", (_num(c.score_mean) for c in cols))
    row("accepted score mean", (_num(c.accepted_score_mean) for c in cols))
    row("improvement rate", (_pct(c.improvement_rate) for c in cols))
    table.add_section()
    row("distinct root verbs", (_int(c.distinct_verbs) for c in cols))
    row("distinct verb–noun pairs", (_int(c.distinct_pairs) for c in cols))
    row("verb–noun entropy (bits)", (_num(c.pair_entropy_bits) for c in cols))
    row("no verb–noun pair", (_pct(c.no_pair_share) for c in cols))
    for rank in range(min(top, max((len(c.top_verbs) for c in cols), default=0))):
        row(f"verb #{rank + 1}", (_verb_cell(c, rank, 3 if len(cols) <= 2 else 2) for c in cols))
    table.add_section()
    row("objects from", (c.object_source for c in cols))
    row("object mentions", (_int(c.object_mentions) for c in cols))
    row("distinct objects", (_int(c.distinct_objects) for c in cols))
    row("long-tail share", (_pct(c.long_tail_share) for c in cols))
    return table
