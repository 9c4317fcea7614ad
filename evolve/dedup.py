"""Near-duplicate questions: the measure, and the round's stage (one sample against its lineage).

What "nearly repeats" means (measured on the demo seeds and on 228 real gpt-4o-mini rewrites):
- a question is normalised (Unicode NFKC, case folded, apostrophes dropped so "what's" is "whats", every other
  non-word character a separator) into its sequence of words;
- its shingles are the set of its words and of its word pairs (bigrams): one changed word weighs more in a short
  question than in a long one ("what color is the dog" vs "... the car": 0.64), and pairs keep a little word order
  (two swapped nouns still score 0.85: "is the dog left of the cat" is a near repeat of "... cat left of the dog");
- two questions' similarity is the exact Jaccard index of their shingle sets; "exact" means equal word sequences.
- Default threshold 0.8: at it the demo seeds' near pairs are rewordings ("how many people are visible in the
  image" / "... in the image approximately", options in another order); from 0.7 to 0.75 half of them are other
  questions on one template ("what is the gender / mood of the people in the image"). No real rewrite reaches
  0.7 against any seed question (the highest: 0.66, its own seed's question with four options added).

Why not a character ratio (rapidfuzz): it gives 0.85 to "Imagine the Moon suddenly increased in mass during a
lunar eclipse" vs "... disappeared during a solar eclipse" (word shingles: 0.44): a changed word changes the
question while changing few characters. Why no MinHash here: a sample has a handful of questions, and the exact
index costs microseconds with no estimation error. The pass over a whole run (`evolve.dedup_pass`) uses MinHash
only to find candidate pairs, then verifies each with this same index, so the stage and the pass agree on every
pair.

Who is whose twin: an exact repeat's twin is the first occurrence of its text; a near repeat's twin is the most
similar (then the earliest) earlier question that is itself no repeat.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from evolve.errors import UsageError
from evolve.records import QAS, Drop, Sample

DEFAULT_THRESHOLD = 0.8
TWIN_CHARS = 240
"""A twin's question is cut to this many characters in a reason."""
_WORD = re.compile(r"\w+")
_APOSTROPHES = str.maketrans("", "", "'’ʼ`")


# --------------------------------------------------------------------------- the measure


def question_words(text: str) -> list[str]:
    """The words of a question after normalisation (NFKC, case folded, apostrophes dropped, punctuation splits)."""
    return list(_words(text))


def _words(text: str) -> tuple[str, ...]:
    folded = (text if text.isascii() else unicodedata.normalize("NFKC", text)).casefold()
    return tuple(_WORD.findall(folded.translate(_APOSTROPHES)))


@functools.lru_cache(maxsize=4096)
def normalised(text: str) -> tuple[str, frozenset[str]]:
    """(the normalised text, its shingles) of a question, remembered: a round compares its rewrites with
    questions that earlier rounds (or the same sample's references) already normalised. Kept small: the chains
    in flight are a few hundred, and many live sets slow the garbage collector down for the whole run."""
    words = _words(text)
    return " ".join(words), frozenset(shingles(words))


def shingles(words: Sequence[str]) -> set[str]:
    """The words and word pairs of a normalised question (a pair holds a space, a word never does)."""
    found = set(words)
    found.update(f"{a} {b}" for a, b in itertools.pairwise(words))
    return found


def jaccard(a: set[str] | frozenset[str], b: set[str] | frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets are equal (1.0)."""
    if not a and not b:
        return 1.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def similarity(a: str, b: str) -> float:
    """How nearly question `a` repeats question `b`: the Jaccard index of their word and word-pair sets."""
    return jaccard(shingles(question_words(a)), shingles(question_words(b)))


def check_threshold(threshold: float) -> None:
    """Refuse a threshold outside (0, 1]."""
    if not 0 < threshold <= 1:
        raise UsageError(f"--threshold: expected a number above 0 and at most 1, got {threshold:g}")


def shown(value: float) -> str:
    """A similarity with two decimals, rounded down (so a pair at 0.7999 never shows as 0.80)."""
    return f"{math.floor(value * 100) / 100:.2f}"


def _quoted(question: str) -> str:
    text = " ".join(question.split())
    return f'"{text if len(text) <= TWIN_CHARS else text[: TWIN_CHARS - 1] + "…"}"'


def item_label(sample_id: str, position: int) -> str:
    """How a reason names a question: its sample's id and its 1-based place in the sample (`000123@r1#2`)."""
    return f"{sample_id}#{position + 1}"


def twin_reason(exact: bool, score: float, label: str, question: str) -> str:
    """The reason of a dedup drop, naming the twin (stable wording: its head is counted in outcomes)."""
    if exact:
        return f"exact duplicate of {label}: {_quoted(question)}"
    return f"near duplicate ({shown(score)}) of {label}: {_quoted(question)}"


# --------------------------------------------------------------------------- the round's stage (small inputs)


@dataclass(frozen=True)
class Twin:
    """The earlier question a rewritten item nearly repeats: a reference of its lineage or an earlier sibling."""

    source: Literal["reference", "sibling"]
    index: int
    """Position in `references`, or in the rewritten items (`questions`) for a sibling."""
    similarity: float
    exact: bool

    def describe(self, questions: Sequence[str], references: Sequence[str]) -> str:
        """A line for QAS.twin: what kind of repeat, how similar, and the twin's text."""
        if self.source == "reference":
            where, text = "an earlier question", references[self.index]
        else:
            where, text = f"rewrite #{self.index + 1}", questions[self.index]
        kind = "exact duplicate" if self.exact else f"near duplicate ({shown(self.similarity)})"
        return f"{kind} of {where}: {_quoted(text)}"


def find_twins(
    questions: Sequence[str], references: Sequence[str], threshold: float = DEFAULT_THRESHOLD
) -> list[Twin | None]:
    """For each rewritten question, None or the earlier question it repeats.

    Earlier questions are the references (the parent's, the seed's, the seed's earlier rounds' questions), in
    their order, then the earlier siblings. An exact repeat's twin is the first occurrence of its text; a near
    repeat's twin is the most similar (then the first) earlier question at or above `threshold` that is itself
    no repeat. Pure and deterministic.
    """
    check_threshold(threshold)
    earlier: list[tuple[Literal["reference", "sibling"], int, frozenset[str], bool]] = []
    first: dict[str, tuple[Literal["reference", "sibling"], int]] = {}  # normalised text -> its first occurrence
    forms = [normalised(text) for text in (*references, *questions)]
    sets = [shingle_set for _, shingle_set in forms]
    index = _PrefixIndex(threshold, sets)
    for position, (norm, shingle_set) in enumerate(forms[: len(references)]):
        first.setdefault(norm, ("reference", position))
        earlier.append(("reference", position, shingle_set, False))
        index.add(shingle_set)
    found: list[Twin | None] = []
    for position in range(len(questions)):
        norm, own = forms[len(references) + position]
        best: Twin | None = None
        if norm in first:
            best = Twin(*first[norm], 1.0, True)
        else:
            size = len(own)
            for candidate in index.candidates(own, len(earlier)):
                source, other, other_shingles, repeat = earlier[candidate]
                # Jaccard is at most min/max of the sizes: most pairs are ruled out without a set operation
                other_size = len(other_shingles)
                if repeat or min(size, other_size) < threshold * max(size, other_size):
                    continue
                score = jaccard(own, other_shingles)
                if score >= threshold and (best is None or score > best.similarity):
                    best = Twin(source, other, score, False)
            first.setdefault(norm, ("sibling", position))
        earlier.append(("sibling", position, own, best is not None))
        index.add(own)
        found.append(best)
    return found


class _PrefixIndex:
    """Prefix filtering for the Jaccard threshold: two shingle sets at or above `t` share one of the first
    |A| - ceil(t·|A|) + 1 shingles of each under any fixed order, so only the sets indexed under a question's
    prefix need a comparison. The order puts rare shingles first (the prefixes then rarely collide); small
    inputs are compared with everything (cheaper)."""

    BRUTE = 48

    def __init__(self, threshold: float, universe: Sequence[frozenset[str]]) -> None:
        self.threshold = threshold
        self.sets: list[frozenset[str]] = []
        self.postings: dict[str, list[int]] | None = None
        self.rank: dict[str, tuple[int, str]] = {}
        if len(universe) > self.BRUTE:
            counts: dict[str, int] = {}
            for shingle_set in universe:
                for token in shingle_set:
                    counts[token] = counts.get(token, 0) + 1
            self.rank = {token: (count, token) for token, count in counts.items()}

    def _prefix(self, shingle_set: frozenset[str]) -> list[str]:
        size = len(shingle_set)
        keep = size - math.ceil(self.threshold * size - 1e-9) + 1
        return sorted(shingle_set, key=self.rank.__getitem__)[: max(keep, 1)]

    def add(self, shingle_set: frozenset[str]) -> None:
        self.sets.append(shingle_set)
        if self.postings is None and self.rank and len(self.sets) > self.BRUTE:
            self.postings = {}
            for position, earlier in enumerate(self.sets):
                for token in self._prefix(earlier):
                    self.postings.setdefault(token, []).append(position)
        elif self.postings is not None:
            for token in self._prefix(shingle_set):
                self.postings.setdefault(token, []).append(len(self.sets) - 1)

    def candidates(self, shingle_set: frozenset[str], count: int) -> list[int]:
        """Positions of the earlier sets that may reach the threshold with `shingle_set`, in order."""
        if self.postings is None:
            return list(range(count))
        found = {p for token in self._prefix(shingle_set) for p in self.postings.get(token, ())}
        if not shingle_set:
            found.update(p for p, earlier in enumerate(self.sets) if not earlier)
        return sorted(found)


def dedup_sample(
    child: Sample, lineage: Sequence[Sample], threshold: float = DEFAULT_THRESHOLD
) -> tuple[Sample | None, list[Drop]]:
    """Split a rewritten sample into its items that repeat no earlier question (None: none left) and one Drop
    (stage dedup, the twin named by id and question) per repeat; `lineage` holds the seed and earlier versions."""
    places = [(sample.id, pos, item.question) for sample in lineage for pos, item in enumerate(sample.qa)]
    questions = [item.question for item in child.qa]
    twins = find_twins(questions, [question for *_, question in places], threshold)
    kept: list[QAS] = []
    drops: list[Drop] = []
    for item, twin in zip(child.qa, twins, strict=True):
        if twin is None:
            kept.append(item)
            continue
        if twin.source == "reference":
            sample_id, pos, question = places[twin.index]
        else:
            sample_id, pos, question = child.id, twin.index, questions[twin.index]
        reason = twin_reason(twin.exact, twin.similarity, item_label(sample_id, pos), question)
        drops.append(dedup_drop(child, item, reason))
    return (child.model_copy(update={"qa": kept}) if kept else None), drops


def dedup_drop(sample: Sample, item: QAS, reason: str) -> Drop:
    """The Drop of one repeating item: its sample holding only that item, with `twin` set to the reason."""
    repeat = item.model_copy(update={"twin": reason})
    return Drop(
        id=sample.id, seed_id=sample.seed_id, round=sample.round, stage="dedup", reason=reason,
        operator=sample.operator, sample=sample.model_copy(update={"qa": [repeat]}),
    )  # fmt: skip
