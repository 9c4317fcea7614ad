"""The first pass over a run folder: counts per round, stage and operator, and a stratified reservoir of seeds.

Each (seed, round) outcome — a survivor in kept.jsonl, or a drop at some stage in dropped.jsonl — is filed in
a stratum (operator × kept or dropped-at-stage × score band) that keeps the seeds with the smallest hash of
their id: a reservoir keyed by seed id, so the sample does not depend on the order lines are read in, and
byte ranges counted in separate processes merge into the same result. Only the fields counted are decoded
(msgspec skips the rest). The seed files are read at the same time, for the seeds' own numbers and an
id → place index written to disk (memory stays flat whatever the number of seeds).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import msgspec
import orjson

from evolve.lineage import RunSource, Span, iter_blocks, read_seeds, stable_hash
from evolve.records import Loaded, open_lines

SCORE_BANDS = ((8.0, "high"), (5.0, "mid"), (-math.inf, "low"))
"""Score bands of a stratum: the first band whose floor the outcome's mean score reaches."""
SUMMARY_KINDS = ("annotated", "judged", "kept", "dropped")
"""Round files the first pass reads (evolved.jsonl holds nothing judged.jsonl and dropped.jsonl lack);
round 0's annotated seeds count as its survivors."""
_DIGITS = re.compile(r"\d+(\.\d+)?")


# --------------------------------------------------------------------------- what the first pass decodes


class _Verdict(msgspec.Struct):
    score: float | None = None
    improved: bool | None = None


class _KeptItem(msgspec.Struct):
    question: str = ""
    score: float | None = None
    improved: bool | None = None
    skills: list[msgspec.Raw] = []
    steps: list[msgspec.Raw] = []


class _Judged(msgspec.Struct):
    seed_id: str
    operator: str | None = None
    qa: list[_Verdict] = []


class _Kept(msgspec.Struct):
    seed_id: str
    operator: str | None = None
    qa: list[_KeptItem] = []


class _DropSample(msgspec.Struct):
    operator: str | None = None
    qa: list[_Verdict] = []


class _Drop(msgspec.Struct):
    seed_id: str
    stage: str = "?"
    reason: str = ""
    operator: str | None = None
    sample: _DropSample | None = None


_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "judged": msgspec.json.Decoder(_Judged, strict=False),
    "kept": msgspec.json.Decoder(_Kept, strict=False),
    "annotated": msgspec.json.Decoder(_Kept, strict=False),
    "dropped": msgspec.json.Decoder(_Drop, strict=False),
}


# --------------------------------------------------------------------------- first-pass totals


@dataclass
class RoundTotals:
    """Counts of one round, summed over its files (all fields add up when partial totals merge)."""

    judged_samples: int = 0
    judged_items: int = 0
    verdict_items: int = 0
    improved_items: int = 0
    scored_items: int = 0
    score_sum: float = 0.0
    score_hist: Counter[int] = field(default_factory=Counter)
    kept_samples: int = 0
    kept_items: int = 0
    kept_scored: int = 0
    kept_score_sum: float = 0.0
    kept_score_hist: Counter[int] = field(default_factory=Counter)
    kept_question_words: int = 0
    kept_skills: int = 0
    kept_steps: int = 0
    op_samples: Counter[str] = field(default_factory=Counter)
    op_items: Counter[str] = field(default_factory=Counter)
    op_improved: Counter[str] = field(default_factory=Counter)
    op_kept_items: Counter[str] = field(default_factory=Counter)
    op_dropped_items: Counter[str] = field(default_factory=Counter)
    drop_records: Counter[str] = field(default_factory=Counter)
    drop_items: Counter[str] = field(default_factory=Counter)
    drop_reasons: Counter[str] = field(default_factory=Counter)
    unreadable_lines: int = 0

    def merge(self, other: RoundTotals) -> None:
        """Add another part's counts to these."""
        for spec in fields(self):
            mine, theirs = getattr(self, spec.name), getattr(other, spec.name)
            if isinstance(mine, Counter):
                mine.update(theirs)
            else:
                setattr(self, spec.name, mine + theirs)


@dataclass
class Strata:
    """Per stratum: how many outcomes it holds and the `capacity` seeds of smallest hash among them."""

    capacity: int
    events: Counter[str] = field(default_factory=Counter)
    members: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, stratum: str, seed_id: str, rank: int) -> None:
        """File one outcome of a seed (rank: the seed's hash) under a stratum."""
        self.events[stratum] += 1
        members = self.members.setdefault(stratum, {})
        members[seed_id] = rank
        if len(members) > 2 * self.capacity:
            self._trim(stratum)

    def _trim(self, stratum: str) -> None:
        ranked = sorted(self.members[stratum].items(), key=lambda kv: (kv[1], kv[0]))[: self.capacity]
        self.members[stratum] = dict(ranked)

    def merge(self, other: Strata) -> None:
        """Fold another part's strata into these (the result does not depend on the order of parts)."""
        self.events.update(other.events)
        for stratum, members in other.members.items():
            self.members.setdefault(stratum, {}).update(members)
            self._trim(stratum)

    def choose(self, count: int) -> list[str]:
        """About `count` distinct seeds: every stratum represented, larger strata by more (weighted turns)."""
        names = sorted(self.members)
        if not names or count <= 0:
            return []
        queues = {name: sorted(self.members[name].items(), key=lambda kv: (kv[1], kv[0])) for name in names}
        floor = max(1.0, count / (2 * len(names)))
        spare = max(0.0, count - floor * len(names))
        total = sum(self.events[name] for name in names) or 1
        weight = {name: floor + spare * self.events[name] / total for name in names}
        taken: Counter[str] = Counter()
        position: Counter[str] = Counter()
        chosen: dict[str, str] = {}
        while len(chosen) < count:
            open_names = [name for name in names if position[name] < len(queues[name])]
            if not open_names:
                break
            name = min(open_names, key=lambda n: (taken[n] / weight[n], n))
            seed_id = queues[name][position[name]][0]
            position[name] += 1
            taken[name] += 1
            chosen.setdefault(seed_id, name)
        return list(chosen)


@dataclass
class Partial:
    """What one task of the first pass found."""

    rounds: dict[int, RoundTotals]
    strata: Strata

    def merge(self, other: Partial) -> None:
        """Add another task's findings."""
        for number, totals in other.rounds.items():
            self.rounds.setdefault(number, RoundTotals()).merge(totals)
        self.strata.merge(other.strata)


@dataclass(frozen=True)
class SummaryTask:
    """One byte range of a round file to count."""

    span: Span
    capacity: int
    salt: str


@dataclass
class SeedTotals:
    """The seeds' side of the comparison, counted while their places are indexed."""

    samples: int = 0
    items: int = 0
    question_words: int = 0
    answer_words: int = 0
    skills: int = 0
    steps: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class SeedTask:
    """Read the run's seed files; write one `[id, place]` JSON line per seed into `index`."""

    run: RunSource
    index: Path


def _band(scores: Iterable[float | None]) -> str:
    values = [s for s in scores if s is not None and math.isfinite(s)]
    if not values:
        return "unscored"
    mean = sum(values) / len(values)
    return next(name for floor, name in SCORE_BANDS if mean >= floor)


def _bin(score: float) -> int:
    return int(min(10, max(0, math.floor(score))))


def reason_kind(reason: str) -> str:
    """A drop reason without its particulars (numbers become N), for counting."""
    return _DIGITS.sub("N", reason.strip())[:90] or "?"


def stratum_key(operator: str | None, outcome: str, band: str) -> str:
    """How a stratum is named: operator|outcome|score band."""
    return f"{operator or 'none'}|{outcome}|{band}"


def _count_line(record: Any, totals: RoundTotals, strata: Strata, salt: str) -> None:
    """Add one decoded line to the round's totals and file its outcome in a stratum."""
    rank = stable_hash(record.seed_id, salt)
    if isinstance(record, _Judged):
        op = record.operator or "none"
        totals.judged_samples += 1
        totals.judged_items += len(record.qa)
        totals.op_samples[op] += 1
        totals.op_items[op] += len(record.qa)
        for item in record.qa:
            if item.improved is not None:
                totals.verdict_items += 1
                totals.improved_items += item.improved
                totals.op_improved[op] += item.improved
            if item.score is not None and math.isfinite(item.score):
                totals.scored_items += 1
                totals.score_sum += item.score
                totals.score_hist[_bin(item.score)] += 1
    elif isinstance(record, _Kept):
        totals.kept_samples += 1
        totals.kept_items += len(record.qa)
        totals.op_kept_items[record.operator or "none"] += len(record.qa)
        for kept in record.qa:
            totals.kept_question_words += len(kept.question.split())
            totals.kept_skills += len(kept.skills)
            totals.kept_steps += len(kept.steps)
            if kept.score is not None and math.isfinite(kept.score):
                totals.kept_scored += 1
                totals.kept_score_sum += kept.score
                totals.kept_score_hist[_bin(kept.score)] += 1
        strata.add(stratum_key(record.operator, "kept", _band(k.score for k in record.qa)), record.seed_id, rank)
    elif isinstance(record, _Drop):
        items = record.sample.qa if record.sample is not None else []
        operator = record.operator or (record.sample.operator if record.sample is not None else None)
        totals.drop_records[record.stage] += 1
        totals.drop_items[record.stage] += len(items)
        totals.op_dropped_items[operator or "none"] += len(items)
        totals.drop_reasons[f"{record.stage}\t{reason_kind(record.reason)}"] += 1
        band = _band(item.score for item in items)
        strata.add(stratum_key(operator, f"dropped:{record.stage}", band), record.seed_id, rank)


def summarize(task: SummaryTask) -> Partial:
    """Count one byte range of a round file (the first pass)."""
    span = task.span
    totals = RoundTotals()
    strata = Strata(task.capacity)
    decoder = _DECODERS[span.kind]
    for block, stop in iter_blocks(span):
        for line in block[:stop].splitlines():
            if not line.strip():
                continue
            try:
                record = decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                totals.unreadable_lines += 1
                continue
            _count_line(record, totals, strata, task.salt)
    return Partial({span.round: totals}, strata)


def index_seeds(task: SeedTask) -> SeedTotals:
    """Read the seeds once: their numbers, and where each id stands (for the second pass)."""
    totals = SeedTotals()
    with task.index.open("wb") as out:
        for item in read_seeds(task.run):
            if not isinstance(item, Loaded):
                totals.rejected += 1
                continue
            sample = item.sample
            totals.samples += 1
            totals.items += len(sample.qa)
            for qa in sample.qa:
                totals.question_words += len(qa.question.split())
                totals.answer_words += len(qa.answer.split())
                totals.skills += len(qa.skills)
                totals.steps += len(qa.steps)
            out.write(orjson.dumps([sample.id, item.where]) + b"\n")
    return totals


def places_of(index: Path, ids: set[str]) -> dict[str, str]:
    """The `file:line` of each wanted seed id, from the index the first pass wrote."""
    found: dict[str, str] = {}
    if not index.exists():
        return found
    with open_lines(index) as fp:
        for line in fp:
            seed_id, where = orjson.loads(line)
            if seed_id in ids:
                found.setdefault(seed_id, where)
    return found
