"""The `evolve` command: Typer commands that gather options, call one core function and render its result.

Exit codes: 0 done, 1 failed, 2 bad usage or input, 3 finished with failures, 4 run folder locked,
130/143 stopped by SIGINT/SIGTERM (the next invocation resumes).
"""

from __future__ import annotations

import glob
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from evolve import __version__
from evolve.config import RunConfig, build_config
from evolve.errors import EvolveError, UsageError

app = typer.Typer(
    help="Evolve multimodal instruction data MMEvol-style against any OpenAI-compatible endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
_state = {"debug": False}


# ---------------------------------------------------------------------- errors and messages


def _fail(exc: BaseException) -> NoReturn:
    if isinstance(exc, EvolveError):
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        if _state["debug"]:
            traceback.print_exc()
        raise typer.Exit(exc.exit_code)
    raise exc


@contextmanager
def _errors() -> Iterator[None]:
    """Turn our errors into one line and the documented exit code; anything else is a bug."""
    try:
        yield
    except EvolveError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


class Messenger:
    """One-line messages to stderr (unless --quiet) and, with timestamps, to log files."""

    def __init__(self, quiet: bool, log_files: list[Path]) -> None:
        self.quiet = quiet
        self.log_files = log_files

    def __call__(self, text: str) -> None:
        if not self.quiet:
            err.print(text, markup=False, highlight=False)
        self.log(text)

    def log(self, text: str) -> None:
        """Append to the log files only."""
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for path in self.log_files:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fp:
                fp.write(f"{stamp} {text}\n")


# ---------------------------------------------------------------------- shared options

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML file of settings (default ./evolve.toml).")]
BaseUrlOpt = Annotated[str | None, typer.Option(help="Endpoint base URL (env OPENAI_BASE_URL).")]
ModelOpt = Annotated[str | None, typer.Option(help="Model name (default: gpt-4o-mini).")]
ApiKeyOpt = Annotated[
    str | None, typer.Option(help="API key (env OPENAI_API_KEY); never written anywhere.", show_default=False)
]
ConcurrencyOpt = Annotated[int | None, typer.Option(help="Requests in flight (default: 64).")]
TimeoutOpt = Annotated[float | None, typer.Option(help="Seconds per request (default: 120).")]
ImagesOpt = Annotated[str | None, typer.Option(help="send: images as JPEG data URLs; skip: text only (default: send).")]
ImageRootOpt = Annotated[Path | None, typer.Option(help="Folder image paths are relative to.")]
MinScoreOpt = Annotated[float | None, typer.Option(help="Keep rewrites scoring at least this (default: 0).")]
JudgeModelOpt = Annotated[str | None, typer.Option(help="Judge model (default: --model).")]
JudgeUrlOpt = Annotated[str | None, typer.Option(help="Judge endpoint (default: --base-url).")]
JudgeImagesOpt = Annotated[
    bool | None, typer.Option("--judge-images/--no-judge-images", help="Send the image to the judge.")
]
PromptsOpt = Annotated[Path | None, typer.Option(help="Folder of prompt templates overriding the defaults.")]
NoCacheOpt = Annotated[bool | None, typer.Option("--no-cache", help="Neither read nor write the cache.")]
CacheOpt = Annotated[Path | None, typer.Option(help="Response cache file (default: in the output folder).")]
QuietOpt = Annotated[bool | None, typer.Option("--quiet", "-q", help="No progress, only errors (for cron).")]


def _config(config_file: Path | None, **flags: Any) -> RunConfig:
    return build_config(flags, config_file)


@app.callback(invoke_without_command=True)
def _main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Evolve multimodal instruction data MMEvol-style against any OpenAI-compatible endpoint."""
    _state["debug"] = debug
    if version:
        out.print(f"evolve {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        out.print(ctx.get_help())
        raise typer.Exit(0)


def _seed_files(paths: list[Path]) -> list[Path]:
    """Files named, and the .jsonl/.json files inside folders named."""
    found: list[Path] = []
    for path in paths:
        if not path.exists() and any(c in str(path) for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
            if not matches:
                raise UsageError(f"{path}: no file matches this pattern")
            found.extend(matches)
        elif path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json") and p.is_file())
            if not inside:
                raise UsageError(f"{path}: no .jsonl or .json seed file in this folder")
            found.extend(inside)
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    return found


# ---------------------------------------------------------------------- validate


@app.command()
def validate(
    seeds: Annotated[list[Path], typer.Argument(help="Seed files (JSONL or JSON array) or folders.")],
    image_root: ImageRootOpt = None,
    no_images: Annotated[bool, typer.Option("--no-images", help="Do not check images.")] = False,
    fmt: Annotated[str | None, typer.Option("--format", help="Force a format: mmevol, llava or sharegpt.")] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first bad line.")] = False,
) -> None:
    """Load seed files; report counts per format, bad lines and missing or unreadable images (exit 0/2)."""
    from evolve.records import FORMATS
    from evolve.validate import validate_file

    with _errors():
        if fmt is not None and fmt not in FORMATS:
            raise UsageError(f"--format: expected one of {', '.join(FORMATS)}")
        ok = True
        for path in _seed_files(seeds):

            def problem(text: str) -> None:
                err.print(text, markup=False, highlight=False)
                if strict:
                    raise UsageError("stopped at the first bad line (--strict)")

            report = validate_file(path, image_root=image_root, check_images=not no_images, fmt=fmt, on_problem=problem)
            for line in report.image_problems[:5]:
                err.print(line, markup=False, highlight=False)
            problems = report.images_missing + report.images_bad
            if problems > 5:
                err.print(f"… and {problems - 5:,} more image problems", markup=False)
            formats = ", ".join(f"{n:,} {f}" for f, n in sorted(report.formats.items())) or "none"
            out.print(
                f"{path}: {report.loaded:,} loaded ({formats}; {report.qa_items:,} Q&A items), "
                f"{len(report.rejected):,} rejected"
            )
            if not no_images:
                out.print(
                    f"  images: {report.images_checked - report.images_missing - report.images_bad:,} ok, "
                    f"{report.images_missing:,} missing, {report.images_bad:,} unreadable, "
                    f"{report.images_remote:,} remote, {report.no_image:,} records without image"
                )
            ok = ok and report.ok
        if not ok:
            raise typer.Exit(2)


# ---------------------------------------------------------------------- run


@app.command()
def run(
    seeds: Annotated[list[Path], typer.Argument(help="Seed files (JSONL or JSON array) or folders of them.")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/<seed name>).")] = None,
    rounds: Annotated[int | None, typer.Option(help="Evolution rounds (default: 3).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the operator choice (default: 0).")] = None,
    weights: Annotated[
        str | None, typer.Option(help="Operator mix (default: perceptual=0.5,reasoning=0.25,interaction=0.25).")
    ] = None,
    base_url: BaseUrlOpt = None,
    model: ModelOpt = None,
    api_key: ApiKeyOpt = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default: 1.0).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Answer token limit (default: 4096).")] = None,
    concurrency: ConcurrencyOpt = None,
    timeout: TimeoutOpt = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute limit.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute limit.")] = None,
    max_retries: Annotated[int | None, typer.Option(help="Retries per request (default: 6).")] = None,
    transport: Annotated[str | None, typer.Option(help="aiohttp (fast) or sdk (openai SDK).")] = None,
    judge_model: JudgeModelOpt = None,
    judge_base_url: JudgeUrlOpt = None,
    judge_images: JudgeImagesOpt = None,
    min_score: MinScoreOpt = None,
    prompts: PromptsOpt = None,
    images: ImagesOpt = None,
    image_root: ImageRootOpt = None,
    image_size: Annotated[int | None, typer.Option(help="Longest image side sent, px (default: 512).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Force the seed format.")] = None,
    strict: Annotated[bool | None, typer.Option("--strict", help="Stop at the first bad seed line.")] = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = None,
    max_failures: Annotated[int | None, typer.Option(help="Stop (exit 3) after this many failed samples.")] = None,
    shard: Annotated[str | None, typer.Option(help="Only shard K of N (K/N, K from 0).")] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes, each a shard, merged at the end.")] = 1,
    executor: Annotated[str, typer.Option(help="local, or ray (Ray Data; pip install 'evolve[ray]').")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (e.g. auto).")] = None,
    log_file: Annotated[Path | None, typer.Option(help="Also log to this file.")] = None,
    quiet: QuietOpt = None,
    price_in: Annotated[float | None, typer.Option(help="US$ per million input tokens.")] = None,
    price_out: Annotated[float | None, typer.Option(help="US$ per million output tokens.")] = None,
    config_file: ConfigOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print round 1's requests and token/cost estimates; no calls.")
    ] = False,
    batch: Annotated[
        bool, typer.Option("--batch", help="OpenAI Batch API: submit or collect one stage per invocation (cron).")
    ] = False,
) -> None:
    """Evolve seeds for N rounds (evolve → judge → keep); the same command again resumes."""
    from evolve.pipeline import Runner
    from evolve.ui import run_with_progress

    with _errors():
        config = _config(
            config_file, rounds=rounds, seed=seed, weights=weights, base_url=base_url, model=model,
            api_key=api_key, temperature=temperature, max_tokens=max_tokens, concurrency=concurrency,
            timeout=timeout, rpm=rpm, tpm=tpm, max_retries=max_retries, transport=transport,
            judge_model=judge_model, judge_base_url=judge_base_url, judge_images=judge_images,
            min_score=min_score, prompts=prompts, images=images, image_root=image_root,
            image_size=image_size, format=fmt, strict=strict, cache=cache, no_cache=no_cache,
            max_failures=max_failures, shard=shard, log_file=log_file, quiet=quiet,
            price_in=price_in, price_out=price_out,
        )  # fmt: skip
        files = _seed_files(seeds)
        if dry_run:
            _print_dry_run(config, files)
            return
        target = out_dir or Path("runs") / (seeds[0].stem if seeds[0].is_file() else seeds[0].resolve().name)
        logs = [target / "evolve.log"] + ([config.log_file] if config.log_file else [])
        messenger = Messenger(config.quiet, logs)
        messenger.log(f"evolve {__version__} run {' '.join(map(str, files))} -> {target}")
        if batch:
            from evolve.batch import batch_step

            step = batch_step(config, files, target, messenger)
            messenger(step.line())
            if step.done and step.summary:
                _print_run_summary(step.summary, messenger)
                if step.summary.get("status") != "done":
                    raise typer.Exit(3)
            return
        if executor not in ("local", "ray"):
            raise UsageError("--executor: expected local or ray")
        if executor == "ray":
            from evolve.ray_executor import RayRunner

            result = run_with_progress(RayRunner(config, files, target, messenger, ray_address), quiet=config.quiet)
            _print_run_summary(result.summary, messenger)
            if result.failures:
                raise typer.Exit(3)
            return
        if workers > 1:
            from evolve.workers import run_workers

            summary = run_workers(config, files, target, workers, messenger)
            _print_run_summary(summary, messenger)
            if summary["status"] != "done":
                raise typer.Exit(3)
            return
        runner = Runner(config, files, target, messenger)
        result = run_with_progress(runner, quiet=config.quiet)
        _print_run_summary(result.summary, messenger)
        if result.failures:
            raise typer.Exit(3)


def _fmt(value: Any, pattern: str = "{:,}") -> str:
    return "–" if value is None else pattern.format(value)


def _print_dry_run(config: RunConfig, files: list[Path]) -> None:
    from evolve.dryrun import dry_run

    report = dry_run(config, files)
    out.print(report.example, markup=False, highlight=False)
    table = Table(title=f"evolve run --dry-run · {config.model} · {config.rounds} rounds", title_justify="left")
    for column in ("", "requests", "input tokens", "output tokens", "est. cost US$"):
        table.add_column(column, justify="right")
    for label, usage, cost in (
        ("round 1", report.round_one, report.cost_round_one),
        (f"all {config.rounds} rounds", report.whole_run, report.cost_whole_run),
    ):
        table.add_row(label, f"{usage.requests:,}", f"~{usage.prompt_tokens:,}", f"~{usage.completion_tokens:,}",
                      _fmt(cost, "{:.2f}"))  # fmt: skip
    out.print(table)
    operators = ", ".join(f"{k} {v:,}" for k, v in sorted(report.operators.items()))
    out.print(
        f"{report.samples:,} samples ({operators}), {report.images:,} with an image, {report.rejected:,} rejected; "
        "tokens are characters/4 estimates, answers assumed ~700 tokens"
    )


SUMMARY_ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("samples", lambda r: _fmt(r["samples"])),
    ("evolved", lambda r: _fmt(r["evolved"])),
    ("dropped at evolve", lambda r: _fmt(r["evolve_failed"])),
    ("dropped at judge", lambda r: _fmt(r["judge_failed"])),
    ("items judged", lambda r: _fmt(r["judged_items"])),
    ("improvement rate", lambda r: _fmt(r["improvement_rate"], "{:.1%}")),
    ("kept samples", lambda r: _fmt(r["kept_samples"])),
    ("kept items", lambda r: _fmt(r["kept_items"])),
    ("carried forward", lambda r: _fmt(r["carried_forward"])),
    ("mean accepted score", lambda r: _fmt(r["mean_accepted_score"], "{:.2f}")),
    ("operators", lambda r: " ".join(f"{k[:4]}={v}" for k, v in r["operators"].items()) or "–"),
    (
        "calls answered / cached / failed",
        lambda r: f"{r['usage']['requests']:,} / {r['usage']['cached']:,} / {r['usage'].get('failed', 0):,}",
    ),
    ("tokens in / out", lambda r: f"{r['usage']['prompt_tokens']:,} / {r['usage']['completion_tokens']:,}"),
    ("est. cost US$", lambda r: _fmt(r["cost_usd"], "{:.4f}")),
]


def _print_run_summary(summary: dict[str, Any], messenger: Messenger) -> None:
    rounds = summary.get("rounds", {})
    table = Table(title=f"evolve run · {summary.get('status')}", title_justify="left")
    table.add_column("")
    for number in rounds:
        table.add_column(f"round {number}", justify="right")
    for label, cell in SUMMARY_ROWS:
        table.add_row(label, *(cell(stats) for stats in rounds.values()))
    if not messenger.quiet:
        out.print(table)
    for number, stats in rounds.items():
        for reason, count in stats.get("drop_reasons", {}).items():
            messenger(f"round {number}: {count:,} × {reason}")
    messenger(
        f"{summary.get('final_samples', 0):,} evolved samples in final.jsonl; "
        f"{summary.get('rejected_seeds', 0):,} seeds rejected"
    )


# ---------------------------------------------------------------------- eliminate


@app.command()
def eliminate(
    evolved: Annotated[Path, typer.Argument(help="Evolved file to judge, or a folder to --rescore.")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")] = None,
    parents: Annotated[Path | None, typer.Option(help="File holding the parents (matched by parent_id).")] = None,
    rescore: Annotated[bool, typer.Option("--rescore", help="Re-apply --min-score to judged.jsonl, no calls.")] = False,
    baseline: Annotated[bool, typer.Option("--baseline", help="Score the seeds against themselves (Conv0).")] = False,
    base_url: BaseUrlOpt = None,
    model: ModelOpt = None,
    api_key: ApiKeyOpt = None,
    judge_model: JudgeModelOpt = None,
    judge_base_url: JudgeUrlOpt = None,
    judge_images: JudgeImagesOpt = None,
    min_score: MinScoreOpt = None,
    concurrency: ConcurrencyOpt = None,
    timeout: TimeoutOpt = None,
    images: ImagesOpt = None,
    image_root: ImageRootOpt = None,
    prompts: PromptsOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = None,
    quiet: QuietOpt = None,
    config_file: ConfigOpt = None,
) -> None:
    """Judge rewrites against their parents: judged.jsonl, kept.jsonl, dropped.jsonl in --out."""
    from evolve import eliminate as core

    with _errors():
        config = _config(
            config_file, base_url=base_url, model=model, api_key=api_key, judge_model=judge_model,
            judge_base_url=judge_base_url, judge_images=judge_images, min_score=min_score,
            concurrency=concurrency, timeout=timeout, images=images, image_root=image_root,
            prompts=prompts, cache=cache, no_cache=no_cache, quiet=quiet,
        )  # fmt: skip
        messenger = Messenger(bool(config.quiet), [])
        if rescore:
            result = core.rescore_folder(out_dir or evolved, config.min_score)
        elif baseline:
            result = core.baseline(config, evolved, out_dir or evolved.parent, messenger)
        else:
            if out_dir is None:
                raise UsageError("--out DIR is required (where judged/kept/dropped are written)")
            result = core.eliminate(config, evolved, out_dir, parents, messenger)
        data = result.as_dict()
        table = Table(title="evolve eliminate", title_justify="left")
        for key in data:
            table.add_column(key.replace("_", " "), justify="right")
        table.add_row(*(_fmt(v, "{:.1%}") if k == "improvement_rate" else _fmt(v) for k, v in data.items()))
        if not config.quiet:
            out.print(table)
        if result.failed:
            raise typer.Exit(3)


# ---------------------------------------------------------------------- stats


@app.command()
def stats(
    paths: Annotated[list[Path], typer.Argument(help="Seed/evolved files, or a run folder.")],
    parser: Annotated[str, typer.Option(help="Verb–noun parser: spacy or benepar.")] = "spacy",
    benepar_model: Annotated[str | None, typer.Option(help="Path or name of the benepar model.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the numbers as JSON here ('-' = stdout).")
    ] = None,
    plots: Annotated[Path | None, typer.Option(help="Write PNG figures into this folder.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table or progress.")] = False,
) -> None:
    """Diversity and complexity: verb–noun pairs, lengths, skills, steps, judge scores, object long tail."""
    from evolve import stats as core
    from evolve.verbnoun import BeneparExtractor, SpacyExtractor, VerbNounExtractor

    with _errors():
        if parser not in ("spacy", "benepar"):
            raise UsageError("--parser: expected spacy or benepar")
        inputs = core.resolve_inputs(paths)
        extractor: VerbNounExtractor = SpacyExtractor() if parser == "spacy" else BeneparExtractor(benepar_model)
        report = core.compute_stats(inputs, extractor, progress=not quiet and json_out != Path("-"))
        if json_out == Path("-"):
            sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        elif json_out is not None:
            json_out.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
        if not quiet and json_out != Path("-"):
            out.print(core.render_table(report))
        if plots is not None:
            from evolve.plots import write_plots

            written = write_plots(report, plots)
            err.print(f"{len(written)} figures in {plots}", markup=False)


# ---------------------------------------------------------------------- merge, export and init


@app.command()
def merge(
    runs: Annotated[list[Path], typer.Argument(help="Shard run folders (--shard K/N) to join.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The merged run folder.")],
) -> None:
    """Join shard runs of the same settings and seeds into one run folder."""
    from evolve.merge import merge_runs

    with _errors():
        summary = merge_runs(runs, out_dir)
        _print_run_summary(summary, Messenger(False, []))


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="A run folder (its final.jsonl) or a file of records.")],
    to: Annotated[str, typer.Option("--to", help="llava, sharegpt or mmevol.")] = "llava",
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Output file (default: stdout).")] = None,
    min_score: Annotated[float | None, typer.Option(help="Only Q&A items scored at least this.")] = None,
    json_array: Annotated[bool, typer.Option("--json-array", help="One JSON array instead of JSONL.")] = False,
) -> None:
    """Write training-ready records: LLaVA conversations, ShareGPT (LLaMA-Factory) or canonical JSONL."""
    from evolve.export import export_records

    with _errors():
        count = export_records(source, to, out_file, min_score=min_score, json_array=json_array)
        err.print(f"{count:,} records exported as {to}", markup=False)


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where to write evolve.toml and prompts/.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Write a commented starter evolve.toml and copies of the prompt templates to edit."""
    from evolve.starter import write_starter

    with _errors():
        for path in write_starter(folder, force=force):
            out.print(f"wrote {path}")


@app.command(
    "fake-endpoint",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def fake_endpoint(ctx: typer.Context) -> None:
    """A deterministic OpenAI-compatible test endpoint on 127.0.0.1 (try evolve without a model); --help for its
    options."""
    from evolve.fakeserver.__main__ import main as serve

    raise typer.Exit(serve(list(ctx.args), prog="evolve fake-endpoint"))


def main() -> None:
    """Console-script entry point."""
    app()
