"""`evolve merge`: join shard run folders (`--shard K/N`, `--workers N`) into one run folder.

The shards must share every setting that decides records (the run.json fingerprint) except the shard itself;
their round files (outcomes included), final.jsonl and rejected seeds are concatenated, and the merged run.json
is summarized from the merged outcome lines, like any run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolve.accounting import prices_for
from evolve.errors import UsageError
from evolve.manifest import Mode, RunManifest, read_manifest, summarize_rounds, write_manifest
from evolve.runfolder import RunFolder, concat_files, write_final


def _without_shard(manifest: RunManifest) -> dict[str, Any]:
    found = dict(manifest.fingerprint)
    found.pop("shard", None)
    return found


def check_shards(manifests: list[tuple[Path, RunManifest]]) -> None:
    """Refuse shards made with other settings or seeds, or an incomplete/duplicated set of shards."""
    first_path, first = manifests[0]
    reference = _without_shard(first)
    for path, manifest in manifests[1:]:
        other = _without_shard(manifest)
        for key in sorted(set(reference) | set(other)):
            if reference.get(key) != other.get(key):
                raise UsageError(f"{path} and {first_path} were run with different {key}; cannot merge")
    shards = [m.fingerprint.get("shard") for _, m in manifests]
    if any(shards):
        if None in shards or len(set(shards)) != len(shards):
            raise UsageError("cannot merge: a shard is given twice, or sharded and unsharded runs are mixed")
        counts = {int(str(s).split("/")[1]) for s in shards}
        if len(counts) != 1 or len(shards) != counts.pop():
            raise UsageError(f"cannot merge: expected every shard K/N once, got {', '.join(map(str, shards))}")


def merge_runs(sources: list[Path], target: Path, *, mode: Mode = "merged") -> RunManifest:
    """Merge shard run folders into `target`; returns the merged manifest."""
    if not sources:
        raise UsageError("no run folders to merge")
    manifests: list[tuple[Path, RunManifest]] = []
    for source in sources:
        manifest = read_manifest(RunFolder(source))
        if manifest is None:
            raise UsageError(f"{source}: not a run folder (no run.json)")
        if manifest.status not in ("done", "done_with_failures"):
            raise UsageError(f"{source}: run is {manifest.status}, finish it before merging")
        manifests.append((source, manifest))
    check_shards(manifests)
    out = RunFolder(target)
    shards = [RunFolder(p) for p in sources]
    numbers = sorted({n for folder in shards for n in folder.rounds_present()})
    for number in numbers:
        for name in out.round(number).names:
            concat_files((folder.round_file(number, name) for folder in shards), out.round_file(number, name))
    concat_files((folder.rejected for folder in shards), out.rejected)
    merged = manifests[0][1].model_copy()
    config = merged.config
    rounds = int(config.get("rounds") or max(numbers or [0]))
    prices = prices_for(str(config.get("model")), config.get("price_in"), config.get("price_out"),
                        config.get("price_cached_in"))  # fmt: skip
    summarize_rounds(out, range(min(numbers or [1]), rounds + 1), prices, merged)
    merged.final_samples = write_final(out, rounds)
    merged.rejected_seeds = sum(m.rejected_seeds for _, m in manifests)
    merged.status = merged.finished()
    merged.mode = mode
    merged.merged_from = [str(p) for p in sources]
    merged.fingerprint = {**merged.fingerprint, "shard": None}
    merged.config = {**config, "shard": None}
    write_manifest(out, merged)
    return merged
