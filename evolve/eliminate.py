"""`evolve eliminate`: the judge alone over any evolved file, re-scoring without calls, and the seed baseline.

Parents are found through each record's `parent_id` in a `--parents` file, or embedded: an MMEvol native
record with two or more non-empty `conversations_vK` is judged newest against the one before it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from evolve.accounting import prices_for
from evolve.cache import NullCache, ResponseCache
from evolve.client import ChatClient
from evolve.config import RunConfig
from evolve.errors import ImageError, InputError, UsageError
from evolve.images import ImageEncoder, resolve_image
from evolve.manifest import read_manifest, summarize_rounds, write_manifest
from evolve.prompts import PromptSet
from evolve.records import QAS, Drop, Outcome, Rejected, Sample, iter_raw, parse_record, read_samples
from evolve.runfolder import AppendFiles, RunFolder, StageFiles, iter_json_lines, write_atomic, write_final
from evolve.stages import StageContext, Work, failure_reason, judge_stage, keep_stage

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
    """Judge (parent, child) pairs with the round's judge stage and write judged/kept/dropped into one folder."""

    def __init__(self, config: RunConfig, out: Path, message: Callable[[str], None]) -> None:
        self.config = config
        self.out = out
        self.message = message
        self.result = EliminationResult()

    def _targets(self, baseline: bool) -> dict[str, Path]:
        """Where each kind of line goes: a baseline writes only baseline.jsonl and baseline-dropped.jsonl, so it
        can sit in a run folder without touching the run's files."""
        if baseline:
            folder = RunFolder(self.out)
            return {"judged": folder.baseline, "dropped": folder.baseline_dropped}
        files = StageFiles(self.out)
        return {name: files[name] for name in ("judged", "kept", "dropped")}

    async def run(
        self, pairs: Iterator[tuple[Sample, Sample]], image_base: Path, baseline: bool = False
    ) -> EliminationResult:
        """Judge every pair; the files are written anew (the cache makes a re-run free)."""
        targets = self._targets(baseline)
        for path in targets.values():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
        prompts = PromptSet.load(self.config.prompts)
        cache: ResponseCache | NullCache = (
            NullCache() if self.config.no_cache else ResponseCache(self.config.cache or RunFolder(self.out).cache)
        )
        files = AppendFiles()
        client = ChatClient(self.config.judge_settings(), cache)
        stages = [judge_stage] if baseline else [judge_stage, keep_stage]
        try:
            async with client:
                ctx = StageContext(self.config, prompts, client, client, ImageEncoder(self.config.image_size))

                async def judge(pair: tuple[Sample, Sample]) -> Work:
                    parent, child = pair
                    work = Work(child.seed_id, child.round, parent, None, operator=child.operator, child=child)
                    if self.config.images == "send" and child.image:
                        try:
                            work.image = resolve_image(child.image, self.config.image_root, image_base)
                        except ImageError as exc:
                            work.fail("judge", exc)
                            work.drop("judge", failure_reason(exc), child.qa, count=False)
                            return work
                    for stage in stages:
                        await stage(ctx, work)
                        if work.child is None:
                            break
                    return work

                async for work in bounded_map(pairs, judge, self.config.concurrency):
                    self._count(work)
                    for name, line in work.lines:
                        if name in targets:
                            files.write_line(targets[name], line)
                    files.flush()
        finally:
            files.close()
            cache.close()
        return self.result

    def _count(self, work: Work) -> None:
        result = self.result
        if work.failed is not None:
            result.failed += 1
        judged = work.items.get("judged", 0)
        result.judged_samples += judged > 0
        result.judged_items += judged
        result.improved_items += work.items.get("improved", 0)
        result.kept_samples += work.items.get("kept", 0) > 0
        result.kept_items += work.items.get("kept", 0)


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
    run = RunFolder(evolved.resolve().parent.parent)
    if run.run_json.exists():
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError, UsageError):
            return Path((run.read_run_json() or {})["seeds"][0]).parent
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


LATER_STAGES = ("verify", "dedup")


def _later_drops(records: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(seed id, question) of the items stages after the judge dropped: a new threshold does not bring them back."""
    return {
        (record["seed_id"], item["question"])
        for record in records
        if record["stage"] in LATER_STAGES
        for item in (record.get("sample") or {}).get("qa", [])
    }


def _rescore_round(files: StageFiles, min_score: float, total: EliminationResult) -> None:
    """Re-apply the keep rule to one folder of judged/kept/dropped (and outcomes, when there)."""
    if not files["judged"].exists():
        raise UsageError(f"{files.folder}: no judged.jsonl to re-score")
    dropped = [record for _, record in iter_json_lines(files["dropped"])]
    later = _later_drops(dropped)
    drop_lines = [Drop.model_validate(r).model_dump_json() for r in dropped if r["stage"] != "eliminate"]
    kept_lines: list[str] = []
    kept_items: dict[str, list[QAS]] = {}
    eliminated: dict[str, int] = {}
    for _, record in iter_json_lines(files["judged"]):
        judged = Sample.model_validate(record)
        alive = [i for i in judged.qa if (judged.seed_id, i.question) not in later]
        kept = [i for i in alive if i.survives(min_score)]
        rejected = [i for i in alive if not i.survives(min_score)]
        total.judged_samples += 1
        total.judged_items += len(judged.qa)
        total.improved_items += sum(1 for item in judged.qa if item.improved)
        kept_items[judged.seed_id] = kept
        eliminated[judged.seed_id] = len(rejected)
        if kept:
            total.kept_samples += 1
            total.kept_items += len(kept)
            kept_lines.append(judged.model_copy(update={"qa": kept}).model_dump_json())
        if rejected:
            reason = f"{len(rejected)} of {len(judged.qa)} rewrites rejected at --min-score {min_score:g} (re-scored)"
            drop = Drop(id=judged.id, seed_id=judged.seed_id, round=judged.round, stage="eliminate", reason=reason,
                        operator=judged.operator, sample=judged.model_copy(update={"qa": rejected}))  # fmt: skip
            drop_lines.append(drop.model_dump_json())
    write_atomic(files["kept"], "".join(line + "\n" for line in kept_lines))
    write_atomic(files["dropped"], "".join(line + "\n" for line in drop_lines))
    if "outcomes" in files.names and files["outcomes"].exists():
        outcomes = []
        for _, record in iter_json_lines(files["outcomes"]):
            outcome = Outcome.model_validate(record)
            if outcome.seed_id in kept_items:
                items = kept_items[outcome.seed_id]
                outcome.kept = bool(items)
                outcome.items["kept"] = len(items)
                outcome.items["dropped_eliminate"] = eliminated[outcome.seed_id]
                outcome.scores = [float(i.score) for i in items if i.score is not None]
            outcomes.append(outcome.model_dump_json())
        write_atomic(files["outcomes"], "".join(line + "\n" for line in outcomes))


def rescore_folder(folder: Path, min_score: float) -> EliminationResult:
    """Re-apply the keep rule to `judged.jsonl` in a folder (or every round of a run) without calls; items later
    stages dropped stay dropped, and later rounds are not redone."""
    run = RunFolder(folder)
    rounds = [n for n in run.rounds_present() if n > 0]
    total = EliminationResult()
    for files in [run.round(n) for n in rounds] or [StageFiles(folder)]:
        _rescore_round(files, min_score, total)
    manifest = read_manifest(run) if rounds else None
    if manifest is not None:
        config = manifest.config
        prices = prices_for(str(config.get("model")), config.get("price_in"), config.get("price_out"),
                            config.get("price_cached_in"))  # fmt: skip
        config["min_score"] = min_score
        summarize_rounds(run, range(min(run.rounds_present()), max(rounds) + 1), prices, manifest)
        manifest.final_samples = write_final(run, max(rounds))
        write_manifest(run, manifest)
    elif rounds:
        write_final(run, max(rounds))
    return total
