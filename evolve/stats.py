"""Diversity and complexity of seed and evolved files, side by side: one column per file (or per round).

Definitions (also in ``StatsReport.definitions``):

- *tokens*: whitespace-separated words (``len(text.split())``), for question and answer lengths.
- *distinct questions*: distinct question texts (exact string equality) among a column's Q&A items;
  the duplicate share is ``1 - distinct / items`` (15% of the demo seeds' questions repeat another one).
- *skills length* / *step length*: ``len(item.skills)`` / ``len(item.steps)`` per Q&A item, zeros included.
- *judge numbers*: over the items of the column's judge source (``round-N/judged.jsonl`` for a round,
  ``baseline.jsonl`` for the seeds of a run folder, else the file itself) that carry a verdict. The
  improvement rate is ``improved is True`` over items with ``improved`` set; ``score_mean`` is over every
  scored item, ``accepted_score_mean`` over items judged improved (the paper's "mean accepted score").
  Seeds scored against themselves are the paper's Conv0, round N's items judged improved its ConvN.
- *verb–noun pairs*: one per question, from :mod:`evolve.verbnoun` (its first sentence). ``distinct_verbs``
  counts verbs with or without a noun; pairs need both parts; entropy is ``-Σ p·log2 p`` in bits over the
  pair frequencies; ``no_pair_share`` is the share of questions without a complete pair.
- *sampling* (``--sample N``): the verb–noun numbers of a column with more than N questions are measured on
  a uniform random sample of N of its questions (a seeded reservoir: the same seed gives the same sample);
  shares then carry their 95% margin of error, and distinct counts and entropy are those *of the sample*
  (they grow with the sample size, so compare columns at equal sample sizes). Every other number counts all
  items.
- *objects*: per sample, the distinct normalised names among its detection-box labels and its Q&A items'
  ``objects``, each counted once per sample (a "mention" is a sample naming the object), for seeds and
  rounds alike: evolved samples carry their seed's boxes, so a round's extra mentions are the objects its
  rewrites added. Names are lowercased and reduced to the head noun's lemma with its compound nouns
  (:class:`evolve.verbnoun.ObjectNames`: "yellow cat" → "cat", "traffic lights" → "traffic light").
- *long-tail share*: the share of object mentions whose name is *not* among the top 20 % most frequent
  distinct names (``ceil(0.2 × distinct)`` names, ties broken alphabetically). Higher means the mentions are
  spread over rarer objects.

Memory: records are streamed. A column keeps counters, 8 bytes per distinct question for its distinct count
(and 8 more over all columns) and, with ``--sample``, its sample; the parse cache keeps a 64-bit digest and
a pair id per distinct first sentence parsed (about 100 bytes) and only the texts waiting for the parser.
Parsing runs in this process, in ``--workers`` processes or on Ray (:mod:`evolve.statspool`); the numbers are
the same on every engine (the entropy sums its terms exactly, whatever order the pairs were parsed in).
"""

from __future__ import annotations

import math
import random
import re
import resource
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from evolve.errors import InputError, UsageError
from evolve.idset import CompactIdSet
from evolve.records import Rejected, Sample
from evolve.runfolder import RunFolder
from evolve.sampling import Reservoir, margin_of_error
from evolve.sources import ColumnMap, read_source
from evolve.statscounters import Chunk, Column, ObjectTally, ParseCache
from evolve.statspool import ParseEngine, ParserSpec, as_engine, make_engine
from evolve.verbnoun import VerbNoun, VerbNounExtractor, clip_question

TOP_VERBS = 20
TOP_NOUNS = 5
TOP_OBJECTS = 100
HEAD_SHARE = 0.2
_ROUND_DIR = re.compile(r"^round-(\d+)$")

DEFINITIONS = {
    "tokens": "whitespace-separated words",
    "distinct_questions": "distinct question texts (exact match) among the column's Q&A items",
    "duplicate_question_share": "1 - distinct questions / Q&A items",
    "skills_length": "len(skills) per Q&A item, zeros included",
    "step_length": "len(steps) per Q&A item, zeros included",
    "improvement_rate": "items judged improved / items with a verdict, in the column's judge source",
    "score_mean": "mean judge score over every scored item of the judge source (seeds: Conv0, round N: ConvN)",
    "accepted_score_mean": "mean judge score over items judged improved",
    "verb_noun": "root-closest verb and its first direct noun object of the question's first sentence",
    "pair_entropy_bits": "-sum p*log2(p) over verb–noun pair frequencies",
    "no_pair_share": "questions without both a verb and a noun / questions",
    "verb_noun_sample": (
        "with --sample N, a column's verb–noun numbers come from a seeded uniform sample of N of its questions: "
        "shares are estimates with a 95% margin of error (*_moe_95), distinct counts and entropy are the sample's"
    ),
    "objects": (
        "per sample, distinct normalised names (head-noun lemma with compound nouns) of its box labels and its "
        "items' objects, counted once per sample; the same rule for seeds and rounds"
    ),
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
    columns: str | None = None
    """The run's --columns, for seed tables whose column names are not evolve's."""


class StatsOptions(BaseModel):
    """How `evolve stats` parses and samples (the flags of the command)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parser: Literal["spacy", "benepar"] = "spacy"
    benepar_model: str | None = None
    sample: int | None = Field(None, ge=1, description="questions per column for the verb–noun numbers")
    sample_seed: int = 0
    workers: int = Field(1, ge=1)
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    progress: bool = True


class NameCount(BaseModel):
    """A name and how often it occurs."""

    name: str
    count: int


class VerbStat(BaseModel):
    """A root verb, the questions it heads, and its most frequent direct-object nouns."""

    verb: str
    count: int
    with_noun: int
    share: float = Field(description="count / the questions the column's verb–noun numbers are measured on")
    share_moe_95: float | None = Field(None, description="95% margin of error of share (sampled columns)")
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
    distinct_questions: int
    duplicate_question_share: float | None
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
    verb_noun_sampled: bool = Field(description="the verb–noun numbers are estimates from a uniform sample")
    verb_noun_questions: int = Field(description="questions the verb–noun numbers are measured on")
    share_moe_95: float | None = Field(None, description="worst-case (p = 0.5) 95% margin of error of shares")
    questions_with_verb: int
    questions_with_pair: int
    distinct_verbs: int
    distinct_pairs: int
    pair_entropy_bits: float | None
    no_pair_share: float | None
    no_pair_share_moe_95: float | None = None
    top_verbs: list[VerbStat] = Field(description="verbs ranked by the questions they head")
    top_pair_verbs: list[VerbStat] = Field(description="verbs ranked by their complete verb–noun pairs")
    object_source: Literal["boxes+items", "items", "boxes", "none"]
    object_mentions: int
    distinct_objects: int
    long_tail_share: float | None
    top_objects: list[NameCount]


class StatsReport(BaseModel):
    """The whole comparison; ``model_dump_json()`` is what ``evolve stats --json`` writes."""

    parser: str
    sample: int | None = None
    sample_seed: int | None = None
    distinct_questions: int = Field(description="distinct question texts over all columns")
    parsed_texts: int = Field(description="distinct first sentences parsed (the parse cache's size)")
    engine: str = "local"
    workers: int = 1
    parse_seconds: float = Field(description="seconds the parsers spent on questions, summed over workers")
    object_seconds: float = Field(0.0, description="seconds spent normalising object names, summed over workers")
    wall_seconds: float = 0.0
    peak_rss_mb: float = Field(0.0, description="this process's peak resident memory (workers not included)")
    columns: list[ColumnStats]
    definitions: dict[str, str] = Field(default_factory=lambda: dict(DEFINITIONS))


RUN_FIELDS = frozenset({"engine", "workers", "parse_seconds", "object_seconds", "wall_seconds", "peak_rss_mb"})
"""Report fields that describe how it was computed, not the data (they differ between engines and runs)."""


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


def _run_folder(path: Path) -> list[StatsInput]:
    folder = RunFolder(path)
    try:
        manifest = folder.read_run_json() or {}
    except UsageError as exc:
        raise InputError(str(exc)) from exc
    columns = (manifest.get("config") or {}).get("columns")
    items: list[StatsInput] = []
    rounds = folder.rounds_present()
    annotated = folder.round(0).kept
    # --annotate: the seeds the run evolved from are round 0's, with their annotations
    seeds = [annotated] if 0 in rounds and annotated.is_file() else _seed_paths(folder, manifest)
    if seeds:
        judged = (folder.baseline,) if folder.baseline.is_file() else ()
        items.append(StatsInput(name="seeds", kind="seeds", paths=tuple(seeds), judged=judged, columns=columns))
    for number in rounds:
        files = folder.round(number)
        if number == 0 or not files.kept.is_file():
            continue
        judged = (files["judged"],) if files["judged"].is_file() else ()
        items.append(StatsInput(name=f"round-{number}", kind="round", paths=(files.kept,), judged=judged))
    if not items:
        raise InputError(f"{path}: not a run folder (no run.json seeds and no round-N/kept.jsonl)")
    return items


def _seed_paths(folder: RunFolder, manifest: dict[str, Any]) -> list[Path]:
    seeds = manifest.get("seeds")
    if isinstance(seeds, str):
        seeds = [seeds]
    if not isinstance(seeds, list):
        return []
    out: list[Path] = []
    for entry in seeds:
        candidate = Path(str(entry)).expanduser()
        if not candidate.is_absolute() and (folder.root / candidate).exists():
            candidate = folder.root / candidate
        if not candidate.exists():
            raise InputError(f"{folder.run_json}: seed file {entry} not found (relative to the run folder or here)")
        out.append(candidate)
    return out


# --------------------------------------------------------------------------- accumulation


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def entropy_bits(counts: Iterable[int]) -> float | None:
    """Shannon entropy in bits of a frequency distribution; None when it is empty."""
    values = [c for c in counts if c > 0]
    total = sum(values)
    if not total:
        return None
    return max(0.0, -math.fsum(c / total * math.log2(c / total) for c in values))  # fsum: order-free


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


def _verb_stats(col: Column, table: Sequence[VerbNoun]) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    verbs: Counter[str] = Counter()
    full: Counter[tuple[str, str]] = Counter()
    for pair_id, n in col.pair_counts.items():
        verb, noun = table[pair_id]
        if verb is None:
            continue
        verbs[verb] += n
        if noun is not None:
            full[verb, noun] += n
    return verbs, full


def _object_source(col: Column) -> Literal["boxes+items", "items", "boxes", "none"]:
    if col.item_objects and col.box_objects:
        return "boxes+items"
    if col.item_objects:
        return "items"
    return "boxes" if col.box_objects else "none"


def _finish(spec: StatsInput, col: Column, table: Sequence[VerbNoun]) -> ColumnStats:
    verbs, full = _verb_stats(col, table)
    by_verb: dict[str, Counter[str]] = {}
    for (verb, noun), n in full.items():
        by_verb.setdefault(verb, Counter())[noun] = n
    with_noun = Counter({verb: sum(nouns.values()) for verb, nouns in by_verb.items()})
    measured = sum(col.pair_counts.values())
    sampled = measured < col.qa

    def moe(share: float | None) -> float | None:
        return None if not sampled or share is None else margin_of_error(share, measured, col.qa)

    def stat(verb: str) -> VerbStat:
        nouns = by_verb.get(verb, Counter())
        share = verbs[verb] / measured if measured else 0.0
        return VerbStat(
            verb=verb,
            count=verbs[verb],
            with_noun=with_noun[verb],
            share=share,
            share_moe_95=moe(share),
            nouns=_top(nouns, TOP_NOUNS),
        )

    with_pair = sum(full.values())
    no_pair = _share(measured - with_pair, measured)
    accepted = sum(col.accepted.values())
    return ColumnStats(
        name=spec.name,
        kind=spec.kind,
        files=[str(p) for p in spec.paths],
        judged_files=[str(p) for p in (spec.judged or spec.paths)],
        samples=col.samples,
        rejected_lines=col.rejected,
        qa_items=col.qa,
        distinct_questions=col.distinct_questions,
        duplicate_question_share=_share(col.qa - col.distinct_questions, col.qa),
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
        verb_noun_sampled=sampled,
        verb_noun_questions=measured,
        share_moe_95=moe(0.5),
        questions_with_verb=sum(verbs.values()),
        questions_with_pair=with_pair,
        distinct_verbs=len(verbs),
        distinct_pairs=len(full),
        pair_entropy_bits=entropy_bits(full.values()),
        no_pair_share=no_pair,
        no_pair_share_moe_95=moe(no_pair),
        top_verbs=[stat(item.name) for item in _top(verbs, TOP_VERBS)],
        top_pair_verbs=[stat(item.name) for item in _top(with_noun, TOP_VERBS)],
        object_source=_object_source(col),
        object_mentions=sum(col.objects.values()),
        distinct_objects=len(col.objects),
        long_tail_share=long_tail_share(col.objects),
        top_objects=_top(col.objects, TOP_OBJECTS),
    )


def _stream(paths: Iterable[Path], col: Column | None = None, columns: str | None = None) -> Iterator[Sample]:
    """The good samples of `paths` (any seed format), in order; unreadable records are counted on `col` and
    skipped."""
    mapping = ColumnMap.parse(columns)
    for path in paths:
        for loaded in read_source(path, columns=mapping):
            if isinstance(loaded, Rejected):
                if col is not None:
                    col.rejected += 1
                continue
            yield loaded.sample


def _reservoir(sample: int | None, seed: int, name: str) -> Reservoir[str] | None:
    """A column's sample of questions, its draws seeded by (seed, column name): reproducible, order-free."""
    return None if sample is None else Reservoir(sample, random.Random(f"{seed}/{name}"))


@dataclass
class _Bar:
    """The progress display: a reading task per column and one parsing task."""

    progress: Progress
    parsing: TaskID | None = None

    def parsed(self, parses: ParseCache) -> None:
        if self.parsing is None:
            self.parsing = self.progress.add_task("parsing questions", total=None)
        self.progress.update(self.parsing, completed=parses.parsed, total=max(parses.queued, 1))


class _Reading:
    """One pass over the inputs: the columns' counters, and the work it hands the engine as it piles up."""

    def __init__(self, inputs: Sequence[StatsInput], park_limit: int, sample: int | None, seed: int, bar: _Bar) -> None:
        self.inputs = inputs
        self.columns = [Column(i, _reservoir(sample, seed, spec.name)) for i, spec in enumerate(inputs)]
        self.parses = ParseCache(self.columns)
        self.objects = ObjectTally(park_limit)
        self.everything = CompactIdSet() if len(inputs) > 1 else None  # one column: its own count is the union
        self.distinct = 0
        self.bar = bar

    def chunks(self) -> Iterator[Chunk]:
        """Read every column, yielding chunks as they fill (the engine pulls the next one when it has room)."""
        progress = self.bar.progress
        for spec, col in zip(self.inputs, self.columns, strict=True):
            task = progress.add_task(f"reading {spec.name}", total=None)
            for record in _stream(spec.paths, col, spec.columns):
                questions, surface = col.add_items(record)
                if self.everything is not None:
                    self.distinct += sum(self.everything.add_new(item.question) for item in record.qa)
                if not spec.judged:
                    col.add_verdicts(record)
                progress.advance(task)
                if surface and (chunk := self.objects.add(col, surface)) is not None:
                    yield chunk
                for question in questions:
                    if col.reservoir is not None:  # only the questions the sample keeps are clipped
                        col.reservoir.offer_from(clip_question, question)
                    elif (chunk := self.parses.want(col, clip_question(question))) is not None:
                        yield chunk
            for record in _stream(spec.judged):
                col.add_verdicts(record)
                progress.advance(task)
            progress.update(task, total=progress.tasks[task].completed)
            for text in col.reservoir.items if col.reservoir is not None else ():
                if (chunk := self.parses.want(col, text)) is not None:
                    yield chunk
        for last in (self.objects.flush(), self.parses.flush()):
            if last is not None:
                yield last

    @property
    def distinct_questions(self) -> int:
        """Distinct question texts over all columns."""
        if self.everything is None:
            return sum(col.distinct_questions for col in self.columns)
        return self.distinct

    def take(self, chunk: Chunk, results: Sequence[Any]) -> None:
        """Record the engine's answer to a chunk."""
        if chunk.kind == "objects":
            self.objects.resolve(chunk, results)
        else:
            self.parses.resolve(chunk, results)
            self.bar.parsed(self.parses)


def compute_stats(
    inputs: Sequence[StatsInput],
    parser: ParseEngine | VerbNounExtractor,
    *,
    sample: int | None = None,
    sample_seed: int = 0,
    progress: bool = True,
) -> StatsReport:
    """Read every column once (streaming), parse each distinct first sentence once, and return the report.

    `parser` is an engine of :mod:`evolve.statspool` or an extractor (run in this process); `sample` limits
    each column's verb–noun numbers to a seeded uniform sample of that many questions.
    """
    if sample is not None and sample < 1:
        raise UsageError("--sample: use 1 or more questions")
    engine = as_engine(parser)
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar = _Bar(Progress(*columns, console=Console(stderr=True), transient=True, disable=not progress))
    reading = _Reading(inputs, engine.park_limit, sample, sample_seed, bar)
    with bar.progress if progress else nullcontext():
        for chunk, results in engine.imap(reading.chunks()):
            reading.take(chunk, results)
    if reading.objects.parked:
        raise RuntimeError(f"{reading.objects.parked} samples still wait for object names")  # a bug, not bad input
    return StatsReport(
        parser=engine.name,
        sample=sample,
        sample_seed=sample_seed if sample is not None else None,
        distinct_questions=reading.distinct_questions,
        parsed_texts=reading.parses.parsed,
        engine=engine.label,
        workers=engine.workers,
        parse_seconds=round(engine.busy["pairs"], 3),
        object_seconds=round(engine.busy["objects"], 3),
        wall_seconds=round(time.perf_counter() - started, 3),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        columns=[_finish(spec, col, reading.parses.table) for spec, col in zip(inputs, reading.columns, strict=True)],
    )


def run_stats(paths: Sequence[Path], options: StatsOptions) -> StatsReport:
    """`evolve stats`: resolve the inputs, start the engine the options ask for, compute, stop the engine."""
    inputs = resolve_inputs(paths)
    spec = ParserSpec(parser=options.parser, benepar_model=options.benepar_model)
    engine = make_engine(spec, workers=options.workers, executor=options.executor, ray_address=options.ray_address)
    try:
        return compute_stats(
            inputs,
            engine,
            sample=options.sample,
            sample_seed=options.sample_seed,
            progress=options.progress,
        )
    finally:
        engine.close()


# --------------------------------------------------------------------------- table


def _int(value: int) -> str:
    return f"{value:,}"


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _pct_moe(value: float | None, moe: float | None) -> str:
    """A share, with "±x.x" (percentage points, 95%) when it is a sampled estimate."""
    return _pct(value) if moe is None or value is None else f"~{100 * value:.1f}% ±{100 * moe:.1f}"


def _measured_on(col: ColumnStats) -> str:
    if not col.verb_noun_sampled:
        return f"all {col.verb_noun_questions:,}"
    return f"sample {col.verb_noun_questions:,} of {col.qa_items:,}"


def _verb_cell(col: ColumnStats, rank: int, nouns: int) -> Text:
    if rank >= len(col.top_verbs):
        return Text("")
    verb = col.top_verbs[rank]
    amount = f"~{100 * verb.share:.1f}%" if col.verb_noun_sampled else f"{verb.count:,}"
    text = Text(f"{verb.verb} {amount}", style="bold", justify="left")
    names = ", ".join(n.name for n in verb.nouns[:nouns])
    if names:
        text.append(f"\n{names}", style="default")
    return text


def render_table(report: StatsReport, top: int = 10) -> Table:
    """One rich table, a column per input and a row per measure."""
    cols = report.columns
    sampled = any(c.verb_noun_sampled for c in cols)
    caption = (
        "~ = estimate from a uniform sample of questions (verb–noun rows only); ± = 95% margin of error, "
        "in percentage points; distinct counts and entropy are the sample's"
        if sampled
        else None
    )
    table = Table(title=f"evolve stats (verb–noun parser: {report.parser})", caption=caption, show_lines=False)
    table.add_column("measure", style="bold", no_wrap=True)
    for col in cols:
        table.add_column(col.name, justify="right", overflow="fold", min_width=12, max_width=34)

    def row(label: str, cells: Iterable[str | Text]) -> None:
        table.add_row(label, *cells)

    row("samples", (_int(c.samples) for c in cols))
    if any(c.rejected_lines for c in cols):
        row("unreadable lines (skipped)", (_int(c.rejected_lines) for c in cols))
    row("Q&A items", (_int(c.qa_items) for c in cols))
    row("distinct questions", (_int(c.distinct_questions) for c in cols))
    row("duplicate questions", (_pct(c.duplicate_question_share) for c in cols))
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
    if sampled:
        row("verb–noun measured on", (_measured_on(c) for c in cols))
    row("distinct root verbs", (_int(c.distinct_verbs) for c in cols))
    row("distinct verb–noun pairs", (_int(c.distinct_pairs) for c in cols))
    row("verb–noun entropy (bits)", (_num(c.pair_entropy_bits) for c in cols))
    row("no verb–noun pair", (_pct_moe(c.no_pair_share, c.no_pair_share_moe_95) for c in cols))
    for rank in range(min(top, max((len(c.top_verbs) for c in cols), default=0))):
        row(f"verb #{rank + 1}", (_verb_cell(c, rank, 3 if len(cols) <= 2 else 2) for c in cols))
    table.add_section()
    row("objects from", (c.object_source for c in cols))
    row("object mentions (samples × name)", (_int(c.object_mentions) for c in cols))
    row("distinct objects (normalised)", (_int(c.distinct_objects) for c in cols))
    row("long-tail share", (_pct(c.long_tail_share) for c in cols))
    return table
