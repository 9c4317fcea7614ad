"""`evolve dedup`: repeated questions over files (a report) or over a finished run folder (its repeats dropped).

Memory stays flat on millions of questions (bench row 10: 1M questions in 168 MB, 100k in 164 MB). The questions
go into a temporary SQLite file (TMPDIR), which ranks them in a stable order (seeds, then rounds, then seed id and
position: the survivor of two twins never depends on file order or sharding) and groups equal normalised texts.
The MinHash signatures (rensa, in Rust) of the distinct texts are cut into band keys (`band_layout`: as many rows
per band as a pair at the threshold allows) and written to one file per band and key range, each small enough to
sort in memory (~130k records); texts sharing a key are candidate pairs (each paired with at most `BUCKET_PEERS`
earlier texts of its bucket, so a template repeated a million times costs linear work), verified in SQLite with
the exact measure of `evolve.dedup`. What stays in memory grows by one byte per question. Over a run, seeds are
references that always survive; a kept rewrite that repeats anything earlier moves to dropped.jsonl (stage dedup,
its twin named by id and question), and its outcome line, final.jsonl and run.json follow.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import rensa  # type: ignore[import-untyped]
from pydantic import BaseModel, Field
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evolve.accounting import Prices
from evolve.dedup import (
    DEFAULT_THRESHOLD,
    check_threshold,
    dedup_drop,
    item_label,
    jaccard,
    question_words,
    shingles,
    twin_reason,
)
from evolve.errors import InputError, UsageError
from evolve.lineage import open_run
from evolve.manifest import read_manifest, summarize_round, write_manifest
from evolve.records import Loaded, Outcome, Sample, open_lines
from evolve.runfolder import RunFolder, iter_json_lines, run_lock, write_final
from evolve.sources import ImageStore, read_run_seeds, read_seed_files

NUM_PERM = 128
MINHASH_SEED = 20240905
BAND_RECALL = 0.98
"""Banding is chosen so that a pair exactly at the threshold becomes a candidate with at least this probability."""
BUCKET_PEERS = 32
BATCH = 20_000
SIGNATURE_BATCH = 2048
"""Texts signed at a time: a signature is 128 Python ints (~4.6 KB) until it becomes a numpy row."""
PARTITION_RECORDS = 1 << 17
"""Band files are split by key range so that one holds about this many records (sorted in memory: ~3 MB)."""
MAX_PARTITION_BITS = 6
"""At most 64 key ranges per band (64 × bands files open at once)."""
BAND_RECORD = np.dtype([("key", "<u8"), ("rep", "<i4")])
EXACT_CLASS = "dedup: exact duplicate"
NEAR_CLASS = "dedup: near duplicate"
"""Outcome reason classes of the run pass's drops."""


# --------------------------------------------------------------------------- the report


class RoundCount(BaseModel):
    """Questions of one round (0: seeds) and how many of them repeat an earlier one."""

    round: int
    questions: int
    exact: int = 0
    near: int = 0


class Pair(BaseModel):
    """A question found to repeat an earlier one, and that twin."""

    similarity: float
    exact: bool
    item: str
    question: str
    twin: str
    twin_question: str


class Repeated(BaseModel):
    """A normalised question and how many times it occurs."""

    question: str
    count: int


class DedupReport(BaseModel):
    """What a dedup pass found (and, over a run folder, removed)."""

    threshold: float
    questions: int = 0
    distinct: int = 0
    rounds: list[RoundCount] = Field(default_factory=list)
    candidate_pairs: int = 0
    near_pairs: int = 0
    """Verified pairs of distinct texts at or above the threshold."""
    near_examples: list[Pair] = Field(default_factory=list)
    """Near (not exact) repeats spread over the similarity range, lowest first: the ones to judge a threshold by."""
    most_repeated: list[Repeated] = Field(default_factory=list)
    unreadable: int = 0
    """Records that could not be read (skipped)."""
    run: str | None = None
    written: bool = False
    seconds: float = 0.0

    @property
    def exact(self) -> int:
        """Exact repeats over all rounds."""
        return sum(r.exact for r in self.rounds)

    @property
    def near(self) -> int:
        """Near repeats over all rounds."""
        return sum(r.near for r in self.rounds)


def render_report(report: DedupReport) -> RenderableType:
    """The counts per round, the near examples and the most repeated questions, for the terminal."""
    title = f"evolve dedup · threshold {report.threshold:g} · {report.questions:,} questions"
    table = Table(title=title, title_justify="left")
    for column in ("round", "questions", "exact", "near", "share"):
        table.add_column(column, justify="right")
    for r in report.rounds:
        share = (r.exact + r.near) / r.questions if r.questions else 0.0
        label = "seeds" if r.round == 0 and report.run else str(r.round)
        table.add_row(label, f"{r.questions:,}", f"{r.exact:,}", f"{r.near:,}", f"{share:.1%}")
    parts: list[RenderableType] = [table]
    if report.near_examples:
        examples = Table(title="near repeats (lowest similarity first)", title_justify="left", show_lines=True)
        for column in ("sim.", "question", "twin"):
            examples.add_column(column, overflow="fold")
        for pair in report.near_examples:
            examples.add_row(
                f"{pair.similarity:.2f}", f"{pair.item}: {pair.question}", f"{pair.twin}: {pair.twin_question}"
            )
        parts.append(examples)
    if report.most_repeated:
        repeated = Table(title="most repeated questions", title_justify="left")
        repeated.add_column("times", justify="right")
        repeated.add_column("question (normalised)", overflow="fold")
        for entry in report.most_repeated:
            repeated.add_row(f"{entry.count:,}", entry.question)
        parts.append(repeated)
    return Group(*parts)


# --------------------------------------------------------------------------- the index on disk


def band_layout(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band): the most rows per band that still make a pair at `threshold` a candidate with
    probability BAND_RECALL (more rows: fewer chance candidates among dissimilar questions)."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= BAND_RECALL:
            return bands, rows
    return num_perm, 1


def _digest(text: str) -> int:
    """A signed 64-bit digest of a normalised question (SQLite's INTEGER)."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True
    )


def _bucket_pairs(records: np.ndarray) -> Iterator[tuple[list[int], list[int]]]:
    """(earlier, later) rank lists of the pairs in the buckets of one band file: within a bucket (equal keys, ranks
    ascending) each text is paired with the first BUCKET_PEERS texts before it."""
    if len(records) < 2:
        return
    order = np.argsort(records["key"], kind="stable").astype(np.int32)  # written in rank order: stable keeps it
    keys, ranks = records["key"][order], records["rep"][order]
    del order
    position = np.arange(len(keys), dtype=np.int32)
    starts = np.where(np.concatenate(([True], keys[1:] != keys[:-1])), position, 0)
    np.maximum.accumulate(starts, out=starts)
    within = position - starts
    for peer in range(BUCKET_PEERS):
        later = np.nonzero(within > peer)[0]
        if not len(later):
            break
        yield ranks[starts[later] + peer].tolist(), ranks[later].tolist()


class Steps:
    """A rich progress display of the pass's steps (silent when disabled or not on a terminal)."""

    def __init__(self, enabled: bool) -> None:
        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, disable=not (enabled and console.is_terminal),
        )  # fmt: skip

    @contextmanager
    def step(self, name: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        """A bar for one step; the yielded function advances it."""
        task = self.progress.add_task(name, total=total)
        yield lambda n=1: self.progress.advance(task, n)
        self.progress.update(
            task, total=self.progress.tasks[task].completed, completed=self.progress.tasks[task].completed
        )

    def __enter__(self) -> Steps:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


@dataclass(frozen=True)
class Repeat:
    """A question that repeats an earlier surviving one, with its twin."""

    position: int
    similarity: float
    exact: bool
    twin_sample: str
    twin_position: int
    twin_question: str

    def reason(self) -> str:
        """The drop reason naming the twin."""
        return twin_reason(
            self.exact, self.similarity, item_label(self.twin_sample, self.twin_position), self.twin_question
        )


class QuestionIndex:
    """Every question of a run (or of files) in a temporary SQLite file, and the repeats among them."""

    def __init__(self, workdir: Path, threshold: float) -> None:
        check_threshold(threshold)
        self.threshold = threshold
        self.workdir = workdir
        self.db = sqlite3.connect(workdir / "questions.sqlite")
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", "cache_size=-16000",
                       "locking_mode=EXCLUSIVE"):  # fmt: skip
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute(
            "CREATE TABLE items(round INTEGER, seed_id TEXT, pos INTEGER, sample_id TEXT, question TEXT, fixed INTEGER)"
        )
        self._pending: list[tuple[int, str, int, str, str, int]] = []
        self.count = 0
        self.candidates = 0
        self.verified = 0
        self.bands = 0
        self.partitions = 1

    def add(self, sample: Sample, number: int, *, fixed: bool) -> None:
        """Index the questions of a sample as round `number`'s (`fixed`: a reference that always survives: a seed)."""
        self._pending.extend(
            (number, sample.seed_id, pos, sample.id, item.question, int(fixed)) for pos, item in enumerate(sample.qa)
        )
        if len(self._pending) >= BATCH:
            self._flush()

    def add_raw(self, record: dict[str, Any], number: int) -> None:
        """Index the questions of a record line of round `number` as evolve wrote it (our own output: no validation)."""
        seed_id, sample_id = str(record["seed_id"]), str(record["id"])
        self._pending.extend(
            (number, seed_id, pos, sample_id, str(item.get("question", "")), 0)
            for pos, item in enumerate(record.get("qa") or ())
        )
        if len(self._pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        self.db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", self._pending)
        self.count += len(self._pending)
        self._pending = []

    @property
    def size(self) -> int:
        """Questions added so far."""
        return self.count + len(self._pending)

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    # -- finding the repeats

    def build(self, steps: Steps) -> None:
        """Rank, group equal texts, band, verify candidates and decide the repeats."""
        self._flush()
        db = self.db
        with steps.step("ranking"):
            db.execute(
                "CREATE TABLE ranked(rank INTEGER PRIMARY KEY, round INTEGER, seed_id TEXT, pos INTEGER, "
                "sample_id TEXT, question TEXT, fixed INTEGER)"
            )
            db.execute(
                "INSERT INTO ranked SELECT row_number() OVER (ORDER BY round, seed_id, pos, rowid), round, seed_id, "
                "pos, sample_id, question, fixed FROM items"
            )
            db.execute("DROP TABLE items")
        self._normalise(steps)
        self._band(steps)
        self._pair(steps)
        self._verify(steps)
        self._decide(steps)

    def _normalise(self, steps: Steps) -> None:
        db = self.db
        db.execute("CREATE TABLE texts(rank INTEGER PRIMARY KEY, digest INTEGER, norm TEXT)")
        with steps.step("normalising", self.count) as advance:
            rows: list[tuple[int, int, str]] = []
            for rank, question in db.execute("SELECT rank, question FROM ranked ORDER BY rank"):
                norm = " ".join(question_words(question))
                rows.append((rank, _digest(norm), norm))
                if len(rows) >= BATCH:
                    self._insert("texts", rows, advance)
            self._insert("texts", rows, advance)
            db.execute("CREATE INDEX texts_digest ON texts(digest, rank)")
            db.execute("CREATE TABLE groups(digest INTEGER PRIMARY KEY, rep INTEGER, size INTEGER)")
            db.execute("INSERT INTO groups SELECT digest, MIN(rank), COUNT(*) FROM texts GROUP BY digest")

    def _insert(self, table: str, rows: list[Any], advance: Any = None) -> None:
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            self.db.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", rows)
            if advance is not None:
                advance(len(rows))
            rows.clear()

    def _band(self, steps: Steps) -> None:
        """MinHash signatures of the distinct texts, cut into band keys, written to one file per (band, key range):
        the records of a file are few enough to sort in memory whatever the size of the run."""
        bands, width = band_layout(self.threshold)
        distinct = self.db.execute("SELECT COUNT(*) FROM groups").fetchone()[0]
        bits = min(MAX_PARTITION_BITS, (distinct // PARTITION_RECORDS).bit_length())
        self.partitions = 1 << bits
        files = {
            (b, p): (self.workdir / f"band-{b}-{p}").open("ab") for b in range(bands) for p in range(self.partitions)
        }
        weights = np.array([0x9E3779B97F4A7C15 * (2 * k + 1) % 2**64 for k in range(width)], dtype=np.uint64)
        query = "SELECT g.rep, t.norm FROM groups g JOIN texts t ON t.rank = g.rep ORDER BY g.rep"
        try:
            with steps.step("MinHash signatures", distinct) as advance:
                cursor = self.db.execute(query)
                while batch := cursor.fetchmany(SIGNATURE_BATCH):
                    token_sets = [list(shingles(norm.split())) for _, norm in batch]
                    signatures = rensa.RMinHash.digest_matrix_from_token_sets(
                        token_sets, NUM_PERM, MINHASH_SEED
                    ).to_rows()
                    if len(signatures) != len(batch):
                        raise RuntimeError(f"rensa signed {len(signatures)} of {len(batch)} texts")
                    values = (
                        np.array(signatures, dtype=np.uint32)[:, : bands * width]
                        .astype(np.uint64)
                        .reshape(len(batch), bands, width)
                    )
                    keys = (values * weights).sum(axis=2, dtype=np.uint64)  # a band's values in one 64-bit key
                    records = np.empty(len(batch), dtype=BAND_RECORD)
                    records["rep"] = [rep for rep, _ in batch]
                    for b in range(bands):
                        records["key"] = keys[:, b]
                        if bits == 0:
                            records.tofile(files[b, 0])
                            continue
                        parts = keys[:, b] >> np.uint64(64 - bits)  # the key's top bits: its key range
                        for p in range(self.partitions):
                            records[parts == p].tofile(files[b, p])
                    advance(len(batch))
        finally:
            for fp in files.values():
                fp.close()
        self.bands = bands

    def _pair(self, steps: Steps) -> None:
        """Candidate pairs: texts sharing a band key, each with at most BUCKET_PEERS earlier texts of the bucket."""
        db = self.db
        db.execute("CREATE TABLE cand(a INTEGER, b INTEGER, PRIMARY KEY (a, b)) WITHOUT ROWID")
        with steps.step("candidate pairs", self.bands * self.partitions) as advance:
            for b in range(self.bands):
                for p in range(self.partitions):
                    path = self.workdir / f"band-{b}-{p}"
                    records = np.fromfile(path, dtype=BAND_RECORD)
                    path.unlink()
                    for earlier, later in _bucket_pairs(records):
                        db.executemany("INSERT OR IGNORE INTO cand VALUES (?, ?)", zip(earlier, later, strict=True))
                    advance()
        self.candidates = db.execute("SELECT COUNT(*) FROM cand").fetchone()[0]

    def _verify(self, steps: Steps) -> None:
        db = self.db
        db.execute("CREATE TABLE edges(x INTEGER, y INTEGER, sim REAL)")
        query = (
            "SELECT c.a, c.b, ta.norm, tb.norm FROM cand c JOIN texts ta ON ta.rank = c.a "
            "JOIN texts tb ON tb.rank = c.b ORDER BY c.a"
        )
        with steps.step("verifying pairs", self.candidates) as advance:
            rows: list[tuple[int, int, float]] = []
            last, own = -1, set[str]()
            for done, (a, b, norm_a, norm_b) in enumerate(db.execute(query), start=1):
                if a != last:
                    last, own = a, shingles(norm_a.split())
                score = jaccard(own, shingles(norm_b.split()))
                if score >= self.threshold:
                    rows += [(a, b, score), (b, a, score)]
                    self.verified += 1
                if len(rows) >= BATCH:
                    self._insert("edges", rows)
                if done % BATCH == 0:
                    advance(BATCH)
            self._insert("edges", rows)
        db.execute("CREATE INDEX edges_x ON edges(x)")

    def _decide(self, steps: Steps) -> None:
        """Later copies of a text repeat its first occurrence exactly; a first occurrence (not fixed) with an
        earlier surviving first occurrence at or above the threshold repeats the most similar one (then the
        earliest)."""
        db = self.db
        db.execute("CREATE TABLE drops(rank INTEGER PRIMARY KEY, twin INTEGER, sim REAL, exact INTEGER)")
        survived = np.zeros(self.count + 1, dtype=np.bool_)  # by rank, for first occurrences with near pairs
        query = "SELECT e.x, r.fixed FROM (SELECT DISTINCT x FROM edges) e JOIN ranked r ON r.rank = e.x ORDER BY e.x"
        neighbours = db.cursor()
        with steps.step("deciding") as advance:
            rows: list[tuple[int, int, float, int]] = []
            for rank, fixed in db.execute(query):
                twin: tuple[float, int] | None = None  # (similarity, -rank of the twin)
                if not fixed:
                    for other, score in neighbours.execute(
                        "SELECT y, sim FROM edges WHERE x = ? AND y < ?", (rank, rank)
                    ):
                        if survived[other] and (twin is None or (score, -other) > twin):
                            twin = (score, -other)
                if twin is None:
                    survived[rank] = True
                else:
                    rows.append((rank, -twin[1], twin[0], 0))
                    if len(rows) >= BATCH:
                        self._insert("drops", rows)
                advance()
            self._insert("drops", rows)
            db.execute(
                "INSERT INTO drops SELECT t.rank, g.rep, 1.0, 1 FROM texts t JOIN groups g ON g.digest = t.digest "
                "JOIN ranked r ON r.rank = t.rank WHERE t.rank > g.rep AND r.fixed = 0"
            )
        db.execute("CREATE INDEX ranked_sample ON ranked(round, seed_id)")

    # -- reading the results

    def repeats_of(self, number: int, seed_id: str) -> dict[int, Repeat]:
        """The repeats among a sample's questions in a round, by position."""
        query = (
            "SELECT r.pos, d.sim, d.exact, t.sample_id, t.pos, t.question FROM ranked r "
            "JOIN drops d ON d.rank = r.rank JOIN ranked t ON t.rank = d.twin WHERE r.round = ? AND r.seed_id = ?"
        )
        return {row[0]: Repeat(row[0], row[1], bool(row[2]), row[3], row[4], row[5])
                for row in self.db.execute(query, (number, seed_id))}  # fmt: skip

    def rounds_with_repeats(self) -> list[int]:
        """Rounds holding at least one repeat."""
        query = "SELECT DISTINCT r.round FROM drops d JOIN ranked r ON r.rank = d.rank ORDER BY r.round"
        return [row[0] for row in self.db.execute(query)]

    def report(self, threshold: float, examples: int, repeated: int = 5) -> DedupReport:
        """Counts per round, near examples spread over the similarity range and the most repeated texts."""
        db = self.db
        report = DedupReport(threshold=threshold, questions=self.count, candidate_pairs=self.candidates,
                             near_pairs=self.verified)  # fmt: skip
        report.distinct = db.execute("SELECT COUNT(*) FROM groups").fetchone()[0]
        per_round = db.execute("SELECT round, COUNT(*) FROM ranked GROUP BY round ORDER BY round")
        counts = {n: RoundCount(round=n, questions=c) for n, c in per_round}
        query = (
            "SELECT r.round, SUM(d.exact), SUM(1 - d.exact) FROM drops d JOIN ranked r ON r.rank = d.rank "
            "GROUP BY r.round"
        )
        for number, exact, near in db.execute(query):
            counts[number].exact, counts[number].near = int(exact), int(near)
        report.rounds = list(counts.values())
        near_total = sum(r.near for r in report.rounds)
        pairs = (
            "SELECT d.sim, r.sample_id, r.pos, r.question, t.sample_id, t.pos, t.question FROM drops d "
            "JOIN ranked r ON r.rank = d.rank JOIN ranked t ON t.rank = d.twin WHERE d.exact = 0 "
            "ORDER BY d.sim, d.rank LIMIT 1 OFFSET ?"
        )
        picks = sorted({(k * near_total) // examples for k in range(examples)}) if near_total and examples else []
        for offset in picks:
            sim, sid, pos, question, tsid, tpos, tquestion = db.execute(pairs, (offset,)).fetchone()
            report.near_examples.append(
                Pair(
                    similarity=round(sim, 4),
                    exact=False,
                    item=item_label(sid, pos),
                    question=question,
                    twin=item_label(tsid, tpos),
                    twin_question=tquestion,
                )
            )
        top = (
            "SELECT t.norm, g.size FROM groups g JOIN texts t ON t.rank = g.rep WHERE g.size > 1 "
            "ORDER BY g.size DESC, g.rep LIMIT ?"
        )
        report.most_repeated = [Repeated(question=q, count=c) for q, c in db.execute(top, (repeated,))]
        return report


@contextmanager
def question_index(threshold: float) -> Iterator[QuestionIndex]:
    """A QuestionIndex in a temporary folder (TMPDIR), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="evolve-dedup-") as workdir:
        index = QuestionIndex(Path(workdir), threshold)
        try:
            yield index
        finally:
            index.close()


# --------------------------------------------------------------------------- files: report only


def dedup_files(
    paths: Sequence[Path], threshold: float = DEFAULT_THRESHOLD, *, examples: int = 8, progress: bool = False
) -> DedupReport:
    """Repeated questions among the records of seed inputs (any format `evolve run` reads) or evolved files;
    changes nothing."""
    check_threshold(threshold)
    started = time.perf_counter()
    unreadable = 0
    with question_index(threshold) as index, Steps(progress) as steps:
        with steps.step("reading") as advance:
            for item in read_seed_files(paths, image_store=ImageStore(index.workdir, write=False)):
                if isinstance(item, Loaded):
                    index.add(item.sample, item.sample.round, fixed=False)
                    advance()
                else:
                    unreadable += 1
        if not index.size:
            raise InputError(f"no questions in the files given ({unreadable:,} records could not be read)")
        index.build(steps)
        report = index.report(threshold, examples)
    report.unreadable = unreadable
    report.seconds = round(time.perf_counter() - started, 3)
    return report


# --------------------------------------------------------------------------- a run folder: find, then rewrite


def is_run_folder(path: Path) -> bool:
    """A folder `evolve run` wrote (it has run.json)."""
    return path.is_dir() and RunFolder(path).run_json.is_file()


def summary_line(report: DedupReport) -> str:
    """One line on what the pass found and did."""
    found = f"{report.exact:,} exact and {report.near:,} near repeats among {report.questions:,} questions"
    if report.run is None:
        skipped = f"; {report.unreadable:,} unreadable records skipped" if report.unreadable else ""
        return f"{found} ({report.distinct:,} distinct texts){skipped}; nothing changed"
    if not report.exact + report.near:
        return f"no repeats among the {report.questions:,} questions of {report.run}; nothing to drop"
    if not report.written:
        return f"dry run: {found} of {report.run} would be dropped; nothing changed"
    return f"{found} of {report.run} moved from kept.jsonl and final.jsonl to dropped.jsonl (stage dedup)"


def dedup_run(
    root: Path,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    dry_run: bool = False,
    seeds: Sequence[Path] = (),
    examples: int = 8,
    progress: bool = False,
) -> DedupReport:
    """Drop the kept rewrites of a finished run whose question repeats a seed's or an earlier rewrite's.

    Each leaves round-N/kept.jsonl (and final.jsonl) for a line in round-N/dropped.jsonl (stage dedup, its twin
    named); outcome lines and run.json follow. Every file is replaced atomically (dropped, outcomes, kept, final,
    run.json, in that order), and a second pass changes nothing; after a kill, the next pass finishes the job.
    """
    check_threshold(threshold)
    started = time.perf_counter()
    run = open_run(root)
    status = run.manifest.get("status")
    if status not in ("done", "done_with_failures"):
        raise UsageError(f"{root}: the run is {status or 'unfinished'}; let `evolve run` finish it before dedup")
    if not seeds and run.missing_seed_files:
        missing = run.missing_seed_files[0]
        raise UsageError(f"{root}: seed file {missing} (named in run.json) is missing; pass --seeds FILE")
    seed_files = list(seeds) or list(run.seed_files)
    rounds = [n for n in run.rounds if n > 0]
    lock = contextlib.nullcontext() if dry_run else run_lock(run.folder)
    with lock, question_index(threshold) as index, Steps(progress) as steps:
        with steps.step("reading") as advance:
            config = run.manifest.get("config") or {}
            # images are never opened here: nothing is written, their paths are not used
            for item in read_run_seeds(seed_files, config, index.workdir, write=False):
                if isinstance(item, Loaded):
                    index.add(item.sample, 0, fixed=True)
                    advance()
            for number in rounds:
                for _, record in iter_json_lines(run.folder.round(number).kept):
                    index.add_raw(record, number)
                    advance()
        index.build(steps)
        report = index.report(threshold, examples)
        report.run = str(root)
        if not dry_run and rounds:
            with steps.step("writing", len(rounds) + 2) as advance:
                for number in index.rounds_with_repeats():
                    rewrite_round(run.folder, index, number)
                    advance()
                refresh_final(run.folder, max(rounds, default=0))
                refresh_manifest(run.folder, rounds)
                advance(2)
            report.written = True
    report.seconds = round(time.perf_counter() - started, 3)
    return report


class _Replacement:
    """A file's new content written beside it (`.tmp`), fsynced, and put in place by `commit`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.fp = self.tmp.open("wb")

    def write(self, line: bytes) -> None:
        """Append one line (with its newline)."""
        self.fp.write(line)

    def finish(self) -> None:
        """Flush and fsync (after this the new content survives a crash)."""
        self.fp.flush()
        os.fsync(self.fp.fileno())
        self.fp.close()

    def commit(self) -> None:
        """Replace the file with the new content."""
        os.replace(self.tmp, self.path)


def _line_digest(line: bytes) -> int:
    return _digest(line.rstrip(b"\n").decode("utf-8", "surrogatepass"))


def _own_class(reason: str) -> str | None:
    """The outcome reason class of a run-pass drop reason (None for other dedup reasons, e.g. the round's)."""
    if reason.startswith("exact duplicate of "):
        return EXACT_CLASS
    if reason.startswith("near duplicate ("):
        return NEAR_CLASS
    return None


def rewrite_round(folder: RunFolder, index: QuestionIndex, number: int) -> None:
    """Move a round's repeats from kept.jsonl to dropped.jsonl and correct their outcome lines.

    dropped.jsonl is replaced first, then outcomes.jsonl, then kept.jsonl. A pass killed in between leaves the
    repeats in kept.jsonl: the next pass finds the same ones, writes no drop line twice (lines already there are
    recognised) and derives the outcome counts from the files, so nothing is counted twice.
    """
    files = folder.round(number)
    db = index.db
    for table in ("prior", "seed_dedup", "touched"):
        db.execute(f"DROP TABLE IF EXISTS {table}")
    db.execute("CREATE TABLE prior(digest INTEGER PRIMARY KEY, n INTEGER)")
    db.execute("CREATE TABLE seed_dedup(seed_id TEXT PRIMARY KEY, items INTEGER, exact INTEGER, near INTEGER)")
    db.execute("CREATE TABLE touched(seed_id TEXT PRIMARY KEY, kept INTEGER, scores TEXT)")

    def count_drop(record: dict[str, Any]) -> None:
        own = _own_class(str(record.get("reason", "")))
        items = len(((record.get("sample") or {}).get("qa")) or ())
        db.execute(
            "INSERT INTO seed_dedup VALUES (?, ?, ?, ?) ON CONFLICT(seed_id) DO UPDATE SET items = items + "
            "excluded.items, exact = exact + excluded.exact, near = near + excluded.near",
            (record["seed_id"], items, int(own == EXACT_CLASS), int(own == NEAR_CLASS)),
        )

    dropped = _Replacement(files["dropped"])
    if files["dropped"].exists():
        with open_lines(files["dropped"]) as src:
            for line in src:
                dropped.write(line)
                if b'"dedup"' in line and (record := orjson.loads(line)).get("stage") == "dedup":
                    db.execute(
                        "INSERT INTO prior VALUES (?, 1) ON CONFLICT(digest) DO UPDATE SET n = n + 1",
                        (_line_digest(line),),
                    )
                    count_drop(record)
    kept = _Replacement(files.kept)
    with open_lines(files.kept) as src:
        for line in src:
            record = orjson.loads(line)
            repeats = index.repeats_of(number, str(record["seed_id"]))
            if not repeats:
                kept.write(line)
                continue
            sample = Sample.model_validate_json(line)
            for pos in sorted(repeats):
                drop_line = dedup_drop(sample, sample.qa[pos], repeats[pos].reason()).model_dump_json().encode() + b"\n"
                digest = _line_digest(drop_line)
                if db.execute("UPDATE prior SET n = n - 1 WHERE digest = ? AND n > 0", (digest,)).rowcount:
                    continue  # written by a pass that was killed before it replaced kept.jsonl
                dropped.write(drop_line)
                count_drop(orjson.loads(drop_line))
            remaining = [item for pos, item in enumerate(sample.qa) if pos not in repeats]
            if remaining:
                kept.write(sample.model_copy(update={"qa": remaining}).model_dump_json().encode() + b"\n")
            scores = [float(item.score) for item in remaining if item.score is not None]
            db.execute("INSERT OR REPLACE INTO touched VALUES (?, ?, ?)",
                       (sample.seed_id, len(remaining), orjson.dumps(scores).decode()))  # fmt: skip
    outcomes = _Replacement(files["outcomes"]) if files["outcomes"].exists() else None
    if outcomes is not None:
        with open_lines(files["outcomes"]) as src:
            for line in src:
                outcomes.write(_corrected_outcome(db, line, number))
    for replacement in (dropped, outcomes, kept):
        if replacement is not None:
            replacement.finish()
    for replacement in (dropped, outcomes, kept):
        if replacement is not None:
            replacement.commit()


def _corrected_outcome(db: sqlite3.Connection, line: bytes, number: int) -> bytes:
    """An outcome line with its kept items, scores and dedup drops as the rewritten files now hold them."""
    record = orjson.loads(line)
    touched = db.execute("SELECT kept, scores FROM touched WHERE seed_id = ?", (record["seed_id"],)).fetchone()
    if touched is None or int(record.get("round", -1)) != number:
        return line
    outcome = Outcome.model_validate(record)
    found = db.execute("SELECT items, exact, near FROM seed_dedup WHERE seed_id = ?", (outcome.seed_id,)).fetchone()
    dedup_items, exact, near = found or (0, 0, 0)
    items = {**outcome.items, "kept": touched[0], "dropped_dedup": dedup_items}
    reasons = [r for r in outcome.reasons if r not in (EXACT_CLASS, NEAR_CLASS)]
    reasons += [EXACT_CLASS] * exact + [NEAR_CLASS] * near
    update = {"kept": touched[0] > 0, "items": items, "scores": orjson.loads(touched[1]), "reasons": reasons}
    return outcome.model_copy(update=update).model_dump_json().encode() + b"\n"


def _content_digest(paths: Sequence[Path]) -> bytes:
    """blake2b of the concatenated content of files (missing ones count as empty)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        if path.exists():
            with path.open("rb") as fp:
                while chunk := fp.read(1 << 20):
                    digest.update(chunk)
    return digest.digest()


def refresh_final(folder: RunFolder, last_round: int) -> None:
    """Rewrite final.jsonl from the rounds' kept files, unless it already holds exactly that."""
    kept = [folder.round(n).kept for n in range(1, last_round + 1)]
    if _content_digest(kept) != _content_digest([folder.final]):
        write_final(folder, last_round)


def refresh_manifest(folder: RunFolder, rounds: Sequence[int]) -> None:
    """run.json's per-round numbers (from the outcome lines) and final count, written only when they changed."""
    manifest = read_manifest(folder)
    if manifest is None:
        return
    before = manifest.model_dump(exclude={"updated"})
    prices = Prices(*manifest.prices_per_million) if manifest.prices_per_million else None
    for number in rounds:
        if folder.round_file(number, "outcomes").exists():
            manifest.rounds[str(number)] = summarize_round(folder, number, prices)
    with open_lines(folder.final) as fp:
        manifest.final_samples = sum(1 for _ in fp)
    if manifest.model_dump(exclude={"updated"}) != before:
        write_manifest(folder, manifest)
