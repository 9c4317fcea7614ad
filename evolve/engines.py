"""Which engine runs `evolve run`: live asyncio (the default), the Batch API, local worker processes or Ray.

The settings choose one (config refuses two); each engine is the same `pipeline.Run` with another pool, except
`--workers`, which runs shard processes (each a live run) and merges them.
"""

from __future__ import annotations

from pathlib import Path

from evolve.cache import NullCache
from evolve.config import RunConfig
from evolve.errors import UsageError
from evolve.manifest import RunManifest
from evolve.pipeline import LocalPool, Message, Pool, Run, make_clients
from evolve.ui import run_with_progress


def run_command(
    config: RunConfig, seeds: list[Path], out: Path, message: Message, *, cancel: bool = False
) -> RunManifest:
    """Run (or resume, or take one Batch API step of) `evolve run` with the engine the settings choose."""
    if cancel and not config.batch:
        raise UsageError("--cancel goes with --batch (it cancels the pending batches)")
    if config.workers > 1:
        from evolve.workers import run_workers

        return run_workers(config, seeds, out, message)
    run = Run(config, seeds, out, message)
    cache = run.open_cache() if config.executor != "ray" else NullCache()  # Ray's actors open the cache

    async def execute() -> RunManifest:
        pool: Pool
        if config.batch:
            from evolve.batch import BatchPool

            if config.no_cache:
                raise UsageError("--batch needs the response cache: drop --no-cache")
            pool = BatchPool(config, cache, cancel=cancel)  # type: ignore[arg-type]
        elif config.executor == "ray":
            from evolve.ray_executor import RayPool

            pool = RayPool(config.ray_address)
        else:
            pool = LocalPool(make_clients(config, cache))
        return await run.execute(pool)

    try:
        return run_with_progress(run, execute(), quiet=config.quiet or config.batch)
    finally:
        cache.close()
