"""PNG figures of a StatsReport: verb–noun sunbursts, score density, skills/step histograms, object long tail.

Drawn with matplotlib's object-oriented API on Agg canvases (no pyplot, no global backend switch), so it
runs headless and from threads. A figure whose data is absent (no judge scores, no objects) is still
written, with a one-line note saying what is missing.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Wedge
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from evolve.stats import ColumnStats, StatsReport

SUNBURST_VERBS = 12
SUNBURST_NOUNS = 4
LONG_TAIL_NAMES = 50
HIST_CAP = 10
DPI = 120
_INNER = (0.22, 0.62)  # radii of the verb ring
_OUTER = (0.62, 1.0)  # radii of the noun ring
_MIN_VERB_DEG = 5.0
_MIN_NOUN_DEG = 2.6
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_ROUND = re.compile(r"^round-(\d+)$")


def write_plots(report: StatsReport, out_dir: Path) -> list[Path]:
    """Write every figure into `out_dir` (created if needed) and return their paths in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from")
        for col in report.columns:
            written.append(_save(_sunburst(col), out_dir / f"sunburst-{_slug(col.name)}.png"))
        if len(report.columns) >= 2:
            first, last = report.columns[0], report.columns[-1]
            name = f"sunburst-{_slug(first.name)}-vs-{_slug(last.name)}.png"
            written.append(_save(_side_by_side(first, last), out_dir / name))
        written.append(_save(_score_density(report.columns), out_dir / "score-density.png"))
        written.append(
            _save(
                _length_hist(report.columns, "skills", "skills length (skills per Q&A item)"),
                out_dir / "skills-length.png",
            )
        )
        written.append(
            _save(
                _length_hist(report.columns, "steps", "step length (reasoning steps per Q&A item)"),
                out_dir / "step-length.png",
            )
        )
        written.append(_save(_long_tail(report.columns), out_dir / "object-long-tail.png"))
    return written


def _slug(name: str) -> str:
    return _SLUG.sub("-", name).strip("-") or "column"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13, color="0.35", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _lighter(color: tuple[float, float, float], amount: float) -> tuple[float, float, float]:
    r, g, b = color
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def _radial_text(ax: Axes, angle: float, radius: float, text: str, size: float, bold: bool = False) -> None:
    """Text centred at (angle, radius), rotated along the radius and kept upright."""
    theta = math.radians(angle)
    rotation = angle if -90 <= ((angle + 180) % 360) - 180 <= 90 else angle - 180
    ax.text(
        radius * math.cos(theta),
        radius * math.sin(theta),
        text,
        rotation=((rotation + 180) % 360) - 180,
        rotation_mode="anchor",
        ha="center",
        va="center",
        fontsize=size,
        fontweight="bold" if bold else "normal",
        color="0.1",
    )


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sunburst(col: ColumnStats) -> Figure:
    fig = _figure(10, 10.6)
    fig.suptitle(
        f"{col.name}: root verbs (inner ring) and their direct-object nouns (outer ring)", fontsize=15, y=0.975
    )
    _sunburst_panel(fig, (0.02, 0.02, 0.96, 0.88), col, 0.905)
    return fig


def _side_by_side(first: ColumnStats, last: ColumnStats) -> Figure:
    """The paper's figure: the seed and the final sunburst next to each other, on the same scale of labels."""
    fig = _figure(20, 10.9)
    fig.suptitle(
        f"root verbs (inner ring) and their direct-object nouns (outer ring): {first.name} vs {last.name}",
        fontsize=17,
        y=0.98,
    )
    for index, col in enumerate((first, last)):
        left = 0.01 + 0.5 * index
        fig.text(left + 0.24, 0.905, col.name, ha="center", fontsize=16, fontweight="bold")
        _sunburst_panel(fig, (left, 0.02, 0.48, 0.84), col, 0.875, center=left + 0.24)
    return fig


def _sunburst_panel(
    fig: Figure, rect: tuple[float, float, float, float], col: ColumnStats, note_y: float, center: float = 0.5
) -> None:
    """One sunburst in `rect` of `fig`, with its coverage note at height `note_y` above it."""
    ax = fig.add_axes(rect)
    ax.set_aspect("equal")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.axis("off")
    verbs = col.top_pair_verbs[:SUNBURST_VERBS]
    if not verbs:
        _note(ax, "no verb–noun pairs found in these questions")
        return
    shown = sum(v.with_noun for v in verbs)
    pairs = col.questions_with_pair or 1
    sampled = f" (a sample of {col.verb_noun_questions:,} questions)" if col.verb_noun_sampled else ""
    fig.text(
        center,
        note_y,
        f"top {len(verbs)} verbs by verb–noun pairs: {shown:,} of the {pairs:,} questions with a pair "
        f"({100 * shown / pairs:.0f}%){sampled}\nouter ring: the top {SUNBURST_NOUNS} nouns of each verb; "
        "grey: its other nouns",
        ha="center",
        fontsize=10.5,
        color="0.3",
    )
    cmap = colormaps["tab20"]
    start = 90.0  # first verb at 12 o'clock, going clockwise
    for index, verb in enumerate(verbs):
        base = to_rgb(cmap((2 * index) % 20 + (1 if index >= 10 else 0)))
        span = 360.0 * verb.with_noun / shown
        _wedge(ax, start - span, start, _INNER, _lighter(base, 0.15))
        mid = start - span / 2
        if span >= _MIN_VERB_DEG:
            size = 9.0 + min(5.0, span / 12)
            _radial_text(ax, mid, sum(_INNER) / 2, _short(verb.verb, 14), size, bold=True)
        at = start
        for rank, noun in enumerate(verb.nouns[:SUNBURST_NOUNS]):
            part = 360.0 * noun.count / shown
            _wedge(ax, at - part, at, _OUTER, _lighter(base, 0.35 + 0.12 * rank))
            if part >= _MIN_NOUN_DEG:
                size = 8.5 + min(2.5, part / 10)
                _radial_text(ax, at - part / 2, sum(_OUTER) / 2, _short(noun.name, 16), size)
            at -= part
        if at - (start - span) > 1e-9:
            _wedge(ax, start - span, at, _OUTER, (0.93, 0.93, 0.93))
        start -= span


def _wedge(
    ax: Axes, theta1: float, theta2: float, radii: tuple[float, float], color: tuple[float, float, float]
) -> None:
    inner, outer = radii
    ax.add_patch(Wedge((0, 0), outer, theta1, theta2, width=outer - inner, facecolor=color, edgecolor="white", lw=1.2))


def conv_label(col: ColumnStats) -> str:
    """The paper's curve names: Conv0 = the seeds judged against themselves, ConvN = round N's survivors."""
    if col.kind == "seeds":
        return f"Conv0: {col.name} judged against themselves"
    found = _ROUND.match(col.name) if col.kind == "round" else None
    return f"Conv{found.group(1)}: {col.name}, items judged improved" if found else col.name


def _density_scores(col: ColumnStats) -> dict[str, int]:
    """The scores plotted for a column: accepted items of a round (as the paper's Conv1–3), else all."""
    if col.kind == "round" and col.accepted_score_counts:
        return col.accepted_score_counts
    return col.score_counts


def _kde(values: np.ndarray, weights: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Weighted Gaussian kernel density, Silverman's bandwidth but at least 0.45 (scores are mostly integers)."""
    total = weights.sum()
    mean = float((values * weights).sum() / total)
    std = math.sqrt(float((weights * (values - mean) ** 2).sum() / total))
    bandwidth = max(0.45, 1.06 * std * total ** (-0.2))
    z = (grid[:, None] - values[None, :]) / bandwidth
    density: np.ndarray = (np.exp(-0.5 * z * z) * weights).sum(axis=1) / (total * bandwidth * math.sqrt(2 * math.pi))
    return density


def _score_density(columns: Sequence[ColumnStats]) -> Figure:
    fig = _figure(10, 6)
    ax = fig.add_subplot()
    ax.set_title("judge score density per column (Conv0 = seeds judged against themselves)", fontsize=14)
    judged = [(c, _density_scores(c)) for c in columns]
    judged = [(c, s) for c, s in judged if s]
    if not judged:
        _note(ax, "no judge scores in these inputs")
        return fig
    low = min(float(k) for _, s in judged for k in s)
    high = max(float(k) for _, s in judged for k in s)
    grid = np.linspace(min(0.0, low - 1), max(10.0, high + 1), 400)
    for col, scores in judged:
        values = np.array([float(k) for k in scores])
        weights = np.array([float(v) for v in scores.values()])
        mean = float((values * weights).sum() / weights.sum())
        label = f"{conv_label(col)} (n={int(weights.sum()):,}, mean {mean:.2f})"
        ax.plot(grid, _kde(values, weights, grid), lw=2, label=label)
    ax.set_xlabel("judge score")
    ax.set_ylabel("density")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10)
    fig.tight_layout()
    return fig


def _length_hist(columns: Sequence[ColumnStats], which: str, title: str) -> Figure:
    fig = _figure(10, 6)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=14)
    hists = [c.skills_length_hist if which == "skills" else c.step_length_hist for c in columns]
    if not any(hists):
        _note(ax, "no Q&A items")
        return fig
    top = min(HIST_CAP, max(5, *(max(h) for h in hists if h)))  # at least 0–5 so single bars stay narrow
    positions = np.arange(top + 1)
    width = 0.8 / len(columns)
    for index, (col, hist) in enumerate(zip(columns, hists, strict=True)):
        total = sum(hist.values()) or 1
        shares = [hist.get(n, 0) for n in range(top)]
        shares.append(sum(v for k, v in hist.items() if k >= top))
        mean = col.skills_length_mean if which == "skills" else col.step_length_mean
        label = f"{col.name} (mean {mean:.2f})" if mean is not None else col.name
        offset = (index - (len(columns) - 1) / 2) * width
        ax.bar(positions + offset, [100 * s / total for s in shares], width=width, label=label)
    ax.set_xticks(positions, [str(n) for n in range(top)] + [f"{top}+" if top == HIST_CAP else str(top)])
    ax.set_xlabel("length")
    ax.set_ylabel("share of Q&A items (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=10)
    fig.tight_layout()
    return fig


def _long_tail(columns: Sequence[ColumnStats]) -> Figure:
    fig = _figure(16, 7)
    ax = fig.add_subplot()
    sources = ", ".join(f"{c.name}: {c.object_source}" for c in columns)
    ax.set_title(f"object long tail: top {LONG_TAIL_NAMES} object names (counts from {sources})", fontsize=13)
    with_objects = [c for c in columns if c.top_objects]
    if not with_objects:
        _note(ax, "no object names in these inputs")
        return fig
    totals: dict[str, int] = {}
    for col in with_objects:
        for item in col.top_objects:
            totals[item.name] = totals.get(item.name, 0) + item.count
    names = sorted(totals, key=lambda n: (-totals[n], n))[:LONG_TAIL_NAMES]
    positions = np.arange(len(names))
    width = 0.85 / len(with_objects)
    for index, col in enumerate(with_objects):
        counts = {item.name: item.count for item in col.top_objects}
        offset = (index - (len(with_objects) - 1) / 2) * width
        heights = [counts.get(n, 0) for n in names]
        share = f", long-tail share {100 * col.long_tail_share:.0f}%" if col.long_tail_share is not None else ""
        ax.bar(positions + offset, heights, width=width, label=f"{col.name} ({col.distinct_objects:,} names{share})")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(positions, [_short(n, 18) for n in names], rotation=90, fontsize=9)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("mentions (log scale)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=10)
    fig.tight_layout()
    return fig
