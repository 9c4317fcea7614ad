"""The run folder on disk: layout, lock, run.json, crash-safe appends and what a resume finds there.

Per round and per seed, one sample-round writes its lines in a fixed order:
- evolve failed:  dropped(stage=evolve)
- judge failed:   evolved, dropped(stage=judge)
- judged:         evolved, judged, kept (if any item survived), dropped(stage=eliminate) (if any did not)
A sample-round is complete when its last line is there, except that a failed call (endpoint or image) is
tried again by the next invocation; a resume purges the lines of incomplete ones (the
response cache makes redoing them free) and a torn last line is cut off.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import BaseModel

from evolve.errors import RunLockedError, UsageError
from evolve.records import QAS, Sample

ROUND_FILES = ("evolved", "judged", "kept", "dropped")
RETRIED_ON_RESUME = ("endpoint:", "image:")
FSYNC_EVERY_SECONDS = 1.0


class RunFolder:
    """Paths of one run folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_json = root / "run.json"
        self.final = root / "final.jsonl"
        self.cache = root / "cache.sqlite"
        self.lock = root / "run.lock"
        self.rejected = root / "rejected.jsonl"
        self.log = root / "evolve.log"
        self.baseline = root / "baseline.jsonl"
        self._round_files: dict[tuple[int, str], Path] = {}

    def round_dir(self, number: int) -> Path:
        """`round-N/`."""
        return self.root / f"round-{number}"

    def round_file(self, number: int, name: str) -> Path:
        """`round-N/<name>.jsonl` (remembered: it is asked for on every record written)."""
        path = self._round_files.get((number, name))
        if path is None:
            path = self._round_files[number, name] = self.round_dir(number) / f"{name}.jsonl"
        return path

    def rounds_present(self) -> list[int]:
        """Round numbers that have a folder, in order."""
        found = []
        for child in self.root.glob("round-*"):
            suffix = child.name.removeprefix("round-")
            if child.is_dir() and suffix.isdigit():
                found.append(int(suffix))
        return sorted(found)

    def read_run_json(self) -> dict[str, Any] | None:
        """The run.json of an earlier invocation, or None."""
        if not self.run_json.exists():
            return None
        try:
            data: dict[str, Any] = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{self.run_json}: unreadable ({exc}); move it away to start over") from exc
        return data

    def write_run_json(self, data: dict[str, Any]) -> None:
        """Replace run.json atomically."""
        write_atomic(self.run_json, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


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
def run_lock(folder: RunFolder) -> Iterator[None]:
    """Hold an exclusive lock on the run folder; a second process gets RunLockedError with our pid."""
    folder.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunLockedError(f"{folder.root}: already running (pid {pid})") from None
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
                json.loads(tail[last_start:])
            except ValueError:
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
        fp = self._files.get(path)
        if fp is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fp = self._files[path] = path.open("a", encoding="utf-8")
        fp.write(record.model_dump_json() + "\n")

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
        self.sync()
        for fp in self._files.values():
            fp.close()
        self._files.clear()


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, decoded object) for each line of a JSONL file we wrote."""
    if not path.exists():
        return
    with path.open("rb") as fp:
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


@dataclass
class RoundState:
    """What an earlier invocation finished in one round."""

    number: int
    complete: set[str] = field(default_factory=set)
    kept_offsets: dict[str, int] = field(default_factory=dict)

    def kept_sample(self, folder: RunFolder, seed_id: str) -> Sample | None:
        """The survivor of this round for a seed, read from kept.jsonl, or None."""
        offset = self.kept_offsets.get(seed_id)
        return None if offset is None else read_sample_at(folder.round_file(self.number, "kept"), offset)


def scan_round(folder: RunFolder, number: int, min_score: float) -> RoundState:
    """Find the complete sample-rounds of a round, purging the lines of incomplete ones."""
    for name in ROUND_FILES:
        repair_tail(folder.round_file(number, name))
    seen: set[str] = set()
    expected: dict[str, tuple[bool, bool]] = {}
    kept: set[str] = set()
    drops: dict[str, set[str]] = {}
    for _, record in iter_json_lines(folder.round_file(number, "evolved")):
        seen.add(record["seed_id"])
    for _, record in iter_json_lines(folder.round_file(number, "judged")):
        flags = [QAS.model_validate(item).survives(min_score) for item in record["qa"]]
        expected[record["seed_id"]] = (any(flags), not all(flags))
        seen.add(record["seed_id"])
    for _, record in iter_json_lines(folder.round_file(number, "kept")):
        kept.add(record["seed_id"])
        seen.add(record["seed_id"])
    for _, record in iter_json_lines(folder.round_file(number, "dropped")):
        stage = record["stage"]
        if stage in ("evolve", "judge") and record["reason"].startswith(RETRIED_ON_RESUME):
            stage = "retry"  # the endpoint failed: a resume tries again (answers that were read stay final)
        drops.setdefault(record["seed_id"], set()).add(stage)
        seen.add(record["seed_id"])

    state = RoundState(number)
    for seed_id in seen:
        stages = drops.get(seed_id, set())
        if stages & {"evolve", "judge"}:
            state.complete.add(seed_id)
        elif seed_id in expected:
            want_kept, want_drop = expected[seed_id]
            if want_kept == (seed_id in kept) and want_drop == ("eliminate" in stages):
                state.complete.add(seed_id)
    incomplete = seen - state.complete
    if incomplete:
        for name in ROUND_FILES:
            purge_lines(folder.round_file(number, name), incomplete)
    for offset, record in iter_json_lines(folder.round_file(number, "kept")):
        state.kept_offsets[record["seed_id"]] = offset
    return state


def purge_lines(path: Path, seed_ids: set[str]) -> None:
    """Rewrite a JSONL file without the lines of the given seeds."""
    if not path.exists():
        return
    tmp = path.with_name(path.name + ".tmp")
    with path.open("rb") as src, tmp.open("wb") as dst:
        for line in src:
            if json.loads(line)["seed_id"] not in seed_ids:
                dst.write(line)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)


def concat_files(sources: list[Path], target: Path) -> int:
    """Write the lines of several JSONL files into one (atomically); returns the line count."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    count = 0
    with tmp.open("wb") as dst:
        for source in sources:
            if not source.exists():
                continue
            with source.open("rb") as src:
                for line in src:
                    dst.write(line)
                    count += 1
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    return count


def round_stats(folder: RunFolder, number: int) -> dict[str, Any]:
    """Counts of one round, read from its files (so they stay right across resumes)."""
    operators: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    stats: dict[str, Any] = dict.fromkeys(
        ("evolved", "evolve_failed", "judge_failed", "judged_samples", "judged_items",
         "improved_items", "kept_samples", "kept_items"), 0,
    )  # fmt: skip
    scores: list[float] = []
    for _, record in iter_json_lines(folder.round_file(number, "evolved")):
        stats["evolved"] += 1
        operators[record["operator"]] += 1
    for _, record in iter_json_lines(folder.round_file(number, "judged")):
        stats["judged_samples"] += 1
        stats["judged_items"] += len(record["qa"])
        stats["improved_items"] += sum(1 for item in record["qa"] if item.get("improved"))
    for _, record in iter_json_lines(folder.round_file(number, "kept")):
        stats["kept_samples"] += 1
        stats["kept_items"] += len(record["qa"])
        scores.extend(float(item["score"]) for item in record["qa"] if item.get("score") is not None)
    for _, record in iter_json_lines(folder.round_file(number, "dropped")):
        if record["stage"] == "evolve":
            stats["evolve_failed"] += 1
            operators[record["operator"]] += 1
        elif record["stage"] == "judge":
            stats["judge_failed"] += 1
        reasons[f"{record['stage']}: {_reason_class(record['reason'])}"] += 1
    stats["samples"] = stats["evolved"] + stats["evolve_failed"]
    stats["carried_forward"] = stats["samples"] - stats["kept_samples"]
    judged = stats["judged_items"]
    stats["improvement_rate"] = round(stats["improved_items"] / judged, 4) if judged else None
    stats["mean_accepted_score"] = round(sum(scores) / len(scores), 3) if scores else None
    stats["operators"] = dict(sorted(operators.items()))
    stats["drop_reasons"] = dict(reasons.most_common(10))
    return stats


def _reason_class(reason: str) -> str:
    """The kind of a drop reason without its particulars (for counting)."""
    head = reason.split(":", 2)
    if reason.startswith(("endpoint", "unreadable")) and len(head) > 1:
        return f"{head[0]}: {head[1].strip()[:60]}"
    if "rewrites rejected" in reason:
        return "rewrites rejected"
    return reason[:80]
