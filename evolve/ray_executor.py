"""`evolve run --executor ray`: the seeds' chains on a Ray cluster, as Ray Data `map_batches` over an actor pool.

How a run goes
- The driver (this process) is a `Runner`: it holds the run folder's lock, checks and writes run.json with
  the same fingerprint, scans what earlier invocations finished (`scan_round`) and finishes run.json
  (round stats, usage, final.jsonl) exactly like a local run. Only the part that runs the chains differs.
- Every seed with work left becomes one row of a Ray Dataset: its id, its current version (the seed, or its
  latest survivor on a resume), its resolved image and the round it resumes at (`pipeline.resume_point`).
- `map_batches` hands batches to a fixed pool of `ChainActor`s. Each actor holds one `ChatClient` (+ judge
  client), the templates, an image encoder and its share of --concurrency/--rpm/--tpm, and runs the chains
  of its batches concurrently with `stages.evolve_round`, the function a local run calls.
- Each sample-round's `RoundOutcome` comes back to the driver (`iter_batches`), which appends it to the
  standard round files through `Runner._record` (same line order per sample-round as `runfolder` documents).
  So final.jsonl, resume, `evolve stats` and `evolve merge` work unchanged, and a Ray run and a local run of
  the same settings can resume each other.
- Results reach the driver a batch at a time: a killed job loses only the batches in flight, and the next
  invocation redoes them (from the response cache, when the actors had flushed it).

What is shared across machines
- The run folder is read and written by the driver only; actors never touch it.
- Actors read local image files and a --prompts folder themselves: those must be at the same path on every
  node (a shared filesystem, or the same files on each node). Image URLs need nothing. An actor refuses to
  start if its templates differ from the driver's.
- Rate limits are split, not shared: each of A actors gets --concurrency/A, --rpm/A and --tpm/A, and backs
  off on a 429 by itself.
- The response cache is SQLite, opened by every actor at the same path: the run's cache.sqlite or --cache.
  On one machine all actors share it. On several nodes the path is resolved on each node: on local disk that
  is one cache per node (a resume on the same nodes hits it, another node asks again); on a shared
  filesystem it is one cache for all, which works for a few nodes on a filesystem with sound POSIX locks.
  SQLite over NFS is not safe: there, point --cache at node-local disk (per-node caches) or use --no-cache.
- The API key travels inside the pickled settings to the actors (Ray's object store), never to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import pickle
import signal
import threading
from pathlib import Path
from typing import Any

from evolve.cache import NullCache, ResponseCache
from evolve.config import RunConfig
from evolve.errors import (
    EndpointError,
    EvolveError,
    FatalEndpointErrors,
    InputError,
    UsageError,
)
from evolve.images import ImageEncoder
from evolve.pipeline import GRACE_SECONDS, Message, Runner, RunResult, iter_seeds, make_clients, resume_point
from evolve.prompts import PromptSet
from evolve.records import Drop, Sample
from evolve.runfolder import RoundState
from evolve.stages import StageContext, evolve_round

INSTALL_HINT = "--executor ray needs Ray Data: pip install 'evolve[ray]'"
OUTCOME, ERROR = "outcome", "error"
MAX_BATCH = 256
BATCHES_PER_TASK = 4
"""Ray Data runs up to this many batches of one task at once in an async actor (its default)."""
TASKS_PER_ACTOR = 2
"""Tasks an actor runs at once, so one task's slowest chain does not idle the actor."""


def require_ray() -> Any:
    """The `ray` module with Ray Data, or a UsageError naming the install command."""
    try:
        ray = importlib.import_module("ray")
        importlib.import_module("ray.data")
    except ImportError as exc:
        raise UsageError(INSTALL_HINT) from exc
    return ray


def actor_config(config: RunConfig, actors: int) -> RunConfig:
    """The settings of one of `actors` actors: its share of --concurrency, --rpm and --tpm."""

    def share(value: int | None) -> int | None:
        return None if value is None else max(1, value // actors)

    return config.model_copy(
        update={"concurrency": share(config.concurrency), "rpm": share(config.rpm), "tpm": share(config.tpm)}
    )


def _portable(exc: EvolveError) -> bytes:
    """The error pickled so the driver can raise it; an error that does not unpickle becomes its base class."""
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
    except Exception:
        base = next(c for c in type(exc).__mro__ if c in (UsageError, InputError, EndpointError, EvolveError))
        data = pickle.dumps(base(str(exc)))
    return data


class ChainActor:
    """A Ray Data actor: runs the chains (rounds start..N of one seed) of each batch it gets, concurrently."""

    def __init__(self, config: RunConfig, cache_path: str | None, prompt_hashes: dict[str, str]) -> None:
        self.config = config
        self.prompts = PromptSet.load(config.prompts)
        if self.prompts.hashes() != prompt_hashes:
            raise UsageError("the prompt templates on this Ray node differ from the driver's (--prompts)")
        self.cache: ResponseCache | NullCache = NullCache() if cache_path is None else ResponseCache(Path(cache_path))
        self._ctx: StageContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _context(self) -> StageContext:
        """The stage context, made on the actor's event loop (the HTTP sessions belong to it)."""
        if self._ctx is None:
            self._loop = asyncio.get_running_loop()
            client, judge = make_clients(self.config, self.cache)
            self._ctx = StageContext(self.config, self.prompts, client, judge, ImageEncoder(self.config.image_size))
        return self._ctx

    async def __call__(self, batch: Any) -> Any:
        """Rows (seed_id, current, image, image_kind, start) in; rows (seed_id, round, kind, payload) out."""
        pa = importlib.import_module("pyarrow")
        ctx = self._context()
        chains = await asyncio.gather(*(self._chain(ctx, row) for row in batch.to_pylist()))
        self.cache.flush()
        found = [item for chain in chains for item in chain]
        return pa.table(
            {
                "seed_id": pa.array([f[0] for f in found], pa.string()),
                "round": pa.array([f[1] for f in found], pa.int32()),
                "kind": pa.array([f[2] for f in found], pa.string()),
                "payload": pa.array([f[3] for f in found], pa.binary()),
            }
        )

    def __del__(self) -> None:
        """Close the HTTP sessions on their loop and the cache (Ray Data deletes the UDF when the pool ends)."""
        with contextlib.suppress(Exception):
            if self._ctx is not None and self._loop is not None and self._loop.is_running():
                asyncio.run_coroutine_threadsafe(self._aclose(self._ctx), self._loop).result(timeout=10)
        with contextlib.suppress(Exception):
            self.cache.close()

    @staticmethod
    async def _aclose(ctx: StageContext) -> None:
        await ctx.client.aclose()
        if ctx.judge_client is not ctx.client:
            await ctx.judge_client.aclose()

    async def _chain(self, ctx: StageContext, row: dict[str, Any]) -> list[tuple[str, int, str, bytes]]:
        current = Sample.model_validate_json(row["current"])
        image: Path | str | None = None
        if row["image_kind"] == "path":
            image = Path(row["image"])
        elif row["image_kind"] == "url":
            image = row["image"]
        found: list[tuple[str, int, str, bytes]] = []
        try:
            for number in range(int(row["start"]), self.config.rounds + 1):
                outcome = await evolve_round(ctx, current, number, image)
                found.append((row["seed_id"], number, OUTCOME, pickle.dumps(outcome)))
                current = outcome.kept or current
        except EvolveError as exc:
            found.append((row["seed_id"], 0, ERROR, _portable(exc)))
        return found


class RayRunner(Runner):
    """`evolve run` whose chains run on Ray; everything else (lock, run.json, resume, files) is `Runner`'s."""

    def __init__(
        self,
        config: RunConfig,
        seeds: list[Path],
        out: Path,
        message: Message,
        address: str | None = None,
        *,
        actors: int | None = None,
    ) -> None:
        self.ray = require_ray()
        super().__init__(config, seeds, out, message)
        self.address = address
        self.actors = actors
        self._write_lock = threading.Lock()
        self._closed = False

    async def run(self) -> RunResult:
        """Start (or join) Ray, run like `Runner.run`, and shut down a Ray this call started."""
        if self.actors is not None and self.actors < 1:
            raise UsageError("--actors: use 1 or more")
        make_clients(self.config, NullCache())  # a missing API key fails here, not inside every actor
        started = False
        if self.config.quiet:  # cron: Ray's own notices (start-up, dataset plans) stay out of the way
            for name in ("ray", "ray.data"):
                logging.getLogger(name).setLevel(logging.ERROR)
        if not self.ray.is_initialized():
            level = logging.ERROR if self.config.quiet else logging.INFO
            self.ray.init(address=self.address, include_dashboard=False, logging_level=level)
            started = True
        try:
            return await super().run()
        finally:
            if started:
                self.ray.shutdown()

    def _open_cache(self) -> NullCache:
        """The driver calls no endpoint: the actors open the cache."""
        return NullCache()

    async def _run_chains(
        self, prompts: PromptSet, cache: ResponseCache | NullCache, states: dict[int, RoundState]
    ) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def drive() -> None:
            error: BaseException | None = None
            try:
                self._drive(prompts, states)
            except BaseException as exc:  # handed to the event loop, raised there
                error = None if self._closed else exc
            loop.call_soon_threadsafe(settle, error)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        thread = threading.Thread(target=drive, name="evolve-ray-driver", daemon=True)
        thread.start()
        try:
            while not done.done() and not self._stopping.is_set():
                await asyncio.wait({done}, timeout=0.2)
            if not done.done():  # a signal, a fatal error or the failure budget: outputs in flight get a moment
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(done), timeout=0.0 if self.fatal else GRACE_SECONDS)
        finally:
            with self._write_lock:
                self._closed = True
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if done.done():
            done.result()

    # ------------------------------------------------------------------ on the driver thread

    def _drive(self, prompts: PromptSet, states: dict[int, RoundState]) -> None:
        """Build the rows, run them through the actor pool, record the outcomes as they arrive."""
        try:
            rows = self._rows(states)
        except EvolveError as exc:  # --strict and unreadable seed files stop the run, as in a local run
            self._stop_with(exc)
            return
        if not rows or self._stopping.is_set():
            return
        ray = self.ray
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI shows its own progress
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        actors = max(1, min(self.actors or max(1, int(cpus)), len(rows)))
        config = actor_config(self.config, actors)
        batch = max(1, min(MAX_BATCH, math.ceil(config.concurrency / (BATCHES_PER_TASK * TASKS_PER_ACTOR))))
        blocks = max(min(len(rows), actors * TASKS_PER_ACTOR), math.ceil(len(rows) / (batch * BATCHES_PER_TASK)))
        cache = None if self.config.no_cache else str((self.config.cache or self.folder.cache).resolve())
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        results = dataset.map_batches(
            ChainActor,
            fn_constructor_kwargs={"config": config, "cache_path": cache, "prompt_hashes": prompts.hashes()},
            batch_size=batch,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=TASKS_PER_ACTOR),
            num_cpus=min(1.0, cpus / actors),
        )
        self.message(f"ray: {len(rows):,} seeds with work left → {actors} actors × {config.concurrency} concurrent")
        for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            if not self._take(table, states):
                break

    def _rows(self, states: dict[int, RoundState]) -> list[dict[str, Any]]:
        """One row per usable seed that still has rounds to run; rejected seeds go to rejected.jsonl."""
        rows: list[dict[str, Any]] = []
        rejected: list[Drop] = []
        try:
            for item in iter_seeds(self.seeds, self.config):
                if isinstance(item, Drop):
                    self.counters.rejected += 1
                    rejected.append(item)
                    self.message(f"skipped {item.reason}")
                    continue
                seed, image = item
                start, current = resume_point(states, self.folder, seed)
                if start > self.config.rounds:
                    continue
                kind = "none" if image is None else "path" if isinstance(image, Path) else "url"
                rows.append({"seed_id": seed.seed_id, "current": current.model_dump_json(),
                             "image": str(image.resolve()) if isinstance(image, Path) else image or "",
                             "image_kind": kind, "start": start})  # fmt: skip
        finally:
            self._write_rejected(rejected)
        return rows

    def _take(self, table: Any, states: dict[int, RoundState]) -> bool:
        """Record one batch of outcomes; False when the run must stop."""
        columns = [table.column(name).to_pylist() for name in ("seed_id", "round", "kind", "payload")]
        for seed_id, number, kind, payload in zip(*columns, strict=True):
            if kind == ERROR:
                error = pickle.loads(payload)
                if isinstance(error, (InputError, UsageError, *FatalEndpointErrors)):
                    self._stop_with(error)
                    return False
                raise error
            if seed_id in states[number].complete:  # redone after a torn write: the file has it already
                continue
            outcome = pickle.loads(payload)
            with self._write_lock:
                if self._closed:
                    return False
                self._record(number, outcome)
        return not self._stopping.is_set()


def run_ray(
    config: RunConfig,
    seeds: list[Path],
    out: Path,
    message: Message,
    address: str | None = None,
    *,
    actors: int | None = None,
) -> RunResult:
    """`evolve run --executor ray [--ray-address A]` to the end (or a clean stop); returns the run's summary.

    Joins the Ray already initialized in this process, else `ray.init(address)` (None: a new local Ray;
    "auto": the cluster of `ray start --head`). `actors` defaults to the cluster's CPU count.
    """
    if not seeds:
        raise UsageError("no seed files given")
    runner = RayRunner(config, seeds, out, message, address, actors=actors)
    return asyncio.run(runner.run())
