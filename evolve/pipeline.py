"""`evolve run`: the run itself — one object for every engine — and the local asyncio pool.

`Run` owns what does not depend on how requests are answered: the lock, the fingerprint, where each seed
resumes and from which version, the rejected seeds, recording finished sample-rounds, the manifest, signals
and structured concurrency (any unexpected exception stops the run within seconds, writes what finished,
marks run.json failed and releases the lock). A `Pool` runs the seeds' chains: `LocalPool` here (asyncio
tasks on this process's clients, live or Batch API), `evolve.ray_executor.RayPool` on a Ray cluster.

Each seed is a chain: its round N+1 starts from its survivors of round N (or its previous version when none
survived), so rounds overlap and the endpoint never idles at a round boundary. Records flow through a bounded
queue: memory does not grow with the seed file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from evolve.accounting import TokenUsage, estimate_cost, prices_for
from evolve.cache import NullCache, ResponseCache
from evolve.client import ChatClient
from evolve.config import RunConfig
from evolve.errors import (
    AnswerDeferred,
    EvolveError,
    FatalEndpointErrors,
    ImageError,
    InputError,
    RecordError,
    UsageError,
)
from evolve.images import ImageEncoder, check_image
from evolve.manifest import Mode, RunManifest, read_manifest, summarize_rounds, write_manifest
from evolve.operators import shard_of
from evolve.prompts import PromptSet
from evolve.records import Drop, Rejected, Sample
from evolve.runfolder import AppendFiles, RoundState, RunFolder, iter_json_lines, run_lock, scan_round, write_final
from evolve.sources import ImageStore, count_records, image_location, read_seed_files
from evolve.stages import ANNOTATION_STAGES, RoundResult, Stage, StageContext, Work, round_stages, run_round

GRACE_SECONDS = 5.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FINGERPRINT_KEYS = (
    "model", "judge_model", "temperature", "judge_temperature", "judge_votes", "max_tokens", "min_score", "seed",
    "weights", "images", "image_size", "image_detail", "prompt_layout", "judge_images", "format", "shard",
    "items_per_call", "annotate", "checks", "verify", "dedup_threshold",
)  # fmt: skip
ENDPOINT_KEYS = ("endpoint", "judge_endpoint")

Message = Callable[[str], None]
ImageRef = Path | str | None
log = logging.getLogger("evolve.run")


# ---------------------------------------------------------------------------------------- seeds and chains


def iter_seeds(paths: list[Path], config: RunConfig, image_store: ImageStore | None) -> Iterator[
    tuple[Sample, ImageRef] | Drop
]:  # fmt: skip
    """Good seeds of this shard with their resolved image, or a Drop (stage input) for each unusable one."""
    shard = config.shard_pair()
    for item in read_seed_files(paths, fmt=config.format, image_store=image_store, columns=config.columns):
        if isinstance(item, Rejected):
            # an unreadable line has no seed id: the shard of its place in the seed list reports it
            place = f"{item.index}:{item.where.removeprefix(str(item.source or ''))}"
            if shard is not None and shard_of(place, shard[1]) != shard[0]:
                continue
            if config.strict:
                raise RecordError(item.where, item.reason)
            yield Drop(id=item.where, seed_id=item.where, round=0, stage="input", reason=f"{item.where}: {item.reason}")
            continue
        sample = item.sample
        if shard is not None and shard_of(sample.seed_id, shard[1]) != shard[0]:
            continue
        image: ImageRef = None
        if config.images == "send" and sample.image:
            try:
                image = image_location(item, config.image_root)
                if isinstance(image, Path):
                    check_image(image)
            except ImageError as exc:
                if config.strict:
                    raise RecordError(item.where, str(exc)) from exc
                yield Drop(id=sample.id, seed_id=sample.seed_id, round=0, stage="input",
                           reason=f"{item.where}: {exc}")  # fmt: skip
                continue
        yield sample, image


@dataclass
class Chain:
    """One seed's remaining rounds: where it starts, from which version, its lineage so far, and the later rounds
    an earlier invocation already finished (after a torn write a later round can be complete, an earlier not)."""

    seed: Sample
    image: ImageRef
    start: int
    current: Sample
    lineage: list[str]
    attempts: dict[int, int] = field(default_factory=dict)
    done_later: dict[int, Sample | None] = field(default_factory=dict)


def resume_point(states: dict[int, RoundState], seed: Sample, first: int, last: int) -> Chain:
    """Where a seed's chain resumes after the rounds already complete, with the version it starts from."""
    seed_id = seed.seed_id
    current = seed
    lineage = [item.question for item in seed.qa]
    number = first
    while number <= last and seed_id in states[number].complete:
        kept = states[number].kept_sample(seed_id)
        if kept is not None:
            current = kept
            if number > 0:
                lineage += [item.question for item in kept.qa]
        number += 1
    later = {n: states[n].kept_sample(seed_id) for n in range(number + 1, last + 1) if seed_id in states[n].complete}
    attempts = {n: s.attempts[seed_id] for n, s in states.items() if seed_id in s.attempts}
    return Chain(seed, None, number, current, lineage, attempts, later)


class ChainSink(Protocol):
    """Where a chain's finished sample-rounds go (the run's recorder, or a Ray actor's output rows)."""

    stopping: asyncio.Event

    def record(self, result: RoundResult) -> None: ...

    def deferred(self, number: int) -> None: ...


async def run_chain(
    ctx: StageContext, chain: Chain, last_round: int, stages: Callable[[int], list[Stage]], sink: ChainSink
) -> None:
    """A seed through its remaining rounds; stops at a failed call (the next invocation redoes it) or when a
    request waits for the Batch API."""
    current = chain.current
    lineage = list(chain.lineage)
    for number in range(chain.start, last_round + 1):
        if number in chain.done_later:
            current = chain.done_later[number] or current
            continue
        if sink.stopping.is_set():
            return
        work = Work(chain.seed.seed_id, number, current, chain.image, attempt=chain.attempts.get(number, 0),
                    lineage=tuple(lineage))  # fmt: skip
        try:
            result = await run_round(ctx, work, stages(number))
        except AnswerDeferred:
            sink.deferred(number)
            return
        sink.record(result)
        if result.stop_chain:
            return
        current = result.next_version or current
        if number > 0 and result.outcome.kept:
            lineage += [item.question for item in current.qa]


# ---------------------------------------------------------------------------------------- recording


@dataclass
class RoundCounters:
    """Live numbers of one round, for progress bars."""

    done: int = 0
    failed: int = 0
    kept: int = 0
    waiting: int = 0


@dataclass
class RunCounters:
    """Live numbers of a run, read by the CLI's progress display."""

    rounds: dict[int, RoundCounters] = field(default_factory=dict)
    total: int | None = None
    rejected: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)
    started: float = field(default_factory=time.monotonic)
    cost: float | None = None
    """US$ spent by this invocation so far (None without prices)."""
    previous_cost: float | None = None
    """US$ of the sample-rounds earlier invocations finished."""


class Recorder:
    """Writes finished sample-rounds into the round files (lines in order, the outcome last) and keeps count."""

    def __init__(self, run: Run, states: dict[int, RoundState]) -> None:
        self.run = run
        self.states = states
        self.stopping = run.stopping
        self.files = AppendFiles()
        self.failures = 0
        self.budget_spent = False
        self._prices = prices_for(run.config.model, run.config.price_in, run.config.price_out,
                                  run.config.price_cached_in)  # fmt: skip

    def record(self, result: RoundResult) -> None:
        """Append one finished sample-round; stop the run when --max-failures is spent."""
        number = result.number
        if result.seed_id in self.states[number].complete:  # redone after a torn write: the file has it already
            return
        folder = self.run.folder
        for name, line in result.lines:
            self.files.write_line(folder.round_file(number, name), line)
        self.files.flush()
        counters = self.run.counters
        live = counters.rounds[number]
        live.done += 1
        live.kept += result.outcome.kept
        counters.usage.merge(result.usage)
        counters.cost = estimate_cost(counters.usage, self._prices)
        if result.outcome.failed is not None:
            live.failed += 1
            self.failures += 1
            budget = self.run.config.max_failures
            if budget is not None and self.failures > budget and not self.budget_spent:
                self.budget_spent = True
                self.run.stop("--max-failures")

    def deferred(self, number: int) -> None:
        """A sample-round waits for the Batch API."""
        self.run.counters.rounds[number].waiting += 1

    def close(self) -> None:
        """fsync and close the round files."""
        self.files.close()


# ---------------------------------------------------------------------------------------- pools


class Pool(Protocol):
    """Runs the seeds' chains and hands each finished sample-round to the recorder."""

    mode: Mode

    async def run(self, run: Run, chains: Iterator[Chain]) -> None: ...


def stages_of(config: RunConfig) -> Callable[[int], list[Stage]]:
    """The stages of round N under these settings (round 0: annotation)."""
    rounds = round_stages(config)
    return lambda number: ANNOTATION_STAGES if number == 0 else rounds


class LocalPool:
    """The chains as asyncio tasks in this process, on this process's clients (live HTTP or the Batch API)."""

    mode: Mode = "live"

    def __init__(self, clients: tuple[ChatClient, ChatClient], *, probe: bool = True) -> None:
        self.client, self.judge_client = clients
        self.probe = probe

    async def run(self, run: Run, chains: Iterator[Chain]) -> None:
        """Run every chain with --concurrency workers; a stop lets in-flight sample-rounds finish (grace)."""
        config = run.config
        first = next(chains, None)
        if first is None:
            return
        async with contextlib.AsyncExitStack() as stack:
            for client in {id(c.transport): c for c in (self.client, self.judge_client)}.values():
                await stack.enter_async_context(client)
                if self.probe:
                    await client.probe()
            ctx = StageContext(config, run.prompts, self.client, self.judge_client, ImageEncoder(config.image_size))
            stages = stages_of(config)
            queue: asyncio.Queue[Chain | None] = asyncio.Queue(maxsize=config.concurrency * 2)
            async with asyncio.TaskGroup() as group:
                producer = group.create_task(self._produce(run, first, chains, queue, config.concurrency))
                workers = [group.create_task(self._work(ctx, run, queue, stages)) for _ in range(config.concurrency)]
                await self._supervise(run, producer, workers)

    @staticmethod
    async def _produce(
        run: Run, first: Chain, chains: Iterator[Chain], queue: asyncio.Queue[Chain | None], workers: int
    ) -> None:
        await queue.put(first)
        for chain in chains:
            if run.stopping.is_set():
                break
            await queue.put(chain)
        for _ in range(workers):
            await queue.put(None)

    @staticmethod
    async def _work(
        ctx: StageContext, run: Run, queue: asyncio.Queue[Chain | None], stages: Callable[[int], list[Stage]]
    ) -> None:
        while not run.stopping.is_set():
            chain = await queue.get()
            if chain is None:
                return
            await run_chain(ctx, chain, run.last_round, stages, run.recorder)

    @staticmethod
    async def _supervise(run: Run, producer: asyncio.Task[None], workers: list[asyncio.Task[None]]) -> None:
        """Wait for the workers; after a stop, give in-flight sample-rounds the grace period, then cancel."""
        stop = asyncio.ensure_future(run.stopping.wait())
        try:
            while (busy := [w for w in workers if not w.done()]) and not run.stopping.is_set():
                await asyncio.wait({*busy, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not run.stopping.is_set():
            return
        producer.cancel()
        busy = [w for w in workers if not w.done()]
        if busy and run.grace > 0:
            await asyncio.wait(busy, timeout=run.grace)
        for worker in workers:
            worker.cancel()


# ---------------------------------------------------------------------------------------- the run


def fingerprint(config: RunConfig, seeds: list[Path], prompts: PromptSet) -> dict[str, Any]:
    """The settings that decide a run's records; a resume must use the same."""
    data = config.public()
    found = {key: data[key] for key in FINGERPRINT_KEYS}
    found["endpoint"] = config.endpoint_settings().public_url()
    found["judge_endpoint"] = config.judge_settings().public_url()
    found["seeds"] = [str(p.resolve()) for p in seeds]
    found["prompt_hashes"] = prompts.hashes()
    return found


def check_fingerprint(old: RunManifest | None, new: dict[str, Any], root: Path, allow_endpoint_change: bool) -> None:
    """Refuse to resume a run folder made with other settings, or against another endpoint."""
    if old is None or not old.fingerprint:
        return
    before = dict(old.fingerprint)
    before.setdefault("endpoint", old.config.get("base_url"))  # run folders from before endpoints were recorded
    if not allow_endpoint_change:
        for key in ENDPOINT_KEYS:
            if before.get(key) and before[key] != new[key]:
                raise UsageError(
                    f"{root} was made against {before[key]}, this run uses {new[key]}: pass --allow-endpoint-change "
                    "to go on with the new endpoint, or pick another --out"
                )
    for key, value in new.items():
        if key in before and key not in ENDPOINT_KEYS and before[key] != value:
            raise UsageError(
                f"{root} was run with other settings ({key} differs); resume with the same settings or pick "
                "another --out"
            )


class InternalError(EvolveError):
    """An exception evolve did not expect; its traceback is in the run's evolve.log."""


class Run:
    """One invocation of `evolve run` on one run folder, whatever pool runs the chains."""

    def __init__(
        self, config: RunConfig, seeds: list[Path], out: Path, message: Message, *, last_round: int | None = None
    ) -> None:
        if not seeds:
            raise UsageError("no seed files given")
        self.config = config
        self.seeds = seeds
        self.folder = RunFolder(out)
        self.message = message
        self.counters = RunCounters()
        self.first_round = 0 if config.annotate else 1
        self.last_round = config.rounds if last_round is None else last_round
        """The last round to run (0: only annotate the seeds, `evolve annotate`)."""
        self.stopping = asyncio.Event()
        self.grace = GRACE_SECONDS
        self.lock_wait = 0.0
        """Seconds to wait for the lock (a resumed --workers shard may find its predecessor still exiting)."""
        self.stop_reason: str | None = None
        self.stop_signal: int | None = None
        self.waiting = False
        """Set by the Batch API pool when batches are pending or were cancelled: the run is not finished yet."""
        self.prompts: PromptSet = PromptSet.load(config.prompts)
        self.states: dict[int, RoundState] = {}
        self.recorder: Recorder = Recorder(self, {})
        self.manifest = RunManifest()

    def stop(self, reason: str, signal_number: int | None = None, grace: float = GRACE_SECONDS) -> None:
        """Stop sending; in-flight sample-rounds get `grace` seconds to finish."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_signal = signal_number
            self.grace = grace
            self.stopping.set()

    def image_store(self) -> ImageStore:
        """Where images that arrive as bytes are written: --image-cache, else the run folder's images/."""
        return ImageStore(self.config.image_cache or self.folder.images)

    def chains(self) -> Iterator[Chain]:
        """A chain per usable seed with rounds left; rejected seed lines go to rejected.jsonl."""
        rejected: list[Drop] = []
        try:
            for item in iter_seeds(self.seeds, self.config, self.image_store()):
                if isinstance(item, Drop):
                    self.counters.rejected += 1
                    rejected.append(item)
                    self.message(f"skipped {item.reason}")
                    continue
                seed, image = item
                chain = resume_point(self.states, seed, self.first_round, self.last_round)
                if chain.start > self.last_round:
                    continue
                chain.image = image
                yield chain
        finally:
            with self.folder.rejected.open("w", encoding="utf-8") as fp:
                for drop in rejected:
                    fp.write(drop.model_dump_json() + "\n")

    def open_cache(self) -> ResponseCache | NullCache:
        """The response cache of this run (--cache, else RUN/cache.sqlite; nothing with --no-cache)."""
        if self.config.no_cache:
            return NullCache()
        return ResponseCache(self.config.cache or self.folder.cache)

    async def execute(self, pool: Pool) -> RunManifest:
        """Run (or resume) every round for every seed with `pool`; returns the manifest it wrote.

        Raises the run's fatal EvolveError (bad key, images refused, endpoint unreachable, bad input with
        --strict) after writing what finished, and InternalError for anything unexpected.
        """
        for path in self.seeds:
            if not path.exists():
                raise InputError(f"{path}: no such seed file")
        with run_lock(self.folder, wait=self.lock_wait), _log_to(self.folder.log):
            previous = read_manifest(self.folder)
            new_print = fingerprint(self.config, self.seeds, self.prompts)
            check_fingerprint(previous, new_print, self.folder.root, self.config.allow_endpoint_change)
            self.manifest = self._start_manifest(previous, new_print, pool.mode)
            error: BaseException | None = None
            try:
                write_manifest(self.folder, self.manifest)
                await self._run_pool(pool)
            except BaseException as exc:
                error = exc
            finally:
                with contextlib.suppress(OSError):
                    self.recorder.close()
            return self._finish(error)

    async def _run_pool(self, pool: Pool) -> None:
        """Scan what earlier invocations finished, then let the pool run every chain with work left."""
        numbers = range(self.first_round, self.last_round + 1)
        reask = self.config.reask_unreadable
        self.states = {n: scan_round(self.folder, n, reask_unreadable=reask) for n in numbers}
        self.recorder = Recorder(self, self.states)
        resumed = sum(len(s.complete) for s in self.states.values())
        if resumed:
            self.message(f"resuming: {resumed:,} sample-rounds already done in {self.folder.root}")
        self.counters.total = count_records(self.seeds)
        self.counters.rounds = {n: RoundCounters() for n in numbers}
        await self._with_signals(pool.run(self, self.chains()))

    async def _with_signals(self, work: Any) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await work
        finally:
            for sig in STOP_SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self.stop_reason is None:
            self.message(f"signal {sig}: finishing in-flight requests (up to {GRACE_SECONDS:g} s), then stopping")
        self.stop("signal", sig)

    def _start_manifest(self, previous: RunManifest | None, new_print: dict[str, Any], mode: Mode) -> RunManifest:
        manifest = previous.model_copy() if previous is not None else RunManifest()
        manifest.status = "running"
        manifest.mode = mode
        manifest.seeds = [str(p.resolve()) for p in self.seeds]
        manifest.config = self.config.public()
        manifest.fingerprint = new_print
        manifest.prompt_hashes = self.prompts.hashes()
        manifest.prompt_sources = self.prompts.sources()
        manifest.rng_seed = self.config.seed
        manifest.error = None
        manifest.signal = None
        return manifest

    def _finish(self, error: BaseException | None) -> RunManifest:
        """Write run.json (and final.jsonl) for how the run ended; raise its error, if it had one."""
        fatal = _unwrap(error)
        manifest = self.manifest
        prices = prices_for(self.config.model, self.config.price_in, self.config.price_out,
                            self.config.price_cached_in)  # fmt: skip
        numbers = range(self.first_round, self.last_round + 1)
        with contextlib.suppress(OSError):  # every round file exists once a run has run (tools can rely on it)
            for number in numbers:
                for path in self.folder.round(number).all():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
        try:
            summarize_rounds(self.folder, numbers, prices, manifest)
            manifest.final_samples = write_final(self.folder, self.last_round)
        except OSError as exc:  # a full disk: say so, but what finished stays in the round files
            fatal = fatal or _unwrap(exc)
        manifest.rejected_seeds = self.counters.rejected
        waiting = sum(c.waiting for c in self.counters.rounds.values())
        if fatal is not None:
            manifest.status = "failed"
            manifest.error = str(fatal)
        elif self.stop_reason == "signal":
            manifest.status = "interrupted"
            manifest.signal = self.stop_signal
            manifest.error = f"stopped by signal {self.stop_signal}; run the same command again to resume"
        elif waiting or self.waiting:
            manifest.status = "waiting"
        else:
            manifest.status = manifest.finished(stopped=self.stop_reason == "--max-failures")
            if manifest.status == "stopped":
                manifest.error = (
                    f"{self.recorder.failures:,} sample-rounds failed, over --max-failures {self.config.max_failures}; "
                    "fix the cause and run the same command again to resume"
                )
        with contextlib.suppress(OSError):
            write_manifest(self.folder, manifest)
        if fatal is not None:
            raise fatal
        return manifest


def _unwrap(error: BaseException | None) -> EvolveError | None:
    """The run's error as one EvolveError: the first of a task group's, an unexpected one as InternalError."""
    if error is None:
        return None
    while isinstance(error, BaseExceptionGroup):
        fatal = [e for e in error.exceptions if isinstance(e, (UsageError, InputError, *FatalEndpointErrors))]
        error = fatal[0] if fatal else error.exceptions[0]
    if isinstance(error, EvolveError):
        return error
    if isinstance(error, (KeyboardInterrupt, asyncio.CancelledError)):
        return EvolveError("cancelled")
    log.error("unexpected error:\n%s", "".join(traceback.format_exception(error)))
    text = " ".join(str(error).split())[:200]
    return InternalError(f"internal error {type(error).__name__}: {text} (traceback in evolve.log)")


class _QuietFileHandler(logging.FileHandler):
    """A log file that never prints a traceback of its own (a full disk must not flood the screen)."""

    def handleError(self, record: logging.LogRecord) -> None:
        """Drop the line."""


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Log evolve's retries, pauses and errors (INFO and up) to the run's evolve.log while the run lasts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _QuietFileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("evolve")
    previous_level = root.level
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


def make_clients(config: RunConfig, cache: ResponseCache | NullCache) -> tuple[ChatClient, ChatClient]:
    """(evolution client, judge client); the judge shares the evolution client's connections and limits when it
    calls the same endpoint (only its model and temperature may differ)."""
    settings = config.endpoint_settings()
    client = ChatClient(settings, cache)
    judge_settings = config.judge_settings()
    if judge_settings == settings:
        return client, client
    same = ("base_url", "api_key", "transport", "concurrency", "rpm", "tpm", "timeout", "max_retries")
    if all(getattr(judge_settings, name) == getattr(settings, name) for name in same):
        return client, ChatClient(judge_settings, cache, transport=client.transport, usage=client.usage)
    return client, ChatClient(judge_settings, cache)


async def run_live(
    config: RunConfig, seeds: list[Path], out: Path, message: Message, run: Run | None = None
) -> RunManifest:
    """`evolve run` on this process's event loop, live HTTP."""
    run = run or Run(config, seeds, out, message)
    cache = run.open_cache()
    try:
        return await run.execute(LocalPool(make_clients(config, cache)))
    finally:
        cache.close()


def run_evolution(config: RunConfig, seeds: list[Path], out: Path, message: Message) -> RunManifest:
    """Run `evolve run` to the end (or to a clean stop) and return its manifest."""
    return asyncio.run(run_live(config, seeds, out, message))


def annotate_seeds(
    config: RunConfig, seeds: list[Path], out_file: Path, work: Path, message: Message
) -> tuple[RunManifest, int]:
    """`evolve annotate`: round 0 alone (cached and resumable in `work`), then every seed into `out_file`;
    returns the work folder's manifest and how many seeds were written."""
    run = Run(config.model_copy(update={"annotate": True}), seeds, work, message, last_round=0)
    cache = run.open_cache()
    try:
        manifest = asyncio.run(run.execute(LocalPool(make_clients(run.config, cache))))
    finally:
        cache.close()
    written = 0
    if manifest.status in ("done", "done_with_failures"):
        from evolve.export import ImagePathMapper, open_source

        annotated = run.folder.round_file(0, "annotated")
        images = ImagePathMapper("relative", out_file.parent, open_source(annotated, config.image_root))
        out_file.parent.mkdir(parents=True, exist_ok=True)
        with out_file.open("w", encoding="utf-8") as fp:
            for _, record in iter_json_lines(annotated):
                sample = Sample.model_validate(record)
                sample.image = images(sample.image)  # valid from the output's folder
                fp.write(sample.model_dump_json() + "\n")
                written += 1
    return manifest, written
