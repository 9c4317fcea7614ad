"""`evolve run --workers N`: N local processes, each a shard with its own event loop, merged at the end.

One Python process tops out at a few hundred requests per second of client CPU; shards use every core. Each
worker gets `--shard K/N` and its share of --concurrency, --rpm and --tpm, and writes a normal run folder under
`OUT/shards/`; the same command again resumes every shard and merges anew. A worker exits when its parent dies
(it watches a pipe the parent holds), so a killed parent never leaves workers spending.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from evolve.config import RunConfig
from evolve.errors import EvolveError, Interrupted, RunLockedError, UsageError
from evolve.gctune import tune_gc
from evolve.manifest import RunManifest
from evolve.merge import merge_runs
from evolve.pipeline import GRACE_SECONDS, Message, Run, run_live
from evolve.ray_executor import share_limits
from evolve.runfolder import RunFolder, run_lock


def shard_config(config: RunConfig, index: int, workers: int) -> RunConfig:
    """The settings of worker `index` of `workers`: its shard, its share of the limits, one shared cache."""
    cache = config.cache if config.cache is not None or config.no_cache else None
    return share_limits(config, workers, shard=f"{index}/{workers}", workers=1, quiet=True, cache=cache)


def _watch_parent(pipe: Connection) -> None:
    """Stop this worker (as SIGTERM would) when the parent's end of the pipe closes: the parent is gone."""
    with contextlib.suppress(EOFError, OSError):
        pipe.recv()
    os.kill(os.getpid(), signal.SIGTERM)


def _worker(config: RunConfig, seeds: list[Path], out: Path, pipe: Connection) -> None:
    """Run one shard in a fresh process; its exit code is the CLI's."""
    import asyncio

    tune_gc()  # a spawned process starts with Python's defaults, not the CLI's
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards what it gets
    threading.Thread(target=_watch_parent, args=(pipe,), daemon=True).start()
    try:
        run = Run(config, seeds, out, lambda _text: None)
        run.lock_wait = GRACE_SECONDS * 2  # a resume may find the last worker of this shard still finishing
        manifest = asyncio.run(run_live(config, seeds, out, lambda _text: None, run))
    except EvolveError as exc:
        print(f"{exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(manifest.exit_code())


def run_workers(config: RunConfig, seeds: list[Path], out: Path, message: Message) -> RunManifest:
    """Run `config.workers` shard processes and merge them into `out`; returns the merged manifest."""
    workers = config.workers
    if workers < 2:
        raise UsageError("--workers: use 2 or more (1 is a plain run)")
    root = RunFolder(out)
    configs = [shard_config(config, k, workers) for k in range(workers)]
    if config.cache is None and not config.no_cache:
        configs = [c.model_copy(update={"cache": root.cache}) for c in configs]
    folders = [root.shard(k, workers) for k in range(workers)]
    with run_lock(root):
        context = multiprocessing.get_context("spawn")
        pipes = [context.Pipe(duplex=False) for _ in range(workers)]
        processes = [
            context.Process(target=_worker, args=(c, seeds, f.root, reader), name=f"evolve-shard-{k}")
            for k, (c, f, (reader, _writer)) in enumerate(zip(configs, folders, pipes, strict=True))
        ]
        for process in processes:
            process.start()
        for reader, _writer in pipes:
            reader.close()  # the child holds its end; the parent keeps the writers open while it lives
        received: list[int] = []

        def forward(signum: int, _frame: object) -> None:
            received.append(signum)
            for process in processes:
                if process.pid is not None and process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)

        handlers = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            for process in processes:
                process.join()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            for _reader, writer in pipes:
                writer.close()
        codes = [process.exitcode or 0 for process in processes]
        message(f"workers finished with exit codes {codes}")
        if received:
            raise Interrupted(received[0])
        stopped = [c for c in codes if c not in (0, 3)]
        if stopped and all(c == RunLockedError.exit_code for c in stopped):
            raise RunLockedError(f"{out}: a worker of an earlier invocation is still running; try again shortly")
        if stopped:
            signum = next((c - 128 for c in stopped if c > 128), None)
            if signum is not None:
                raise Interrupted(signum)
            raise EvolveError(f"{len(stopped)} of {workers} workers failed (exit codes {codes}); see above")
        return merge_runs([f.root for f in folders], out, mode="workers")
