"""`evolve report`: the numbers against the run folder, the bounded stratified sample, generic fields of newer
stages, and the page itself in a real headless browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from evolve.cli import app
from evolve.lineage import Span, iter_blocks, open_run, seed_ids_in
from evolve.records import QAS, Drop, Sample
from evolve.report import build_report, collect
from evolve.tally import Strata

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "seeds"
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def lines(path: Path) -> list[dict[str, Any]]:
    """Decoded JSONL lines of a file (none when it is absent)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def embedded_data(html_file: Path) -> dict[str, Any]:
    """The JSON the page renders from."""
    text = html_file.read_text(encoding="utf-8")
    match = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', text, re.S)
    assert match, "the report embeds its data"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


@pytest.fixture
def run_dir(demo_run: Path) -> Path:
    """The session's demo run (conftest): 3 rounds of the 10 demo seeds, 40% of rewrites rejected."""
    return demo_run


@pytest.fixture(scope="module")
def report_file(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`evolve report RUN -o FILE`, through the CLI."""
    target = tmp_path_factory.mktemp("html") / "report.html"
    result = CliRunner().invoke(app, ["report", str(demo_run), "-o", str(target), "--quiet"])
    assert result.exit_code == 0, result.output
    return target


def dropped_with_operator(run: Path, operator: str) -> set[str]:
    """Seeds with a dropped record of this operator in some round, read straight from the run folder."""
    found = set()
    for path in sorted(run.glob("round-*/dropped.jsonl")):
        for record in lines(path):
            op = record.get("operator") or (record.get("sample") or {}).get("operator")
            if op == operator:
                found.add(record["seed_id"])
    return found


# --------------------------------------------------------------------------- the file and its numbers


def test_report_is_one_self_contained_file(report_file: Path, run_dir: Path) -> None:
    text = report_file.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "nothing is fetched from a network"
    assert "<link" not in text and "@import" not in text
    data = embedded_data(report_file)
    seeds = lines(SEEDS / "demo.jsonl")
    assert len(data["samples"]) == len(seeds)  # fewer seeds than --samples: every seed is shown
    for card in data["samples"]:
        assert card["thumb"] and card["thumb"].startswith("data:image/jpeg;base64,")
        assert [r["round"] for r in card["rounds"]] == [1, 2, 3]
        assert card["seed"] and card["where"].startswith(str(SEEDS / "demo.jsonl"))
    assert data["run"]["status"] == "done"


def test_numbers_match_the_run_folder(report_file: Path, run_dir: Path) -> None:
    data = embedded_data(report_file)
    columns = {c["name"]: c for c in data["columns"]}
    assert columns["seeds"]["samples"] == 10
    assert columns["seeds"]["items"] == sum(len(r["conversations_v0"]) for r in lines(SEEDS / "demo.jsonl"))
    for number in (1, 2, 3):
        folder = run_dir / f"round-{number}"
        judged = [item for record in lines(folder / "judged.jsonl") for item in record["qa"]]
        kept = [item for record in lines(folder / "kept.jsonl") for item in record["qa"]]
        drops = Counter()
        for record in lines(folder / "dropped.jsonl"):
            drops[record["stage"]] += len((record.get("sample") or {}).get("qa") or [])
        column = columns[f"round-{number}"]
        assert column["judged_items"] == len(judged)
        assert column["improved_items"] == sum(bool(i["improved"]) for i in judged)
        assert column["kept_items"] == len(kept)
        assert {s: d["items"] for s, d in column["drops"].items()} == dict(drops)
        assert sum(column["score_hist"]) == sum(i["score"] is not None for i in judged)
        run_json = json.loads((run_dir / "run.json").read_text())["rounds"][str(number)]
        assert column["improvement_rate"] == pytest.approx(run_json["improvement_rate"], abs=1e-4)
    assert sum(sum(d["items"] for d in c.get("drops", {}).values()) for c in data["columns"]) > 0


def test_a_card_holds_every_round_with_verdicts_diffs_and_drop_reasons(report_file: Path, run_dir: Path) -> None:
    data = embedded_data(report_file)
    drop = next(r for r in lines(run_dir / "round-1" / "dropped.jsonl") if r["stage"] == "eliminate")
    card = next(c for c in data["samples"] if c["id"] == drop["seed_id"])
    first = card["rounds"][0]
    assert first["operator"] == drop["operator"]
    dropped = [item for item in first["items"] if item["status"] == "dropped"]
    assert len(dropped) == len(drop["sample"]["qa"])
    assert all(item["stage"] == "eliminate" and item["reason"] == drop["reason"] for item in dropped)
    assert all(item["f"]["reason"] and item["f"]["score"] is not None for item in first["items"])
    # a word diff against the parent (round 1: the seed): its old side is a seed question, its new side the rewrite
    for item in first["items"]:
        old = " ".join(text for op, text in item["diff"] if op != "+")
        new = " ".join(text for op, text in item["diff"] if op != "-")
        assert new.split() == item["f"]["question"].split()
        assert old.split() in [q["question"].split() for q in card["seed"]]
        assert any(op == "+" for op, _ in item["diff"])


# --------------------------------------------------------------------------- the sample


def test_strata_choose_covers_every_stratum_and_ignores_order() -> None:
    events = [(f"op{i % 3}|kept|high" if i % 7 else "op1|dropped:verify|low", f"seed-{i}") for i in range(3000)]
    events += [("op2|dropped:dedup|unscored", "rare-1"), ("op2|dropped:dedup|unscored", "rare-2")]

    def strata(order: list[tuple[str, str]]) -> Strata:
        whole, part = Strata(20), Strata(20)
        for index, (key, seed) in enumerate(order):
            (whole if index % 2 else part).add(key, seed, hash(seed) & 0xFFFF_FFFF)
        whole.merge(part)
        return whole

    shuffled = events[:]
    random.Random(1).shuffle(shuffled)
    a, b = strata(events), strata(shuffled)
    assert a.choose(20) == b.choose(20)  # the same seeds whatever the order the lines came in
    chosen = a.choose(20)
    assert len(chosen) == 20 == len(set(chosen))
    assert {"rare-1", "rare-2"} <= set(chosen)  # a rare drop stage is never crowded out
    assert all(len(members) <= 40 for members in a.members.values())  # bounded: 2 x capacity at most
    assert a.events["op1|dropped:verify|low"] == sum(1 for k, _ in events if k == "op1|dropped:verify|low")


def _rewrite(i: int, number: int) -> Sample:
    """Seed i's rewrite in round `number`: judged, improved unless i is a multiple of 5."""
    item = QAS(question=f"Round {number}: where is object {i}?", answer="Left.", improved=i % 5 != 0,
               score=float(i % 10), reason="ok")  # fmt: skip
    parent = f"s{i}" if number == 1 else f"s{i}@r1"
    operator = ("perceptual", "reasoning", "interaction")[i % 3]
    return Sample(id=f"s{i}@r{number}", seed_id=f"s{i}", round=number, operator=operator, parent_id=parent, qa=[item])


def _synthetic_run(root: Path, seeds: int) -> Path:
    """A run folder written directly: `seeds` seeds, 2 rounds, every 5th rewrite dropped (no model calls)."""
    seed_file = root / "seeds.jsonl"
    with seed_file.open("w") as fp:
        for i in range(seeds):
            qa = [{"question": f"What is object {i} number {j}?", "answer": f"It is {j}."} for j in range(2)]
            fp.write(json.dumps({"id": f"s{i}", "conversations_v0": qa}) + "\n")
    run = root / "run"
    for number in (1, 2):
        files: dict[str, list[str]] = {"evolved": [], "judged": [], "kept": [], "dropped": []}
        for i in range(seeds):
            judged = _rewrite(i, number)
            bare = judged.model_copy(update={"qa": [QAS(question=judged.qa[0].question, answer="Left.")]})
            files["evolved"].append(bare.model_dump_json())
            files["judged"].append(judged.model_dump_json())
            if i % 5:
                files["kept"].append(judged.model_dump_json())
            else:
                reason = "1 of 1 rewrites rejected: not improved"
                drop = Drop(id=judged.id, seed_id=judged.seed_id, round=number, stage="eliminate", reason=reason,
                            operator=judged.operator, sample=judged)  # fmt: skip
                files["dropped"].append(drop.model_dump_json())
        (run / f"round-{number}").mkdir(parents=True)
        for name, lines_out in files.items():
            (run / f"round-{number}" / f"{name}.jsonl").write_text("\n".join(lines_out) + "\n")
    (run / "run.json").write_text(json.dumps({"status": "done", "seeds": [str(seed_file)]}))
    return run


def test_the_sample_is_bounded_and_the_same_in_parallel(tmp_path: Path) -> None:
    run = _synthetic_run(tmp_path, 3000)
    serial = collect(open_run(run), 40, jobs=1)
    parallel = collect(open_run(run), 40, jobs=2)  # worker processes: files counted and merged as they finish
    assert [c["id"] for c in serial["samples"]] == [c["id"] for c in parallel["samples"]]
    assert len(serial["samples"]) == 40
    assert serial["columns"] == parallel["columns"]
    assert serial["columns"][0]["samples"] == 3000
    assert serial["columns"][1]["kept_samples"] == 2400
    keys = {s["key"] for s in serial["strata"]}
    assert any("dropped:eliminate" in k for k in keys) and any("|kept|" in k for k in keys)
    ops = Counter(c["rounds"][0]["operator"] for c in serial["samples"])
    assert set(ops) == {"perceptual", "reasoning", "interaction"}
    for card in serial["samples"]:
        assert card["seed"][0]["question"].startswith("What is object")
        assert [r["round"] for r in card["rounds"]] == [1, 2]
    bigger = build_report(run, tmp_path / "r.html", 40)
    assert bigger.samples == 40 and bigger.bytes < 400_000


# --------------------------------------------------------------------------- newer stages' fields


def test_unknown_stages_and_fields_are_shown(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    kept = lines(run / "round-2" / "kept.jsonl")[0]
    item = {**kept["qa"][0], "question": "Which shelf holds the red book, counted from the top?",
            "claims": [{"claim": "the book is red", "verdict": True}], "violations": ["no_image_reference"],
            "twin": "Which shelf has the red book?", "votes": [{"improved": True, "score": 7}],
            "novelty": 0.42}  # fmt: skip
    extra = {"id": kept["id"], "seed_id": kept["seed_id"], "round": 2, "stage": "dedup",
             "reason": "near-duplicate of other@r2", "operator": kept["operator"], "raw": None,
             "sample": {**kept, "qa": [item]}}  # fmt: skip
    with (run / "round-2" / "dropped.jsonl").open("a") as fp:
        fp.write(json.dumps(extra) + "\n")
    out = tmp_path / "r.html"
    assert CliRunner().invoke(app, ["report", str(run), "-o", str(out), "-q"]).exit_code == 0
    card = next(c for c in embedded_data(out)["samples"] if c["id"] == kept["seed_id"])
    second = next(r for r in card["rounds"] if r["round"] == 2)
    shown = next(i for i in second["items"] if i["f"]["question"] == item["question"])
    assert shown["status"] == "dropped" and shown["stage"] == "dedup"
    assert shown["f"]["novelty"] == 0.42 and shown["f"]["claims"][0]["verdict"] is True
    assert "dedup" in second["stages"]
    assert any(s["key"].endswith("|dropped:dedup|" + s["key"].rsplit("|", 1)[1]) for s in embedded_data(out)["strata"])


# --------------------------------------------------------------------------- reading in byte ranges


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=60),
    span=st.integers(min_value=1, max_value=700),
    block=st.integers(min_value=1, max_value=500),
    newline_at_end=st.booleans(),
)
def test_byte_ranges_yield_every_line_once(
    tmp_path_factory: pytest.TempPathFactory, lengths: list[int], span: int, block: int, newline_at_end: bool
) -> None:
    path = tmp_path_factory.mktemp("spans") / "f.jsonl"
    lines_in = [f'{{"seed_id":"s{i}","pad":"{"x" * n}"}}' for i, n in enumerate(lengths)]
    path.write_text("\n".join(lines_in) + ("\n" if newline_at_end else ""))
    size = path.stat().st_size
    seen = [
        seed_id
        for start in range(0, size, span)
        for data, stop in iter_blocks(Span(path, 1, "x", start, min(start + span, size)), size=block)
        for _, seed_id in seed_ids_in(data, stop)
    ]
    assert seen == [f"s{i}" for i in range(len(lengths))]


def test_seed_ids_are_found_in_any_json_spelling() -> None:
    block = b'{"seed_id":"a"}\n{"x": {"seed_id": "nested"}, "seed_id" : "b"}\n{"seed_id":"q\\"uote"}\n'
    assert [v for _, v in seed_ids_in(block, len(block))] == ["a", "nested", "b", 'q"uote']


# --------------------------------------------------------------------------- errors


def test_errors_are_one_line(tmp_path: Path, run_dir: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such run folder" in result.output and "Traceback" not in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "not a run folder" in result.output
    result = CliRunner().invoke(app, ["report", str(run_dir), "--samples", "0", "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "--samples" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = CliRunner().invoke(app, ["report", str(run_dir), "--stats", str(bad), "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "evolve stats --json" in result.output


def test_a_missing_seed_file_still_gives_a_report(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    manifest = json.loads((run / "run.json").read_text())
    manifest["seeds"] = [str(tmp_path / "gone.jsonl")]
    (run / "run.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "gone.jsonl not found" in result.output
    out = run / "report.html"  # the default: beside the run's other files
    data = embedded_data(out)
    assert len(data["samples"]) == 10 and all(c["seed"] is None and c["rounds"] for c in data["samples"])


# --------------------------------------------------------------------------- the page in a real browser


def test_the_page_in_a_headless_browser(report_file: Path, run_dir: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail("chromium is missing: run `make install` (it runs `apt-get install -y chromium` as root)")
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]' (make install)")
    data = embedded_data(report_file)
    expected = dropped_with_operator(run_dir, "reasoning") & {c["id"] for c in data["samples"]}
    assert expected, "the run has reasoning rewrites that were dropped (else the filter test proves nothing)"
    known = data["samples"][3]["seed"][0]["question"]
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report_file.as_uri())
        page.wait_for_selector("html[data-ready=true]")

        cards = page.locator("article.card")
        assert int(page.inner_text("#sample-count")) == cards.count() == len(data["samples"])
        assert page.inner_text("#shown-count") == str(cards.count())
        assert page.locator("img.thumb-sm").count() == len(data["samples"])
        assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")

        page.select_option("#f-operator", "reasoning")
        page.select_option("#f-outcome", "dropped")
        visible = set(page.eval_on_selector_all("article.card:not([hidden])", "els => els.map(e => e.dataset.seed)"))
        assert visible == expected
        assert page.inner_text("#shown-count") == str(len(expected))
        page.click("#f-reset")

        page.keyboard.press("/")
        assert page.evaluate("document.activeElement.id") == "search"
        page.keyboard.type(known)
        shown = page.eval_on_selector_all("article.card:not([hidden])", "els => els.map(e => e.dataset.seed)")
        assert data["samples"][3]["id"] in shown
        page.keyboard.press("Escape")
        page.click("#f-reset")

        page.keyboard.press("j")
        page.keyboard.press("j")
        second = data["samples"][1]["id"]
        assert page.get_attribute("article.card.current", "data-seed") == second
        page.keyboard.press("Enter")
        assert page.locator("article.card.current .card-body").is_visible()

        target = data["samples"][-1]["id"]
        page.goto(report_file.as_uri() + "#seed=" + target)
        page.wait_for_selector("html[data-ready=true]")
        card = page.locator(f'article.card[data-seed="{target}"]')
        assert "open" in (card.get_attribute("class") or "")
        assert card.locator(".card-body .step").count() == 1 + len(data["samples"][-1]["rounds"])
        assert card.locator(".card-head").bounding_box()["y"] < 900  # scrolled into view
        page.goto(report_file.as_uri() + "#seed=no-such-seed")
        page.wait_for_selector("html[data-ready=true]")
        assert "not in this report" in page.inner_text("#notice")

        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot))
        browser.close()
    assert shot.stat().st_size > 10_000
    assert errors == []


def test_diversity_numbers_from_evolve_stats(run_dir: Path, tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"
    result = CliRunner().invoke(app, ["stats", str(run_dir), "--json", str(stats_file), "--quiet"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", str(run_dir), "-o", str(out), "--stats", str(stats_file), "-q"])
    assert result.exit_code == 0, result.output
    columns = embedded_data(out)["stats"]
    expected = json.loads(stats_file.read_text())["columns"]
    assert [c["name"] for c in columns] == [c["name"] for c in expected]
    assert [c["distinct_pairs"] for c in columns] == [c["distinct_pairs"] for c in expected]
    assert all(c["pair_entropy_bits"] is not None for c in columns)
