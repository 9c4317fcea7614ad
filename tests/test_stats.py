"""evolve stats: exact numbers on real seed lines and synthetic judged files, run folders, table, JSON, plots."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from evolve.errors import InputError, UsageError
from evolve.plots import conv_label, write_plots
from evolve.sampling import margin_of_error
from evolve.stats import (
    StatsInput,
    StatsReport,
    compute_stats,
    entropy_bits,
    long_tail_share,
    render_table,
    resolve_inputs,
)
from evolve.verbnoun import SpacyExtractor

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mmevol_demo_seeds.jsonl"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def extractor() -> SpacyExtractor:
    return SpacyExtractor()


def item(question: str, answer: str = "Yes.", **fields: Any) -> dict[str, Any]:
    return {"question": question, "answer": answer, **fields}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


JUDGED = [
    {
        "id": "a",
        "qa": [
            item(
                "Describe the car.",
                "A red car.",
                skills=["a", "b"],
                steps=["s1", "s2", "s3"],
                objects=["Car", "tree"],
                improved=True,
                score=8,
            ),
            item(
                "Count the apples.",
                "There are five apples.",
                skills=["a"],
                steps=["s1"],
                objects=["apple"],
                improved=True,
                score=6,
            ),
            item("Describe the car.", "It is parked.", objects=["car"], improved=False, score=4),
        ],
    },
    {
        "id": "b",
        "seed_id": "b",  # canonical records carry seed_id: their "objects" are boxes
        "objects": [{"label": "stop sign", "bbox": [0, 0, 1, 1]}],
        "qa": [
            item("What color is the sign?", "Red.", skills=["x"], steps=["s1", "s2"], objects=["sign", "car"]),
            item(
                "Identify and count the apples.",
                "Two green apples and one red.",
                objects=["apple", "tree"],
                improved=True,
                score=7,
            ),
        ],
    },
]


# --------------------------------------------------------------------------- pure measures


def test_entropy_of_known_distributions() -> None:
    assert entropy_bits([2, 1, 1]) == pytest.approx(1.5)
    assert entropy_bits([5, 5, 5, 5]) == pytest.approx(2.0)
    assert entropy_bits([7]) == 0.0
    assert entropy_bits([]) is None
    assert entropy_bits([0, 0]) is None


def test_long_tail_share_is_mentions_outside_the_top_fifth_of_names() -> None:
    counts = Counter({"a": 5, "b": 3, "c": 1, "d": 1, "e": 1})  # head = ceil(0.2*5) = 1 name: a
    assert long_tail_share(counts) == pytest.approx(6 / 11)
    ten = Counter({f"n{i}": 10 - i for i in range(10)})  # head = 2 names: 10 + 9 of 55 mentions
    assert long_tail_share(ten) == pytest.approx(36 / 55)
    ties = Counter({"b": 1, "a": 1, "c": 1})  # head = 1 name, ties broken alphabetically
    assert long_tail_share(ties) == pytest.approx(2 / 3)
    assert long_tail_share(Counter()) is None


# --------------------------------------------------------------------------- compute_stats


def test_synthetic_judged_file_exact_numbers(tmp_path: Path, extractor: SpacyExtractor) -> None:
    path = write_jsonl(tmp_path / "judged.jsonl", JUDGED)
    report = compute_stats(resolve_inputs([path]), extractor, progress=False)
    col = report.columns[0]
    assert (col.name, col.kind, col.samples, col.qa_items, col.rejected_lines) == ("judged", "file", 2, 5, 0)
    assert col.qa_per_sample == 2.5
    assert col.question_tokens_mean == pytest.approx(19 / 5)  # 3 + 3 + 3 + 5 + 5
    assert col.answer_tokens_mean == pytest.approx(17 / 5)  # 3 + 4 + 3 + 1 + 6
    assert col.skills_length_mean == pytest.approx(0.8)  # 2 + 1 + 0 + 1 + 0
    assert col.step_length_mean == pytest.approx(1.2)  # 3 + 1 + 0 + 2 + 0
    assert col.skills_length_hist == {0: 2, 1: 2, 2: 1}
    assert col.step_length_hist == {0: 2, 1: 1, 2: 1, 3: 1}
    # judge: four items carry a verdict, three improved; scores 8, 6, 4, 7
    assert col.judged_items == 4
    assert col.improvement_rate == pytest.approx(0.75)
    assert col.score_mean == pytest.approx(6.25)
    assert col.accepted_score_mean == pytest.approx(7.0)
    assert col.score_counts == {"4": 1, "6": 1, "7": 1, "8": 1}
    assert col.accepted_score_counts == {"6": 1, "7": 1, "8": 1}
    # pairs: (describe, car) x2, (count, apple), none, (identify, apple)
    assert col.questions_with_verb == 4
    assert col.questions_with_pair == 4
    assert col.distinct_verbs == 3
    assert col.distinct_pairs == 3
    assert col.pair_entropy_bits == pytest.approx(1.5)
    assert col.no_pair_share == pytest.approx(0.2)
    assert col.top_verbs[0].verb == "describe" and col.top_verbs[0].count == 2
    assert [(n.name, n.count) for n in col.top_verbs[0].nouns] == [("car", 2)]
    assert [v.verb for v in col.top_verbs] == ["describe", "count", "identify"]
    # objects once per sample, boxes and items alike: a {car, tree, apple}, b {stop sign, sign, car, apple, tree}
    assert col.object_source == "boxes+items"
    assert (col.object_mentions, col.distinct_objects) == (8, 5)
    assert [(o.name, o.count) for o in col.top_objects] == [
        ("apple", 2),
        ("car", 2),
        ("tree", 2),
        ("sign", 1),
        ("stop sign", 1),
    ]
    assert col.long_tail_share == pytest.approx(6 / 8)  # head = ceil(0.2 * 5) = 1 name: apple
    # "Describe the car." twice
    assert (col.distinct_questions, col.duplicate_question_share) == (4, pytest.approx(0.2))
    assert (report.distinct_questions, report.parsed_texts) == (4, 4)
    assert report.parser == "spacy"
    assert not col.verb_noun_sampled and col.verb_noun_questions == 5 and col.share_moe_95 is None


def test_real_seed_lines_exact_numbers(tmp_path: Path, extractor: SpacyExtractor) -> None:
    if not SEEDS.is_file():
        pytest.skip(f"{SEEDS} not available")
    lines = SEEDS.read_text(encoding="utf-8").splitlines(keepends=True)[:2]
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    col = compute_stats(resolve_inputs([path]), extractor, progress=False).columns[0]
    assert (col.samples, col.qa_items, col.distinct_questions) == (2, 11, 11)
    assert col.question_tokens_mean == pytest.approx(102 / 11)
    assert col.answer_tokens_mean == pytest.approx(623 / 11)
    assert (col.skills_length_mean, col.step_length_mean) == (0.0, 0.0)
    assert col.judged_items == 0
    assert col.improvement_rate is None and col.score_mean is None and col.accepted_score_mean is None
    # see/tree, infer, happen, obtain/information, name/part, perform/function, describe, support/function
    assert col.distinct_verbs == 8
    assert col.distinct_pairs == 5
    assert col.pair_entropy_bits == pytest.approx(math.log2(5))
    assert col.no_pair_share == pytest.approx(6 / 11)
    # no item objects: the first sample's nine distinct box labels, the second has none
    assert col.object_source == "boxes"
    assert (col.object_mentions, col.distinct_objects) == (9, 9)
    assert col.long_tail_share == pytest.approx(7 / 9)


def test_unreadable_lines_are_counted_and_skipped(tmp_path: Path, extractor: SpacyExtractor) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(JUDGED[0]) + "\n{broken\n" + json.dumps({"id": "z", "qa": []}) + "\n")
    report = compute_stats(resolve_inputs([path]), extractor, progress=False)
    col = report.columns[0]
    assert (col.samples, col.rejected_lines, col.qa_items) == (1, 2, 3)
    console = Console(record=True, width=120)
    console.print(render_table(report))
    assert "unreadable lines (skipped)" in console.export_text()


def test_judge_numbers_come_from_the_judged_source(tmp_path: Path, extractor: SpacyExtractor) -> None:
    kept = write_jsonl(tmp_path / "kept.jsonl", [JUDGED[0]])
    judged = write_jsonl(tmp_path / "judged.jsonl", JUDGED)
    spec = StatsInput(name="round-1", kind="round", paths=(kept,), judged=(judged,))
    col = compute_stats([spec], extractor, progress=False).columns[0]
    assert (col.samples, col.qa_items) == (1, 3)  # measured on kept
    assert col.judged_items == 4  # verdicts from judged
    assert col.improvement_rate == pytest.approx(0.75)
    assert col.judged_files == [str(judged)]


def test_columns_share_one_parse_per_distinct_question(tmp_path: Path, extractor: SpacyExtractor) -> None:
    one = write_jsonl(tmp_path / "one.jsonl", JUDGED)
    two = write_jsonl(tmp_path / "two.jsonl", [JUDGED[1]])
    report = compute_stats(resolve_inputs([one, two]), extractor, progress=True)
    assert [c.name for c in report.columns] == ["one", "two"]
    assert report.distinct_questions == 4
    assert report.columns[1].qa_items == 2 and report.columns[1].distinct_pairs == 1


def test_report_json_round_trips(tmp_path: Path, extractor: SpacyExtractor) -> None:
    path = write_jsonl(tmp_path / "judged.jsonl", JUDGED)
    report = compute_stats(resolve_inputs([path]), extractor, progress=False)
    data = json.loads(report.model_dump_json())
    assert data["columns"][0]["pair_entropy_bits"] == pytest.approx(1.5)
    assert "long_tail_share" in data["definitions"]
    assert StatsReport.model_validate_json(report.model_dump_json()) == report


def test_render_table_has_a_column_per_input(tmp_path: Path, extractor: SpacyExtractor) -> None:
    one = write_jsonl(tmp_path / "one.jsonl", JUDGED)
    two = write_jsonl(tmp_path / "two.jsonl", [JUDGED[1]])
    table = render_table(compute_stats(resolve_inputs([one, two]), extractor, progress=False))
    assert [c.header for c in table.columns] == ["measure", "one", "two"]
    console = Console(record=True, width=120)
    console.print(table)
    text = console.export_text()
    for label in ("Q&A items", "verb–noun entropy (bits)", "improvement rate", "long-tail share", "verb #1"):
        assert label in text
    assert "75.0%" in text and "1.50" in text and "describe 2" in text


# --------------------------------------------------------------------------- run folders


def make_run(root: Path) -> Path:
    run = root / "run"
    seeds = write_jsonl(root / "data" / "seeds.jsonl", [JUDGED[1]])
    write_jsonl(run / "local-seeds.jsonl", [JUDGED[0]])
    run.mkdir(parents=True, exist_ok=True)
    (run / "run.json").write_text(json.dumps({"seeds": ["local-seeds.jsonl", str(seeds)]}), encoding="utf-8")
    write_jsonl(run / "baseline.jsonl", JUDGED)
    for number in (1, 2, 10):
        write_jsonl(run / f"round-{number}" / "kept.jsonl", [JUDGED[0]])
    write_jsonl(run / "round-1" / "judged.jsonl", JUDGED)
    (run / "round-3").mkdir()  # unfinished round: no kept.jsonl
    (run / "notes").mkdir()
    return run


def test_run_folder_discovery(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    inputs = resolve_inputs([run])
    assert [(i.name, i.kind) for i in inputs] == [
        ("seeds", "seeds"),
        ("round-1", "round"),
        ("round-2", "round"),
        ("round-10", "round"),
    ]
    assert inputs[0].paths == (run / "local-seeds.jsonl", tmp_path / "data" / "seeds.jsonl")
    assert inputs[0].judged == (run / "baseline.jsonl",)
    assert inputs[1].paths == (run / "round-1" / "kept.jsonl",)
    assert inputs[1].judged == (run / "round-1" / "judged.jsonl",)
    assert inputs[2].judged == ()


def test_run_folder_stats(tmp_path: Path, extractor: SpacyExtractor) -> None:
    report = compute_stats(resolve_inputs([make_run(tmp_path)]), extractor, progress=False)
    seeds, round1, round2, _ = report.columns
    assert (seeds.samples, seeds.qa_items) == (2, 5)
    assert seeds.judged_items == 4  # from baseline.jsonl
    assert round1.qa_items == 3 and round1.improvement_rate == pytest.approx(0.75)
    assert round2.judged_items == 3 and round2.improvement_rate == pytest.approx(2 / 3)  # kept's own verdicts


def test_annotated_seeds_are_the_seeds_column(tmp_path: Path, extractor: SpacyExtractor) -> None:
    run = make_run(tmp_path)
    annotated = write_jsonl(run / "round-0" / "annotated.jsonl", JUDGED)  # what --annotate wrote
    inputs = resolve_inputs([run])
    assert [i.name for i in inputs] == ["seeds", "round-1", "round-2", "round-10"]  # round 0 is not a round
    assert inputs[0].paths == (annotated,)
    seeds = compute_stats(inputs, extractor, progress=False).columns[0]
    assert (seeds.samples, seeds.qa_items) == (2, 5)  # both records, not the one-record seed files


def test_parquet_seeds_of_a_run_are_read_with_its_columns(tmp_path: Path, extractor: SpacyExtractor) -> None:
    pa = pytest.importorskip("pyarrow", reason="pyarrow comes with the parquet extra")
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    run.mkdir()
    table = pa.table({"img": ["a.png", "b.png"], "q": ["Describe the car.", "Count the apples."], "a": ["Red.", "5."]})
    pq.write_table(table, run / "seeds.parquet")
    config = {"columns": "image=img,question=q,answer=a"}
    (run / "run.json").write_text(json.dumps({"seeds": ["seeds.parquet"], "config": config}), encoding="utf-8")
    [seeds] = compute_stats(resolve_inputs([run]), extractor, progress=False).columns
    assert (seeds.samples, seeds.qa_items, seeds.rejected_lines) == (2, 2, 0)
    assert {v.verb for v in seeds.top_verbs} == {"describe", "count"}


def test_duplicate_names_get_their_folder(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a" / "kept.jsonl", JUDGED)
    b = write_jsonl(tmp_path / "b" / "kept.jsonl", JUDGED)
    c = write_jsonl(tmp_path / "c.jsonl", JUDGED)
    assert [i.name for i in resolve_inputs([a, b, c])] == ["a/kept", "b/kept", "c"]


def test_bad_inputs_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        resolve_inputs([tmp_path / "missing.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a run folder"):
        resolve_inputs([tmp_path / "empty"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"seeds": ["gone.jsonl"]}), encoding="utf-8")
    with pytest.raises(InputError, match=r"seed file gone\.jsonl not found"):
        resolve_inputs([run])
    (run / "run.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="unreadable"):
        resolve_inputs([run])


# --------------------------------------------------------------------------- plots


def test_plots_are_written_as_pngs(tmp_path: Path, extractor: SpacyExtractor) -> None:
    report = compute_stats(resolve_inputs([make_run(tmp_path)]), extractor, progress=False)
    paths = write_plots(report, tmp_path / "plots")
    names = [p.name for p in paths]
    assert names == [
        "sunburst-seeds.png",
        "sunburst-round-1.png",
        "sunburst-round-2.png",
        "sunburst-round-10.png",
        "sunburst-seeds-vs-round-10.png",
        "score-density.png",
        "skills-length.png",
        "step-length.png",
        "object-long-tail.png",
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    # the paper's figure: seed and final sunbursts side by side, each as wide as a single one
    assert png_width(tmp_path / "plots" / "sunburst-seeds-vs-round-10.png") == 2 * png_width(paths[0])


def png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # IHDR width


def test_plots_without_scores_or_objects_still_written(tmp_path: Path, extractor: SpacyExtractor) -> None:
    path = write_jsonl(tmp_path / "plain.jsonl", [{"id": "x", "qa": [item("Is there a dog?")]}])
    report = compute_stats(resolve_inputs([path]), extractor, progress=False)
    paths = write_plots(report, tmp_path / "out")
    assert len(paths) == 5
    assert all(p.read_bytes().startswith(PNG) for p in paths)


# --------------------------------------------------------------------------- duplicates, objects, sampling


def test_demo_seeds_duplicate_share_is_counted_over_every_item_even_when_sampling(tmp_path: Path) -> None:
    if not SEEDS.is_file():
        pytest.skip(f"{SEEDS} not available")
    report = compute_stats(resolve_inputs([SEEDS]), SpacyExtractor(), sample=40, progress=False)
    col = report.columns[0]
    assert (col.qa_items, col.distinct_questions) == (9878, 8369)
    assert col.duplicate_question_share == pytest.approx(1509 / 9878)  # 15.3%: exact repeats among the seeds
    assert col.verb_noun_sampled and col.verb_noun_questions == 40
    # seeds have no item objects: their boxes are counted, once per sample, names normalised
    assert col.object_source == "boxes" and col.distinct_objects == 79


def test_object_names_are_normalised_and_counted_once_per_sample(tmp_path: Path, extractor: SpacyExtractor) -> None:
    records = [
        {
            "id": "s1",
            "seed_id": "s1",
            "objects": [{"label": "traffic light", "bbox": [0, 0, 1, 1]}, {"label": "car", "bbox": [0, 0, 1, 1]}],
            "qa": [
                item("Describe the car.", objects=["Traffic lights", "yellow cat", "cars"]),
                item("Count the cats.", objects=["cat", "hot dogs", '{"name": "Man\'s hat"}']),
            ],
        },
        {"id": "s2", "qa": [item("Describe the cat.", objects=["cats", "the yellow cats", "person with suitcase"])]},
    ]
    path = write_jsonl(tmp_path / "objects.jsonl", records)
    col = compute_stats(resolve_inputs([path]), extractor, progress=False).columns[0]
    assert col.object_source == "boxes+items"
    assert {o.name: o.count for o in col.top_objects} == {
        "cat": 2,
        "traffic light": 1,
        "car": 1,
        "hot dog": 1,
        "hat": 1,
        "person": 1,
    }
    assert col.object_mentions == 7


def many_questions(path: Path, copies: int) -> Path:
    """`copies` samples of four distinct questions each (4 * copies questions)."""
    records = [
        {
            "id": f"x{i}",
            "qa": [
                item(f"Describe the car number {i}."),
                item(f"Count the apples in basket {i}."),
                item(f"What color is sign {i}?"),
                item(f"Identify the dog near tree {i}." if i % 2 else f"Read the label of box {i}."),
            ],
        }
        for i in range(copies)
    ]
    return write_jsonl(path, records)


def test_sample_is_seeded_uniform_and_reports_its_margin_of_error(tmp_path: Path, extractor: SpacyExtractor) -> None:
    path = many_questions(tmp_path / "many.jsonl", 100)  # 400 questions
    inputs = resolve_inputs([path])
    one = compute_stats(inputs, extractor, sample=80, sample_seed=1, progress=False)
    again = compute_stats(inputs, extractor, sample=80, sample_seed=1, progress=False)
    other = compute_stats(inputs, extractor, sample=80, sample_seed=2, progress=False)
    full = compute_stats(inputs, extractor, progress=False).columns[0]
    col = one.columns[0]
    assert (one.sample, one.sample_seed) == (80, 1)
    assert col.model_dump() == again.columns[0].model_dump()
    assert [v.count for v in col.top_verbs] != [v.count for v in other.columns[0].top_verbs]
    assert (col.verb_noun_sampled, col.verb_noun_questions, col.qa_items) == (True, 80, 400)
    assert sum(v.count for v in col.top_verbs) == col.questions_with_verb <= 80
    # every other number counts all 400 items
    assert (col.distinct_questions, col.question_tokens_mean) == (full.distinct_questions, full.question_tokens_mean)
    assert not full.verb_noun_sampled and full.no_pair_share_moe_95 is None
    assert col.no_pair_share is not None and col.no_pair_share_moe_95 is not None
    assert col.no_pair_share_moe_95 == pytest.approx(margin_of_error(col.no_pair_share, 80, 400))
    assert col.share_moe_95 == pytest.approx(margin_of_error(0.5, 80, 400))
    assert full.no_pair_share is not None and abs(col.no_pair_share - full.no_pair_share) <= col.no_pair_share_moe_95
    describe = next(v for v in col.top_verbs if v.verb == "describe")
    assert describe.share == pytest.approx(describe.count / 80)
    assert describe.share_moe_95 == pytest.approx(margin_of_error(describe.share, 80, 400))


def test_sample_as_large_as_the_column_is_the_exact_count(tmp_path: Path, extractor: SpacyExtractor) -> None:
    path = write_jsonl(tmp_path / "judged.jsonl", JUDGED)
    exact = compute_stats(resolve_inputs([path]), extractor, progress=False)
    sampled = compute_stats(resolve_inputs([path]), extractor, sample=5, progress=False)
    assert sampled.columns[0].model_dump() == exact.columns[0].model_dump()
    assert not sampled.columns[0].verb_noun_sampled and sampled.columns[0].no_pair_share_moe_95 is None


def test_sampled_table_says_which_numbers_are_estimates(tmp_path: Path, extractor: SpacyExtractor) -> None:
    path = many_questions(tmp_path / "many.jsonl", 50)
    report = compute_stats(resolve_inputs([path]), extractor, sample=60, progress=False)
    console = Console(record=True, width=160)
    console.print(render_table(report))
    text = console.export_text()
    assert "verb–noun measured on" in text and "sample 60 of 200" in text
    assert "±" in text and "~ = estimate from a uniform sample" in text
    exact = Console(record=True, width=160)
    exact.print(render_table(compute_stats(resolve_inputs([path]), extractor, progress=False)))
    assert "±" not in exact.export_text() and "measured on" not in exact.export_text()


def test_sample_must_be_positive(tmp_path: Path, extractor: SpacyExtractor) -> None:
    path = write_jsonl(tmp_path / "judged.jsonl", JUDGED)
    with pytest.raises(UsageError, match="--sample"):
        compute_stats(resolve_inputs([path]), extractor, sample=0, progress=False)


def test_conv_labels_follow_the_paper(tmp_path: Path, extractor: SpacyExtractor) -> None:
    report = compute_stats(resolve_inputs([make_run(tmp_path)]), extractor, progress=False)
    labels = [conv_label(c) for c in report.columns]
    assert labels[0] == "Conv0: seeds judged against themselves"
    assert labels[1].startswith("Conv1: round-1") and labels[3].startswith("Conv10: round-10")
    assert conv_label(report.columns[0].model_copy(update={"kind": "file", "name": "mine"})) == "mine"
