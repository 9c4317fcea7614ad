"""The `evolve` command: Typer commands that gather options, call one core function and render its result.

Exit codes: 0 done, 1 failed, 2 bad usage or input, 3 finished with failures, 4 run folder locked,
130/143 stopped by SIGINT/SIGTERM (the next invocation resumes).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from evolve import __version__
from evolve.cliopts import ALL_SETTINGS, JUDGE_SETTINGS, with_settings
from evolve.config import RunConfig, build_config
from evolve.errors import EvolveError, UsageError
from evolve.gctune import tune_gc
from evolve.runfolder import RunFolder

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


def _secrets() -> list[str]:
    """The API keys of this invocation (environment and flags), to mask in tracebacks."""
    found = [os.environ.get("OPENAI_API_KEY") or "", os.environ.get("EVOLVE_API_KEY") or ""]
    argv = sys.argv
    for index, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("--api-key", "--judge-api-key"):
            found.append(value or (argv[index + 1] if index + 1 < len(argv) else ""))
    return [key for key in found if len(key) >= 4]


def _fail(exc: BaseException) -> NoReturn:
    if isinstance(exc, EvolveError):
        err.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False)
        if _state["debug"]:
            text = "".join(traceback.format_exception(exc))
            for key in _secrets():
                text = text.replace(key, "***")
            err.print(text, markup=False, highlight=False)
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
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fp:
                    fp.write(f"{stamp} {text}\n")
            except OSError:  # a read-only or full folder: the run itself says what is wrong
                continue


# ---------------------------------------------------------------------- shared options

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML file of settings (default ./evolve.toml).")]
ImageRootOpt = Annotated[Path | None, typer.Option(help="Folder that relative image paths start from.")]


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
    """Seed inputs named: files (JSON/JSONL, parquet, arrow, CSV), globs, datasets folders, folders of seed files."""
    from evolve.sources import expand_seed_paths

    return expand_seed_paths(paths)


# ---------------------------------------------------------------------- validate


ImageCacheOpt = Annotated[
    Path | None,
    typer.Option(help="Folder for images that arrive as bytes (parquet, datasets); default: a temporary folder."),
]
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        help="Columns of tables and manifests: part=column,... (parts image, question, answer, conversations, id, "
        "caption), e.g. image=img,question=q,answer=a; default: the usual names."
    ),
]


@app.command()
def validate(
    seeds: Annotated[
        list[Path],
        typer.Argument(
            help="Seed files (JSONL, JSON array, parquet, arrow, CSV/TSV manifest), globs, datasets save_to_disk "
            "folders, or folders of seed files (images + a CSV or JSONL manifest)."
        ),
    ],
    image_root: ImageRootOpt = None,
    no_images: Annotated[bool, typer.Option("--no-images", help="Do not check images.")] = False,
    fmt: Annotated[str | None, typer.Option("--format", help="Force a format: mmevol, llava or sharegpt.")] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first bad line.")] = False,
    image_cache: ImageCacheOpt = None,
    columns: ColumnsOpt = None,
) -> None:
    """Load seeds; report counts per format, bad records (file:line or file:row) and missing or undecodable
    images (exit 0, or 2 on any problem)."""
    from evolve.records import FORMATS
    from evolve.validate import validate_seeds

    def problem(text: str) -> None:
        err.print(text, markup=False, highlight=False)
        if strict:
            raise UsageError("stopped at the first bad line (--strict)")

    with _errors():
        if fmt is not None and fmt not in FORMATS:
            raise UsageError(f"--format: expected one of {', '.join(FORMATS)}")
        ok = True
        reports = validate_seeds(
            _seed_files(seeds), image_root=image_root, check_images=not no_images, fmt=fmt,
            on_problem=problem, image_cache=image_cache, columns=columns,
        )  # fmt: skip
        for report in reports:
            for line in report.image_problems[:5]:
                err.print(line, markup=False, highlight=False)
            problems = report.images_missing + report.images_bad
            if problems > 5:
                err.print(f"… and {problems - 5:,} more image problems", markup=False)
            formats = ", ".join(f"{n:,} {f}" for f, n in sorted(report.formats.items())) or "none"
            kind = "" if report.kind == "json" else f" [{report.kind}]"
            out.print(
                f"{report.path}{kind}: {report.loaded:,} loaded ({formats}; {report.qa_items:,} Q&A items), "
                f"{len(report.rejected):,} rejected",
                markup=False,
            )
            if not no_images:
                embedded = f" ({report.images_embedded:,} embedded as bytes)" if report.images_embedded else ""
                out.print(
                    f"  images: {report.images_checked - report.images_missing - report.images_bad:,} ok{embedded}, "
                    f"{report.images_missing:,} missing, {report.images_bad:,} unreadable, "
                    f"{report.images_remote:,} remote, {report.no_image:,} records without image",
                    markup=False,
                )
            ok = ok and report.ok
        if not ok:
            raise typer.Exit(2)


# ---------------------------------------------------------------------- run


@app.command()
@with_settings(*ALL_SETTINGS)
def run(
    seeds: Annotated[list[Path], typer.Argument(help="Seed files or folders (JSON/JSONL, parquet, datasets, CSV).")],
    settings: dict[str, Any],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/<seed name>).")] = None,
    config_file: ConfigOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print round 1's requests and the tokens and cost to expect; no call.")
    ] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="With --batch: cancel the pending batches.")] = False,
) -> None:
    """Evolve seeds for N rounds (evolve → check → judge → verify → dedup → keep); the same command resumes."""
    from evolve.engines import run_command
    from evolve.summary import print_dry_run, print_run_summary

    with _errors():
        config = build_config(settings, config_file)
        files = _seed_files(seeds)
        if dry_run:
            print_dry_run(out, config, files)
            return
        target = out_dir or Path("runs") / (seeds[0].stem if seeds[0].is_file() else seeds[0].resolve().name)
        logs = [RunFolder(target).log] + ([config.log_file] if config.log_file else [])
        messenger = Messenger(config.quiet, logs)
        messenger.log(f"evolve {__version__} run {' '.join(map(str, files))} -> {target}")
        manifest = run_command(config, files, target, messenger, cancel=cancel)
        print_run_summary(out, manifest, messenger, quiet=config.quiet)
        if manifest.status in ("stopped", "interrupted") and manifest.error:
            err.print(f"[red]error:[/red] {escape(manifest.error)}")
        raise typer.Exit(manifest.exit_code())


# ---------------------------------------------------------------------- annotate


@app.command()
@with_settings(*JUDGE_SETTINGS)
def annotate(
    seeds: Annotated[list[Path], typer.Argument(help="Seed files or folders to annotate.")],
    settings: dict[str, Any],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The annotated seeds (canonical JSONL).")],
    work: Annotated[
        Path | None, typer.Option(help="Folder for the cache and progress (default: OUT.work); resumable.")
    ] = None,
    config_file: ConfigOpt = None,
) -> None:
    """Fill objects, skills and steps of seed items that lack them (one call per --items-per-call items of a
    sample, with the image), never changing the question or answer; the same command again resumes."""
    from evolve.pipeline import annotate_seeds
    from evolve.summary import print_run_summary

    with _errors():
        config = build_config(settings, config_file)
        folder = work or out_file.with_name(out_file.name + ".work")
        messenger = Messenger(config.quiet, [RunFolder(folder).log])
        manifest, written = annotate_seeds(config, _seed_files(seeds), out_file, folder, messenger)
        print_run_summary(out, manifest, messenger, quiet=config.quiet)
        messenger(f"{written:,} seeds written to {out_file}")
        raise typer.Exit(manifest.exit_code())


# ---------------------------------------------------------------------- eliminate


@app.command()
@with_settings(*JUDGE_SETTINGS)
def eliminate(
    evolved: Annotated[Path, typer.Argument(help="Evolved file to judge, or a folder to --rescore.")],
    settings: dict[str, Any],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")] = None,
    parents: Annotated[Path | None, typer.Option(help="File holding the parents (matched by parent_id).")] = None,
    rescore: Annotated[bool, typer.Option("--rescore", help="Re-apply --min-score to judged.jsonl, no calls.")] = False,
    baseline: Annotated[
        bool, typer.Option("--baseline", help="Score the seeds against themselves (Conv0): baseline.jsonl in --out.")
    ] = False,
    config_file: ConfigOpt = None,
) -> None:
    """Judge rewrites against their parents: judged.jsonl, kept.jsonl, dropped.jsonl in --out."""
    from evolve import eliminate as core
    from evolve.summary import elimination_table

    with _errors():
        config = build_config(settings, config_file)
        messenger = Messenger(bool(config.quiet), [])
        if rescore:
            result = core.rescore_folder(out_dir or evolved, config.min_score)
        elif out_dir is None:  # never beside the input: a seed folder would read the output as seeds next time
            where = "the folder baseline.jsonl is written to" if baseline else "where judged/kept/dropped are written"
            raise UsageError(f"--out DIR is required ({where})")
        elif baseline:
            result = core.baseline(config, evolved, out_dir, messenger)
        else:
            result = core.eliminate(config, evolved, out_dir, parents, messenger)
        if not config.quiet:
            out.print(elimination_table(result.as_dict()))
        if result.failed:
            raise typer.Exit(3)


# ---------------------------------------------------------------------- check


@app.command()
def check(
    evolved: Annotated[Path, typer.Argument(help="Evolved file (JSONL or JSON array) to check.")],
    parents: Annotated[Path | None, typer.Option(help="File holding the parents (matched by parent_id).")] = None,
    checks: Annotated[
        str,
        typer.Option(
            "--checks",
            help="all, none, or a comma list of: box_copied, no_count_without_boxes, choice_named, more_steps, "
            "no_original_reference, question_changed, fields_present.",
        ),
    ] = "all",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the counts and flagged items as JSON here ('-' = stdout).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table, only problems.")] = False,
) -> None:
    """Rule checks without calls (copied boxes, counts without boxes, choices, steps, wording, fields): a table of
    violations per rule (exit 0, 2 for bad input)."""
    from evolve import checks as core

    with _errors():
        to_stdout = json_out == Path("-")
        rules = core.parse_checks(checks)
        report = core.check_file(
            evolved, parents, rules, keep_flagged=json_out is not None, progress=not quiet and not to_stdout
        )
        for line in report.problems:
            err.print(line, markup=False, highlight=False)
        if report.skipped > len(report.problems):
            err.print(f"… and {report.skipped - len(report.problems):,} more records skipped", markup=False)
        if to_stdout:
            sys.stdout.write(report.to_json())
        elif json_out is not None:
            json_out.write_text(report.to_json(), encoding="utf-8")
        if not quiet and not to_stdout:
            out.print(core.render_table(report))


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
    sample: Annotated[
        int | None,
        typer.Option(help="Verb–noun numbers from a uniform sample of N questions per column (± 95% margin shown)."),
    ] = None,
    sample_seed: Annotated[int, typer.Option(help="Seed of the --sample draw (same seed, same sample).")] = 0,
    workers: Annotated[int, typer.Option(help="Processes (or Ray actors) parsing in parallel; same numbers.")] = 1,
    executor: Annotated[
        str, typer.Option(help="local, or ray (Ray Data actors; pip install 'mmevolve\\[ray]').")
    ] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address for --executor ray.")] = None,
) -> None:
    """Diversity and complexity: verb–noun pairs, lengths, skills, steps, judge scores, object long tail."""
    from evolve import stats as core

    with _errors():
        if parser not in ("spacy", "benepar"):
            raise UsageError("--parser: expected spacy or benepar")
        if executor not in ("local", "ray"):
            raise UsageError("--executor: expected local or ray")
        if workers < 1 or (sample is not None and sample < 1):
            raise UsageError("--workers and --sample: use 1 or more")
        options = core.StatsOptions.model_validate(
            {
                "parser": parser,
                "benepar_model": benepar_model,
                "sample": sample,
                "sample_seed": sample_seed,
                "workers": workers,
                "executor": executor,
                "ray_address": ray_address,
                "progress": not quiet and json_out != Path("-"),
            }
        )
        report = core.run_stats(paths, options)
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


# ---------------------------------------------------------------------- dedup


@app.command()
def dedup(
    paths: Annotated[
        list[Path], typer.Argument(help="A finished run folder (rewritten), or seed/record files (report only).")
    ],
    threshold: Annotated[
        float,
        typer.Option(help="Near duplicate from this similarity (Jaccard of the questions' word and word-pair sets)."),
    ] = 0.8,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Over a run folder: report, change nothing.")] = False,
    seeds: Annotated[
        list[Path] | None, typer.Option("--seeds", help="The run's seed files, if they moved since run.json.")
    ] = None,
    examples: Annotated[int, typer.Option(help="Near pairs to show, spread over the similarity range.")] = 8,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON here ('-' = stdout).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table or progress.")] = False,
) -> None:
    """Near-duplicate questions: over a run, drop kept rewrites repeating a seed or an earlier rewrite (stage dedup,
    twin named); over files, count exact and near repeats."""
    from evolve import dedup_pass as core

    with _errors():
        to_stdout = json_out == Path("-")
        progress = not quiet and not to_stdout
        if len(paths) == 1 and core.is_run_folder(paths[0]):
            report = core.dedup_run(
                paths[0], threshold, dry_run=dry_run, seeds=seeds or (), examples=examples, progress=progress
            )
        else:
            if dry_run or seeds:
                raise UsageError("--dry-run and --seeds apply to a run folder (a folder with run.json)")
            report = core.dedup_files(_seed_files(paths), threshold, examples=examples, progress=progress)
        if to_stdout:
            sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        elif json_out is not None:
            json_out.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
        if not quiet and not to_stdout:
            out.print(core.render_report(report))
            err.print(core.summary_line(report), markup=False, highlight=False)


# ---------------------------------------------------------------------- merge, export and init


@app.command()
def merge(
    runs: Annotated[list[Path], typer.Argument(help="Shard run folders (--shard K/N) to join.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The merged run folder.")],
) -> None:
    """Join shard runs of the same settings and seeds into one run folder."""
    from evolve.merge import merge_runs
    from evolve.summary import print_run_summary

    with _errors():
        manifest = merge_runs(runs, out_dir)
        print_run_summary(out, manifest, Messenger(False, []), quiet=False)


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="A run folder (its final.jsonl) or a file of records.")],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="llava (id/image/conversations), sharegpt (LLaMA-Factory messages/images, with a dataset_info.json "
            "entry beside --out), mmevol (MMEvol's conversations_v0 … conversations_vN per seed, from a run folder) "
            "or parquet (images embedded as Hugging Face Image structs; needs --out).",
        ),
    ] = "llava",
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Output file (default: stdout).")] = None,
    min_score: Annotated[float | None, typer.Option(help="Only Q&A items scored at least this.")] = None,
    json_array: Annotated[bool, typer.Option("--json-array", help="One JSON array instead of JSONL.")] = False,
    latest_only: Annotated[
        bool,
        typer.Option("--latest-only", help="Only each seed's newest surviving version (not one per round)."),
    ] = False,
    with_steps: Annotated[
        bool,
        typer.Option(
            "--with-steps",
            help="Answers carry their solution steps as text: one line per step, 'Step 1 (manipulation): "
            "description', then 'Answer: ...'.",
        ),
    ] = False,
    image_paths: Annotated[
        str,
        typer.Option(
            help="relative: image paths valid from the output file's folder; absolute; copy: the images copied "
            "into OUT_images/ beside the output."
        ),
    ] = "relative",
    image_root: Annotated[
        Path | None,
        typer.Option(help="Folder relative image paths start from (default: the run's --image-root or seed folders)."),
    ] = None,
) -> None:
    """Write training-ready records: LLaVA, ShareGPT (LLaMA-Factory), MMEvol's layout or parquet with images."""
    from evolve.export import ExportOptions, export_records

    with _errors():
        options = ExportOptions(
            to=to, min_score=min_score, json_array=json_array, latest_only=latest_only, with_steps=with_steps,
            image_paths=image_paths, image_root=image_root,
        )  # fmt: skip
        result = export_records(source, out_file, options)
        for line in result.problems[:5]:
            err.print(line, markup=False, highlight=False)
        err.print(f"{result.count:,} records exported as {to}", markup=False)
        if result.images_missing:
            err.print(f"{result.images_missing:,} image paths do not point at a file", markup=False)
        for path in result.extra_files:
            err.print(f"wrote {path}", markup=False)
        if result.unreadable:
            err.print(f"{result.unreadable:,} lines could not be read and were not exported", markup=False)
            raise typer.Exit(3)


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where to write evolve.toml and prompts/.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    demo: Annotated[
        bool, typer.Option("--demo", help="Also copy the 10 demo seeds with their images into FOLDER/seeds/.")
    ] = False,
) -> None:
    """Write a commented starter evolve.toml and copies of the prompt templates to edit (and the demo seeds)."""
    from evolve.starter import write_starter

    with _errors():
        for path in write_starter(folder, force=force, demo=demo):
            out.print(f"wrote {path}", markup=False)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder (what `evolve run` wrote).")],
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default: RUN/report.html).")] = None,
    samples: Annotated[int, typer.Option(help="Seeds shown, stratified by operator, outcome and score.")] = 200,
    seed: Annotated[int, typer.Option(help="Draw another stratified sample with another seed.")] = 0,
    stats_json: Annotated[
        Path | None, typer.Option("--stats", help="Add the diversity numbers of `evolve stats RUN --json FILE`.")
    ] = None,
    jobs: Annotated[int | None, typer.Option(help="Processes reading the run (default: up to 4 cores).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary line.")] = False,
) -> None:
    """One self-contained HTML file to audit a run: numbers and plots, and every round of a sample of seeds."""
    from evolve.report import build_report, progress_bar

    with _errors():
        with progress_bar(not quiet) as progress:
            result = build_report(
                run_dir, out_file, samples, salt=str(seed), stats=stats_json, jobs=jobs, progress=progress
            )
        for missing in result.missing_seed_files:
            err.print(f"warning: seed file {missing} not found: cards show no seed Q&A or image", markup=False)
        if not quiet:
            out.print(
                f"{result.path}: {result.samples:,} of {result.seeds:,} seeds over {result.rounds} rounds "
                f"({result.strata} strata), {result.bytes / 1e6:.1f} MB",
                markup=False,
            )


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder (what `evolve run` wrote).")],
    seed_id: Annotated[
        str | None, typer.Argument(metavar="SEED_ID", help="The seed's id (the seed_id of its records).")
    ] = None,
    round_number: Annotated[int | None, typer.Option("--round", help="Only this round (and the seed).")] = None,
    random_seed: Annotated[bool, typer.Option("--random", help="Show a seed drawn at random.")] = False,
    seed: Annotated[int | None, typer.Option(help="With --random: the same draw for the same number.")] = None,
) -> None:
    """One seed's lineage in the terminal: each round's rewrites, word diffs, verdicts and drop reasons."""
    from evolve.show import load_lineage, render

    with _errors():
        if (seed_id is None) == (not random_seed):
            raise UsageError("give a SEED_ID or --random (not both)")
        run, lineage = load_lineage(run_dir, seed_id, salt=None if seed is None else str(seed))
        out.print(render(run, lineage, round_number))


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
    tune_gc()
    app()
