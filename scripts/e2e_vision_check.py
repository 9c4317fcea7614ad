"""Checks and figures for scripts/e2e_vision.sh: what evolve put on the wire (from the proxy's log), whether
every seed is accounted for in the run folder, and the probe's numbers, printed as one labelled table.

    e2e_vision_check.py --seeds S.jsonl --run RUN --wire wire.jsonl --probe probe.json
        --timing build=12.3 --timing server_start=3.1 ... [--note build_first="670 s (2026-12-01)"] --out figures.json

Exits 1 on any failed check. It is a wire test: it shows that a real multimodal server accepts evolve's image
parts and that its answer depends on the image bytes; with random projector weights it says nothing of vision.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

BANNER = (
    "WIRE TEST, not a vision test: llama.cpp's multimodal server with SmolLM2-135M and a RANDOM-weight projector.\n"
    "It proves the server accepts evolve's image parts (data URLs, detail), counts their image tokens and answers\n"
    "differently for different image bytes. It proves nothing about the quality of answers about images."
)


def jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (none when it is absent)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def spread(values: list[float]) -> str:
    """min / median / max of some seconds."""
    if not values:
        return "-"
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f} s (n={len(values)})"


def check_wire(calls: list[dict[str, Any]], errors: list[str]) -> dict[str, Any]:
    """Every chat call evolve made carried an image as a data URL with a detail, and got HTTP 200."""
    if not calls:
        errors.append("wire: the proxy saw no chat call from evolve run")
    for number, call in enumerate(calls, 1):
        images = call.get("images") or []
        if not images:
            errors.append(f"wire: call {number} has no image part")
        for image in images:
            if not str(image.get("kind", "")).startswith("data:image/") or not image.get("bytes"):
                errors.append(f"wire: call {number} image is not a decodable data:image URL: {image}")
            if image.get("detail") not in ("low", "high", "auto"):
                errors.append(f"wire: call {number} image detail is {image.get('detail')!r}")
        if call.get("status") != 200:
            errors.append(f"wire: call {number} got HTTP {call.get('status')}: {call.get('error', '')[:200]}")
    prompt_tokens = [c["prompt_tokens"] for c in calls if c.get("prompt_tokens")]
    return {
        "calls": len(calls),
        "with_image": sum(1 for c in calls if c.get("images")),
        "statuses": dict(Counter(str(c.get("status")) for c in calls)),
        "details": dict(Counter(str(i.get("detail")) for c in calls for i in c.get("images") or [])),
        "image_kinds": dict(Counter(str(i.get("kind")) for c in calls for i in c.get("images") or [])),
        "prompt_tokens": [min(prompt_tokens), max(prompt_tokens)] if prompt_tokens else [],
        "seconds": spread([float(c["seconds"]) for c in calls if "seconds" in c]),
    }


def seed_outcome(outcome: dict[str, Any], drops: list[dict[str, Any]]) -> tuple[str, bool]:
    """A one-line outcome of a seed in round 1, and whether it carries a reason (kept needs none)."""
    items = outcome.get("items") or {}
    if outcome.get("kept"):
        return f"kept {items.get('kept', '?')} of {items.get('parent', '?')} items", True
    reasons = [f"{d.get('stage')}: {d.get('reason')}" for d in drops if d.get("reason")]
    reasons += [str(r) for r in outcome.get("reasons") or [] if r]
    if outcome.get("failed"):
        reasons.insert(0, f"failed: {outcome['failed']}")
    shown = "; ".join(dict.fromkeys(reasons))[:220]
    return f"not kept ({shown or 'no reason recorded'})", bool(reasons)


def check_run(seeds: Path, run: Path, errors: list[str]) -> dict[str, Any]:
    """Each seed line is rejected with a reason or has one round-1 outcome, kept or with a reason."""
    n_lines = sum(1 for line in seeds.read_text(encoding="utf-8").splitlines() if line.strip())
    rejected = jsonl(run / "rejected.jsonl")
    outcomes = jsonl(run / "round-1" / "outcomes.jsonl")
    drops = jsonl(run / "round-1" / "dropped.jsonl")
    per_seed: dict[str, str] = {}
    for outcome in outcomes:
        seed_id = str(outcome.get("seed_id"))
        if seed_id in per_seed:
            errors.append(f"run: seed {seed_id} has more than one round-1 outcome")
        line, explained = seed_outcome(outcome, [d for d in drops if d.get("seed_id") == seed_id])
        per_seed[seed_id] = line
        if not explained:
            errors.append(f"run: seed {seed_id} was not kept and no reason is recorded")
    for record in rejected:
        if not str(record.get("reason") or "").strip():
            errors.append(f"run: rejected seed line without a reason: {record}")
    if len(per_seed) + len(rejected) != n_lines:
        errors.append(
            f"run: {n_lines} seed lines but {len(per_seed)} round-1 outcomes + {len(rejected)} rejected lines"
        )
    manifest = json.loads((run / "run.json").read_text(encoding="utf-8")) if (run / "run.json").exists() else {}
    if not manifest:
        errors.append("run: no run.json")
    return {
        "seed_lines": n_lines,
        "rejected": len(rejected),
        "status": manifest.get("status"),
        "kept_samples": ((manifest.get("rounds") or {}).get("1") or {}).get("kept_samples"),
        "final_samples": manifest.get("final_samples"),
        "per_seed": per_seed,
        "drop_reasons": dict(Counter(f"{d.get('stage')}: {str(d.get('reason'))[:90]}" for d in drops)),
    }


def yes(flag: Any) -> str:
    """yes/no for the table."""
    return "yes" if flag else "no"


def table(timings: dict[str, float], notes: dict[str, str], wire: dict[str, Any], run: dict[str, Any],
          probe: dict[str, Any]) -> list[tuple[str, str]]:  # fmt: skip
    """The figures, in the order the task lists them."""
    seconds = probe.get("image_request_seconds") or {}
    detail = probe.get("detail") or {}
    unknown = probe.get("detail_outside_low_high_auto") or {}
    rows = [
        ("build, first (pip install llama-cpp-python[server] + gguf)", notes.get("build_first", "-")),
        ("build, this run", f"{timings.get('build', 0):.1f} s"),
        ("model files, this run (projector + patched SmolLM2)", f"{timings.get('model_files', 0):.1f} s"),
        ("projector deterministic (regenerated, same sha256)", notes.get("projector_deterministic", "-")),
        ("server start (launch to /v1/models)", f"{timings.get('server_start', 0):.1f} s"),
        ("first image request (loads the projector)", f"{probe.get('first_request_seconds', 0):.1f} s"),
        ("seconds per image request, min / median / max",
         f"{seconds.get('min', 0):.1f} / {seconds.get('median', 0):.1f} / {seconds.get('max', 0):.1f} s "
         f"(n={seconds.get('n', 0)}, short prompt)"),
        ("image tokens per image (projector: overview + 1 tile)",
         f"{probe.get('projector_image_tokens')} embeddings; prompt_tokens {probe.get('prompt_tokens_with_image')} "
         f"with vs {probe.get('prompt_tokens_text_only')} without = +{probe.get('image_prompt_tokens')} "
         f"({probe.get('delimiter_tokens')} of them mtmd's marker text)"),
        ("answer changes with the image (temperature 0)",
         f"{yes(probe.get('answer_changes_with_image'))} ({probe.get('distinct_answers')} distinct); "
         f"same image twice, same answer: {yes(probe.get('same_image_same_answer'))}"),
        ("detail low / high / auto accepted",
         " / ".join(yes((detail.get(d) or {}).get("accepted")) for d in ("low", "high", "auto"))
         + "; same prompt tokens and answer as low: "
         + " / ".join(yes((detail.get(d) or {}).get("same_tokens_as_low")
                          and (detail.get(d) or {}).get("same_answer_as_low")) for d in ("high", "auto"))),
        (f"detail={unknown.get('value')!r} (outside the three)", f"HTTP {unknown.get('status')}"),
        ("evolve validate on the seeds", notes.get("validate", "-")),
        ("evolve run wall time", f"{timings.get('evolve_run', 0):.0f} s, {notes.get('evolve_run', '')}"),
        ("evolve run calls on the wire", f"{wire['calls']}, with an image part: {wire['with_image']}, HTTP "
         + ", ".join(f"{k}: {v}" for k, v in wire["statuses"].items())
         + f"; detail sent: {wire['details']}; {wire['seconds']}"),
    ]  # fmt: skip
    rows += [(f"  seed {seed_id}", outcome) for seed_id, outcome in run["per_seed"].items()]
    rows.append(("load average at start / end (2 cores, shared)", notes.get("load", "-")))
    return rows


def main() -> int:
    """Run the checks, print the figures, write them as JSON; exit 1 if any check failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--wire", type=Path, required=True, help="the proxy's JSONL log of evolve run's calls")
    parser.add_argument("--probe", type=Path, required=True, help="e2e_vision_probe.py's JSON")
    parser.add_argument("--timing", action="append", default=[], help="NAME=SECONDS")
    parser.add_argument("--note", action="append", default=[], help="NAME=TEXT")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    timings = {k: float(v) for k, v in (t.split("=", 1) for t in args.timing)}
    notes = dict(n.split("=", 1) for n in args.note)
    errors: list[str] = []
    wire = check_wire(jsonl(args.wire), errors)
    run = check_run(args.seeds, args.run, errors)
    probe = json.loads(args.probe.read_text(encoding="utf-8")) if args.probe.exists() else {}
    if not probe:
        errors.append("probe: no figures (the direct requests did not run)")
    errors += [f"probe: {failure}" for failure in probe.get("failures", [])]
    rows = table(timings, notes, wire, run, probe)
    figures = {"timings": timings, "notes": notes, "wire": wire, "run": run,
               "probe": {k: v for k, v in probe.items() if k != "calls"}, "errors": errors}  # fmt: skip
    args.out.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    print(BANNER)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    for reason, count in Counter(run["drop_reasons"]).most_common():
        print(f"  drops  {count:3d} x {reason}")
    for error in errors:
        print("CHECK FAILED:", error, file=sys.stderr)
    print("checks:", "all passed" if not errors else f"{len(errors)} failed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
