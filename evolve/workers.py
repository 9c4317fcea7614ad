"""`evolve run --workers N`: N local processes, each a shard with its own event loop, merged at the end.

One Python process tops out at a few hundred requests per second of client CPU; shards use every core. Each
worker gets `--shard K/N` and its share of --concurrency, --rpm and --tpm, and writes a normal run folder under
`OUT/shards/`; the same command again resumes every shard and merges anew.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evolve.config import RunConfig
from evolve.errors import EvolveError, Interrupted, UsageError
from evolve.merge import merge_runs
from evolve.runfolder import RunFolder, run_lock


def shard_config(config: RunConfig, index: int, workers: int) -> RunConfig:
    """The settings of worker `index` of `workers`: its shard and its share of the limits."""

    def share(value: int | None) -> int | None:
        return None if value is None else max(1, value // workers)

    return config.model_copy(
        update={
            "shard": f"{index}/{workers}",
            "concurrency": share(config.concurrency),
            "rpm": share(config.rpm),
            "tpm": share(config.tpm),
            "quiet": True,
            "cache": config.cache,
        }
    )


def _worker(config: RunConfig, seeds: list[Path], out: Path) -> None:
    """Run one shard in a fresh process; its exit code is the CLI's."""
    from evolve.pipeline import run_evolution

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards what it gets as SIGTERM
    try:
        result = run_evolution(config, seeds, out, lambda _text: None)
    except EvolveError as exc:
        print(f"{out}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(3 if result.failures else 0)


def shard_folder(out: Path, index: int, workers: int) -> Path:
    """Where worker `index` keeps its run folder."""
    return out / "shards" / f"{index}-of-{workers}"


def run_workers(
    config: RunConfig, seeds: list[Path], out: Path, workers: int, message: Callable[[str], None]
) -> dict[str, Any]:
    """Run `workers` shard processes and merge them into `out`; returns the merged run.json."""
    if workers < 2:
        raise UsageError("--workers: use 2 or more (1 is a plain run)")
    if config.shard is not None:
        raise UsageError("--workers and --shard cannot be combined")
    folders = [shard_folder(out, k, workers) for k in range(workers)]
    configs = [shard_config(config, k, workers) for k in range(workers)]
    if config.cache is None and not config.no_cache:
        shared = out / "cache.sqlite"
        configs = [c.model_copy(update={"cache": shared}) for c in configs]
    with run_lock(RunFolder(out)):
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=_worker, args=(c, seeds, f), name=f"evolve-shard-{k}")
            for k, (c, f) in enumerate(zip(configs, folders, strict=True))
        ]
        for process in processes:
            process.start()

        def forward(signum: int, _frame: object) -> None:
            for process in processes:
                if process.pid is not None and process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)

        handlers = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for process in processes:
                process.join()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        codes = [process.exitcode or 0 for process in processes]
        message(f"workers finished with exit codes {codes}")
        stopped = [c for c in codes if c not in (0, 3)]
        if stopped:
            signum = next((c - 128 for c in stopped if c > 128), None)
            if signum is not None:
                raise Interrupted(signum)
            raise EvolveError(f"{len(stopped)} of {workers} workers failed (exit codes {codes}); see above")
        return merge_runs(folders, out)
