"""`evolve run --executor ray`: the seeds' chains on a Ray cluster, as Ray Data `map_batches` over an actor pool.

How a run goes
- The driver (this process) is the usual `pipeline.Run`: lock, fingerprint, resume points, rejected seeds,
  recording and run.json are the same as for a local run. `RayPool` only replaces how chains are run.
- Every seed with work left becomes one row of a Ray Dataset: its chain (current version, image, start round,
  lineage) as JSON. `map_batches` hands batches to a fixed pool of `ChainActor`s. Each actor holds one
  `ChatClient` (+ judge client), the templates, an image encoder and its share of --concurrency/--rpm/--tpm, and
  runs the chains of its batches concurrently with `pipeline.run_chain`, the function a local run calls.
- Each finished sample-round comes back as its record lines, serialized once in the actor; the driver appends
  them to the round files through the run's recorder, on its event loop. So final.jsonl, resume, `evolve stats`
  and `evolve merge` work unchanged, and a Ray run and a local run of the same settings can resume each other.
- Results reach the driver a batch at a time: a killed job loses only the batches in flight, and the next
  invocation redoes them (from the response cache, when the actors had flushed it).

What is shared across machines
- The run folder is read and written by the driver only; actors never touch it.
- Actors read local image files and a --prompts folder themselves: those must be at the same path on every
  node. Image URLs need nothing. An actor refuses to start if its templates differ from the driver's.
- Rate limits are split, not shared: each of A actors gets --concurrency/A, --rpm/A and --tpm/A.
- The response cache is SQLite, opened by every actor at the same path: the run's cache.sqlite or --cache.
  On one machine all actors share it; across nodes point --cache at node-local disk (SQLite over NFS is not
  safe) or use --no-cache.
- The API key travels inside the pickled settings to the actors (Ray's object store), never to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import pickle
import threading
from pathlib import Path
from typing import Any

import orjson

from evolve.cache import NullCache, ResponseCache
from evolve.config import RunConfig
from evolve.errors import EndpointError, EvolveError, InputError, UsageError
from evolve.gctune import tune_gc
from evolve.images import ImageEncoder
from evolve.manifest import Mode
from evolve.pipeline import Chain, Run, make_clients, run_chain, stages_of
from evolve.prompts import PromptSet
from evolve.records import Sample
from evolve.stages import RoundResult, StageContext

INSTALL_HINT = "--executor ray needs Ray Data: pip install 'mmevolve[ray]'"
RESULT, ERROR = "result", "error"
MAX_BATCH = 256
BATCHES_PER_TASK = 4
"""Ray Data runs up to this many batches of one task at once in an async actor (its default)."""
TASKS_PER_ACTOR = 2
"""Tasks an actor runs at once, so one task's slowest chain does not idle the actor."""
BATCH_SHARE = 2
"""Chains per batch, in multiples of an actor's --concurrency share. Every batch costs an actor call, an
Arrow table each way and the driver's executor one more output to move, so batches must be large: at L = 0 on
2 cores, Ray ran at 0.66 of the local executor with batches of concurrency/8, 0.98 with batches of one share
and 1.18 with two (four: no better). The client's semaphore still bounds the requests in flight; the chains of
the other batches an actor holds wait for it, so one batch's slowest chain never idles the actor."""


def require_ray() -> Any:
    """The `ray` module with Ray Data, or a UsageError naming the install command."""
    try:
        ray = importlib.import_module("ray")
        importlib.import_module("ray.data")
    except ImportError as exc:
        raise UsageError(INSTALL_HINT) from exc
    return ray


def share_limits(config: RunConfig, parts: int, **update: Any) -> RunConfig:
    """The settings of one of `parts` actors or workers: its share of --concurrency, --rpm and --tpm."""

    def share(value: int | None) -> int | None:
        return None if value is None else max(1, value // parts)

    limits = {"concurrency": share(config.concurrency), "rpm": share(config.rpm), "tpm": share(config.tpm)}
    return config.model_copy(update={**limits, **update})


def _portable(exc: EvolveError) -> bytes:
    """The error pickled so the driver can raise it; an error that does not unpickle becomes its base class."""
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
    except Exception:
        base = next(c for c in type(exc).__mro__ if c in (UsageError, InputError, EndpointError, EvolveError))
        data = pickle.dumps(base(str(exc)))
    return data


def chain_row(chain: Chain) -> dict[str, Any]:
    """A chain as one row of the Ray Dataset (plain JSON text: cheap to move)."""
    image = chain.image
    kind = "none" if image is None else "path" if isinstance(image, Path) else "url"
    later = {str(n): (s.model_dump_json() if s is not None else None) for n, s in chain.done_later.items()}
    return {
        "seed_id": chain.seed.seed_id,
        "chain": orjson.dumps(
            {
                "seed": chain.seed.model_dump_json(),
                "current": chain.current.model_dump_json(),
                "image": str(image.resolve()) if isinstance(image, Path) else image,
                "image_kind": kind,
                "start": chain.start,
                "lineage": chain.lineage,
                "attempts": {str(k): v for k, v in chain.attempts.items()},
                "later": later,
            }
        ),
    }


def chain_of(row: dict[str, Any]) -> Chain:
    """The chain a row describes."""
    data = orjson.loads(row["chain"])
    image: Path | str | None = None
    if data["image_kind"] == "path":
        image = Path(data["image"])
    elif data["image_kind"] == "url":
        image = data["image"]
    later = {int(n): (Sample.model_validate_json(s) if s is not None else None) for n, s in data["later"].items()}
    seed, current = Sample.model_validate_json(data["seed"]), Sample.model_validate_json(data["current"])
    attempts = {int(k): int(v) for k, v in data["attempts"].items()}
    return Chain(seed, image, int(data["start"]), current, list(data["lineage"]), attempts, later)


class _Rows:
    """A chain sink collecting results as output rows (an actor has no run folder)."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.rows: list[tuple[str, int, str, bytes]] = []

    def record(self, result: RoundResult) -> None:
        self.rows.append((result.seed_id, result.number, RESULT, result.payload()))

    def deferred(self, number: int) -> None:  # pragma: no cover - the Batch API never runs under Ray
        raise UsageError("the Batch API cannot run inside Ray actors")


class ChainActor:
    """A Ray Data actor: runs the chains (rounds start..N of one seed) of each batch it gets, concurrently."""

    def __init__(self, config: RunConfig, cache_path: str | None, prompt_hashes: dict[str, str]) -> None:
        tune_gc()  # an actor's process is Ray's, not the CLI's
        self.config = config
        self.prompts = PromptSet.load(config.prompts)
        if self.prompts.hashes() != prompt_hashes:
            raise UsageError("the prompt templates on this Ray node differ from the driver's (--prompts)")
        self.cache: ResponseCache | NullCache = NullCache() if cache_path is None else ResponseCache(Path(cache_path))
        self.stages = stages_of(config)
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
        """Rows (seed_id, chain) in; rows (seed_id, round, kind, payload) out."""
        pa = importlib.import_module("pyarrow")
        ctx = self._context()
        sinks = await asyncio.gather(*(self._chain(ctx, row) for row in batch.to_pylist()))
        self.cache.flush()
        found = [row for sink in sinks for row in sink]
        return pa.table(
            {
                "seed_id": pa.array([f[0] for f in found], pa.string()),
                "round": pa.array([f[1] for f in found], pa.int32()),
                "kind": pa.array([f[2] for f in found], pa.string()),
                "payload": pa.array([f[3] for f in found], pa.binary()),
            }
        )

    async def _chain(self, ctx: StageContext, row: dict[str, Any]) -> list[tuple[str, int, str, bytes]]:
        sink = _Rows()
        try:
            await run_chain(ctx, chain_of(row), self.config.rounds, self.stages, sink)
        except EvolveError as exc:
            sink.rows.append((row["seed_id"], 0, ERROR, _portable(exc)))
        return sink.rows

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
        if ctx.judge_client.transport is not ctx.client.transport:
            await ctx.judge_client.aclose()


class RayPool:
    """The chains on Ray actors; the finished sample-rounds come back to the run's recorder on this loop."""

    mode: Mode = "ray"

    def __init__(self, address: str | None = None, *, actors: int | None = None) -> None:
        if actors is not None and actors < 1:
            raise UsageError("--actors: use 1 or more")
        self.ray = require_ray()
        self.address = address
        self.actors = actors

    async def run(self, run: Run, chains: Any) -> None:
        """Start (or join) Ray, run every chain, shut down a Ray this call started."""
        make_clients(run.config, NullCache())  # a missing API key fails here, not inside every actor
        rows = [chain_row(chain) for chain in chains]
        if not rows or run.stopping.is_set():
            return
        ray = self.ray
        started = False
        if run.config.quiet:  # cron: Ray's own notices (start-up, dataset plans) stay out of the way
            for name in ("ray", "ray.data"):
                logging.getLogger(name).setLevel(logging.ERROR)
        if not ray.is_initialized():
            level = logging.ERROR if run.config.quiet else logging.INFO
            ray.init(address=self.address, include_dashboard=False, logging_level=level)
            started = True
        try:
            await self._drive(run, rows)
        finally:
            if started:
                ray.shutdown()

    async def _drive(self, run: Run, rows: list[dict[str, Any]]) -> None:
        """Iterate Ray's results on a thread; record them here, on the event loop."""
        loop = asyncio.get_running_loop()
        tables: asyncio.Queue[Any] = asyncio.Queue()
        halt = threading.Event()
        done = object()

        def iterate() -> None:
            try:
                for table in self._results(run, rows):
                    loop.call_soon_threadsafe(tables.put_nowait, table)
                    if halt.is_set():
                        break
            except BaseException as exc:
                loop.call_soon_threadsafe(tables.put_nowait, exc)
            loop.call_soon_threadsafe(tables.put_nowait, done)

        threading.Thread(target=iterate, name="evolve-ray-driver", daemon=True).start()
        stop = asyncio.ensure_future(run.stopping.wait())
        try:
            while True:
                get = asyncio.ensure_future(tables.get())
                await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    halt.set()
                    return  # a stop: outputs still in flight are redone by the next invocation
                item = get.result()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                self._record(run, item)
        finally:
            halt.set()
            stop.cancel()

    def _results(self, run: Run, rows: list[dict[str, Any]]) -> Any:
        ray = self.ray
        config = run.config
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI shows its own progress
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        actors = max(1, min(self.actors or max(1, int(cpus)), len(rows)))
        actor_config = share_limits(config, actors)
        batch = max(1, min(MAX_BATCH, actor_config.concurrency * BATCH_SHARE))
        blocks = max(min(len(rows), actors * TASKS_PER_ACTOR), math.ceil(len(rows) / (batch * BATCHES_PER_TASK)))
        cache = None if config.no_cache else str((config.cache or run.folder.cache).resolve())
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        results = dataset.map_batches(
            ChainActor,
            fn_constructor_kwargs={"config": actor_config, "cache_path": cache, "prompt_hashes": run.prompts.hashes()},
            batch_size=batch,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=TASKS_PER_ACTOR),
            num_cpus=min(1.0, cpus / actors),
        )
        run.message(
            f"ray: {len(rows):,} seeds with work left → {actors} actors × {actor_config.concurrency} concurrent"
        )
        return results.iter_batches(batch_size=None, batch_format="pyarrow")

    @staticmethod
    def _record(run: Run, table: Any) -> None:
        columns = [table.column(name).to_pylist() for name in ("seed_id", "round", "kind", "payload")]
        for seed_id, number, kind, payload in zip(*columns, strict=True):
            if kind == ERROR:
                raise pickle.loads(payload)
            run.recorder.record(RoundResult.from_payload(seed_id, number, payload))
            if run.stopping.is_set():
                return


def run_ray(
    config: RunConfig, seeds: list[Path], out: Path, message: Any, address: str | None = None, *,
    actors: int | None = None,
) -> Any:  # fmt: skip
    """`evolve run --executor ray` to the end (or a clean stop); returns the run's manifest.

    Joins the Ray already initialized in this process, else `ray.init(address)` (None: a new local Ray;
    "auto": the cluster of `ray start --head`). `actors` defaults to the cluster's CPU count.
    """
    return asyncio.run(Run(config, seeds, out, message).execute(RayPool(address, actors=actors)))
