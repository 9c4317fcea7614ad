"""`evolve report`: one self-contained HTML file to audit a run — its numbers and plots, and a stratified sample
of seeds with every round's rewrite, verdict and drop reason.

Two passes over the run folder, in bounded memory whatever its size:
1. `evolve.tally` counts the round files (per round, stage, operator and score) and files every (seed, round)
   outcome in a stratum that keeps a few seeds; the seed files are read at the same time;
2. the chosen seeds' lines are picked out of every round file (`evolve.lineage`), their seeds read from
   their places, and their images turned into small JPEG thumbnails.
The page (evolve/report_assets: HTML, CSS, JS, no network) draws the plots and cards from an embedded JSON.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from PIL import Image, ImageOps

from evolve import __version__
from evolve.errors import InputError, UsageError
from evolve.images import is_remote
from evolve.lineage import (
    Lineage,
    RunSource,
    Workers,
    assemble,
    bytes_of,
    collect_records,
    image_of,
    open_run,
    round_files,
    seeds_at,
    spans,
)
from evolve.records import open_lines
from evolve.runfolder import write_atomic
from evolve.tally import (
    SUMMARY_KINDS,
    Partial,
    RoundTotals,
    SeedTask,
    SeedTotals,
    Strata,
    SummaryTask,
    index_seeds,
    places_of,
    reason_kind,
    summarize,
)

DEFAULT_SAMPLES = 200
THUMB_PX = 224
MAX_TEXT = 2000
MAX_RAW = 1500
MAX_LIST = 40
ProgressFn = Callable[[str, int, int], None]
"""(phase, done, total) — bytes of the phase's files read so far."""


# --------------------------------------------------------------------------- thumbnails


def thumbnail(image: Path | str | None, size: int = THUMB_PX) -> str | None:
    """A small JPEG data URL of a local image (None for URLs, missing or unreadable files)."""
    if image is None or (isinstance(image, str) and is_remote(image)):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(image) as img:
                img.draft("RGB", (size * 2, size * 2))
                small = ImageOps.exif_transpose(img)
                small.thumbnail((size, size))
                buffer = io.BytesIO()
                small.convert("RGB").save(buffer, "JPEG", quality=80, optimize=True)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- the page's data


def _clip(value: Any, limit: int = MAX_TEXT) -> Any:
    """Bound a JSON value's size: long strings cut, long lists shortened (the report stays small)."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"… [{len(value) - limit:,} more characters]"
    if isinstance(value, list):
        return [_clip(v, limit) for v in value[:MAX_LIST]]
    if isinstance(value, dict):
        return {str(k): _clip(v, limit) for k, v in value.items()}
    return value


def lineage_card(lineage: Lineage, thumb: str | None) -> dict[str, Any]:
    """A lineage as the page's JSON: seed, rounds, items (raw fields, clipped), diffs and drops."""
    seed = lineage.seed
    rounds = []
    for view in lineage.rounds:
        items = [
            {
                "f": _clip(item.fields),
                "status": item.status,
                "stage": item.stage,
                "reason": _clip(item.drop_reason),
                "diff": [list(part) for part in item.diff],
            }
            for item in view.items[:MAX_LIST]
        ]
        failures = [
            {"stage": f.get("stage"), "reason": _clip(f.get("reason")), "raw": _clip(f.get("raw"), MAX_RAW)}
            for f in view.failures
        ]
        rounds.append(
            {
                "round": view.round,
                "operator": view.operator,
                "id": view.id,
                "parent_id": view.parent_id,
                "outcome": view.outcome,
                "stages": view.stages,
                "items": items,
                "failures": failures,
            }
        )
    return {
        "id": lineage.seed_id,
        "where": lineage.where,
        "image": lineage.image_ref,
        "thumb": thumb,
        "caption": _clip(lineage.caption),
        "objects": sorted({str(box.get("label", "")) for box in lineage.objects if isinstance(box, dict)}),
        "seed": [_clip(item.model_dump()) for item in seed.qa[:MAX_LIST]] if seed is not None else None,
        "rounds": rounds,
    }


def _mean(total: float, count: int) -> float | None:
    return total / count if count else None


def round_column(number: int, totals: RoundTotals, from_run_json: dict[str, Any]) -> dict[str, Any]:
    """One round's numbers for the page (first-pass counts, plus what run.json adds)."""
    operators = sorted(set(totals.op_samples) | set(totals.op_kept_items) | set(totals.op_dropped_items))
    stages = sorted(set(totals.drop_records))
    reasons = []
    for key, count in totals.drop_reasons.most_common(12):
        stage, kind = key.split("\t", 1)
        reasons.append({"stage": stage, "reason": kind, "count": count})
    return {
        "name": f"round-{number}",
        "kind": "round",
        "round": number,
        "samples": from_run_json.get("samples"),
        "evolved": from_run_json.get("evolved"),
        "judged_samples": totals.judged_samples,
        "judged_items": totals.judged_items,
        "improved_items": totals.improved_items,
        "improvement_rate": _mean(totals.improved_items, totals.verdict_items),
        "score_mean": _mean(totals.score_sum, totals.scored_items),
        "score_hist": [totals.score_hist.get(i, 0) for i in range(11)],
        "kept_samples": totals.kept_samples,
        "kept_items": totals.kept_items,
        "kept_score_mean": _mean(totals.kept_score_sum, totals.kept_scored),
        "kept_score_hist": [totals.kept_score_hist.get(i, 0) for i in range(11)],
        "question_words": _mean(totals.kept_question_words, totals.kept_items),
        "skills": _mean(totals.kept_skills, totals.kept_items),
        "steps": _mean(totals.kept_steps, totals.kept_items),
        "drops": {s: {"records": totals.drop_records[s], "items": totals.drop_items[s]} for s in stages},
        "reasons": reasons,
        "operators": {
            op: {
                "samples": totals.op_samples[op],
                "items": totals.op_items[op],
                "improved": totals.op_improved[op],
                "kept_items": totals.op_kept_items[op],
                "dropped_items": totals.op_dropped_items[op],
            }
            for op in operators
        },
        "unreadable_lines": totals.unreadable_lines,
        "usage": from_run_json.get("usage"),
        "cost_usd": from_run_json.get("cost_usd"),
    }


def seed_column(totals: SeedTotals) -> dict[str, Any]:
    """The seeds' numbers for the page."""
    return {
        "name": "seeds",
        "kind": "seeds",
        "round": None,
        "samples": totals.samples,
        "items": totals.items,
        "rejected": totals.rejected,
        "question_words": _mean(totals.question_words, totals.items),
        "answer_words": _mean(totals.answer_words, totals.items),
        "skills": _mean(totals.skills, totals.items),
        "steps": _mean(totals.steps, totals.items),
    }


STATS_FIELDS = (
    "samples", "qa_items", "question_tokens_mean", "answer_tokens_mean", "skills_length_mean", "step_length_mean",
    "improvement_rate", "score_mean", "distinct_verbs", "distinct_pairs", "pair_entropy_bits", "no_pair_share",
    "distinct_objects", "long_tail_share",
)  # fmt: skip


def load_stats(path: Path) -> list[dict[str, Any]]:
    """The columns of an `evolve stats --json` file (diversity numbers the report does not compute itself)."""
    from pydantic import ValidationError

    from evolve.stats import StatsReport

    try:
        report = StatsReport.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise InputError(f"--stats {path}: cannot be read ({exc.strerror or exc})") from exc
    except ValidationError as exc:
        problems = exc.error_count()
        raise InputError(f"--stats {path}: not the output of `evolve stats --json` ({problems} problems)") from exc
    return [{"name": c.name, **{k: getattr(c, k) for k in STATS_FIELDS}} for c in report.columns]


def _rejected_summary(run: RunSource, keep: int = 20) -> dict[str, Any]:
    """Seed lines the run could not use: how many, why, and the first few."""
    counts: Counter[str] = Counter()
    first: list[list[str]] = []
    path = run.folder.rejected
    if path.is_file():
        with open_lines(path) as fp:
            for line in fp:
                with contextlib.suppress(orjson.JSONDecodeError):
                    record = orjson.loads(line)
                    reason = str(record.get("reason", ""))
                    counts[reason_kind(reason.split(": ", 1)[-1])] += 1
                    if len(first) < keep:
                        first.append([str(record.get("id", "")), _clip(reason, 300)])
    return {"count": sum(counts.values()), "reasons": counts.most_common(10), "first": first}


def run_facts(run: RunSource) -> dict[str, Any]:
    """The run's settings and totals from run.json (never a secret: run.json holds none)."""
    manifest = run.manifest
    config = manifest.get("config") or {}
    keys = ("model", "judge_model", "base_url", "rounds", "min_score", "seed", "weights", "images", "temperature")
    return {
        "name": run.folder.root.resolve().name,
        "path": str(run.folder.root),
        "status": manifest.get("status"),
        "created": manifest.get("created"),
        "updated": manifest.get("updated"),
        "version": manifest.get("version"),
        "config": {k: config.get(k) for k in keys if k in config},
        "seed_files": [str(p) for p in run.seed_files],
        "missing_seed_files": list(run.missing_seed_files),
        "final_samples": manifest.get("final_samples"),
        "rejected_seeds": manifest.get("rejected_seeds"),
        "usage": manifest.get("usage"),
        "cost_usd": manifest.get("cost_usd"),
    }


# --------------------------------------------------------------------------- the whole report


@dataclass
class ReportResult:
    """What `build_report` wrote: where, how big, how many seeds it shows out of how many."""

    path: Path
    bytes: int
    samples: int
    seeds: int
    rounds: int
    strata: int
    missing_seed_files: list[str]


def collect(
    run: RunSource,
    samples: int,
    salt: str = "",
    jobs: int | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict.

    The seeds are read in one worker while the others count the round files; as soon as the counts are in,
    the chosen seeds' records are gathered (while the seeds may still be being read).
    """
    files = [entry for entry in round_files(run) if entry[1] in SUMMARY_KINDS]
    total = bytes_of(path for _, _, path in round_files(run)) + bytes_of(run.seed_files)
    partial = Partial({}, Strata(samples))
    with tempfile.TemporaryDirectory(prefix="evolve-report-") as scratch, Workers(total, jobs) as workers:
        index = Path(scratch) / "seeds.jsonl"
        seeds_future = workers.submit(index_seeds, SeedTask(run, index)) if run.seed_files else None
        tasks = [SummaryTask(span, samples, salt) for span in spans(files)]
        for counted, result in enumerate(workers.map_unordered(summarize, tasks), start=1):
            partial.merge(result)
            if progress:
                progress("counting the round files", counted, len(tasks))
        chosen = partial.strata.choose(samples)
        if progress:
            progress("collecting the sampled seeds' records", 0, 1)
        records = collect_records(run, chosen, workers) if chosen else {}
        if progress:
            progress("collecting the sampled seeds' records", 1, 1)
            progress("reading the seeds", 0, 1)
        seeds = seeds_future.result() if seeds_future is not None else SeedTotals()
        places = places_of(index, set(chosen))
    seeds_by_place = seeds_at(places.values())
    if progress:
        progress("reading the seeds", 1, 1)
    lineages = []
    for seed_id in chosen:
        seed = seeds_by_place.get(places.get(seed_id, ""))
        if seed is not None:
            seed.id = seed.seed_id = seed_id  # the run's id (made unique within its file) wins
        lineage = assemble(seed_id, seed, records.get(seed_id, []))
        lineage.where = places.get(seed_id)
        lineages.append(lineage)
    thumbs = _thumbnails(run, lineages, progress)
    from_json = run.manifest.get("rounds") if isinstance(run.manifest.get("rounds"), dict) else {}
    columns = [seed_column(seeds)] + [
        round_column(n, partial.rounds[n], (from_json or {}).get(str(n)) or {}) for n in sorted(partial.rounds)
    ]
    events = partial.strata.events
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "evolve_version": __version__,
        "run": run_facts(run),
        "columns": columns,
        "strata": [{"key": key, "events": events[key]} for key in sorted(events, key=lambda k: (-events[k], k))],
        "sample_target": samples,
        "samples": [lineage_card(lin, thumbs.get(lin.seed_id)) for lin in lineages],
        "rejected": _rejected_summary(run),
    }


def _thumbnails(run: RunSource, lineages: list[Lineage], progress: ProgressFn | None) -> dict[str, str]:
    """Thumbnails of the lineages' images, made in a few threads (Pillow decodes without the GIL)."""
    targets: dict[str, Path | str] = {}
    for lineage in lineages:
        lineage.image = image_of(run, lineage.image_ref, lineage.where)
        if lineage.image is not None:
            targets[lineage.seed_id] = lineage.image
    out: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for number, (seed_id, thumb) in enumerate(
            zip(targets, pool.map(thumbnail, targets.values()), strict=True), start=1
        ):
            if thumb:
                out[seed_id] = thumb
            if progress:
                progress("thumbnails", number, len(targets))
    return out


def _asset(name: str) -> str:
    return (resources.files("evolve") / "report_assets" / name).read_text(encoding="utf-8")


def render_html(data: dict[str, Any]) -> str:
    """The self-contained page: the template with its CSS, JS and the data inlined (no network)."""
    payload = orjson.dumps(data).decode("utf-8").replace("<", "\\u003c")
    page = _asset("report.html")
    title = html.escape(f"evolve report · {data['run']['name']}")
    for marker, value in (
        ("__TITLE__", title),
        ("/*__CSS__*/", _asset("report.css")),
        ("/*__JS__*/", _asset("report.js")),
        ("__DATA__", payload),
    ):
        before, found, after = page.partition(marker)
        if not found:
            raise RuntimeError(f"report template lacks {marker}")
        page = before + value + after
    return page


def build_report(
    run_path: Path,
    out: Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    *,
    salt: str = "",
    stats: Path | None = None,
    jobs: int | None = None,
    progress: ProgressFn | None = None,
) -> ReportResult:
    """Write the HTML report of a run folder to `out` (default: the run folder's report.html)."""
    if samples < 1:
        raise UsageError("--samples: expected at least 1")
    run = open_run(run_path)
    out = out or run.folder.report
    stats_columns = load_stats(stats) if stats is not None else None
    data = collect(run, samples, salt, jobs, progress)
    data["stats"] = stats_columns
    page = render_html(data)
    write_atomic(out, page)
    return ReportResult(
        path=out,
        bytes=len(page.encode("utf-8")),
        samples=len(data["samples"]),
        seeds=data["columns"][0]["samples"],
        rounds=sum(1 for c in data["columns"] if c["kind"] == "round" and c["round"] > 0),
        strata=len(data["strata"]),
        missing_seed_files=list(run.missing_seed_files),
    )


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[ProgressFn | None]:
    """A rich progress bar on stderr (one line per phase) fed by the `progress` callback; None when disabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    tasks: dict[str, TaskID] = {}
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=max(total, 1))
        bar.update(tasks[phase], completed=done, total=max(total, 1))

    with bar:
        yield update
