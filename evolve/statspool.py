"""Where `evolve stats` parses: in this process, in local worker processes, or on Ray actors.

The driver (:func:`evolve.stats.compute_stats`) cuts the work into chunks, in reading order: question texts
to turn into (verb, noun) pairs, or object names to normalise. An engine answers every chunk with one result
per text and returns the chunks in the order they came. Each chunk is handled whole by one parser (the same
``nlp.pipe`` batches wherever it runs), so the numbers never depend on the engine or on how many workers
there are. A chunk marked ``drain`` is answered, with every chunk before it, before the engine takes the
next one (the driver asks for that when too many samples wait for their object names).

- :class:`InProcess` (``--workers 1``): the extractor of this process.
- :class:`ProcessPool` (``--workers N``): N worker processes (forked from a single-threaded driver, else
  spawned), each loading the parser once, started (and loading) as soon as the engine is made, while the
  driver reads. At most two chunks per worker are in flight, so memory stays bounded while the driver reads
  on; finished chunks are returned as soon as they are at the front of the queue.
- :class:`RayPool` (``--executor ray``): Ray Data ``map_batches`` over an actor pool, each actor holding a
  parser. A Ray Dataset is built from a wave of chunks (``WAVE_PER_ACTOR`` per actor, or fewer up to a
  drain), so the driver holds a bounded number of texts; each wave starts its actors afresh (a parser loads
  in 1–2 s, a full wave takes minutes). Joins the Ray this process already initialized, else
  ``ray.init(address)``, and shuts down a Ray it started.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.pool import AsyncResult
from typing import Any, Literal, Protocol, TypeVar, get_args

from evolve.errors import UsageError
from evolve.gctune import tune_gc
from evolve.verbnoun import BeneparExtractor, SpacyExtractor, VerbNounExtractor, load_spacy

IN_FLIGHT_PER_WORKER = 2
WAVE_PER_ACTOR = 64
TaskKind = Literal["pairs", "objects"]
"""What a chunk asks for: the (verb, noun) pair of each question, or the normalised form of each object name."""


@dataclass(frozen=True)
class ParserSpec:
    """How to build the verb–noun parser in any process: which backend and which models."""

    parser: Literal["spacy", "benepar"] = "spacy"
    spacy_model: str | None = None
    benepar_model: str | None = None

    def build(self) -> VerbNounExtractor:
        """A fresh extractor (loads the models)."""
        nlp = load_spacy(self.spacy_model)
        if self.parser == "benepar":
            return BeneparExtractor(self.benepar_model, nlp=nlp)
        return SpacyExtractor(nlp)


def answer(extractor: VerbNounExtractor, kind: TaskKind, texts: Sequence[str]) -> list[Any]:
    """One chunk's results: pairs for questions, normalised names for object names."""
    return extractor.pairs(texts) if kind == "pairs" else extractor.objects(texts)


class ChunkLike(Protocol):
    """What an engine needs of a chunk (the driver keeps its own bookkeeping beside it)."""

    @property
    def texts(self) -> Sequence[str]: ...

    @property
    def kind(self) -> TaskKind: ...

    @property
    def drain(self) -> bool: ...


C = TypeVar("C", bound=ChunkLike)


class ParseEngine(Protocol):
    """Answers chunks of texts (pairs or object names), returning them in the order they came."""

    name: str
    label: str
    """local, processes or ray (for the report)."""
    workers: int
    busy: dict[str, float]
    """Seconds the parsers spent on chunks of each kind ("pairs", "objects"), summed over workers."""
    park_limit: int
    """How many samples may wait for their object names before the driver asks for a drain."""

    def imap(self, chunks: Iterable[C]) -> Iterator[tuple[C, list[Any]]]:
        """Each chunk with its results, in order; pulls chunks from `chunks` only as capacity frees up."""
        ...

    def close(self) -> None:
        """Stop whatever the engine started."""
        ...


def _no_busy_time() -> dict[str, float]:
    """A pool's `busy` before its first chunk: zero seconds for each task kind."""
    return dict.fromkeys(get_args(TaskKind), 0.0)


class InProcess:
    """The extractor of this process: chunks are answered one after another as they come."""

    workers = 1
    label = "local"
    park_limit = 1000

    def __init__(self, extractor: VerbNounExtractor) -> None:
        self.extractor = extractor
        self.name = extractor.name
        self.busy = _no_busy_time()

    def imap(self, chunks: Iterable[C]) -> Iterator[tuple[C, list[Any]]]:
        """Answer each chunk here, in order."""
        for chunk in chunks:
            started = time.perf_counter()
            results = answer(self.extractor, chunk.kind, chunk.texts)
            self.busy[chunk.kind] += time.perf_counter() - started
            yield chunk, results

    def close(self) -> None:
        """Nothing to stop."""


_WORKER: VerbNounExtractor | None = None


def _start_worker() -> None:
    """In a worker: leave Ctrl-C to the driver, which stops the pool (no traceback per worker); the CLI's GC
    thresholds (a spawned worker starts with Python's)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_gc()


def _work_in_worker(spec: ParserSpec, kind: TaskKind, texts: Sequence[str]) -> tuple[list[Any], float]:
    """A worker process's task: answer one chunk with this process's parser (built on its first task)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = spec.build()
    started = time.perf_counter()
    results = answer(_WORKER, kind, texts)
    return results, time.perf_counter() - started


def _start_method() -> str:
    """fork when this process runs no other thread (the CLI): no second interpreter start-up and imports per
    worker; else spawn, which is safe next to threads (a library, a test runner)."""
    return "fork" if threading.active_count() == 1 and "fork" in get_all_start_methods() else "spawn"


class ProcessPool:
    """`workers` spawned processes, each with its own parser; bounded chunks in flight, results in order."""

    label = "processes"
    park_limit = 5000

    def __init__(self, spec: ParserSpec, workers: int, start_method: str | None = None) -> None:
        if workers < 1:
            raise UsageError("--workers: use 1 or more")
        self.spec = spec
        self.name: str = spec.parser
        self.workers = workers
        self.busy = _no_busy_time()
        self.start_method = start_method or _start_method()
        self._pool = get_context(self.start_method).Pool(workers, initializer=_start_worker)
        # every worker starts loading its parser now, while the driver reads the first records
        self._warm = [self._pool.apply_async(_work_in_worker, (spec, "pairs", [])) for _ in range(workers)]
        self._outstanding = workers

    def imap(self, chunks: Iterable[C]) -> Iterator[tuple[C, list[Any]]]:
        """Keep up to IN_FLIGHT_PER_WORKER chunks per worker queued; yield each as it reaches the front done."""
        while self._warm:
            self._warm.pop().get()  # a parser that cannot load fails here, with its own error
            self._outstanding -= 1
        window: deque[tuple[C, AsyncResult[tuple[list[Any], float]]]] = deque()
        limit = IN_FLIGHT_PER_WORKER * self.workers
        for chunk in chunks:
            window.append((chunk, self._pool.apply_async(_work_in_worker, (self.spec, chunk.kind, list(chunk.texts)))))
            self._outstanding += 1
            while window and (len(window) >= limit or chunk.drain or window[0][1].ready()):
                yield self._finish(*window.popleft())
        while window:
            yield self._finish(*window.popleft())

    def _finish(self, chunk: C, pending: AsyncResult[tuple[list[Any], float]]) -> tuple[C, list[Any]]:
        results, seconds = pending.get()
        self._outstanding -= 1
        self.busy[chunk.kind] += seconds
        return chunk, results

    def close(self) -> None:
        """Stop the workers: at once if chunks are still out (an error or Ctrl-C), else when they are idle."""
        if self._outstanding:
            self._pool.terminate()
        else:
            self._pool.close()
        self._pool.join()


class ParseActor:
    """A Ray Data actor: builds one parser, then answers one chunk per row (texts and results as JSON)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.extractor = ParserSpec(**spec).build()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        results: list[str] = []
        seconds: list[float] = []
        for kind, payload in zip(batch["kind"], batch["texts"], strict=True):
            started = time.perf_counter()
            task: TaskKind = "pairs" if str(kind) == "pairs" else "objects"
            found = answer(self.extractor, task, json.loads(str(payload)))
            seconds.append(time.perf_counter() - started)
            results.append(json.dumps(found))
        return {"index": batch["index"], "results": np.array(results, dtype=object), "seconds": np.array(seconds)}


class RayPool:
    """Ray Data ``map_batches`` over `actors` parser actors, a wave of chunks per Dataset (module docstring)."""

    label = "ray"
    park_limit = 100_000

    def __init__(self, spec: ParserSpec, actors: int | None = None, address: str | None = None) -> None:
        if actors is not None and actors < 1:
            raise UsageError("--workers: use 1 or more")
        from evolve.ray_executor import require_ray  # the same check and install hint as `evolve run`

        self.ray = require_ray()
        self.spec = spec
        self.name: str = spec.parser
        self.address = address
        self.workers = actors or 0
        self.busy = _no_busy_time()
        self._started = False

    def _start(self) -> None:
        for name in ("ray", "ray.data"):  # our progress bar says how far the parse is; Ray's logs every wave
            logging.getLogger(name).setLevel(logging.WARNING)
        if not self.ray.is_initialized():
            self.ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
            self._started = True
        if not self.workers:
            self.workers = max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def imap(self, chunks: Iterable[C]) -> Iterator[tuple[C, list[Any]]]:
        """Answer waves of chunks on the actor pool; yield every chunk of a wave, in order, when it is done."""
        self._start()
        wave: list[C] = []
        for chunk in chunks:
            wave.append(chunk)
            if chunk.drain or len(wave) >= WAVE_PER_ACTOR * self.workers:
                yield from zip(wave, self._run_wave(wave), strict=True)
                wave = []
        if wave:
            yield from zip(wave, self._run_wave(wave), strict=True)

    def _run_wave(self, wave: Sequence[ChunkLike]) -> list[list[Any]]:
        ray = self.ray
        rows = [{"index": i, "kind": c.kind, "texts": json.dumps(list(c.texts))} for i, c in enumerate(wave)]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        answered = dataset.map_batches(
            ParseActor,
            fn_constructor_kwargs={"spec": asdict(self.spec)},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(rows))),
            num_cpus=1,
        )
        found: dict[int, list[Any]] = {}
        for row in answered.iter_rows():
            results = json.loads(row["results"])
            index = int(row["index"])
            found[index] = [tuple(r) for r in results] if wave[index].kind == "pairs" else results
            self.busy[wave[index].kind] += float(row["seconds"])
        return [found[i] for i in range(len(wave))]

    def close(self) -> None:
        """Shut down a Ray this engine started."""
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_engine(
    spec: ParserSpec, *, workers: int = 1, executor: str = "local", ray_address: str | None = None
) -> ParseEngine:
    """The engine for `--executor` and `--workers` (a Ray pool sized by its cluster unless workers > 1)."""
    if executor == "ray":
        return RayPool(spec, workers if workers > 1 else None, ray_address)
    if executor != "local":
        raise UsageError("--executor: expected local or ray")
    if workers < 1:
        raise UsageError("--workers: use 1 or more")
    if workers == 1:
        return InProcess(spec.build())
    return ProcessPool(spec, workers)


def as_engine(parser: ParseEngine | VerbNounExtractor) -> ParseEngine:
    """An engine as it is, an extractor wrapped to run in this process."""
    if isinstance(parser, VerbNounExtractor):
        return InProcess(parser)
    return parser
