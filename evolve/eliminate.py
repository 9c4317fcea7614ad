"""`evolve eliminate`: the judge alone over any evolved file, re-scoring without calls, and the seed baseline.

Parents are found through each record's `parent_id` in a `--parents` file, or embedded: an MMEvol native
record with two or more non-empty `conversations_vK` is judged newest against the one before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from evolve.cache import NullCache, ResponseCache
from evolve.client import ChatClient
from evolve.config import RunConfig
from evolve.errors import ImageError, InputError, UsageError
from evolve.images import ImageEncoder, resolve_image
from evolve.prompts import PromptSet
from evolve.records import Drop, Rejected, Sample, iter_raw, parse_record, read_samples
from evolve.runfolder import AppendFiles, RunFolder, iter_json_lines, write_atomic
from evolve.stages import StageContext, apply_keep_rule, failure_reason, judge_sample, make_drop

T = TypeVar("T")
R = TypeVar("R")
_NATIVE_PREFIX = "conversations_v"


@dataclass
class EliminationResult:
    """Counts of one elimination."""

    judged_samples: int = 0
    judged_items: int = 0
    improved_items: int = 0
    kept_samples: int = 0
    kept_items: int = 0
    failed: int = 0
    missing_parent: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Numbers plus the improvement rate, for printing and JSON."""
        data = dict(self.__dict__)
        items = self.judged_items
        data["improvement_rate"] = round(self.improved_items / items, 4) if items else None
        return data


async def bounded_map(
    items: Iterable[T], func: Callable[[T], Coroutine[Any, Any, R]], concurrency: int
) -> AsyncIterator[R]:
    """Apply an async function to a stream with at most `concurrency` calls in flight; results as they end."""
    pending: set[asyncio.Task[R]] = set()
    for item in items:
        pending.add(asyncio.create_task(func(item)))
        if len(pending) >= concurrency:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield task.result()
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            yield task.result()


def _embedded_pair(raw: dict[str, Any], where: str) -> tuple[Sample, Sample] | None:
    """(parent, child) from a native record holding two or more non-empty versions."""
    versions = sorted(
        int(k.removeprefix(_NATIVE_PREFIX))
        for k, v in raw.items()
        if k.startswith(_NATIVE_PREFIX) and k.removeprefix(_NATIVE_PREFIX).isdigit() and v
    )
    if len(versions) < 2:
        return None
    newest = versions[-1]
    without_newest = {k: v for k, v in raw.items() if k != f"{_NATIVE_PREFIX}{newest}"}
    parent, _ = parse_record(without_newest, where, "mmevol")
    child, _ = parse_record(raw, where, "mmevol")
    child = child.model_copy(update={"id": f"{child.id}@r{newest}", "round": newest, "parent_id": parent.id})
    return parent, child


def load_parents(path: Path) -> dict[str, Sample]:
    """Every good record of a parents file, by id."""
    parents: dict[str, Sample] = {}
    for item in read_samples(path):
        if not isinstance(item, Rejected):
            parents[item.sample.id] = item.sample
    return parents


def iter_pairs(
    evolved: Path, parents: dict[str, Sample] | None, on_problem: Callable[[str], None]
) -> Iterator[tuple[Sample, Sample]]:
    """(parent, child) pairs of an evolved file."""
    for item in iter_raw(evolved):
        if isinstance(item, Rejected):
            on_problem(f"{item.where}: {item.reason}")
            continue
        where, raw = item
        try:
            pair = _embedded_pair(raw, where) if isinstance(raw, dict) and parents is None else None
            if pair is None:
                child, _ = parse_record(raw, where)
                parent = (parents or {}).get(child.parent_id or "")
                if parent is None:
                    on_problem(f"{where}: parent {child.parent_id!r} not found (give --parents FILE)")
                    continue
                pair = (parent, child)
        except InputError as exc:
            on_problem(str(exc))
            continue
        yield pair


class Eliminator:
    """Judge (parent, child) pairs and write judged/kept/dropped into one folder."""

    def __init__(self, config: RunConfig, out: Path, message: Callable[[str], None]) -> None:
        self.config = config
        self.out = out
        self.message = message
        self.result = EliminationResult()
        self._names: tuple[str, str | None, str] = ("judged", "kept", "dropped")

    async def run(
        self, pairs: Iterator[tuple[Sample, Sample]], image_base: Path, baseline: bool = False
    ) -> EliminationResult:
        """Judge every pair; the files are written anew (the cache makes a re-run free).

        A baseline (seeds against themselves) writes only `baseline.jsonl` and `baseline-dropped.jsonl`, so it
        can sit in a run folder without touching the run's files.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        self._names = ("baseline", None, "baseline-dropped") if baseline else ("judged", "kept", "dropped")
        for name in self._names:
            if name is not None:
                (self.out / f"{name}.jsonl").unlink(missing_ok=True)
        prompts = PromptSet.load(self.config.prompts)
        cache: ResponseCache | NullCache = (
            NullCache() if self.config.no_cache else ResponseCache(self.config.cache or self.out / "cache.sqlite")
        )
        files = AppendFiles()
        client = ChatClient(self.config.judge_settings(), cache)
        try:
            async with client:
                ctx = StageContext(self.config, prompts, client, client, ImageEncoder(self.config.image_size))

                async def judge(pair: tuple[Sample, Sample]) -> Sample | Drop:
                    parent, child = pair
                    image = None
                    if self.config.images == "send" and child.image:
                        try:
                            image = resolve_image(child.image, self.config.image_root, image_base)
                        except ImageError as exc:
                            reason = failure_reason(exc)
                            return make_drop(child, child.id, child.round, "judge", reason, child.operator)
                    return await judge_sample(ctx, parent, child, image)

                async for judged in bounded_map(pairs, judge, self.config.concurrency):
                    self._record(files, judged)
                    files.flush()
        finally:
            files.close()
            cache.close()
        return self.result

    def _record(self, files: AppendFiles, judged: Sample | Drop) -> None:
        judged_name, kept_name, dropped_name = self._names
        if isinstance(judged, Drop):
            self.result.failed += 1
            files.write(self.out / f"{dropped_name}.jsonl", judged)
            return
        files.write(self.out / f"{judged_name}.jsonl", judged)
        self._count(judged)
        if kept_name is None:
            return
        kept, rejected = apply_keep_rule(judged, self.config.min_score)
        if kept is not None:
            files.write(self.out / f"{kept_name}.jsonl", kept)
        if rejected is not None:
            files.write(self.out / f"{dropped_name}.jsonl", rejected)

    def _count(self, judged: Sample) -> None:
        result = self.result
        result.judged_samples += 1
        result.judged_items += len(judged.qa)
        result.improved_items += sum(1 for item in judged.qa if item.improved)
        kept = [item for item in judged.qa if item.survives(self.config.min_score)]
        result.kept_samples += bool(kept)
        result.kept_items += len(kept)


def eliminate(
    config: RunConfig,
    evolved: Path,
    out: Path,
    parents_file: Path | None,
    message: Callable[[str], None],
) -> EliminationResult:
    """Judge an evolved file against its parents into `out`."""
    if not evolved.is_file():
        raise InputError(f"{evolved}: no such file")
    parents = load_parents(parents_file) if parents_file else None
    eliminator = Eliminator(config, out, message)
    pairs = iter_pairs(evolved, parents, message)
    return asyncio.run(eliminator.run(pairs, image_base(evolved, parents_file)))


def image_base(evolved: Path, parents_file: Path | None) -> Path:
    """The folder relative image paths start from: the seed file's (found through a run's run.json or
    --parents), else the evolved file's own."""
    run_json = evolved.resolve().parent.parent / "run.json"
    if run_json.exists():
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            return Path(json.loads(run_json.read_text(encoding="utf-8"))["seeds"][0]).parent
    return (parents_file or evolved).parent


def baseline(config: RunConfig, seeds: Path, out: Path, message: Callable[[str], None]) -> EliminationResult:
    """Score every seed against itself (the paper's Conv0) into `out/baseline.jsonl`."""
    if not seeds.is_file():
        raise InputError(f"{seeds}: no such file")

    def pairs() -> Iterator[tuple[Sample, Sample]]:
        for item in read_samples(seeds, fmt=config.format):
            if isinstance(item, Rejected):
                message(f"{item.where}: {item.reason}")
                continue
            yield item.sample, item.sample

    eliminator = Eliminator(config, out, message)
    return asyncio.run(eliminator.run(pairs(), seeds.parent, baseline=True))


def rescore_folder(folder: Path, min_score: float) -> EliminationResult:
    """Re-apply the keep rule to `judged.jsonl` in a folder (or every round of a run) without calls."""
    run = RunFolder(folder)
    targets = [run.round_dir(n) for n in run.rounds_present()] or [folder]
    total = EliminationResult()
    for target in targets:
        judged_path = target / "judged.jsonl"
        if not judged_path.exists():
            raise UsageError(f"{target}: no judged.jsonl to re-score")
        kept_lines: list[str] = []
        drop_lines = [
            Drop.model_validate(record).model_dump_json()
            for _, record in iter_json_lines(target / "dropped.jsonl")
            if record["stage"] != "eliminate"
        ]
        for _, record in iter_json_lines(judged_path):
            judged = Sample.model_validate(record)
            kept, rejected = apply_keep_rule(judged, min_score)
            total.judged_samples += 1
            total.judged_items += len(judged.qa)
            total.improved_items += sum(1 for item in judged.qa if item.improved)
            if kept is not None:
                total.kept_samples += 1
                total.kept_items += len(kept.qa)
                kept_lines.append(kept.model_dump_json())
            if rejected is not None:
                drop_lines.append(rejected.model_dump_json())
        write_atomic(target / "kept.jsonl", "".join(line + "\n" for line in kept_lines))
        write_atomic(target / "dropped.jsonl", "".join(line + "\n" for line in drop_lines))
    if run.rounds_present():
        with contextlib.suppress(FileNotFoundError):
            from evolve.runfolder import concat_files

            concat_files([run.round_file(n, "kept") for n in run.rounds_present()], run.final)
    return total
