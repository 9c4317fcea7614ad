"""`evolve run`: every seed through N rounds of evolve → judge → keep, streamed, resumable, stoppable.

Each seed is a chain: its round N+1 starts from its survivors of round N (or its previous version when none
survived), so rounds overlap and the endpoint never idles at a round boundary. Records flow through a
bounded queue: memory does not grow with the seed file.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evolve import __version__
from evolve.accounting import TokenUsage, estimate_cost, prices_for
from evolve.cache import NullCache, ResponseCache
from evolve.client import ChatClient
from evolve.config import RunConfig
from evolve.errors import (
    EvolveError,
    FailureBudgetExceeded,
    FatalEndpointErrors,
    ImageError,
    InputError,
    Interrupted,
    RecordError,
    UsageError,
)
from evolve.images import ImageEncoder, check_image, resolve_image
from evolve.operators import shard_of
from evolve.prompts import PromptSet
from evolve.records import Drop, Rejected, Sample, read_samples
from evolve.runfolder import (
    ROUND_FILES,
    AppendFiles,
    RoundState,
    RunFolder,
    concat_files,
    round_stats,
    run_lock,
    scan_round,
)
from evolve.stages import RoundOutcome, StageContext, evolve_round

GRACE_SECONDS = 5.0
FINGERPRINT_KEYS = (
    "model", "judge_model", "temperature", "max_tokens", "min_score", "seed", "weights",
    "images", "image_size", "judge_images", "format", "shard",
)  # fmt: skip

Message = Callable[[str], None]


@dataclass
class RoundCounters:
    """Live numbers of one round, for progress bars."""

    done: int = 0
    failed: int = 0
    kept: int = 0


@dataclass
class RunCounters:
    """Live numbers of a run, read by the CLI's progress display."""

    rounds: dict[int, RoundCounters] = field(default_factory=dict)
    total: int | None = None
    skipped: int = 0
    rejected: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)
    started: float = field(default_factory=time.monotonic)


@dataclass
class RunResult:
    """What `run_evolution` returns: the run folder, run.json's content, and whether samples failed."""

    folder: RunFolder
    summary: dict[str, Any]
    failures: bool


def count_lines(paths: list[Path]) -> int:
    """A quick upper bound of the number of records, for progress bars."""
    total = 0
    for path in paths:
        with path.open("rb") as fp:
            while chunk := fp.read(1 << 20):
                total += chunk.count(b"\n")
    return total


def iter_seeds(paths: list[Path], config: RunConfig) -> Iterator[tuple[Sample, Path | str | None] | Drop]:
    """Good seeds with their resolved image, or a Drop (stage input) for each unusable one."""
    shard = config.shard_pair()
    for index, path in enumerate(paths):
        for item in read_samples(path, fmt=config.format):
            if isinstance(item, Rejected):
                # an unreadable line has no seed id: the shard of its place in the seed list reports it
                place = f"{index}:{item.where.removeprefix(str(path))}"
                if shard is not None and shard_of(place, shard[1]) != shard[0]:
                    continue
                if config.strict:
                    raise RecordError(item.where, item.reason)
                reason = f"{item.where}: {item.reason}"
                yield Drop(id=item.where, seed_id=item.where, round=0, stage="input", reason=reason)
                continue
            sample = item.sample
            if shard is not None and shard_of(sample.seed_id, shard[1]) != shard[0]:
                continue
            image: Path | str | None = None
            if config.images == "send" and sample.image:
                try:
                    image = resolve_image(sample.image, config.image_root, path.parent)
                    if isinstance(image, Path):
                        check_image(image)
                except ImageError as exc:
                    if config.strict:
                        raise RecordError(item.where, str(exc)) from exc
                    yield Drop(id=sample.id, seed_id=sample.seed_id, round=0, stage="input",
                               reason=f"{item.where}: {exc}")  # fmt: skip
                    continue
            yield sample, image


def fingerprint(config: RunConfig, seeds: list[Path], prompts: PromptSet) -> dict[str, Any]:
    """The settings that decide a run's records; a resume must use the same."""
    data = config.public()
    found = {key: data[key] for key in FINGERPRINT_KEYS}
    found["seeds"] = [str(p.resolve()) for p in seeds]
    found["prompt_hashes"] = prompts.hashes()
    return found


def check_fingerprint(old: dict[str, Any] | None, new: dict[str, Any], root: Path) -> None:
    """Refuse to resume a run folder made with other settings."""
    if not old:
        return
    for key, value in new.items():
        if key in old and old[key] != value:
            raise UsageError(
                f"{root} was run with other settings ({key} differs); "
                "resume with the same settings or pick another --out"
            )


def make_clients(config: RunConfig, cache: ResponseCache | NullCache) -> tuple[ChatClient, ChatClient]:
    """(evolution client, judge client); one and the same client when the judge uses the same endpoint."""
    settings = config.endpoint_settings()
    client = ChatClient(settings, cache)
    judge_settings = config.judge_settings()
    if judge_settings == settings:
        return client, client
    return client, ChatClient(judge_settings, cache)


def resume_point(states: dict[int, RoundState], folder: RunFolder, seed: Sample) -> tuple[int, Sample]:
    """(first round a seed still needs, the version it starts from) after the rounds already complete.

    `states` holds rounds 1..N as found by `scan_round`; N + 1 means the seed is done. The version is the
    seed's latest survivor (or the seed itself when no complete round kept anything).
    """
    current = seed
    number = 1
    while number in states and seed.seed_id in states[number].complete:
        current = states[number].kept_sample(folder, seed.seed_id) or current
        number += 1
    return number, current


def round_summaries(
    folder: RunFolder, config: RunConfig, usages: dict[int, TokenUsage]
) -> tuple[dict[str, Any], TokenUsage, tuple[float, float] | None]:
    """run.json's per-round part: counts read from the round files (created empty where missing), tokens and
    cost per round; with the total usage and the prices used."""
    prices = prices_for(config.model, config.price_in, config.price_out)
    rounds: dict[str, Any] = {}
    total = TokenUsage()
    for number in range(1, config.rounds + 1):
        usage = usages.get(number, TokenUsage())
        total.merge(usage)
        folder.round_dir(number).mkdir(parents=True, exist_ok=True)
        for name in ROUND_FILES:
            folder.round_file(number, name).touch()
        stats = round_stats(folder, number)
        stats["usage"] = usage.as_dict()
        stats["cost_usd"] = estimate_cost(usage, prices)
        rounds[str(number)] = stats
    return rounds, total, prices


class Runner:
    """One invocation of `evolve run` on one run folder."""

    def __init__(self, config: RunConfig, seeds: list[Path], out: Path, message: Message) -> None:
        self.config = config
        self.seeds = seeds
        self.folder = RunFolder(out)
        self.message = message
        self.counters = RunCounters()
        self.files = AppendFiles()
        self.failures = 0
        self.budget_spent = False
        self.stop_signal: int | None = None
        self.fatal: EvolveError | None = None
        self._stopping = asyncio.Event()
        self._round_usage: dict[int, TokenUsage] = {}

    # ------------------------------------------------------------------ set-up

    def _check_inputs(self) -> None:
        for path in self.seeds:
            if not path.is_file():
                raise InputError(f"{path}: no such seed file")

    def _open_cache(self) -> ResponseCache | NullCache:
        if self.config.no_cache:
            return NullCache()
        return ResponseCache(self.config.cache or self.folder.cache)

    # ------------------------------------------------------------------ the run

    async def run(self) -> RunResult:
        """Run (or resume) every round for every seed; raises Interrupted/FailureBudgetExceeded/... ."""
        self._check_inputs()
        prompts = PromptSet.load(self.config.prompts)
        with run_lock(self.folder):
            previous = self.folder.read_run_json()
            new_print = fingerprint(self.config, self.seeds, prompts)
            check_fingerprint((previous or {}).get("fingerprint"), new_print, self.folder.root)
            summary = self._start_summary(previous, new_print, prompts)
            self.folder.write_run_json(summary)
            states = {n: scan_round(self.folder, n, self.config.min_score)
                      for n in range(1, self.config.rounds + 1)}  # fmt: skip
            resumed = sum(len(s.complete) for s in states.values())
            if resumed:
                self.message(f"resuming: {resumed} sample-rounds already done in {self.folder.root}")
            self.counters.total = count_lines(self.seeds)
            for number in range(1, self.config.rounds + 1):
                self.counters.rounds[number] = RoundCounters()
            cache = self._open_cache()
            try:
                await self._run_chains(prompts, cache, states)
            finally:
                self.files.close()
                cache.close()
                summary = self._finish_summary(summary)
                self.folder.write_run_json(summary)
        if self.fatal is not None:
            raise self.fatal
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)
        if self.budget_spent:
            raise FailureBudgetExceeded(
                f"{self.failures} samples failed, over --max-failures {self.config.max_failures}; "
                "fix the cause and run the same command again to resume"
            )
        return RunResult(self.folder, summary, summary["status"] != "done")

    async def _run_chains(
        self, prompts: PromptSet, cache: ResponseCache | NullCache, states: dict[int, RoundState]
    ) -> None:
        client, judge_client = make_clients(self.config, cache)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(client)
            if judge_client is not client:
                await stack.enter_async_context(judge_client)
            ctx = StageContext(self.config, prompts, client, judge_client, ImageEncoder(self.config.image_size))
            queue: asyncio.Queue[tuple[Sample, Path | str | None] | None] = asyncio.Queue(
                maxsize=self.config.concurrency * 2
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._on_signal, sig)
            workers = [asyncio.create_task(self._worker(ctx, queue, states)) for _ in range(self.config.concurrency)]
            producer = asyncio.create_task(self._produce(queue))
            try:
                await self._wait(workers, producer, queue)
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(sig)

    async def _wait(
        self,
        workers: list[asyncio.Task[None]],
        producer: asyncio.Task[None],
        queue: asyncio.Queue[tuple[Sample, Path | str | None] | None],
    ) -> None:
        """Until every seed is done, or a stop: then in-flight sample-rounds get GRACE_SECONDS to finish."""
        everything: asyncio.Future[list[Any]] = asyncio.gather(producer, *workers, return_exceptions=True)
        stop: asyncio.Future[Any] = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({everything, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not everything.done():
            producer.cancel()
            await asyncio.wait({producer})
            self._release_workers(queue, len(workers))
            grace = 0.0 if self.fatal is not None else GRACE_SECONDS
            if grace > 0:
                await asyncio.wait(workers, timeout=grace)
            for task in workers:
                task.cancel()
        for result in await everything:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result

    def _on_signal(self, sig: int) -> None:
        if self.stop_signal is None:
            self.stop_signal = sig
            self.message(f"signal {sig}: finishing in-flight requests (up to {GRACE_SECONDS:g} s), then stopping")
            self._stopping.set()

    def _stop_with(self, error: EvolveError) -> None:
        if self.fatal is None:
            self.fatal = error
            self._stopping.set()

    async def _produce(self, queue: asyncio.Queue[tuple[Sample, Path | str | None] | None]) -> None:
        rejected: list[Drop] = []
        try:
            for item in iter_seeds(self.seeds, self.config):
                if self._stopping.is_set():
                    break
                if isinstance(item, Drop):
                    self.counters.rejected += 1
                    rejected.append(item)
                    self.message(f"skipped {item.reason}")
                    continue
                await queue.put(item)
        except EvolveError as exc:  # --strict and unreadable seed files stop the run
            self._stop_with(exc)
            return
        finally:
            self._write_rejected(rejected)
        for _ in range(self.config.concurrency):
            await queue.put(None)

    @staticmethod
    def _release_workers(queue: asyncio.Queue[tuple[Sample, Path | str | None] | None], workers: int) -> None:
        """Empty the queue and tell every worker to end (the queue holds 2 × workers)."""
        while not queue.empty():
            queue.get_nowait()
        for _ in range(workers):
            queue.put_nowait(None)

    def _write_rejected(self, rejected: list[Drop]) -> None:
        with self.folder.rejected.open("w", encoding="utf-8") as fp:
            for drop in rejected:
                fp.write(drop.model_dump_json() + "\n")

    async def _worker(
        self,
        ctx: StageContext,
        queue: asyncio.Queue[tuple[Sample, Path | str | None] | None],
        states: dict[int, RoundState],
    ) -> None:
        while not self._stopping.is_set():
            item = await queue.get()
            if item is None:
                return
            sample, image = item
            try:
                await self._chain(ctx, sample, image, states)
            except EvolveError as exc:
                if isinstance(exc, (InputError, UsageError, *FatalEndpointErrors)):
                    self._stop_with(exc)
                    return
                raise

    async def _chain(
        self, ctx: StageContext, seed: Sample, image: Path | str | None, states: dict[int, RoundState]
    ) -> None:
        start, current = resume_point(states, self.folder, seed)
        for number in range(start, self.config.rounds + 1):
            state = states[number]
            if seed.seed_id in state.complete:  # a later round done while an earlier one is not (torn write)
                current = state.kept_sample(self.folder, seed.seed_id) or current
                continue
            if self._stopping.is_set():
                return
            outcome = await evolve_round(ctx, current, number, image)
            self._record(number, outcome)
            current = outcome.kept or current

    def _record(self, number: int, outcome: RoundOutcome) -> None:
        for name, record in (("evolved", outcome.evolved), ("judged", outcome.judged), ("kept", outcome.kept)):
            if record is not None:
                self.files.write(self.folder.round_file(number, name), record)
        for drop in outcome.drops:
            self.files.write(self.folder.round_file(number, "dropped"), drop)
        self.files.flush()
        counters = self.counters.rounds[number]
        counters.done += 1
        counters.kept += outcome.kept is not None
        self.counters.usage.merge(outcome.usage)
        self._round_usage.setdefault(number, TokenUsage()).merge(outcome.usage)
        if outcome.failed:
            counters.failed += 1
            self.failures += 1
            budget = self.config.max_failures
            if budget is not None and self.failures > budget:
                self.budget_spent = True
                self._stopping.set()

    # ------------------------------------------------------------------ run.json

    def _start_summary(
        self, previous: dict[str, Any] | None, new_print: dict[str, Any], prompts: PromptSet
    ) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        summary = dict(previous or {})
        summary.update(
            {
                "tool": "evolve",
                "version": __version__,
                "created": summary.get("created", now),
                "updated": now,
                "status": "running",
                "seeds": [str(p.resolve()) for p in self.seeds],
                "config": self.config.public(),
                "fingerprint": new_print,
                "prompt_hashes": prompts.hashes(),
                "prompt_sources": prompts.sources(),
                "rng_seed": self.config.seed,
            }
        )
        return summary

    def _finish_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        usages: dict[int, TokenUsage] = {}
        for number in range(1, self.config.rounds + 1):
            usages[number] = TokenUsage.from_dict(((summary.get("rounds") or {}).get(str(number)) or {}).get("usage"))
            usages[number].merge(self._round_usage.get(number, TokenUsage()))
        rounds, total, prices = round_summaries(self.folder, self.config, usages)
        final_count = concat_files(
            [self.folder.round_file(n, "kept") for n in range(1, self.config.rounds + 1)], self.folder.final
        )
        failed = sum(r["evolve_failed"] + r["judge_failed"] for r in rounds.values())
        status = "done"
        if self.fatal is not None:
            status = "failed"
        elif self.stop_signal is not None:
            status = "interrupted"
        elif self.budget_spent:
            status = "stopped"
        elif failed:
            status = "done_with_failures"
        summary.update(
            {
                "updated": datetime.now(UTC).isoformat(timespec="seconds"),
                "status": status,
                "rounds": rounds,
                "final_samples": final_count,
                "rejected_seeds": self.counters.rejected,
                "usage": total.as_dict(),
                "cost_usd": estimate_cost(total, prices),
                "prices_per_million": list(prices) if prices else None,
            }
        )
        return summary


def run_evolution(config: RunConfig, seeds: list[Path], out: Path, message: Message) -> RunResult:
    """Run `evolve run` to the end (or to a clean stop) and return its summary."""
    if not seeds:
        raise UsageError("no seed files given")
    runner = Runner(config, seeds, out, message)
    return asyncio.run(runner.run())
