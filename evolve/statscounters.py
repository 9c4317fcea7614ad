"""The counters one `evolve stats` pass fills: per column, the parse cache, and the object-name tally.

:class:`Column` counts a column's items, lengths, verdicts and distinct questions as records stream by;
:class:`ParseCache` remembers the (verb, noun) pair of every first sentence parsed (a 64-bit key and a pair
id each) and which columns wait for texts still with the parser; :class:`ObjectTally` does the same for
object names, holding back the samples whose names are not normalised yet. The engine that answers the
chunks they hand out lives in :mod:`evolve.statspool`; the report is assembled in :mod:`evolve.stats`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from evolve.idset import CompactIdSet
from evolve.records import Sample
from evolve.sampling import Reservoir
from evolve.statspool import TaskKind
from evolve.verbnoun import VerbNoun

CHUNK = 256
"""Texts per parser task: small enough to keep two workers evenly busy to the end, two of spaCy's batches."""


def object_name(raw: str) -> str:
    """The surface form of an object name: a JSON object's name/label field, lowercased, spaces collapsed."""
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


def score_key(score: float) -> str:
    """A judge score as the text key of the score histograms ("7", "6.5")."""
    return f"{score:g}"


def text_key(text: str) -> int:
    """A 64-bit key for the parse cache (deterministic; two texts collide with probability ~n² / 2⁶⁵)."""
    raw = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "little")


class Column:
    """Counters for one column, filled from streamed samples."""

    def __init__(self, index: int, reservoir: Reservoir[str] | None) -> None:
        self.index = index
        self.reservoir = reservoir
        self.samples = 0
        self.rejected = 0
        self.qa = 0
        self.question_tokens = 0
        self.answer_tokens = 0
        self.skills: Counter[int] = Counter()
        self.steps: Counter[int] = Counter()
        self.question_set = CompactIdSet()
        self.distinct_questions = 0
        self.pair_counts: Counter[int] = Counter()
        self.objects: Counter[str] = Counter()
        self.item_objects = False
        self.box_objects = False
        self.verdicts = 0
        self.known = 0
        self.improved = 0
        self.scores: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.score_sum = 0.0
        self.accepted_sum = 0.0

    def add_items(self, sample: Sample) -> tuple[list[str], set[str]]:
        """Count `sample`; return its questions (`clip_question` gives the text parsed) and its object names."""
        self.samples += 1
        questions: list[str] = []
        surface: set[str] = set()
        for item in sample.qa:
            self.qa += 1
            self.question_tokens += len(item.question.split())
            self.answer_tokens += len(item.answer.split())
            self.skills[len(item.skills)] += 1
            self.steps[len(item.steps)] += 1
            self.distinct_questions += self.question_set.add_new(item.question)
            questions.append(item.question)
            surface.update(object_name(o) for o in item.objects)
        surface.discard("")
        self.item_objects = self.item_objects or bool(surface)
        boxes = {object_name(box.label) for box in sample.objects}
        boxes.discard("")
        self.box_objects = self.box_objects or bool(boxes)
        return questions, surface | boxes

    def add_verdicts(self, sample: Sample) -> None:
        """Count the judge's verdicts and scores carried by `sample`'s items."""
        for item in sample.qa:
            if item.improved is not None or item.score is not None:
                self.verdicts += 1
            if item.improved is not None:
                self.known += 1
                self.improved += item.improved
            if item.score is None or not math.isfinite(item.score):
                continue
            key = score_key(item.score)
            self.scores[key] += 1
            self.score_sum += item.score
            if item.improved:
                self.accepted[key] += 1
                self.accepted_sum += item.score


@dataclass
class Chunk:
    """Texts handed to the parser together: questions (with their cache keys) or object names."""

    kind: TaskKind = "pairs"
    texts: list[str] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    drain: bool = False


class ObjectTally:
    """Normalised object names by surface form, and the samples waiting for some of theirs (see compute_stats)."""

    def __init__(self, park_limit: int, chunk_size: int = CHUNK) -> None:
        self.park_limit = park_limit
        self.chunk_size = chunk_size
        self._known: dict[str, str] = {}
        self._asked: set[str] = set()
        self._next = Chunk(kind="objects")
        self._parked: list[tuple[Column, set[str]]] = []

    def add(self, column: Column, surface: set[str]) -> Chunk | None:
        """Count a sample's names for `column` now if all are known, else once they are; maybe a chunk to ask."""
        unknown = [name for name in surface if name not in self._known]
        if not unknown:
            column.objects.update({self._known[name] for name in surface})
            return None
        self._parked.append((column, surface))
        for name in sorted(unknown):
            if name not in self._asked:
                self._asked.add(name)
                self._next.texts.append(name)
        if len(self._parked) >= self.park_limit:
            return self.flush(drain=True)
        return self.flush() if len(self._next.texts) >= self.chunk_size else None

    def flush(self, drain: bool = False) -> Chunk | None:
        """The names collected so far as a chunk (None if there are none and no drain is asked)."""
        if not self._next.texts and not drain:
            return None
        chunk, self._next = self._next, Chunk(kind="objects")
        chunk.drain = drain
        return chunk

    def resolve(self, chunk: Chunk, names: Sequence[str]) -> None:
        """Record normalised names and count every parked sample whose names are now all known."""
        self._known.update(zip(chunk.texts, names, strict=True))
        waiting: list[tuple[Column, set[str]]] = []
        for column, surface in self._parked:
            if all(name in self._known for name in surface):
                column.objects.update({self._known[name] for name in surface})
            else:
                waiting.append((column, surface))
        self._parked = waiting

    @property
    def parked(self) -> int:
        return len(self._parked)


class ParseCache:
    """The parse cache (digest → pair id), the texts in flight and who is waiting for them."""

    def __init__(self, columns: Sequence[Column], chunk_size: int = CHUNK) -> None:
        self.columns = columns
        self.chunk_size = chunk_size
        self.table: list[VerbNoun] = []
        self._ids: dict[VerbNoun, int] = {}
        self._done: dict[int, int] = {}
        self._waiting: dict[int, Counter[int]] = {}
        self._next = Chunk()
        self.queued = 0

    def want(self, column: Column, text: str) -> Chunk | None:
        """Count `text` for `column` now if it was parsed, else when it is; returns a chunk once one is full."""
        key = text_key(text)
        pair_id = self._done.get(key)
        if pair_id is not None:
            column.pair_counts[pair_id] += 1
            return None
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting[column.index] += 1
            return None
        self._waiting[key] = Counter({column.index: 1})
        self._next.texts.append(text)
        self._next.keys.append(key)
        return self.flush() if len(self._next.texts) >= self.chunk_size else None

    def flush(self) -> Chunk | None:
        """The texts collected so far as a chunk (None if there are none)."""
        if not self._next.texts:
            return None
        chunk, self._next = self._next, Chunk()
        self.queued += len(chunk.texts)
        return chunk

    def resolve(self, chunk: Chunk, pairs: Sequence[VerbNoun]) -> None:
        """Record a parsed chunk of questions: cache its pairs and count them for every column that waited."""
        for key, pair in zip(chunk.keys, pairs, strict=True):
            pair = (pair[0], pair[1])
            pair_id = self._ids.get(pair)
            if pair_id is None:
                pair_id = self._ids[pair] = len(self.table)
                self.table.append(pair)
            self._done[key] = pair_id
            for index, count in self._waiting.pop(key).items():
                self.columns[index].pair_counts[pair_id] += count

    @property
    def parsed(self) -> int:
        return len(self._done)
