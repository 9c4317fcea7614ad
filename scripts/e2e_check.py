"""Accounting check for scripts/e2e_real.sh: every seed is kept or dropped with a reason, in the run and in
`evolve eliminate`'s folder. Prints the counts and the drop reasons; exits 1 on any broken invariant."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from evolve.records import Loaded, read_samples


def lines(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a JSONL file (none when it is absent)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_judged(folder: Path, label: str, errors: list[str], judged_file: str = "judged.jsonl") -> Counter[str]:
    """Each judged sample's items are all in kept.jsonl or dropped.jsonl (stage eliminate); every drop has a reason."""
    judged = lines(folder / judged_file)
    kept = {r["id"]: r for r in lines(folder / "kept.jsonl")}
    drops = lines(folder / "dropped.jsonl")
    elim = {r["id"]: r for r in drops if r["stage"] == "eliminate"}
    for drop in drops:
        if not str(drop.get("reason") or "").strip():
            errors.append(f"{label}: drop {drop['id']} has no reason")
    for record in judged:
        total = len(record["qa"])
        n_kept = len(kept[record["id"]]["qa"]) if record["id"] in kept else 0
        n_drop = len(elim[record["id"]]["sample"]["qa"]) if record["id"] in elim else 0
        if record["id"] not in kept and record["id"] not in elim:
            errors.append(f"{label}: judged {record['id']} has neither a kept nor a dropped line")
        elif n_kept + n_drop != total:
            errors.append(f"{label}: judged {record['id']}: {n_kept} kept + {n_drop} dropped != {total} items")
    return Counter(
        {"judged": len(judged), "kept": len(kept), "dropped(eliminate)": len(elim),
         "dropped(judge)": sum(1 for d in drops if d["stage"] == "judge")}
    )  # fmt: skip


def reasons(folder: Path) -> Counter[str]:
    """Drop reasons by stage, shortened."""
    return Counter(f"{d['stage']}: {d['reason'][:110]}" for d in lines(folder / "dropped.jsonl"))


def main() -> int:
    """Run the checks and print what the real model produced."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--eliminate", type=Path, required=True)
    args = parser.parse_args()
    errors: list[str] = []

    seed_ids = [item.sample.seed_id for item in read_samples(args.seeds) if isinstance(item, Loaded)]
    round1 = args.run / "round-1"
    evolved = lines(round1 / "evolved.jsonl")
    drops = lines(round1 / "dropped.jsonl")
    evolved_ids = {r["seed_id"] for r in evolved}
    evolve_failed = {r["seed_id"] for r in drops if r["stage"] == "evolve"}
    judge_failed = {r["seed_id"] for r in drops if r["stage"] == "judge"}
    print(f"seeds: {len(seed_ids)}; round 1: {len(evolved)} evolved + {len(evolve_failed)} dropped at evolve")
    if len(evolved) + len(evolve_failed) != len(seed_ids):
        errors.append(f"run: evolved {len(evolved)} + dropped(evolve) {len(evolve_failed)} != {len(seed_ids)} seeds")
    if evolved_ids & evolve_failed:
        errors.append(f"run: seeds both evolved and dropped at evolve: {sorted(evolved_ids & evolve_failed)}")
    if (evolved_ids | evolve_failed) != set(seed_ids):
        errors.append(f"run: seeds unaccounted for: {sorted(set(seed_ids) - evolved_ids - evolve_failed)}")
    judged_ids = {r["seed_id"] for r in lines(round1 / "judged.jsonl")}
    if (judged_ids | judge_failed) != evolved_ids:
        lost = sorted(evolved_ids - judged_ids - judge_failed)
        errors.append(f"run: evolved but neither judged nor dropped at judge: {lost}")
    counts = check_judged(round1, "run", errors)
    print("run round 1:", dict(counts))

    summary = json.loads((args.run / "run.json").read_text(encoding="utf-8"))
    stats = (summary.get("rounds") or {}).get("1", {})
    print("run.json round 1:", json.dumps({k: v for k, v in stats.items() if not isinstance(v, dict)}, sort_keys=True))
    if stats.get("samples") not in (None, len(seed_ids)):
        errors.append(f"run.json: round 1 samples {stats.get('samples')} != {len(seed_ids)}")
    if stats.get("kept_samples") not in (None, counts["kept"]):
        errors.append(f"run.json: kept_samples {stats.get('kept_samples')} != kept.jsonl lines {counts['kept']}")
    for reason, n in reasons(round1).most_common():
        print(f"  {n:3d}  {reason}")

    elim_counts = check_judged(args.eliminate, "eliminate", errors)
    elim_total = elim_counts["judged"] + elim_counts["dropped(judge)"]
    print("eliminate:", dict(elim_counts))
    if elim_total != len(evolved):
        errors.append(
            f"eliminate: judged {elim_counts['judged']} + failed {elim_counts['dropped(judge)']}"
            f" != {len(evolved)} evolved"
        )
    for reason, n in reasons(args.eliminate).most_common():
        print(f"  {n:3d}  {reason}")

    for error in errors:
        print("CHECK FAILED:", error, file=sys.stderr)
    print("accounting:", "OK" if not errors else f"{len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
