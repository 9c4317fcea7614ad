"""The prompt templates (jinja2 files in ``prompts/``) and their renderer.

Seed text reaches a template only as a variable, never as template source, so braces, ``{{ }}``,
``{% %}``, quotes and backslashes in the data render verbatim. A user's ``--prompts DIR`` replaces the
default templates file by file; every template is compiled and test-rendered once at load time, so a
syntax error, an undefined variable or a template that never shows the items is a `UsageError` naming
the file and line before any request is sent.

Contract with the parsers of prompts (the fake test server): an evolution prompt shows the given items
as a ```json array right after its LAST ``### Given Q&A&S`` line and never contains
``### Original Q&A&S``; a judge prompt contains ``### Original Q&A&S`` and shows the rewritten items as a
```json array right after its LAST ``### Rewritten Q&A&S`` line. Seed text cannot break this: a
reserved heading inside the data is escaped (``#`` as ``\\u0023`` in JSON, ``##`` in the description).
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import re
import shutil
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

import evolve
from evolve.errors import UsageError
from evolve.records import QAS, Box, Sample, Step

OPERATORS: tuple[str, ...] = ("perceptual", "reasoning", "interaction")
JUDGE = "judge"
PREFIX = "_prefix.j2"
SYSTEM = "system.txt"
REQUIRED: tuple[str, ...] = (*(f"{op}.j2" for op in OPERATORS), f"{JUDGE}.j2", SYSTEM)

GIVEN_HEADING = "### Given Q&A&S"
ORIGINAL_HEADING = "### Original Q&A&S"
REWRITTEN_HEADING = "### Rewritten Q&A&S"
_RESERVED = re.compile(r"#+(?= (?:Given|Original|Rewritten) Q&A&S)")
_CONTEXT_VARS = frozenset({"caption", "locations", "has_caption", "has_boxes"})
_enc: Callable[[str], str] = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


def default_prompts_dir() -> Path:
    """The shipped templates: inside the installed package, else the repository's ``prompts/``."""
    packaged = Path(evolve.__file__).parent / "prompts"
    if packaged.is_dir():
        return packaged
    return Path(evolve.__file__).parents[1] / "prompts"


def _template_files(folder: Path) -> dict[str, Path]:
    """The template files of a folder: every ``*.j2`` plus ``system.txt``."""
    found = {p.name: p for p in folder.glob("*.j2") if p.is_file()}
    if (folder / SYSTEM).is_file():
        found[SYSTEM] = folder / SYSTEM
    return found


# --------------------------------------------------------------------------- turning records into text


def _names(values: list[str]) -> str:
    """A list of strings at the depth of an item's field, as ``indent=1`` writes it."""
    if not values:
        return "[]"
    return "[\n   " + ",\n   ".join(map(_enc, values)) + "\n  ]"


def _steps(steps: list[Step]) -> str:
    """The steps of an item, as ``indent=1`` writes them."""
    if not steps:
        return "[]"
    parts = [
        '   {\n    "manipulation": '
        + ("null" if s.manipulation is None else _enc(s.manipulation))
        + ',\n    "description": '
        + _enc(s.description)
        + "\n   }"
        for s in steps
    ]
    return "[\n" + ",\n".join(parts) + "\n  ]"


def _core_json(item: QAS) -> str:
    """The seven fields of `QAS.core()` (never the verdict) as one element of
    ``json.dumps(items, ensure_ascii=False, indent=1)``: the same text, built with the C string encoder
    (about three times faster than json's pure-Python indenting encoder)."""
    return (
        ' {\n  "image_position": '
        + _enc(item.image_position)
        + ',\n  "objects": '
        + _names(item.objects)
        + ',\n  "skills": '
        + _names(item.skills)
        + ',\n  "format": '
        + _enc(item.format)
        + ',\n  "question": '
        + _enc(item.question)
        + ',\n  "steps": '
        + _steps(item.steps)
        + ',\n  "answer": '
        + _enc(item.answer)
        + "\n }"
    )


def _judge_json(item: QAS) -> str:
    """Question, answer and format of an item, as one element of an ``indent=1`` JSON array."""
    return (
        ' {\n  "question": '
        + _enc(item.question)
        + ',\n  "answer": '
        + _enc(item.answer)
        + ',\n  "format": '
        + _enc(item.format)
        + "\n }"
    )


def _dumps(elements: list[str]) -> str:
    """The JSON block of a prompt from its encoded elements; a reserved heading inside the data gets its
    ``#`` written ``\\u0023`` (the same JSON value, but no longer the heading text)."""
    text = "[\n" + ",\n".join(elements) + "\n]" if elements else "[]"
    if "Q&A&S" in text and _RESERVED.search(text):
        text = text.replace("#", "\\u0023")
    return text


def _plain(text: str) -> str:
    """Free text shown outside a JSON block: a reserved heading inside it is demoted to ``##``."""
    if "Q&A&S" in text:
        return _RESERVED.sub("##", text)
    return text


def _label(label: str) -> str:
    """A box label on one line (a label with a line break would break the one-box-per-line list)."""
    if not label.isprintable():
        label = " ".join(label.split())
    return _plain(label)


def format_boxes(boxes: Iterable[Box]) -> str:
    """One ``label: [x1, y1, x2, y2]`` line per box, coordinates to 3 decimals."""
    line = "%s: [%.3f, %.3f, %.3f, %.3f]"  # printf style: the fastest way to format 4 floats
    return "\n".join(line % (_label(b.label), *b.bbox) for b in boxes)


def _context(sample: Sample) -> dict[str, Any]:
    """The image context of a sample: description and boxes."""
    caption = _plain(sample.caption) if sample.caption and sample.caption.strip() else None
    locations = format_boxes(sample.objects)
    return {
        "caption": caption,
        "locations": locations,
        "has_caption": caption is not None,
        "has_boxes": bool(locations),
    }


def evolution_variables(operator: str, sample: Sample) -> dict[str, Any]:
    """Everything an evolution template may use."""
    values = _context(sample)
    values["operator"] = operator
    values["n_items"] = len(sample.qa)
    values["given_qa"] = _dumps([_core_json(q) for q in sample.qa])
    return values


def judge_variables(parent: Sample, child: Sample, context: bool = True) -> dict[str, Any]:
    """Everything the judge template may use: the items' question, answer and format, and (unless
    `context` is false: the default template does not show it) the parent's description and boxes."""
    values = _context(parent) if context else {}
    values["n_original"] = len(parent.qa)
    values["n_rewritten"] = len(child.qa)
    values["original_qa"] = _dumps([_judge_json(q) for q in parent.qa])
    values["rewritten_qa"] = _dumps([_judge_json(q) for q in child.qa])
    return values


# --------------------------------------------------------------------------- loading


class _Loader(jinja2.BaseLoader):
    """Serves the texts read once at load time, and records which files the templates used."""

    def __init__(self, texts: dict[str, str], paths: dict[str, Path]) -> None:
        self.texts = texts
        self.paths = paths
        self.used: set[str] = set()

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        if template not in self.texts:
            raise jinja2.TemplateNotFound(template)
        self.used.add(template)
        return self.texts[template], str(self.paths[template]), lambda: True


def _where(exc: BaseException, paths: dict[str, Path]) -> str:
    """``file line N`` of a template error, from the exception or from the rewritten traceback."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        name = exc.filename or exc.name or "?"
        return f"{name} line {exc.lineno}"
    known = {str(p) for p in paths.values()}
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename in known:
            return f"{frame.filename} line {frame.lineno}"
    return "a prompt template"


def _usage(exc: BaseException, paths: dict[str, Path], what: str) -> UsageError:
    """A template's failure as a one-line UsageError naming the file and line."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, jinja2.TemplateNotFound):
        message = f"includes {exc.name!r}, which is in no prompts folder"
    return UsageError(f"prompt template {_where(exc, paths)}: {message} ({what})")


_PROBES = (
    Sample(
        id="probe-1",
        caption="A probe description.",
        objects=[Box(label="cup", bbox=(0.1, 0.2, 0.3, 0.4))],
        qa=[
            QAS(
                question="probe question one?",
                answer="probe answer one.",
                objects=["cup"],
                skills=["Grounding"],
                steps=[Step(manipulation="Grounding_1(cup)->bbx_1", description="probe step.")],
            ),
            QAS(question="probe question two?", answer="probe answer two."),
        ],
    ),
    Sample(id="probe-2", qa=[QAS(question="probe question three?", answer="probe answer three.")]),
)


class PromptSet:
    """The compiled templates of a run and where each file came from."""

    def __init__(self, texts: dict[str, str], paths: dict[str, Path]) -> None:
        self._paths = paths
        self._texts = texts
        self._loader = _Loader({k: v for k, v in texts.items() if k != SYSTEM}, paths)
        self._env = jinja2.Environment(
            loader=self._loader,
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self.system: str = texts[SYSTEM].strip()
        self._templates: dict[str, jinja2.Template] = {}
        try:
            for name in (*OPERATORS, JUDGE):
                self._templates[name] = self._env.get_template(f"{name}.j2")
            judge_vars = self._variables(f"{JUDGE}.j2", set())
        except jinja2.TemplateError as exc:
            raise _usage(exc, paths, "cannot compile") from exc
        self._judge_context = judge_vars is None or bool(judge_vars & _CONTEXT_VARS)
        self._globals = {name: dict(template.globals) for name, template in self._templates.items()}
        self._check()

    def _variables(self, name: str, seen: set[str]) -> set[str] | None:
        """The variables a template and the templates it includes refer to (None: an include is dynamic)."""
        source = self._loader.get_source(self._env, name)[0]
        tree = self._env.parse(source, name, str(self._paths[name]))
        found = set(jinja2.meta.find_undeclared_variables(tree))
        for ref in jinja2.meta.find_referenced_templates(tree):
            if ref is None:
                return None
            if ref not in seen:
                seen.add(ref)
                inner = self._variables(ref, seen)
                if inner is None:
                    return None
                found |= inner
        return found

    @classmethod
    def load(cls, override: Path | None = None) -> PromptSet:
        """The default templates, with the files of `override` (if given) replacing them one by one."""
        paths = _template_files(default_prompts_dir())
        if override is not None:
            override = Path(override)
            if not override.is_dir():
                raise UsageError(f"--prompts {override}: no such folder")
            mine = _template_files(override)
            if not mine:
                raise UsageError(
                    f"--prompts {override}: no template files in it (expected some of {', '.join(REQUIRED)})"
                )
            paths.update(mine)
        missing = [name for name in REQUIRED if name not in paths]
        if missing:
            raise UsageError(f"prompt templates missing: {', '.join(missing)} (looked in {default_prompts_dir()})")
        texts: dict[str, str] = {}
        for name, path in paths.items():
            try:
                texts[name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"prompt template {path}: cannot read it ({exc})") from exc
        return cls(texts, paths)

    def _check(self) -> None:
        """Render every template on probe samples: errors surface now, not at the first request."""
        for probe in _PROBES:
            for operator in OPERATORS:
                values = evolution_variables(operator, probe)
                text = self._render(operator, values)
                if values["given_qa"] not in text:
                    raise UsageError(
                        f"prompt template {self._paths[operator + '.j2']}: never shows the given items "
                        "(use {{ given_qa }})"
                    )
        for parent, child in (_PROBES, _PROBES[::-1]):
            values = judge_variables(parent, child, self._judge_context)
            text = self._render(JUDGE, values)
            for shown in ("original_qa", "rewritten_qa"):
                if values[shown] not in text:
                    raise UsageError(
                        f"prompt template {self._paths[JUDGE + '.j2']}: never shows the "
                        f"{shown.split('_')[0]} items (use {{{{ {shown} }}}})"
                    )

    def _render(self, name: str, values: dict[str, Any]) -> str:
        template = self._templates[name]
        try:  # Template.render minus merging its globals (a ChainMap) into a new dict on every call
            context = template.new_context({**self._globals[name], **values}, shared=True)
            return template.environment.concat(template.root_render_func(context))
        except Exception:
            pass  # render again the documented way: its exception carries the template's file and line
        try:
            return template.render(values)
        except Exception as exc:  # a user's template may raise anything (1/0, a bad method call ...)
            raise _usage(exc, self._paths, f"rendering {name}.j2") from exc

    def render_evolution(self, operator: str, sample: Sample) -> str:
        """The user text asking `operator` to rewrite every Q&A&S of `sample`."""
        if operator not in OPERATORS:
            raise UsageError(f"unknown operator {operator!r}; expected one of {', '.join(OPERATORS)}")
        return self._render(operator, evolution_variables(operator, sample))

    def render_judge(self, parent: Sample, child: Sample) -> str:
        """The user text asking the judge about every rewrite of `child` against `parent`."""
        return self._render(JUDGE, judge_variables(parent, child, self._judge_context))

    def hashes(self) -> dict[str, str]:
        """sha256 of the text of each template file in use, by file name (for run.json)."""
        return {name: hashlib.sha256(self._texts[name].encode("utf-8")).hexdigest() for name in self._used()}

    def sources(self) -> dict[str, str]:
        """The folder each template file in use was read from, by file name."""
        return {name: str(self._paths[name].parent) for name in self._used()}

    def _used(self) -> list[str]:
        return sorted({*self._loader.used, SYSTEM})


def copy_templates(dest: Path, *, force: bool = False) -> list[Path]:
    """Copy the default templates into `dest` for editing; refuses to overwrite unless `force`."""
    files = _template_files(default_prompts_dir())
    targets = [(src, Path(dest) / name) for name, src in sorted(files.items())]
    existing = [str(target) for _, target in targets if target.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exist; pass --force to overwrite")
    Path(dest).mkdir(parents=True, exist_ok=True)
    for src, target in targets:
        shutil.copyfile(src, target)
    return [target for _, target in targets]
