"""The six benchmark rows. Each returns table rows plus the raw measurements behind them."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import setup
from bench.common import DEMO_SEEDS, LOGS, PY, REPO, SCRATCH, evolve_cmd, run
from bench.measure import Result, Spec, measure
from bench.netns import available, measure_in_netns
from bench.workload import distinct_seed_file, prompts_file, seed_file

SETTINGS: tuple[tuple[float, int], ...] = ((2.0, 256), (0.2, 64))
"""(latency s, concurrency) of rows 2 and 4."""
RAWLOOP = str(REPO / "bench" / "rawloop.py")
LEANLOOP = str(REPO / "bench" / "leanloop.py")
PEER_DIR = REPO / "bench" / "peers"
PEER_ENV = {
    "TELEMETRY_ENABLED": "false",
    "PYTHONPATH": str(PEER_DIR / "shim"),  # tiktoken stand-in: len(text) // 4 tokens
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "DO_NOT_TRACK": "1",
    "NO_COLOR": "1",
}


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; ``quick()`` for the smoke run."""

    samples: int = 2000  # rows 2 and 4: evolve + judge = 2 requests per sample
    raw_l0_requests: int = 20_000
    ceiling_samples: int = 5000
    validate_lines: int = 1_000_000
    validate_small: int = 10_000
    mem_small: int = 10_000
    mem_large: int = 100_000
    stats_demo: bool = True
    stats_quick_questions: int = 0  # generated questions with no repeats; row 9 has them at real length (16,000)
    dj_questions: int = 2000
    concurrency_l0: int = 64
    peer_settings: tuple[tuple[float, int], ...] = SETTINGS

    @classmethod
    def quick(cls) -> Sizes:
        """~2 minutes."""
        return cls(
            samples=512,
            raw_l0_requests=5000,
            ceiling_samples=1000,
            validate_lines=50_000,
            validate_small=5000,
            mem_small=500,
            mem_large=2000,
            stats_demo=False,
            stats_quick_questions=1000,
            dj_questions=200,
            peer_settings=((0.2, 64),),
        )


@dataclass
class Row:
    """One table line."""

    row: str
    setting: str
    measured: str
    baseline: str
    ratio: float | None
    goal: str
    met: bool | None
    note: str = ""


@dataclass
class Outcome:
    """A row's table lines and its raw data."""

    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f} req/s" if value >= 100 else f"{value:,.1f} req/s"


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _fail(row: str, setting: str, why: str) -> Row:
    return Row(row, setting, "error", "—", None, "—", False, why[-160:])


def _check(result: Result, expected: int | None) -> str | None:
    """Why a throughput result is unusable, or None."""
    if result.timed_out:
        return f"timed out after {result.wall:.0f} s"
    if result.rc != 0:
        tail = (result.stderr_tail.strip().splitlines() or ["?"])[-1]
        return f"exit {result.rc}: {tail}"
    if expected is not None and result.requests != expected:
        return f"server saw {result.requests} requests, expected {expected}"
    if not result.window:
        return "no request reached the server"
    return None


def _timeout(requests: int, latency: float, concurrency: int, floor_rate: float = 40.0) -> float:
    """Generous bound: 4× the ideal time plus start-up, or ``floor_rate`` req/s, whichever is longer."""
    ideal = requests * latency / concurrency
    return max(4 * ideal, requests / floor_rate) + 120


# row 1 -----------------------------------------------------------------------------------------------------
def _small_prompts() -> Path:
    path = SCRATCH / "data" / "prompts-short.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": f"Say hello, number {i}."}) + "\n" for i in range(100)))
    return path


def raw_spec(tag: str, prompts: Path, requests: int, latency: float, concurrency: int, kinds: Any) -> Spec:
    """The raw aiohttp loop as a measured client."""
    cmd = [
        PY,
        RAWLOOP,
        "--base-url",
        "{base_url}",
        "--prompts",
        str(prompts),
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
        "--max-seconds",
        str(_timeout(requests, latency, concurrency)),
    ]
    return Spec(tag=tag, cmd=cmd, latency=latency, timeout=_timeout(requests, latency, concurrency) + 30, kinds=kinds)


def _mean_line_kb(path: Path) -> float:
    """Mean size of a JSONL file's lines in KB (the raw loop's request bodies)."""
    with open(path, "rb") as f:
        sizes = [len(line) for line in f if line.strip()]
    return sum(sizes) / max(len(sizes), 1) / 1000


def row1(sizes: Sizes) -> Outcome:
    """The server's ceiling (raw loop at L=0) and the raw loop at the two settings."""
    out = Outcome()
    c0 = sizes.concurrency_l0
    real = prompts_file(400)
    for label, prompts, kinds in (
        ("short prompts", _small_prompts(), None),
        (f"evolve/judge prompts ~{_mean_line_kb(real):.0f} KB", real, ["evolve", "judge"]),
    ):
        tag = "raw-l0-short" if kinds is None else "raw-l0"
        r = measure(raw_spec(tag, prompts, sizes.raw_l0_requests, 0.0, c0, kinds))
        out.data[tag] = r.as_dict()
        setting = f"L=0, C={c0}, {label}"
        why = _check(r, sizes.raw_l0_requests)
        if why:
            out.rows.append(_fail("1 server ceiling (raw aiohttp loop)", setting, why))
            continue
        server_ms = r.as_dict()["server_cpu_ms"]
        note = f"CPU per request: raw loop {r.cpu_ms:.2f} ms, server {server_ms:.2f} ms"
        out.rows.append(
            Row(
                "1 server ceiling (raw aiohttp loop)",
                setting,
                _fmt_rate(r.rate_window),
                "4,000 req/s",
                _ratio(r.rate_window, 4000),
                "≥ 4,000 req/s",
                r.rate_window >= 4000,
                note,
            )
        )
    for latency, conc in SETTINGS:
        tag = f"raw-L{latency}-C{conc}"
        requests = 2 * sizes.samples
        r = measure(raw_spec(tag, prompts_file(400), requests, latency, conc, ["evolve", "judge"]))
        out.data[tag] = r.as_dict()
        setting = f"L={latency:g} s, C={conc}"
        why = _check(r, requests)
        if why:
            out.rows.append(_fail("1 raw aiohttp loop ÷ ideal", setting, why))
            continue
        ideal = conc / latency
        out.rows.append(
            Row(
                "1 raw aiohttp loop ÷ ideal",
                setting,
                _fmt_rate(r.rate_window),
                f"ideal {_fmt_rate(ideal)}",
                _ratio(r.rate_window, ideal),
                "reference",
                None,
                f"{requests} requests",
            )
        )
    return out


# rows 2 and 3 ------------------------------------------------------------------------------------------------
SAME_WORK = ("--items-per-call", "0", "--max-tokens", "1000000", "--checks", "none", "--dedup-threshold", "0")
"""The flags that keep `evolve run` doing the work earlier benches and the peers measured."""


def evolve_spec(
    tag: str, seeds: Path, latency: float, concurrency: int, requests: int, extra: tuple[str, ...] = ()
) -> Spec:
    """``evolve run`` (one round, no images, no cache) as a measured client, in a fresh run folder.

    The same work the peers and earlier benches measured: one evolution and one judge call per sample
    (``--items-per-call 0`` and a token limit no answer reaches: no chunks, no re-asks) and no call-free
    quality stage (``--checks none --dedup-threshold 0``); row 3 measures what those stages cost apart."""
    out_dir = SCRATCH / "runs" / tag
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        *evolve_cmd(),
        "run",
        str(seeds),
        "--out",
        str(out_dir),
        "--rounds",
        "1",
        "--images",
        "skip",
        "--base-url",
        "{base_url}",
        "--api-key",
        "x",
        "--model",
        "m",
        "--concurrency",
        str(concurrency),
        "--quiet",
        "--no-cache",
        *SAME_WORK,
        *extra,
    ]
    return Spec(tag=tag, cmd=cmd, latency=latency, timeout=_timeout(requests, latency, concurrency, 20.0))


def measure_evolve(spec: Spec) -> Result:
    """Measure, then delete the run folder (a 100k-sample run writes gigabytes)."""
    try:
        return measure(spec)
    finally:
        shutil.rmtree(SCRATCH / "runs" / spec.tag, ignore_errors=True)


def row2(sizes: Sizes) -> Outcome:
    """evolve run at (L=2, C=256) and (L=0.2, C=64): achieved ÷ ideal."""
    out = Outcome()
    seeds = seed_file(sizes.samples)
    requests = 2 * sizes.samples
    goals = {2.0: 0.95, 0.2: 0.9}
    for latency, conc in SETTINGS:
        tag = f"evolve-L{latency}-C{conc}"
        r = measure_evolve(evolve_spec(tag, seeds, latency, conc, requests))
        out.data[tag] = r.as_dict()
        setting = f"L={latency:g} s, C={conc}, {sizes.samples} samples"
        why = _check(r, requests)
        if why:
            out.rows.append(_fail("2 evolve run ÷ ideal", setting, why))
            continue
        ideal = conc / latency
        ratio = r.rate_window / ideal
        goal = goals[latency]
        note = f"incl. start-up: {r.rate_wall / ideal:.2f} of ideal ({r.wall:.1f} s wall); CPU {r.cpu_ms:.2f} ms/req"
        out.rows.append(
            Row(
                "2 evolve run ÷ ideal",
                setting,
                _fmt_rate(r.rate_window),
                f"ideal {_fmt_rate(ideal)}",
                ratio,
                f"≥ {goal}",
                ratio >= goal,
                note,
            )
        )
    return out


def row3(sizes: Sizes) -> Outcome:
    """Ceiling at L=0: evolve's req/s ÷ the raw loop's (measured alternately with it), and CPU ms per request."""
    out = Outcome()
    c0 = sizes.concurrency_l0
    seeds = seed_file(sizes.ceiling_samples)
    requests = 2 * sizes.ceiling_samples
    setting = f"L=0, C={c0}, {sizes.ceiling_samples} samples"
    runs = alternate_runs(out, seeds, c0, requests)
    why = next((w for run in [*runs.raw, *runs.one] if (w := _check(run, requests))), None)
    if why:
        out.rows.append(_fail("3 ceiling: evolve ÷ raw loop", setting, why))
        return out
    r = max(runs.one, key=lambda run: run.rate_window)
    base = max(runs.raw, key=lambda run: run.rate_window)
    out.data[f"evolve-L0-C{c0}"] = r.as_dict()
    base_rate = base.rate_window
    ratio = r.rate_window / base_rate
    server_ms = 1000 * base.server_cpu / base.requests
    note = (
        f"best of 2 each, alternated with the raw loop (raw, evolve, --workers 2, twice); raw loop's best: "
        f"client {base.cpu_ms:.2f} ms/req, server {server_ms:.2f} ms/req"
        + ("; the raw loop is server-bound here" if base_rate < 4000 else "")
    )
    out.rows.append(
        Row(
            "3 ceiling: evolve ÷ raw loop",
            setting,
            _fmt_rate(r.rate_window),
            f"raw {_fmt_rate(base_rate)}",
            ratio,
            "≥ 0.5",
            ratio >= 0.5,
            note,
        )
    )
    raw_ms = base.cpu_ms
    cpu_ratio = raw_ms / r.cpu_ms if r.cpu_ms else None
    # A client is ≥ 0.5 of the raw loop's ceiling only if its CPU per request is ≤ 2× the raw loop's.
    out.rows.append(
        Row(
            "3 CPU per request (client process)",
            setting,
            f"{r.cpu_ms:.2f} ms/req",
            f"raw {raw_ms:.2f} ms/req",
            cpu_ratio,
            "≥ 0.5 (raw ÷ evolve)",
            None if cpu_ratio is None else cpu_ratio >= 0.5,
            f"evolve process user+sys {r.cpu:.1f} s for {r.requests} req, start-up included",
        )
    )
    out.rows.append(_quality_stages_cost(out, seeds, c0, requests, setting, r))
    out.rows.append(_ceiling_with_workers(out, runs.two, requests, setting, base_rate))
    out.rows.append(_lean_bound(out, seeds, c0, requests, setting, base_rate, r))
    return out


@dataclass
class CeilingRuns:
    """Row 3's runs at L=0, alternated (a shared machine drifts within minutes): the raw loop, ``evolve run``
    and ``evolve run --workers 2``, twice. Row 7 reads the evolve runs from ``out.data``."""

    raw: list[Result] = field(default_factory=list)
    one: list[Result] = field(default_factory=list)
    two: list[Result] = field(default_factory=list)


def alternate_runs(out: Outcome, seeds: Path, concurrency: int, requests: int) -> CeilingRuns:
    """Raw loop, one evolve process, ``--workers 2``; twice. Each run's line is kept in ``out.data``."""
    runs = CeilingRuns()
    for attempt in range(2):
        raw = measure(raw_spec("raw-l0-row3", prompts_file(400), requests, 0.0, concurrency, ["evolve", "judge"]))
        out.data[f"raw-l0-row3-try{attempt + 1}"] = raw.as_dict()
        runs.raw.append(raw)
        for workers, kept in ((1, runs.one), (2, runs.two)):
            tag = f"evolve-L0-C{concurrency}-w{workers}"
            extra = ("--workers", str(workers)) if workers > 1 else ()
            r = measure_evolve(evolve_spec(tag, seeds, 0.0, concurrency, requests, extra))
            out.data[f"{tag}-try{attempt + 1}"] = r.as_dict()
            kept.append(r)
    return runs


def _lean_bound(
    out: Outcome, seeds: Path, concurrency: int, requests: int, setting: str, base_rate: float, evolve: Result
) -> Row:
    """The reference client of bench/leanloop.py on the same seeds: how close to the raw loop a Python client
    doing the round's work (no models, templates or stages) gets."""
    label = "3 reference: minimal round client ÷ raw loop"
    folder = SCRATCH / "runs" / "lean"
    cmd = [PY, LEANLOOP, "--base-url", "{base_url}", "--seeds", str(seeds), "--prompts", str(prompts_file(400)),
           "--out", str(folder), "--concurrency", str(concurrency)]  # fmt: skip
    spec = Spec(tag=f"lean-L0-C{concurrency}", cmd=cmd, latency=0.0, timeout=_timeout(requests, 0.0, concurrency, 20.0))
    try:
        r = measure(spec)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out.data[f"lean-L0-C{concurrency}"] = r.as_dict()
    why = _check(r, requests)
    if why:
        return _fail(label, setting, why)
    note = (
        f"bench/leanloop.py: plain dicts, hand type checks, no retries, accounting, cache or resume; client CPU "
        f"{r.cpu_ms:.2f} ms/req vs evolve's {evolve.cpu_ms:.2f}; evolve ÷ it {evolve.rate_window / r.rate_window:.2f}"
    )
    return Row(label, setting, _fmt_rate(r.rate_window), f"raw {_fmt_rate(base_rate)}",
               r.rate_window / base_rate, "reference", None, note)  # fmt: skip


def _quality_stages_cost(
    out: Outcome, seeds: Path, concurrency: int, requests: int, setting: str, plain: Result
) -> Row:
    """The same run with the default call-free stages (rule checks, dedup) on: their CPU per request."""
    label = "3 CPU per request with rule checks + dedup (the default round)"
    stages = ("--checks", "all", "--dedup-threshold", "0.8")  # the last value of a flag wins
    r = measure_evolve(evolve_spec(f"evolve-L0-C{concurrency}-stages", seeds, 0.0, concurrency, requests, stages))
    out.data["evolve-L0-stages"] = r.as_dict()
    why = _check(r, requests)
    if why:
        return _fail(label, setting, why)
    extra = r.cpu_ms - plain.cpu_ms
    note = (
        f"{_fmt_rate(r.rate_window)}; the two stages add {extra:.2f} ms per request "
        f"({2 * extra:.2f} ms per sample: the demo items are long)"
    )
    return Row(label, setting, f"{r.cpu_ms:.2f} ms/req", f"without them {plain.cpu_ms:.2f} ms/req",
               plain.cpu_ms / r.cpu_ms if r.cpu_ms else None, "reference", None, note)  # fmt: skip


def _ceiling_with_workers(out: Outcome, runs: list[Result], requests: int, setting: str, base_rate: float) -> Row:
    """The same ceiling with `--workers 2` (one process per core): the better of its two runs."""
    label = "3 ceiling: evolve --workers 2 ÷ raw loop"
    good = [r for r in runs if _check(r, requests) is None]
    if not good:
        return _fail(label, setting, _check(runs[-1], requests) or "no run")
    best = max(good, key=lambda r: r.rate_window)
    out.data["evolve-L0-w2"] = best.as_dict()
    ratio = best.rate_window / base_rate
    note = (
        f"best of 2; client CPU {best.cpu_ms:.2f} ms/req (both workers and the parent, start-up and merge "
        f"included), server {1000 * best.server_cpu / best.requests:.2f} ms/req: together they fill both cores"
    )
    return Row(label, setting, _fmt_rate(best.rate_window), f"raw {_fmt_rate(base_rate)}", ratio, "≥ 0.5",
               ratio >= 0.5, note)  # fmt: skip


# row 4 -----------------------------------------------------------------------------------------------------
def peer_spec(peer: str, latency: float, concurrency: int, requests: int) -> Spec:
    """A peer script in its own venv, inside the namespace."""
    workdir = SCRATCH / "work" / f"{peer}-L{latency}-C{concurrency}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cmd = [
        str(setup.python_of(peer)),
        str(PEER_DIR / f"{peer}_peer.py"),
        "--base-url",
        "{base_url}",
        "--prompts",
        str(prompts_file(400)),
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
        "--workdir",
        str(workdir),
    ]
    env = dict(PEER_ENV, HOME=str(workdir), XDG_CACHE_HOME=str(workdir / "cache"))
    return Spec(
        tag=f"{peer}-L{latency}-C{concurrency}",
        cmd=cmd,
        latency=latency,
        env=env,
        timeout=_timeout(requests, latency, concurrency, 10.0),
    )


def row4(sizes: Sizes, evolve: dict[str, Any]) -> Outcome:
    """curator and distilabel at both settings, in a loopback-only namespace; evolve ÷ each."""
    out = Outcome()
    requests = 2 * sizes.samples
    reason = available()
    for peer in ("curator", "distilabel"):
        error = reason or setup.ensure(peer)
        for latency, conc in sizes.peer_settings:
            setting = f"L={latency:g} s, C={conc}, {requests} req"
            label = f"4 evolve ÷ {peer}"
            if error:
                out.rows.append(_fail(label, setting, error))
                continue
            spec = peer_spec(peer, latency, conc, requests)
            try:
                r = measure_in_netns(spec)
            except RuntimeError as exc:
                out.rows.append(_fail(label, setting, str(exc)))
                continue
            finally:
                shutil.rmtree(SCRATCH / "work" / spec.tag, ignore_errors=True)
            out.data[spec.tag] = r.as_dict()
            why = _check(r, requests)
            ev = evolve.get(f"evolve-L{latency}-C{conc}")
            if why or ev is None:
                out.rows.append(_fail(label, setting, why or "evolve row 2 missing"))
                continue
            ratio = float(ev["rate_window"]) / r.rate_window
            ideal = conc / latency
            note = f"{peer} at {r.rate_window / ideal:.2f} of ideal"
            if peer == "curator":
                note += "; tiktoken → len/4 stand-in"
            out.rows.append(
                Row(
                    label,
                    setting,
                    f"evolve {_fmt_rate(float(ev['rate_window']))}",
                    f"{peer} {_fmt_rate(r.rate_window)}",
                    ratio,
                    "> 1",
                    ratio > 1,
                    note,
                )
            )
    return out


# row 5 -----------------------------------------------------------------------------------------------------
def row5(sizes: Sizes) -> Outcome:
    """Peak RSS: evolve validate on a large file; evolve run on a small and a 10× larger file at L=0."""
    out = Outcome()
    rss: dict[str, float] = {}
    for lines in (sizes.validate_small, sizes.validate_lines):
        path = seed_file(lines)
        p = run([*evolve_cmd(), "validate", "--no-images", str(path)], timeout=900, log=LOGS / f"validate-{lines}.log")
        out.data[f"validate-{lines}"] = {
            "rc": p.rc,
            "wall": p.wall,
            "cpu": p.cpu,
            "maxrss_mb": p.maxrss_mb,
            "timed_out": p.timed_out,
            "stderr_tail": p.stderr[-1000:],
        }
        if p.rc == 0 and not p.timed_out:
            rss[f"validate-{lines}"] = p.maxrss_mb
    small, large = rss.get(f"validate-{sizes.validate_small}"), rss.get(f"validate-{sizes.validate_lines}")
    setting = f"validate --no-images, {sizes.validate_lines:,} vs {sizes.validate_small:,} lines"
    if small and large:
        wall = out.data[f"validate-{sizes.validate_lines}"]["wall"]
        out.rows.append(
            Row(
                "5 peak RSS: evolve validate",
                setting,
                f"{large:.0f} MB",
                f"{small:.0f} MB",
                large / small,
                "≤ 1.5 (flat)",
                large / small <= 1.5,
                f"{sizes.validate_lines / wall:,.0f} lines/s",
            )
        )
    else:
        out.rows.append(_fail("5 peak RSS: evolve validate", setting, "validate failed (see .bench/logs)"))
    for lines in (sizes.mem_small, sizes.mem_large):
        tag = f"evolve-mem-{lines}"
        r = measure_evolve(evolve_spec(tag, seed_file(lines), 0.0, sizes.concurrency_l0, 2 * lines))
        out.data[tag] = r.as_dict()
        why = _check(r, 2 * lines)
        if why is None:
            rss[tag] = r.maxrss_mb
        else:
            out.data[tag]["error"] = why
    small, large = rss.get(f"evolve-mem-{sizes.mem_small}"), rss.get(f"evolve-mem-{sizes.mem_large}")
    setting = f"run --rounds 1 --images skip, L=0, {sizes.mem_large:,} vs {sizes.mem_small:,} lines"
    if small and large:
        big, little = out.data[f"evolve-mem-{sizes.mem_large}"], out.data[f"evolve-mem-{sizes.mem_small}"]
        # Marginal CPU per request: the difference of the two runs cancels start-up and fixed costs.
        marginal = 1000 * (big["cpu"] - little["cpu"]) / max(1, big["requests"] - little["requests"])
        out.data["evolve-marginal-cpu-ms"] = marginal
        out.rows.append(
            Row(
                "5 peak RSS: evolve run",
                setting,
                f"{large:.0f} MB",
                f"{small:.0f} MB",
                large / small,
                "≤ 1.5 (flat)",
                large / small <= 1.5,
                f"{big['rate_window']:,.0f} req/s at {sizes.mem_large:,}; marginal CPU {marginal:.2f} ms/req",
            )
        )
    else:
        why = next((d.get("error") for k, d in out.data.items() if k.startswith("evolve-mem") and d.get("error")), "")
        out.rows.append(_fail("5 peak RSS: evolve run", setting, why or "run failed"))
    return out


# row 6 -----------------------------------------------------------------------------------------------------
def _questions_in(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(len(json.loads(line).get("conversations_v0") or []) for line in f if line.strip())


def _stats_rate(tag: str, seeds: Path, n: int, out: Outcome) -> tuple[float | None, float | None]:
    """(evolve stats q/s, raw spaCy q/s), both whole-process (start-up and model load included)."""
    cmd = [*evolve_cmd(), "stats", str(seeds), "--json", "-", "--quiet"]
    ev = run(cmd, timeout=900, log=LOGS / f"stats-{tag}.log")
    raw = run([PY, str(PEER_DIR / "spacy_raw.py"), str(seeds)], timeout=900, log=LOGS / f"spacy-{tag}.log")
    raw_info: dict[str, Any] = {}
    if raw.rc == 0:
        raw_info = json.loads(raw.stdout.strip().splitlines()[-1])
    parse_seconds: float | None = None
    distinct: int | None = None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        answer = json.loads(ev.stdout)
        parse_seconds = float(answer["parse_seconds"])
        distinct = int(answer["distinct_questions"])
    out.data[f"stats-{tag}"] = {
        "questions": n,
        "rc": ev.rc,
        "wall": ev.wall,
        "cpu": ev.cpu,
        "maxrss_mb": ev.maxrss_mb,
        "parse_seconds": parse_seconds,
        "distinct_questions": distinct,
        "stderr_tail": ev.stderr[-1500:],
        "timed_out": ev.timed_out,
    }
    out.data[f"spacy-{tag}"] = {"rc": raw.rc, "wall": raw.wall, "cpu": raw.cpu, **raw_info}
    ev_rate = n / ev.wall if ev.rc == 0 and not ev.timed_out else None
    raw_rate = n / raw.wall if raw.rc == 0 and not raw.timed_out else None
    return ev_rate, raw_rate


def row6(sizes: Sizes) -> Outcome:
    """evolve stats questions/s ÷ raw spaCy nlp.pipe, and ÷ Data-Juicer DiversityAnalysis."""
    out = Outcome()
    cases: list[tuple[str, Path]] = []
    if sizes.stats_demo:
        cases.append(("demo", DEMO_SEEDS))
    if sizes.stats_quick_questions:
        target = sizes.stats_quick_questions
        cases.append((f"{target // 1000}k", distinct_seed_file(target)[0]))
    first_parse: float | None = None
    for tag, seeds in cases:
        n = _questions_in(seeds)
        ev_rate, raw_rate = _stats_rate(tag, seeds, n, out)
        setting = f"{n:,} questions ({'shared demo seeds' if tag == 'demo' else 'generated, no repeats'})"
        if ev_rate is None or raw_rate is None:
            why = out.data[f"stats-{tag}"]["stderr_tail"].strip().splitlines()[-1:] or ["raw spaCy failed"]
            out.rows.append(_fail("6 stats: evolve ÷ raw spaCy", setting, why[0]))
            continue
        pipe = out.data[f"spacy-{tag}"]
        parse_s = out.data[f"stats-{tag}"]["parse_seconds"]
        parse_rate = n / parse_s if parse_s else None
        first_parse = first_parse or parse_rate
        note = f"whole process, load included; parsing alone: nlp.pipe {n / pipe['pipe_s']:,.0f} q/s"
        if parse_rate:
            note += f", evolve {parse_rate:,.0f} q/s ({parse_rate / (n / pipe['pipe_s']):.2f})"
        distinct = out.data[f"stats-{tag}"]["distinct_questions"]
        if distinct:
            note += f"; evolve parses {distinct:,} distinct texts"
        out.rows.append(
            Row(
                "6 stats: evolve ÷ raw spaCy",
                setting,
                f"{ev_rate:,.0f} q/s",
                f"spaCy {raw_rate:,.0f} q/s",
                ev_rate / raw_rate,
                "≥ 0.8",
                ev_rate / raw_rate >= 0.8,
                note,
            )
        )
    # Data-Juicer: a subset of the first case's questions (it parses one question at a time: rate is flat).
    tag, seeds = cases[0]
    setting = f"first {sizes.dj_questions:,} questions of {tag}"
    error = setup.ensure("datajuicer")
    if error or first_parse is None:
        why = error or "evolve stats failed or gave no parse_seconds"
        out.rows.append(_fail("6 stats: evolve ÷ Data-Juicer", setting, why))
        return out
    workdir = SCRATCH / "work" / "datajuicer"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    dj = run(
        [
            str(setup.python_of("datajuicer")),
            str(PEER_DIR / "datajuicer_peer.py"),
            str(seeds),
            "--limit",
            str(sizes.dj_questions),
            "--workdir",
            str(workdir),
        ],
        timeout=900,
        log=LOGS / "datajuicer.log",
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    if dj.rc != 0:
        out.rows.append(_fail("6 stats: evolve ÷ Data-Juicer", setting, dj.stderr.strip()[-200:]))
        return out
    info = json.loads(dj.stdout.strip().splitlines()[-1])
    out.data["datajuicer"] = {"rc": dj.rc, "wall": dj.wall, **info}
    dj_rate = info["questions"] / info["compute_s"]
    out.rows.append(
        Row(
            "6 stats: evolve ÷ Data-Juicer",
            setting,
            f"evolve {first_parse:,.0f} q/s",
            f"DJ {dj_rate:,.0f} q/s",
            first_parse / dj_rate,
            "≥ 5",
            first_parse / dj_rate >= 5,
            "parsing only on both sides (evolve's parse_seconds; DJ compute(), full spaCy pipeline)",
        )
    )
    return out


def timed(fn: Any, *args: Any) -> tuple[Outcome, float]:
    """Run one row, returning it and its duration."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start
