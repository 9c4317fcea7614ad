"""`evolve merge`: join shard run folders (`--shard K/N`, `--workers N`) into one run folder.

The shards must share every setting that decides records (the run.json fingerprint) except the shard itself;
their rounds, final.jsonl and usage are concatenated and summed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evolve.accounting import TokenUsage
from evolve.errors import UsageError
from evolve.runfolder import ROUND_FILES, RunFolder, concat_files, round_stats

_SUMMED = ("rejected_seeds",)


def _fingerprint_without_shard(summary: dict[str, Any]) -> dict[str, Any]:
    found = dict(summary.get("fingerprint") or {})
    found.pop("shard", None)
    return found


def check_shards(summaries: list[tuple[Path, dict[str, Any]]]) -> None:
    """Refuse shards made with other settings or seeds, or an incomplete/duplicated set of shards."""
    first_path, first = summaries[0]
    reference = _fingerprint_without_shard(first)
    for path, summary in summaries[1:]:
        other = _fingerprint_without_shard(summary)
        for key in sorted(set(reference) | set(other)):
            if reference.get(key) != other.get(key):
                raise UsageError(f"{path} and {first_path} were run with different {key}; cannot merge")
    shards = [(s.get("fingerprint") or {}).get("shard") for _, s in summaries]
    if any(shards):
        if None in shards or len(set(shards)) != len(shards):
            raise UsageError("cannot merge: a shard is given twice, or sharded and unsharded runs are mixed")
        counts = {int(str(s).split("/")[1]) for s in shards}
        if len(counts) != 1 or len(shards) != counts.pop():
            raise UsageError(f"cannot merge: expected every shard K/N once, got {', '.join(map(str, shards))}")


def merge_runs(sources: list[Path], target: Path) -> dict[str, Any]:
    """Merge shard run folders into `target`; returns the merged run.json."""
    if not sources:
        raise UsageError("no run folders to merge")
    summaries: list[tuple[Path, dict[str, Any]]] = []
    for source in sources:
        summary = RunFolder(source).read_run_json()
        if summary is None:
            raise UsageError(f"{source}: not a run folder (no run.json)")
        if summary.get("status") not in ("done", "done_with_failures"):
            raise UsageError(f"{source}: run is {summary.get('status')}, finish it before merging")
        summaries.append((source, summary))
    check_shards(summaries)
    out = RunFolder(target)
    rounds = max(int(n) for _, s in summaries for n in s.get("rounds", {})) if summaries else 0
    for number in range(1, rounds + 1):
        for name in ROUND_FILES:
            concat_files([RunFolder(p).round_file(number, name) for p in sources], out.round_file(number, name))
    concat_files([RunFolder(p).rejected for p in sources], out.rejected)
    final_count = concat_files([RunFolder(p).final for p in sources], out.final)
    merged = _merged_summary(summaries, rounds, final_count)
    for number, part in merged["rounds"].items():
        part.update(round_stats(out, int(number)))
    out.write_run_json(merged)
    return merged


def _merged_summary(summaries: list[tuple[Path, dict[str, Any]]], rounds: int, final: int) -> dict[str, Any]:
    first = dict(summaries[0][1])
    total = TokenUsage()
    merged_rounds: dict[str, Any] = {}
    for number in range(1, rounds + 1):
        usage = TokenUsage()
        cost: float | None = None
        for _, summary in summaries:
            part = summary.get("rounds", {}).get(str(number), {})
            usage.merge(TokenUsage.from_dict(part.get("usage")))
            if part.get("cost_usd") is not None:
                cost = (cost or 0.0) + float(part["cost_usd"])
        total.merge(usage)
        merged_rounds[str(number)] = {"usage": usage.as_dict(), "cost_usd": cost}
    costs = [float(s["cost_usd"]) for _, s in summaries if s.get("cost_usd") is not None]
    first.update(
        {
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "status": "done" if all(s.get("status") == "done" for _, s in summaries) else "done_with_failures",
            "merged_from": [str(p) for p, _ in summaries],
            "rounds": merged_rounds,
            "final_samples": final,
            "usage": total.as_dict(),
            "cost_usd": sum(costs) if costs else None,
        }
    )
    first["fingerprint"] = {**(first.get("fingerprint") or {}), "shard": None}
    first["config"] = {**(first.get("config") or {}), "shard": None}
    for key in _SUMMED:
        first[key] = sum(int(s.get(key) or 0) for _, s in summaries)
    return first
