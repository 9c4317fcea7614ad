"""Row 9 (issue "Performance III"): `evolve stats` at scale, on evolved questions of real length.

The questions follow the length distribution of real gpt-4o-mini rewrites (``bench.workload.rewrite_seed_file``:
words per question and per first sentence, from ../shared's responses or the shipped summary). Lines:

- evolve stats ÷ raw spaCy ``nlp.pipe`` (bench/peers/spacy_raw.py) on the same file, whole processes;
- ``--workers 2`` ÷ ``--workers 1``, whole processes, alternated and best of two each (a shared machine);
- ``--sample`` on a large column: the wall time (goal: under 5 minutes), and the peak RSS against the same
  sample on a column a tenth the size (flat memory). Both with ``--workers 2``; the peak RSS is evolve's own
  (``peak_rss_mb`` in its JSON: the driver, which holds the sample and the counters) and, in the note, the
  largest process of its tree (``/usr/bin/time``: a worker, which holds only a parser).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import LOGS, PY, REPO, run
from bench.rows import Outcome, Row, Sizes, _fail
from bench.workload import rewrite_seed_file

RAW_SPACY = REPO / "bench" / "peers" / "spacy_raw.py"
TIME_LIMIT = 300.0
TIMEOUT = 1800.0


@dataclass(frozen=True)
class StatsSizes:
    """Row 9's workload sizes."""

    rate_questions: int = 16_000
    sample: int = 100_000
    large: int = 2_000_000
    small: int = 200_000

    @classmethod
    def for_run(cls, sizes: Sizes) -> StatsSizes:
        """The quick sizes when the bench runs with BENCH_QUICK."""
        if sizes == Sizes.quick():
            return cls(rate_questions=2000, sample=10_000, large=200_000, small=20_000)
        return cls()


@dataclass
class StatsRun:
    """One `evolve stats` (or raw spaCy) process: wall, CPU, peak RSS and its JSON answer."""

    rc: int
    wall: float
    cpu: float
    tree_rss_mb: float
    report: dict[str, Any]
    error: str = ""


def _stats(tag: str, path: Path, *extra: str) -> StatsRun:
    cmd = [str(Path(PY).parent / "evolve"), "stats", str(path), "--json", "-", "--quiet", *extra]
    p = run(cmd, timeout=TIMEOUT, log=LOGS / f"stats9-{tag}.log", env={"TOKENIZERS_PARALLELISM": "false"})
    report: dict[str, Any] = {}
    error = ""
    if p.rc != 0 or p.timed_out:
        error = "timed out" if p.timed_out else (p.stderr.strip().splitlines() or [f"exit {p.rc}"])[-1]
    else:
        try:
            report = json.loads(p.stdout)
        except ValueError as exc:
            error = f"unreadable JSON: {exc}"
    return StatsRun(p.rc, p.wall, p.cpu, p.maxrss_mb, report, error)


def _raw_spacy(path: Path) -> StatsRun:
    p = run([PY, str(RAW_SPACY), str(path)], timeout=TIMEOUT, log=LOGS / "stats9-raw.log")
    info: dict[str, Any] = {}
    error = "" if p.rc == 0 and not p.timed_out else (p.stderr.strip().splitlines() or ["raw spaCy failed"])[-1]
    if not error:
        info = json.loads(p.stdout.strip().splitlines()[-1])
    return StatsRun(p.rc, p.wall, p.cpu, p.maxrss_mb, info, error)


def _summary(r: StatsRun) -> dict[str, Any]:
    keep = ("parse_seconds", "wall_seconds", "peak_rss_mb", "parsed_texts", "distinct_questions", "workers")
    return {"rc": r.rc, "wall": r.wall, "cpu": r.cpu, "tree_rss_mb": r.tree_rss_mb, "error": r.error,
            **{k: r.report[k] for k in keep if k in r.report}}  # fmt: skip


def row9(sizes: Sizes) -> Outcome:
    """evolve ÷ raw spaCy, --workers 2 ÷ 1, and --sample at scale (time and flat memory)."""
    out = Outcome()
    s = StatsSizes.for_run(sizes)
    path, source = rewrite_seed_file(s.rate_questions)
    n = s.rate_questions
    out.data["stats9-source"] = source
    setting = f"{n:,} real-length rewrite questions ({source})"
    raw = _raw_spacy(path)
    out.data["stats9-raw"] = _summary(raw)
    one: list[StatsRun] = []
    two: list[StatsRun] = []
    for attempt in range(2):
        for workers, runs in ((1, one), (2, two)):
            r = _stats(f"w{workers}-{attempt}", path, "--workers", str(workers))
            out.data[f"stats9-w{workers}-try{attempt + 1}"] = _summary(r)
            runs.append(r)
    good1 = [r for r in one if not r.error]
    good2 = [r for r in two if not r.error]
    label = "9 stats: evolve ÷ raw spaCy"
    if raw.error or not good1:
        out.rows.append(_fail(label, setting, raw.error or one[-1].error))
    else:
        best1 = min(good1, key=lambda r: r.wall)
        ratio = raw.wall / best1.wall
        pipe_rate = n / raw.report["pipe_s"]
        parse = best1.report.get("parse_seconds") or 0.0
        parsed = best1.report.get("parsed_texts", 0)
        note = (
            f"whole processes, load included; parsing alone: nlp.pipe {pipe_rate:,.0f} q/s, evolve "
            f"{n / parse if parse else 0:,.0f} q/s (it parses first sentences only: {parsed:,} distinct); best of 2"
        )
        out.rows.append(Row(label, setting, f"{n / best1.wall:,.0f} q/s", f"spaCy {n / raw.wall:,.0f} q/s", ratio,
                            "≥ 0.8", ratio >= 0.8, note))  # fmt: skip
    label = "9 stats: --workers 2 ÷ --workers 1"
    if not good1 or not good2:
        out.rows.append(_fail(label, setting, (two[-1].error or one[-1].error) or "no run"))
    else:
        best1, best2 = min(good1, key=lambda r: r.wall), min(good2, key=lambda r: r.wall)
        ratio = best1.wall / best2.wall
        # The same work costs w1.cpu and w2.cpu CPU seconds: with both cores free, w2 can be at most this faster.
        free_cores = 2 * best1.cpu / best2.cpu if best2.cpu else 0.0
        out.data["stats9-workers-cpu-bound-ratio"] = free_cores
        note = (
            f"whole processes (2 worker processes each load spaCy; the driver reads and counts), best of 2 each; "
            f"wall {best1.wall:.1f} s → {best2.wall:.1f} s; CPU for the same work {best1.cpu:.1f} s → "
            f"{best2.cpu:.1f} s, so on 2 free cores the ratio is at most {free_cores:.2f}; "
            f"load average {os.getloadavg()[0]:.1f} after"
        )
        out.rows.append(Row(label, setting, f"w2 {n / best2.wall:,.0f} q/s", f"w1 {n / best1.wall:,.0f} q/s", ratio,
                            "≥ 1.6 (2 cores)", ratio >= 1.6, note))  # fmt: skip
    _sample_rows(out, s)
    return out


def _sample_rows(out: Outcome, s: StatsSizes) -> None:
    """--sample S --workers 2 on the large and the small column: wall time and peak RSS."""
    runs: dict[int, StatsRun] = {}
    for questions in (s.small, s.large):
        path, _ = rewrite_seed_file(questions)
        r = _stats(f"sample-{questions}", path, "--sample", str(s.sample), "--workers", "2")
        out.data[f"stats9-sample-{questions}"] = _summary(r)
        runs[questions] = r
    large, small = runs[s.large], runs[s.small]
    setting = f"--sample {s.sample:,} --workers 2, a {s.large:,}-question column"
    label = "9 stats: --sample at scale (wall time)"
    if large.error:
        out.rows.append(_fail(label, setting, large.error))
    else:
        parse = large.report.get("parse_seconds", 0.0)
        note = (
            f"reads and counts all {s.large:,} questions ({s.large / large.wall:,.0f} q/s), parses the sample "
            f"({parse:.0f} s of parser time over both workers)"
        )
        out.rows.append(Row(label, setting, f"{large.wall:.0f} s", f"limit {TIME_LIMIT:.0f} s", large.wall / TIME_LIMIT,
                            "≤ 1 (under 5 min)", large.wall <= TIME_LIMIT, note))  # fmt: skip
    label = "9 stats: --sample peak RSS (flat)"
    setting = f"--sample {s.sample:,} --workers 2, {s.large:,} vs {s.small:,} questions"
    if large.error or small.error:
        out.rows.append(_fail(label, setting, large.error or small.error))
        return
    big, little = float(large.report["peak_rss_mb"]), float(small.report["peak_rss_mb"])
    note = (
        f"evolve's driver (sample, counters, 8 B/question distinct sets); largest process of the tree "
        f"{large.tree_rss_mb:.0f} vs {small.tree_rss_mb:.0f} MB"
    )
    out.rows.append(Row(label, setting, f"{big:.0f} MB", f"{little:.0f} MB", big / little, "≤ 1.5 (flat)",
                        big / little <= 1.5, note))  # fmt: skip
