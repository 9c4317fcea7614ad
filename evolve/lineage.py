"""What happened to a few seeds in a run folder: their records gathered from every round file, assembled into lineages.

Used by `evolve report` (a sample of seeds) and `evolve show` (one seed). Round files can hold millions of
lines, so the records of the wanted seeds are found by a byte scan: each `"seed_id"` key's value is compared
with the wanted ids, and only a matching line is decoded (its top-level `seed_id` decides). Files are split
into byte ranges scanned in parallel processes; memory stays bounded by the block size and the wanted records.

A lineage keeps the raw dicts of the records (not only the model's fields), so fields added by newer stages
(`violations`, `claims`, `twin`, `votes` ...) travel through to the viewers.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from evolve.errors import InputError
from evolve.images import resolve_image
from evolve.records import Loaded, Rejected, Sample, iter_raw, parse_record
from evolve.runfolder import RunFolder
from evolve.sources import read_run_seeds, read_source, source_kind

BLOCK_BYTES = 1 << 20
"""Bytes read at a time by a scanner."""
RANGE_BYTES = 64 << 20
"""Files are split into byte ranges of about this size, one task each."""
PARALLEL_FROM_BYTES = 96 << 20
"""Below this much data every task runs in this process (starting workers costs more than it saves)."""
MAX_JOBS = 4
RECORD_KINDS = ("annotated", "evolved", "judged", "kept", "dropped")
"""Round files whose lines are records (Samples, or Drops for `dropped`); other files (outcomes) are not read."""
_KEY = b'"seed_id"'
_LINE_REF = re.compile(r"^(?P<path>.*):(?P<line>\d+)$")

T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------- the run and its seeds


@dataclass(frozen=True)
class RunSource:
    """A run folder with what its run.json says about the seeds and images."""

    folder: RunFolder
    manifest: dict[str, Any]
    seed_files: tuple[Path, ...]
    missing_seed_files: tuple[str, ...]
    image_root: Path | None

    @property
    def rounds(self) -> list[int]:
        """Round numbers that have a folder, in order."""
        return self.folder.rounds_present()

    @property
    def finished(self) -> bool:
        """run.json says the run is done (every seed went through every round)."""
        return self.manifest.get("status") == "done"


def open_run(path: Path) -> RunSource:
    """Check that `path` is a run folder and find its seed files (relative to the folder or to here)."""
    folder = RunFolder(path)
    if not path.is_dir():
        raise InputError(f"{path}: no such run folder")
    manifest = folder.read_run_json()
    if manifest is None:
        if not folder.rounds_present():
            raise InputError(f"{path}: not a run folder (no run.json, no round-N/): give the folder `evolve run` wrote")
        manifest = {}
    entries = manifest.get("seeds") or []
    found: list[Path] = []
    missing: list[str] = []
    for entry in [entries] if isinstance(entries, str) else entries:
        candidate = Path(str(entry)).expanduser()
        if not candidate.is_absolute() and (path / candidate).is_file():
            candidate = path / candidate
        if candidate.is_file():
            found.append(candidate)
        else:
            missing.append(str(entry))
    config = manifest.get("config") or {}
    root = config.get("image_root")
    return RunSource(folder, manifest, tuple(found), tuple(missing), Path(root) if root else None)


def round_files(run: RunSource) -> list[tuple[int, str, Path]]:
    """(round, kind, path) of every record file present, kinds in the order a sample-round writes them."""
    found = []
    for number in run.rounds:
        files = run.folder.round(number)
        for kind in files.names:
            if kind in RECORD_KINDS and files[kind].is_file():
                found.append((number, kind, files[kind]))
    return found


def stable_hash(text: str, salt: str = "") -> int:
    """A 64-bit hash of a seed id that is the same in every process and run (sampling keyed by seed id)."""
    return int.from_bytes(hashlib.blake2b(f"{salt}\x00{text}".encode(), digest_size=8).digest(), "big")


def read_seeds(run: RunSource) -> Iterator[Loaded | Rejected]:
    """The run's seeds, as the run read them: every format, ids unique across the seed files, images that
    arrived as bytes found in the run's image folder (never written)."""
    yield from read_run_seeds(list(run.seed_files), run.manifest.get("config") or {}, run.folder.images, write=False)


def image_of(run: RunSource, ref: str | None, where: str | None) -> Path | str | None:
    """Where a seed's image is — a local path or a URL — as the run resolved it: relative to --image-root, else
    to the folder of the seed file the seed came from (`where`, else the first seed file). None without one."""
    if not ref:
        return None
    if where:
        base = Path(_place_file(where)).parent
    elif run.seed_files:
        base = run.seed_files[0].parent
    else:
        base = run.folder.root
    try:
        return resolve_image(ref, run.image_root, base)
    except InputError:
        return None


def _place_file(where: str) -> str:
    """The file of a `file:line` or `file:item N` place."""
    match = _LINE_REF.match(where)
    return match.group("path") if match else where.rsplit(":item ", 1)[0]


def seeds_at(wheres: Iterable[str]) -> dict[str, Sample]:
    """The seeds read from the given `file:line` (or `file:item N`) places, by place."""
    by_file: dict[str, set[str]] = {}
    for where in wheres:
        by_file.setdefault(_place_file(where), set()).add(where)
    found: dict[str, Sample] = {}
    for path, wanted in by_file.items():
        if source_kind(Path(path)) != "json":  # parquet, arrow, CSV: rows are read in order (`file:row N`)
            found.update(
                (i.where, i.sample) for i in read_source(Path(path)) if isinstance(i, Loaded) and i.where in wanted
            )
            continue
        lines = {int(m.group("line")) for w in wanted if (m := _LINE_REF.match(w))}
        if len(lines) == len(wanted):
            items: Iterable[tuple[str, Any] | Rejected] = _lines_at(Path(path), lines)
        else:
            items = iter_raw(Path(path))
        for item in items:
            if isinstance(item, Rejected) or item[0] not in wanted:
                continue
            try:
                found[item[0]] = parse_record(item[1], item[0])[0]
            except InputError:
                continue
    return found


def _lines_at(path: Path, lines: set[int]) -> Iterator[tuple[str, Any]]:
    """(file:line, decoded JSON) of the given line numbers of a JSONL file (blocks whose lines are all
    unwanted are only counted, not split)."""
    wanted = sorted(lines)
    first = 1  # the number of the block's first line
    for block, stop in iter_blocks(Span(path, 0, "", 0, path.stat().st_size)):
        count = block.count(b"\n", 0, stop) + (block[stop - 1 : stop] != b"\n")
        if wanted and wanted[0] < first + count:
            for number, raw in enumerate(block[:stop].split(b"\n"), start=first):
                if number in lines and raw.strip():
                    yield f"{path}:{number}", orjson.loads(raw)
            wanted = [n for n in wanted if n >= first + count]
        if not wanted:
            return
        first += count


# --------------------------------------------------------------------------- byte ranges and parallel tasks


@dataclass(frozen=True)
class Span:
    """Lines starting in bytes [start, end) of one round file."""

    path: Path
    round: int
    kind: str
    start: int
    end: int


def spans(files: Iterable[tuple[int, str, Path]], size: int = RANGE_BYTES) -> list[Span]:
    """Cut files into byte ranges of about `size` bytes."""
    out: list[Span] = []
    for number, kind, path in files:
        total = path.stat().st_size
        out.extend(Span(path, number, kind, start, min(start + size, total)) for start in range(0, total, size))
    return out


def iter_blocks(span: Span, size: int = BLOCK_BYTES) -> Iterator[tuple[bytes, int]]:
    """(data, stop): blocks whose `data[:stop]` holds whole lines; every line starting inside the span comes
    exactly once over all spans of a file. Blocks are not sliced (a copy per block costs more than the search)."""
    with span.path.open("rb", buffering=0) as fp:
        pos = span.start
        if pos > 0:
            fp.seek(pos - 1)
            if fp.read(1) != b"\n":
                pos += len(_rest_of_line(fp, b""))
        while pos < span.end:
            fp.seek(pos)
            data = fp.read(size)
            if not data:
                return
            stop = data.rfind(b"\n") + 1
            if stop == 0:  # a line longer than the block, or a last line without newline
                data = _rest_of_line(fp, data)
                stop = len(data)
            if pos + stop > span.end:
                stop = data.find(b"\n", span.end - pos - 1) + 1 or stop
                yield data, stop
                return
            yield data, stop
            pos += stop


def _rest_of_line(fp: Any, head: bytes) -> bytes:
    """`head` plus what follows up to and including the next newline (or the end of the file)."""
    parts = [head]
    while not parts[-1].endswith(b"\n"):
        more = fp.read(BLOCK_BYTES)
        if not more:
            break
        cut = more.find(b"\n") + 1
        if cut:
            fp.seek(cut - len(more), os.SEEK_CUR)
            more = more[:cut]
        parts.append(more)
    return b"".join(parts)


class Workers:
    """Tasks in worker processes when there is enough data to pay for starting them, else in this process.

    `submit` returns a future either way, so callers can start the next phase as soon as its inputs are ready
    while a long task of the previous one still runs.
    """

    def __init__(self, total_bytes: int, jobs: int | None = None) -> None:
        count = jobs if jobs is not None else min(MAX_JOBS, os.cpu_count() or 1)
        automatic = jobs is None and total_bytes < PARALLEL_FROM_BYTES
        self.processes = 0 if count <= 1 or automatic else count
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Workers:
        if self.processes:
            self._pool = ProcessPoolExecutor(max_workers=self.processes)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable[[T], R], task: T) -> Future[R]:
        """Run `fn(task)` in a worker (or here, at once)."""
        if self._pool is not None:
            return self._pool.submit(fn, task)
        future: Future[R] = Future()
        try:
            future.set_result(fn(task))
        except Exception as exc:  # delivered by future.result(), as a worker's exception would be
            future.set_exception(exc)
        return future

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """`fn` over `tasks`, results as they finish."""
        for future in as_completed([self.submit(fn, task) for task in tasks]):
            yield future.result()


def bytes_of(paths: Iterable[Path]) -> int:
    """Total size of some files."""
    return sum(path.stat().st_size for path in paths)


# --------------------------------------------------------------------------- finding the wanted seeds' lines


def seed_ids_in(block: bytes, stop: int) -> Iterator[tuple[int, str]]:
    """(position, value) of every `"seed_id": "..."` key in `block[:stop]`, JSON lines (nested keys too)."""
    pos = block.find(_KEY, 0, stop)
    while pos >= 0:
        i = pos + len(_KEY)
        while block[i : i + 1] in (b" ", b":"):
            i += 1
        if block[i : i + 1] == b'"':
            end = block.find(b'"', i + 1, stop)
            while end > 0 and _escaped(block, end):
                end = block.find(b'"', end + 1, stop)
            if end < 0:
                return
            raw = block[i + 1 : end]
            yield pos, (orjson.loads(block[i : end + 1]) if b"\\" in raw else raw.decode("utf-8", "replace"))
            i = end
        pos = block.find(_KEY, i, stop)


def _escaped(block: bytes, quote: int) -> bool:
    """True when the quote at `quote` is preceded by an odd number of backslashes."""
    count = 0
    while quote - count - 1 >= 0 and block[quote - count - 1] == 0x5C:
        count += 1
    return count % 2 == 1


@dataclass(frozen=True)
class Wanted:
    """A byte range to search and the seed ids to pick out of it."""

    span: Span
    ids: frozenset[str]


@dataclass(frozen=True)
class Found:
    """One record of a wanted seed: its round, its file's kind, and the decoded line."""

    round: int
    kind: str
    record: dict[str, Any]


def find_records(task: Wanted) -> list[Found]:
    """The lines of a span whose top-level `seed_id` is one of the wanted ids."""
    found: list[Found] = []
    for block, stop in iter_blocks(task.span):
        skip_to = 0
        for pos, seed_id in seed_ids_in(block, stop):
            if pos < skip_to or seed_id not in task.ids:
                continue
            start = block.rfind(b"\n", 0, pos) + 1
            end = block.find(b"\n", pos, stop)
            end = stop if end < 0 else end
            skip_to = end
            try:
                record = orjson.loads(block[start:end])
            except orjson.JSONDecodeError:
                continue  # a torn line (the run was killed mid-write): resume cuts it off
            if isinstance(record, dict) and record.get("seed_id") in task.ids:
                found.append(Found(task.span.round, task.span.kind, record))
    return found


def collect_records(run: RunSource, ids: Iterable[str], workers: Workers | None = None) -> dict[str, list[Found]]:
    """Every round-file record of the given seeds, by seed id (`assemble` puts them in order)."""
    wanted = frozenset(ids)
    out: dict[str, list[Found]] = {seed_id: [] for seed_id in wanted}
    files = round_files(run)
    tasks = [Wanted(span, wanted) for span in spans(files)]
    with contextlib.ExitStack() as stack:
        pool = workers or stack.enter_context(Workers(bytes_of(path for _, _, path in files)))
        for found in pool.map_unordered(find_records, tasks):
            for item in found:
                out[item.record["seed_id"]].append(item)
    return out


# --------------------------------------------------------------------------- assembling a lineage


@dataclass
class ItemView:
    """One Q&A&S item of a round: its raw fields merged over the files it appears in, and what became of it."""

    fields: dict[str, Any]
    status: str = "evolved"
    """kept, dropped, judged (a verdict but neither kept nor dropped yet) or evolved (no verdict yet)."""
    stage: str | None = None
    drop_reason: str | None = None
    parent_question: str | None = None
    diff: list[tuple[str, str]] = field(default_factory=list)
    """Word diff of the question against its parent's: ("=", text), ("-", removed) or ("+", added)."""


@dataclass
class RoundView:
    """One round of a seed: the rewrite's identity, its items, and failures that left no items."""

    round: int
    operator: str | None = None
    id: str | None = None
    parent_id: str | None = None
    items: list[ItemView] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    """Drop records without items (a failed call, an unreadable answer): stage, reason, raw."""

    @property
    def kept(self) -> int:
        """Items that survived the round."""
        return sum(item.status == "kept" for item in self.items)

    @property
    def dropped(self) -> int:
        """Items dropped in the round."""
        return sum(item.status == "dropped" for item in self.items)

    @property
    def stages(self) -> list[str]:
        """Drop stages of the round, each once, in order of appearance."""
        found = [item.stage for item in self.items if item.stage] + [f.get("stage") or "?" for f in self.failures]
        return list(dict.fromkeys(found))

    @property
    def outcome(self) -> str:
        """kept (all items survived), partial, dropped (nothing survived) or pending."""
        if self.kept and (self.dropped or self.failures):
            return "partial"
        if self.kept:
            return "kept"
        if self.dropped or self.failures:
            return "dropped"
        return "pending"


@dataclass
class Lineage:
    """A seed and every round of it; the image, caption and boxes come from the seed or else its first record."""

    seed_id: str
    seed: Sample | None = None
    where: str | None = None
    image: Path | str | None = None
    image_ref: str | None = None
    caption: str | None = None
    objects: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[RoundView] = field(default_factory=list)


def _item_key(item: dict[str, Any]) -> str:
    return str(item.get("question", "")).strip()


def assemble(seed_id: str, seed: Sample | None, records: list[Found]) -> Lineage:
    """Build a seed's lineage from its records (any order); each rewrite's question is diffed with its parent's."""
    lineage = Lineage(seed_id, seed)
    versions: dict[str, list[str]] = {}
    if seed is not None:
        versions[seed.id] = [item.question for item in seed.qa]
        lineage.image_ref, lineage.caption = seed.image, seed.caption
        lineage.objects = [box.model_dump() for box in seed.objects]
    for found in records:
        sample = found.record.get("sample") if found.kind == "dropped" else found.record
        if isinstance(sample, dict):
            lineage.image_ref = lineage.image_ref or sample.get("image")
            lineage.caption = lineage.caption or sample.get("caption")
            lineage.objects = lineage.objects or list(sample.get("objects") or [])
    by_round: dict[int, list[Found]] = {}
    for found in records:
        by_round.setdefault(found.round, []).append(found)
    order = {kind: index for index, kind in enumerate(RECORD_KINDS)}
    for number in sorted(by_round):
        in_order = sorted(by_round[number], key=lambda f: order.get(f.kind, len(order)))
        view = _round_view(number, in_order)
        previous = versions.get(view.parent_id or "") or _latest(versions)
        for item in view.items:
            _diff_with_parent(item, previous)
        if view.id and any(item.status == "kept" for item in view.items):
            versions[view.id] = [str(item.fields.get("question", "")) for item in view.items if item.status == "kept"]
        lineage.rounds.append(view)
    return lineage


def _latest(versions: dict[str, list[str]]) -> list[str]:
    return next(reversed(versions.values()), [])


def _round_view(number: int, found: list[Found]) -> RoundView:
    view = RoundView(number)
    items: dict[str, ItemView] = {}

    def merge(qa: Any, **status: Any) -> None:
        for raw in qa if isinstance(qa, list) else []:
            if not isinstance(raw, dict):
                continue
            item = items.get(_item_key(raw))
            if item is None:
                item = items[_item_key(raw)] = ItemView(dict(raw))
            else:
                item.fields.update(raw)
            for key, value in status.items():
                setattr(item, key, value)

    for entry in found:
        record = entry.record
        sample = record.get("sample") if entry.kind == "dropped" else record
        if isinstance(sample, dict):
            view.id = view.id or sample.get("id")
            view.parent_id = view.parent_id or sample.get("parent_id")
        view.operator = view.operator or record.get("operator") or (sample or {}).get("operator")
        if entry.kind == "dropped":
            qa = sample.get("qa") if isinstance(sample, dict) else None
            if qa:
                merge(qa, status="dropped", stage=record.get("stage"), drop_reason=record.get("reason"))
            else:
                view.failures.append({k: record.get(k) for k in ("stage", "reason", "raw")})
        elif entry.kind in ("kept", "annotated"):  # round 0: annotated seeds are what survives it
            merge(record.get("qa"), status="kept")
        elif entry.kind == "judged":
            merge(record.get("qa"))
            for item in items.values():
                if item.status == "evolved" and _has_verdict(item.fields):
                    item.status = "judged"
        else:
            merge(record.get("qa"))
    view.items = list(items.values())
    return view


def _has_verdict(fields: dict[str, Any]) -> bool:
    return fields.get("improved") is not None or fields.get("score") is not None


def _diff_with_parent(item: ItemView, parents: list[str]) -> None:
    """Diff the item's question with the parent item it rewrites: `source` (its position) when the record says,
    else the parent question closest to it."""
    question = str(item.fields.get("question", ""))
    if not parents:
        return
    source = item.fields.get("source")
    if isinstance(source, int) and not isinstance(source, bool) and 0 <= source < len(parents):
        best = parents[source]
    else:
        words = question.split()  # closest by shared words (quick_ratio: a multiset count, no alignment)
        best = max(parents, key=lambda p: difflib.SequenceMatcher(None, p.split(), words).quick_ratio())
    item.parent_question = best
    item.diff = word_diff(best, question)


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """Word-level diff of two texts as ("=" | "-" | "+", text) runs (difflib on whitespace-split words)."""
    a, b = old.split(), new.split()
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(("=", " ".join(a[i1:i2])))
            continue
        if op in ("delete", "replace"):
            out.append(("-", " ".join(a[i1:i2])))
        if op in ("insert", "replace"):
            out.append(("+", " ".join(b[j1:j2])))
    return out


# --------------------------------------------------------------------------- one seed, for `evolve show`


def find_seed(run: RunSource, seed_id: str) -> Loaded | None:
    """The seed with this id, read from the run's seed files (stops at the first match)."""
    for item in read_seeds(run):
        if isinstance(item, Loaded) and item.sample.id == seed_id:
            return item
    return None


@dataclass(frozen=True)
class Salted:
    """A byte range whose seed ids are ranked by their hash with `salt`."""

    span: Span
    salt: str


def smallest_seed_id(task: Salted) -> tuple[int, str] | None:
    """The (hash, id) of the span's seed id with the smallest salted hash."""
    best: tuple[int, str] | None = None
    for block, stop in iter_blocks(task.span):
        for _, seed_id in seed_ids_in(block, stop):
            candidate = (stable_hash(seed_id, task.salt), seed_id)
            if best is None or candidate < best:
                best = candidate
    return best


def pick_seed_id(run: RunSource, salt: str) -> str | None:
    """A seed id drawn uniformly from the first round's records, the same for the same salt (None if empty)."""
    rounds = run.rounds
    files = [entry for entry in round_files(run) if rounds and entry[0] == rounds[0]]
    with Workers(bytes_of(path for _, _, path in files)) as workers:
        results = list(workers.map_unordered(smallest_seed_id, [Salted(span, salt) for span in spans(files)]))
    best = min((r for r in results if r is not None), default=None)
    return None if best is None else best[1]


def example_seed_id(run: RunSource) -> str | None:
    """Some seed id of the run (the first line of the first round file), for hints."""
    for _, _, path in round_files(run):
        for block, stop in iter_blocks(Span(path, 0, "", 0, path.stat().st_size), size=1 << 16):
            for _, seed_id in seed_ids_in(block, stop):
                return seed_id
    return None
