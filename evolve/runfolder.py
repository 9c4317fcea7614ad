"""The run folder on disk: every path in it, the lock, crash-safe appends, and what a resume finds there.

```
RUN/run.json            the manifest (evolve.manifest)     RUN/round-N/evolved.jsonl   every rewrite
RUN/final.jsonl         the survivors of every round       RUN/round-N/judged.jsonl    the judge's verdicts
RUN/rejected.jsonl      seed lines that cannot be used     RUN/round-N/kept.jsonl      survivors, input of N+1
RUN/cache.sqlite        the response cache                 RUN/round-N/dropped.jsonl   what did not survive, why
RUN/evolve.log          what the run said                  RUN/round-N/outcomes.jsonl  one line per sample-round
RUN/batch.json, batch/  Batch API state and files          RUN/round-0/annotated.jsonl seeds after --annotate
RUN/images/             images that arrived as bytes       RUN/shards/K-of-N/          --workers' shard runs
```
A sample-round writes its records (evolved, judged, kept, dropped lines, in that order), then its outcome line:
the outcome marks it complete. A resume cuts a torn last line, purges the lines of sample-rounds without an
outcome (the response cache makes redoing them free) and redoes those whose outcome says a call failed.
Nothing outside this module spells a file name of the run folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import BaseModel

from evolve.errors import RunLockedError, UsageError
from evolve.records import Outcome, Sample, open_lines

ROUND_FILES = ("evolved", "judged", "kept", "dropped", "outcomes")
ANNOTATION_FILES = ("annotated", "dropped", "outcomes")
"""Round 0 (`--annotate`): the seeds with their items annotated, what could not be, and the outcomes."""
FSYNC_EVERY_SECONDS = 1.0
LOCK_POLL_SECONDS = 0.2


class StageFiles:
    """The record files of one round in a folder (a run's round-N/, or the output folder of `evolve eliminate`)."""

    def __init__(self, folder: Path, names: tuple[str, ...] = ROUND_FILES) -> None:
        self.folder = folder
        self.names = names
        self._paths = {name: folder / f"{name}.jsonl" for name in names}

    def __getitem__(self, name: str) -> Path:
        return self._paths[name]

    @property
    def kept(self) -> Path:
        """The survivors: kept.jsonl, or annotated.jsonl for round 0."""
        return self._paths["kept" if "kept" in self._paths else "annotated"]

    def all(self) -> list[Path]:
        """Every record file, in the order a sample-round writes them."""
        return list(self._paths.values())


class RunFolder:
    """Every path of one run folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_json = root / "run.json"
        self.final = root / "final.jsonl"
        self.cache = root / "cache.sqlite"
        self.lock = root / "run.lock"
        self.rejected = root / "rejected.jsonl"
        self.log = root / "evolve.log"
        self.baseline = root / "baseline.jsonl"
        self.baseline_dropped = root / "baseline-dropped.jsonl"
        self.batch_state = root / "batch.json"
        self.batch_dir = root / "batch"
        self.images = root / "images"
        self.shards = root / "shards"
        self.plots = root / "plots"
        self.report = root / "report.html"
        self._rounds: dict[int, StageFiles] = {}

    def round_dir(self, number: int) -> Path:
        """`round-N/`."""
        return self.root / f"round-{number}"

    def round(self, number: int) -> StageFiles:
        """The record files of round N (round 0 holds the annotated seeds)."""
        files = self._rounds.get(number)
        if files is None:
            names = ANNOTATION_FILES if number == 0 else ROUND_FILES
            files = self._rounds[number] = StageFiles(self.round_dir(number), names)
        return files

    def round_file(self, number: int, name: str) -> Path:
        """`round-N/<name>.jsonl`."""
        return self.round(number)[name]

    def shard(self, index: int, count: int) -> RunFolder:
        """The run folder of shard `index` of `count` under `shards/` (made by `--workers`)."""
        return RunFolder(self.shards / f"{index}-of-{count}")

    def batch_file(self, name: str) -> Path:
        """A file of the Batch API exchange under `batch/`."""
        return self.batch_dir / name

    def rounds_present(self) -> list[int]:
        """Round numbers that have a folder, in order (0 when seeds were annotated)."""
        found = []
        for child in self.root.glob("round-*"):
            suffix = child.name.removeprefix("round-")
            if child.is_dir() and suffix.isdigit():
                found.append(int(suffix))
        return sorted(found)

    def read_run_json(self) -> dict[str, Any] | None:
        """run.json as written by an earlier invocation (a plain dict), or None."""
        if not self.run_json.exists():
            return None
        try:
            data: dict[str, Any] = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{self.run_json}: unreadable ({exc}); move it away to start over") from exc
        return data


def write_atomic(path: Path, text: str) -> None:
    """Write a file through a temporary file and a rename, fsynced, so a crash leaves old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fp:
        fp.write(text)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def run_lock(folder: RunFolder, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on the run folder; another holder gives RunLockedError with its pid (after
    `wait` seconds of trying: a resumed worker may find its predecessor still finishing)."""
    try:
        folder.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder.lock, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as exc:
        raise UsageError(f"{folder.root}: cannot write to the run folder ({exc.strerror})") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise RunLockedError(f"{folder.root}: already running (pid {pid})") from None
                time.sleep(LOCK_POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def repair_tail(path: Path) -> bool:
    """Cut a torn last line (no newline, or not JSON) off a JSONL file; True if something was cut."""
    if not path.exists():
        return False
    with path.open("rb+") as fp:
        size = fp.seek(0, os.SEEK_END)
        if size == 0:
            return False
        start = max(0, size - (1 << 20))
        fp.seek(start)
        tail = fp.read()
        keep = size
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = start + cut + 1 if cut >= 0 else 0
        else:
            last_start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
            try:
                orjson.loads(tail[last_start:])
            except orjson.JSONDecodeError:
                keep = start + last_start
        if keep != size:
            fp.truncate(keep)
            return True
    return False


class AppendFiles:
    """Append-only JSONL files: write records, then `flush` once per group; fsynced every second and on close."""

    def __init__(self) -> None:
        self._files: dict[Path, IO[str]] = {}
        self._last_sync = time.monotonic()

    def write(self, path: Path, record: BaseModel) -> None:
        """Append one record as one line."""
        self.write_line(path, record.model_dump_json())

    def write_line(self, path: Path, line: str) -> None:
        """Append one JSON line (without its newline)."""
        fp = self._files.get(path)
        if fp is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fp = self._files[path] = path.open("a", encoding="utf-8")
        fp.write(line + "\n")

    def flush(self) -> None:
        """Hand the written lines to the OS (they survive a kill -9); fsync at most every second."""
        for fp in self._files.values():
            fp.flush()
        if time.monotonic() - self._last_sync >= FSYNC_EVERY_SECONDS:
            self.sync()

    def sync(self) -> None:
        """fsync every open file."""
        for fp in self._files.values():
            fp.flush()
            os.fsync(fp.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """fsync and close every file."""
        try:
            self.sync()
        finally:
            for fp in self._files.values():
                with contextlib.suppress(OSError):
                    fp.close()
            self._files.clear()


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, decoded object) for each line of a JSONL file we wrote."""
    if not path.exists():
        return
    with open_lines(path) as fp:
        offset = 0
        for line in fp:
            if line.strip():
                yield offset, orjson.loads(line)
            offset += len(line)


def read_sample_at(path: Path, offset: int) -> Sample:
    """The sample on the line starting at `offset`."""
    with path.open("rb") as fp:
        fp.seek(offset)
        return Sample.model_validate_json(fp.readline())


def iter_outcomes(folder: RunFolder, number: int) -> Iterator[Outcome]:
    """The outcome lines of a round."""
    for _, record in iter_json_lines(folder.round_file(number, "outcomes")):
        yield Outcome.model_validate(record)


@dataclass
class RoundState:
    """What earlier invocations finished in one round."""

    number: int
    path: Path
    complete: set[str] = field(default_factory=set)
    kept_offsets: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    """The attempt number of sample-rounds asked again (--reask-unreadable)."""

    def kept_sample(self, seed_id: str) -> Sample | None:
        """The survivor of this round for a seed, or None."""
        offset = self.kept_offsets.get(seed_id)
        return None if offset is None else read_sample_at(self.path, offset)


def scan_round(folder: RunFolder, number: int, *, reask_unreadable: bool = False) -> RoundState:
    """Find the complete sample-rounds of a round; purge the lines of the others (torn, failed calls, and with
    `reask_unreadable` unreadable answers) so they are redone."""
    files = folder.round(number)
    for path in files.all():
        repair_tail(path)
    state = RoundState(number, files.kept)
    redo: set[str] = set()
    for outcome in iter_outcomes(folder, number):
        if outcome.retry or (reask_unreadable and outcome.unreadable):
            redo.add(outcome.seed_id)
            if outcome.unreadable:
                state.attempts[outcome.seed_id] = outcome.attempt + 1
        else:
            state.complete.add(outcome.seed_id)
            redo.discard(outcome.seed_id)
    seen: set[str] = set(redo)
    for path in files.all():
        if path.name != "outcomes.jsonl":
            seen.update(record["seed_id"] for _, record in iter_json_lines(path))
    incomplete = seen - state.complete
    if incomplete:
        for path in files.all():
            purge_lines(path, incomplete)
    for offset, record in iter_json_lines(files.kept):
        state.kept_offsets[record["seed_id"]] = offset
    return state


def purge_lines(path: Path, seed_ids: set[str]) -> None:
    """Rewrite a JSONL file without the lines of the given seeds."""
    if not path.exists():
        return
    tmp = path.with_name(path.name + ".tmp")
    with open_lines(path) as src, tmp.open("wb") as dst:
        for line in src:
            if orjson.loads(line)["seed_id"] not in seed_ids:
                dst.write(line)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)


def concat_files(sources: Iterable[Path], target: Path) -> int:
    """Write the lines of several JSONL files into one (atomically); returns the line count."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    count = 0
    with tmp.open("wb") as dst:
        for source in sources:
            if not source.exists():
                continue
            with open_lines(source) as src:
                for line in src:
                    dst.write(line)
                    count += 1
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    return count


def write_final(folder: RunFolder, rounds: int) -> int:
    """final.jsonl: the survivors of rounds 1..N, in round order; returns the line count."""
    return concat_files((folder.round_file(n, "kept") for n in range(1, rounds + 1)), folder.final)
