"""The prompt templates (jinja2 files in ``prompts/``) and their renderer.

Seed text reaches a template only as a variable, never as template source, so braces, ``{{ }}``,
``{% %}``, quotes and backslashes in the data render verbatim. A user's ``--prompts DIR`` replaces the
default templates file by file; every template is compiled and test-rendered once at load time, so a
syntax error, an undefined variable or a template that never shows the items is a `UsageError` naming
the file and line before any request is sent.

Layout for provider prompt caching: a template may consist of two blocks, ``{% block fixed %}`` (the
text that does not depend on the sample: instructions, schema, examples) and ``{% block sample %}``
(the sample's description, boxes, items and the final instruction), and nothing outside them. Each
render is then a `PromptParts` whose ``fixed + sample`` is the whole prompt; the client sends the fixed
text first, then the image, then the sample's text. The fixed part is rendered once per distinct value
of the variables it uses (for the defaults: the operator and whether the sample has boxes) and reused.
A template without blocks renders as one sample part (``fixed == ""``).

Contract with the parsers of prompts (the fake test server): each kind shows its items as a ```json
array right after its LAST heading line: ``### Given Q&A&S`` (evolution; never ``### Original Q&A&S``),
``### Rewritten Q&A&S`` after ``### Original Q&A&S`` (judge), ``### Q&A&S to Annotate`` (annotation),
``### Q&A&S to Split`` (claim splitting) and ``### Claims to Check`` (claim checking). Seed text cannot
break this: a reserved heading inside the data is escaped (``#`` as ``\\u0023`` in JSON, ``##`` in the
description).
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import re
import shutil
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import nodes

import evolve
from evolve.errors import UsageError
from evolve.records import QAS, Box, Sample, Step

OPERATORS: tuple[str, ...] = ("perceptual", "reasoning", "interaction")
JUDGE = "judge"
ANNOTATE = "annotate"
CLAIMS_SPLIT = "claims_split"
CLAIMS_CHECK = "claims_check"
TASKS: tuple[str, ...] = (*OPERATORS, JUDGE, ANNOTATE, CLAIMS_SPLIT, CLAIMS_CHECK)
PREFIX = "_prefix.j2"
SYSTEM = "system.txt"
REQUIRED: tuple[str, ...] = (*(f"{task}.j2" for task in TASKS), SYSTEM)
FIXED_BLOCK = "fixed"
SAMPLE_BLOCK = "sample"
MAX_CLAIMS = 5  # per item, asked of the claim splitter

GIVEN_HEADING = "### Given Q&A&S"
ORIGINAL_HEADING = "### Original Q&A&S"
REWRITTEN_HEADING = "### Rewritten Q&A&S"
ANNOTATE_HEADING = "### Q&A&S to Annotate"
SPLIT_HEADING = "### Q&A&S to Split"
CHECK_HEADING = "### Claims to Check"
_RESERVED = re.compile(
    r"#+(?= (?:Given Q&A&S|Original Q&A&S|Rewritten Q&A&S|Q&A&S to Annotate|Q&A&S to Split|Claims to Check))"
)
_CONTEXT_VARS = frozenset({"caption", "locations", "has_caption", "has_boxes"})
_OFFICIAL_TAGS = {"bf_in_breath": "perceptual", "df_cot": "reasoning", "df_format": "interaction"}
_FIXED_CACHE_MAX = 256  # distinct fixed parts kept (a fixed block that uses sample data would grow it)
_enc: Callable[[str], str] = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


@dataclass(frozen=True, slots=True)
class PromptParts:
    """A prompt as the text that does not depend on the sample (a cacheable prefix) and the sample's text."""

    fixed: str
    sample: str

    @property
    def text(self) -> str:
        """The whole prompt, exactly as the plain ``render_*`` returns it."""
        return self.fixed + self.sample


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


def _object_json(fields: Iterable[tuple[str, str]]) -> str:
    """One element of an ``indent=1`` JSON array from (key, already encoded value) pairs."""
    return " {\n" + ",\n".join(f'  "{key}": {value}' for key, value in fields) + "\n }"


def _judge_json(item: QAS, operator: str | None) -> str:
    """What the judge sees of an item: question, answer and format, plus what the operator's criterion
    is about (the objects of a perceptual rewrite, the steps of a reasoning one)."""
    text = ' {\n  "question": ' + _enc(item.question) + ',\n  "answer": ' + _enc(item.answer)
    text += ',\n  "format": ' + _enc(item.format)
    if operator == "perceptual":
        text += ',\n  "objects": ' + _names(item.objects)
    elif operator == "reasoning":
        text += ',\n  "steps": ' + _steps(item.steps)
    return text + "\n }"


def _dumps(elements: list[str]) -> str:
    """The JSON block of a prompt from its encoded elements; a reserved heading inside the data gets its
    ``#`` written ``\\u0023`` (the same JSON value, but no longer the heading text)."""
    text = "[\n" + ",\n".join(elements) + "\n]" if elements else "[]"
    if "#" in text and _RESERVED.search(text):
        text = text.replace("#", "\\u0023")
    return text


def _plain(text: str) -> str:
    """Free text shown outside a JSON block: a reserved heading inside it is demoted to ``##``."""
    if "#" in text:
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


def judged_operator(operator: str | None) -> str | None:
    """The operator whose criterion the judge applies: one of OPERATORS (official tags mapped), else None."""
    operator = _OFFICIAL_TAGS.get(operator or "", operator)
    return operator if operator in OPERATORS else None


def evolution_variables(operator: str, sample: Sample) -> dict[str, Any]:
    """Everything an evolution template may use."""
    values = _context(sample)
    values["operator"] = operator
    values["n_items"] = len(sample.qa)
    values["given_qa"] = _dumps([_core_json(q) for q in sample.qa])
    return values


def judge_variables(parent: Sample, child: Sample, context: bool = True) -> dict[str, Any]:
    """Everything the judge template may use: the child's operator, the items (question, answer, format
    and the operator's own field), and (unless `context` is false: the default template does not show
    it) the parent's description and boxes."""
    operator = judged_operator(child.operator)
    values = _context(parent) if context else {}
    values["operator"] = operator
    values["n_original"] = len(parent.qa)
    values["n_rewritten"] = len(child.qa)
    values["original_qa"] = _dumps([_judge_json(q, operator) for q in parent.qa])
    values["rewritten_qa"] = _dumps([_judge_json(q, operator) for q in child.qa])
    return values


def annotation_variables(sample: Sample, context: bool = True) -> dict[str, Any]:
    """Everything the annotation template may use: the items' index, position, question and answer."""
    values = _context(sample) if context else {}
    values["n_items"] = len(sample.qa)
    values["items_qa"] = _dumps(
        [
            _object_json(
                (
                    ("index", str(number)),
                    ("image_position", _enc(q.image_position)),
                    ("question", _enc(q.question)),
                    ("answer", _enc(q.answer)),
                )
            )
            for number, q in enumerate(sample.qa, start=1)
        ]
    )
    return values


def claim_split_variables(sample: Sample, context: bool = True) -> dict[str, Any]:
    """Everything the claim-splitting template may use: the items' index, question and answer."""
    values = _context(sample) if context else {}
    values["n_items"] = len(sample.qa)
    values["max_claims"] = MAX_CLAIMS
    values["items_qa"] = _dumps(
        [
            _object_json((("index", str(number)), ("question", _enc(q.question)), ("answer", _enc(q.answer))))
            for number, q in enumerate(sample.qa, start=1)
        ]
    )
    return values


def claim_check_variables(sample: Sample, claims: list[list[str]], context: bool = True) -> dict[str, Any]:
    """Everything the claim-checking template may use: the claims of all items, numbered from 1."""
    flat = [claim for item_claims in claims for claim in item_claims]
    values = _context(sample) if context else {}
    values["n_claims"] = len(flat)
    values["claims_json"] = _dumps(
        [_object_json((("id", str(number)), ("claim", _enc(c)))) for number, c in enumerate(flat, start=1)]
    )
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
_PROBE_CLAIMS = ([["probe claim one.", "probe claim two."], []], [["probe claim three."]])


@dataclass(frozen=True)
class _Compiled:
    """One task's template: its blocks, the variables its fixed block depends on, and whether it shows
    the sample's description and boxes."""

    name: str
    template: jinja2.Template
    globals: dict[str, Any]
    blocks: tuple[str, ...]  # (), or the layout blocks it defines, in order
    fixed_keys: tuple[str, ...] | None  # None: unknown (a dynamic include), the fixed part is not reused
    context: bool


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
        self._fixed_cache: dict[tuple[Any, ...], str] = {}
        self._compiled: dict[str, _Compiled] = {}
        try:
            for task in TASKS:
                self._compiled[task] = self._compile(task)
        except jinja2.TemplateError as exc:
            raise _usage(exc, paths, "cannot compile") from exc
        self._check()

    def _compile(self, task: str) -> _Compiled:
        name = f"{task}.j2"
        template = self._env.get_template(name)
        tree = self._parse(name)
        blocks = self._layout(tree, name)
        used = self._variables(name, set())
        fixed_keys: tuple[str, ...] | None = ()
        if FIXED_BLOCK in blocks:
            fixed = next(n for n in tree.body if isinstance(n, nodes.Block) and n.name == FIXED_BLOCK)
            fixed_vars = self._node_variables(nodes.Template(fixed.body, lineno=fixed.lineno), set())
            fixed_keys = None if fixed_vars is None else tuple(sorted(fixed_vars))
        context = used is None or bool(used & _CONTEXT_VARS)
        return _Compiled(task, template, dict(template.globals), blocks, fixed_keys, context)

    def _parse(self, name: str) -> nodes.Template:
        source = self._loader.get_source(self._env, name)[0]
        return self._env.parse(source, name, str(self._paths[name]))

    def _layout(self, tree: nodes.Template, name: str) -> tuple[str, ...]:
        """The layout blocks a template defines; refuses output outside them once it uses them."""
        top = [n.name for n in tree.body if isinstance(n, nodes.Block)]
        if not {FIXED_BLOCK, SAMPLE_BLOCK} & set(top):
            return ()
        path = self._paths[name]
        for node in tree.body:
            if isinstance(node, nodes.Block) and node.name in (FIXED_BLOCK, SAMPLE_BLOCK):
                continue
            if isinstance(node, nodes.Output) and all(
                isinstance(part, nodes.TemplateData) and not part.data.strip() for part in node.nodes
            ):
                continue
            raise UsageError(
                f"prompt template {path} line {node.lineno}: text outside {{% block {FIXED_BLOCK} %}} and "
                f"{{% block {SAMPLE_BLOCK} %}} (put it inside one of them)"
            )
        if top == [SAMPLE_BLOCK, FIXED_BLOCK]:
            raise UsageError(f"prompt template {path}: {{% block {FIXED_BLOCK} %}} must come first")
        return tuple(top)

    def _variables(self, name: str, seen: set[str]) -> set[str] | None:
        """The variables a template and the templates it includes refer to (None: an include is dynamic)."""
        return self._node_variables(self._parse(name), seen)

    def _node_variables(self, tree: nodes.Template, seen: set[str]) -> set[str] | None:
        tree.set_environment(self._env)
        found = set(jinja2.meta.find_undeclared_variables(tree))
        for ref in jinja2.meta.find_referenced_templates(tree):
            if ref is None:
                return None
            if ref not in self._loader.texts:
                continue  # the probe render reports it, with the file and line of the include
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
                self._require(operator, evolution_variables(operator, probe), "given_qa", "given items")
            self._require(ANNOTATE, self._annotation_values(probe), "items_qa", "items")
            self._require(CLAIMS_SPLIT, self._claim_split_values(probe), "items_qa", "items")
        for probe, claims in zip(_PROBES, _PROBE_CLAIMS, strict=True):
            self._require(CLAIMS_CHECK, self._claim_check_values(probe, claims), "claims_json", "claims")
        for parent, child in (_PROBES, _PROBES[::-1]):
            for judged in (None, *OPERATORS):
                values = self._judge_values(parent, child.model_copy(update={"operator": judged}))
                self._require(JUDGE, values, "original_qa", "original items")
                self._require(JUDGE, values, "rewritten_qa", "rewritten items")

    def _require(self, task: str, values: dict[str, Any], shown: str, what: str) -> None:
        """Refuse a template whose render does not show `values[shown]`."""
        if values[shown] not in self._parts(task, values).text:
            raise UsageError(
                f"prompt template {self._paths[task + '.j2']}: never shows the {what} (use {{{{ {shown} }}}})"
            )

    # rendering ---------------------------------------------------------------------------------

    def _run(self, compiled: _Compiled, block: str | None, values: dict[str, Any]) -> str:
        """Render a whole template (block None) or one of its blocks."""
        template = compiled.template
        try:  # Template.render minus merging its globals (a ChainMap) into a new dict on every call
            context = template.new_context({**compiled.globals, **values}, shared=True)
            render = template.root_render_func if block is None else template.blocks[block]
            return template.environment.concat(render(context))
        except Exception:  # a user's template may raise anything (1/0, a bad method call ...)
            try:
                self._env.handle_exception()  # re-raises with the template's file and line in the traceback
            except Exception as exc:
                raise _usage(exc, self._paths, f"rendering {compiled.name}.j2") from exc
            raise  # pragma: no cover - handle_exception always raises

    def _parts(self, task: str, values: dict[str, Any]) -> PromptParts:
        compiled = self._compiled[task]
        if not compiled.blocks:
            return PromptParts("", self._run(compiled, None, values))
        fixed = ""
        if FIXED_BLOCK in compiled.blocks:
            key = None if compiled.fixed_keys is None else (task, *map(values.get, compiled.fixed_keys))
            known = None if key is None else self._fixed_cache.get(key)
            if known is None:
                known = self._run(compiled, FIXED_BLOCK, values)
                if key is not None and len(self._fixed_cache) < _FIXED_CACHE_MAX:
                    self._fixed_cache[key] = known
            fixed = known
        sample = self._run(compiled, SAMPLE_BLOCK, values) if SAMPLE_BLOCK in compiled.blocks else ""
        return PromptParts(fixed, sample)

    def _judge_values(self, parent: Sample, child: Sample) -> dict[str, Any]:
        return judge_variables(parent, child, self._compiled[JUDGE].context)

    def _annotation_values(self, sample: Sample) -> dict[str, Any]:
        return annotation_variables(sample, self._compiled[ANNOTATE].context)

    def _claim_split_values(self, sample: Sample) -> dict[str, Any]:
        return claim_split_variables(sample, self._compiled[CLAIMS_SPLIT].context)

    def _claim_check_values(self, sample: Sample, claims: list[list[str]]) -> dict[str, Any]:
        return claim_check_variables(sample, claims, self._compiled[CLAIMS_CHECK].context)

    def render_evolution_parts(self, operator: str, sample: Sample) -> PromptParts:
        """The prompt asking `operator` to rewrite every Q&A&S of `sample`, as fixed and sample parts."""
        if operator not in OPERATORS:
            raise UsageError(f"unknown operator {operator!r}; expected one of {', '.join(OPERATORS)}")
        return self._parts(operator, evolution_variables(operator, sample))

    def render_evolution(self, operator: str, sample: Sample) -> str:
        """The user text asking `operator` to rewrite every Q&A&S of `sample`."""
        return self.render_evolution_parts(operator, sample).text

    def render_judge_parts(self, parent: Sample, child: Sample) -> PromptParts:
        """The judge's prompt about every rewrite of `child` against `parent` (criterion: child.operator)."""
        return self._parts(JUDGE, self._judge_values(parent, child))

    def render_judge(self, parent: Sample, child: Sample) -> str:
        """The user text asking the judge about every rewrite of `child` against `parent`."""
        return self.render_judge_parts(parent, child).text

    def render_annotation_parts(self, sample: Sample) -> PromptParts:
        """The prompt asking for objects, skills and steps of every item of `sample`, as two parts."""
        return self._parts(ANNOTATE, self._annotation_values(sample))

    def render_annotation(self, sample: Sample) -> str:
        """The user text asking for objects, skills and steps of every item of `sample`."""
        return self.render_annotation_parts(sample).text

    def render_claim_split_parts(self, sample: Sample) -> PromptParts:
        """The (text-only) prompt splitting each item's answer into yes/no claims, as two parts."""
        return self._parts(CLAIMS_SPLIT, self._claim_split_values(sample))

    def render_claim_split(self, sample: Sample) -> str:
        """The (text-only) user text splitting each item's answer into yes/no claims."""
        return self.render_claim_split_parts(sample).text

    def render_claim_check_parts(self, sample: Sample, claims: list[list[str]]) -> PromptParts:
        """The prompt (sent with the image) asking yes/no/unsure for each claim of each item, as two parts."""
        return self._parts(CLAIMS_CHECK, self._claim_check_values(sample, claims))

    def render_claim_check(self, sample: Sample, claims: list[list[str]]) -> str:
        """The user text (sent with the image) asking yes/no/unsure for every claim, numbered from 1."""
        return self.render_claim_check_parts(sample, claims).text

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
