"""`evolve show`: one seed's lineage in the terminal — its Q&A, then each round's rewrites with the operator,
a coloured word diff against the parent, the judge's verdict and why anything was dropped (for ssh sessions)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from evolve.errors import InputError, UsageError
from evolve.lineage import (
    ItemView,
    Lineage,
    RoundView,
    RunSource,
    assemble,
    collect_records,
    example_seed_id,
    find_seed,
    image_of,
    open_run,
    pick_seed_id,
)

OPERATOR_STYLES = {"perceptual": "blue", "reasoning": "magenta", "interaction": "cyan"}
VERDICTS: dict[bool | None, tuple[str, str]] = {
    True: ("holds", "green"),
    False: ("false", "red"),
    None: ("unsure", "yellow"),
}
OUTCOME_STYLES = {"kept": "green", "partial": "yellow", "dropped": "red", "pending": "blue"}
KNOWN_FIELDS = frozenset(
    ("question", "answer", "objects", "skills", "steps", "format", "image_position", "improved", "score", "reason",
     "source", "violations", "claims", "twin", "votes")
)  # fmt: skip


def load_lineage(run_path: Path, seed_id: str | None, *, salt: str | None = None) -> tuple[RunSource, Lineage]:
    """The lineage of `seed_id`, or of a seed drawn with `salt` when `seed_id` is None."""
    run = open_run(run_path)
    if seed_id is None:
        seed_id = pick_seed_id(run, secrets.token_hex(8) if salt is None else salt)
        if seed_id is None:
            raise InputError(f"{run_path}: no round has records yet, so there is no seed to show")
    records = collect_records(run, [seed_id])[seed_id]
    loaded = find_seed(run, seed_id) if records or not run.finished else None
    if not records and loaded is None:
        example = example_seed_id(run)
        hint = f", e.g. evolve show {run_path} {example}" if example else ""
        raise InputError(f"unknown seed id {seed_id!r} in {run_path}: give the seed_id of a record, or --random{hint}")
    lineage = assemble(seed_id, loaded.sample if loaded else None, records)
    lineage.where = loaded.where if loaded else None
    lineage.image = image_of(run, lineage.image_ref, lineage.where)
    return run, lineage


# --------------------------------------------------------------------------- rendering


def diff_text(item: ItemView) -> Text:
    """The question, with words the rewrite removed struck in red and those it added in green."""
    question = str(item.fields.get("question", ""))
    if not any(op != "=" for op, _ in item.diff):
        return Text(question, style="bold")
    text = Text(style="bold")
    for index, (op, words) in enumerate(item.diff):
        if index:
            text.append(" ")
        style = {"=": "", "-": "red strike", "+": "green underline"}[op]
        text.append(words, style=style)
    return text


def _score(value: Any) -> Text:
    if not isinstance(value, int | float):
        return Text("–", style="dim")
    style = "green" if value >= 8 else "yellow" if value >= 5 else "red"
    return Text(f"{value:g}", style=f"bold {style}")


def _status(item: ItemView) -> Text:
    if item.status == "dropped":
        return Text(f"dropped\n{item.stage or '?'}", style="red")
    return Text(item.status, style=OUTCOME_STYLES.get(item.status, "blue"))


def _vote(vote: Any) -> str:
    """A judge vote as ✓7 / ✗4 (or its JSON when it is not a {improved, score} object)."""
    if isinstance(vote, dict) and "improved" in vote:
        mark = "✓" if vote["improved"] else "✗"
        return f"{mark}{vote.get('score', '')}"
    return _as_text(vote)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _steps(steps: Any) -> Iterable[Text]:
    for number, step in enumerate(steps if isinstance(steps, list) else [], start=1):
        line = Text(f"  {number}. ", style="dim")
        if isinstance(step, dict):
            if step.get("manipulation"):
                line.append(str(step["manipulation"]), style="cyan")
                line.append(" ")
            line.append(str(step.get("description", "")))
        else:
            line.append(_as_text(step))
        yield line


def _extras(fields: dict[str, Any]) -> Iterable[Text]:
    """The optional fields of newer stages, and any field this viewer does not know."""
    if isinstance(fields.get("source"), int):
        yield Text(f"rewrites item {fields['source'] + 1} of the parent", style="dim")
    if fields.get("violations"):
        yield Text("rule violations: ", style="dim") + Text(", ".join(map(_as_text, fields["violations"])), style="red")
    for claim in fields.get("claims") or []:
        verdict = claim.get("verdict") if isinstance(claim, dict) else None
        said = claim.get("claim") if isinstance(claim, dict) else claim
        known = verdict is None or isinstance(verdict, bool)
        label, style = VERDICTS[verdict] if known else (str(verdict), "yellow")
        yield Text("claim ", style="dim") + Text(f"[{label}] ", style=style) + Text(_as_text(said))
    if fields.get("twin") is not None:
        yield Text("near-duplicate of: ", style="dim") + Text(_as_text(fields["twin"]))
    if fields.get("votes"):
        yield Text("votes: ", style="dim") + Text(", ".join(map(_vote, fields["votes"])))
    for key, value in fields.items():
        if key not in KNOWN_FIELDS:
            yield Text(f"{key}: ", style="dim") + Text(_as_text(value))


def item_cell(item: ItemView) -> RenderableType:
    """Question (diffed), answer, judge's reason, drop reason, steps and extra fields of one item."""
    fields = item.fields
    lines: list[Text] = [diff_text(item)]
    if fields.get("answer"):
        lines.append(Text(str(fields["answer"]), style="dim"))
    if fields.get("reason"):
        lines.append(Text("judge: ", style="dim italic") + Text(str(fields["reason"]), style="italic"))
    if item.status == "dropped" and item.drop_reason:
        lines.append(Text(f"dropped at {item.stage}: {item.drop_reason}", style="red"))
    lines.extend(_steps(fields.get("steps")))
    labels = [*map(str, fields.get("skills") or []), *map(str, fields.get("objects") or [])]
    if labels:
        lines.append(Text(" · ".join(labels), style="dim cyan"))
    lines.extend(_extras(fields))
    return Group(*lines)


def round_panel(view: RoundView) -> Panel:
    """One round: operator, outcome, ids, failures and a table of its items."""
    operator = view.operator or "?"
    title = Text.assemble(
        (f"round {view.round} ", "bold"),
        (operator, f"bold {OPERATOR_STYLES.get(operator, 'white')}"),
        "  ",
        (view.outcome, OUTCOME_STYLES.get(view.outcome, "")),
        (f"  {view.kept} kept · {view.dropped} dropped", "dim"),
    )
    parts: list[RenderableType] = [Text(f"{view.id or '?'} ← {view.parent_id or '?'}", style="dim")]
    for failure in view.failures:
        line = Text(f"failed at {failure.get('stage')}: {failure.get('reason')}", style="bold red")
        parts.append(line)
        if failure.get("raw"):
            raw = str(failure["raw"])
            parts.append(Text(raw[:600] + ("…" if len(raw) > 600 else ""), style="dim"))
    if view.items:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, expand=True, pad_edge=False)
        table.add_column("#", justify="right", style="dim", width=2)
        table.add_column("status", width=9)
        table.add_column("score", justify="right", width=5)
        table.add_column("question (diff vs parent) · answer · judge", ratio=1)
        for number, item in enumerate(view.items, start=1):
            table.add_row(str(number), _status(item), _score(item.fields.get("score")), item_cell(item))
        parts.append(table)
    if not view.kept:
        parts.append(Text("nothing survived this round: the previous version goes on", style="dim italic"))
    border = OUTCOME_STYLES.get(view.outcome, "white")
    return Panel(Group(*parts), title=title, title_align="left", border_style=border, box=box.ROUNDED)


def seed_panel(run: RunSource, lineage: Lineage) -> Panel:
    """The seed: where it came from, its image, description, boxes and Q&A."""
    info = Table.grid(padding=(0, 2))
    info.add_column(style="dim", no_wrap=True)
    info.add_column()
    info.add_row("run", str(run.folder.root))
    info.add_row("seed file", lineage.where or "not found in the seed files")
    if lineage.image_ref:
        found = isinstance(lineage.image, Path) and lineage.image.is_file()
        where = f"{lineage.image_ref}  ({lineage.image}{'' if found else ', missing'})"
        info.add_row("image", where)
    if lineage.caption:
        caption = lineage.caption if len(lineage.caption) <= 400 else lineage.caption[:400] + "…"
        info.add_row("description", caption)
    labels = sorted({str(box_.get("label")) for box_ in lineage.objects if isinstance(box_, dict)})
    if labels:
        info.add_row("objects", ", ".join(labels))
    parts: list[RenderableType] = [info]
    if lineage.seed is not None:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, expand=True, pad_edge=False)
        table.add_column("#", justify="right", style="dim", width=2)
        table.add_column("seed question · answer", ratio=1)
        for number, qa in enumerate(lineage.seed.qa, start=1):
            cell = Group(Text(qa.question, style="bold"), Text(qa.answer, style="dim"))
            table.add_row(str(number), cell)
        parts.append(table)
    rounds = ", ".join(f"{r.round}: {r.outcome}" for r in lineage.rounds) or "none yet"
    title = Text.assemble(("seed ", "bold"), (lineage.seed_id, "bold cyan"), (f"   rounds {rounds}", "dim"))
    return Panel(Group(*parts), title=title, title_align="left", box=box.ROUNDED)


def render(run: RunSource, lineage: Lineage, only_round: int | None = None) -> RenderableType:
    """The whole lineage (or the seed and one round) as one rich renderable."""
    rounds = lineage.rounds
    if only_round is not None:
        rounds = [view for view in rounds if view.round == only_round]
        if not rounds:
            present = ", ".join(str(view.round) for view in lineage.rounds) or "none"
            raise UsageError(f"--round {only_round}: seed {lineage.seed_id} has rounds {present}")
    return Group(seed_panel(run, lineage), *(round_panel(view) for view in rounds))
