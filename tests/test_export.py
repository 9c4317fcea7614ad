"""`evolve export` from real runs against the test server: latest versions only, image paths that resolve from
the output's folder, solution steps, LLaMA-Factory's ShareGPT rules, MMEvol's conversations_vN layout, parquet
that `datasets` reads back with its images, and seeds from parquet, datasets folders and CSV manifests."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

from evolve.cli import app
from evolve.fakeserver import ThreadedServer
from evolve.records import QAS, Sample
from tests.test_run import SEEDS, lines
from tests.test_sources import DEMO_IMAGES, image_rows

ROUNDS = 3


def run_evolve(server: ThreadedServer, *args: str) -> None:
    """`evolve run ARGS` in-process against the test server; fails the test unless it exits 0."""
    base = ["--base-url", server.base_url, "--api-key", "test-key", "--model", "fake-vlm", "--quiet"]
    result = CliRunner().invoke(app, ["run", *args, *base])
    assert result.exit_code == 0, result.output


def export(*args: str) -> Any:
    """`evolve export ARGS` through the CLI."""
    return CliRunner().invoke(app, ["export", *args])


@pytest.fixture(scope="module")
def run3(fake_server: ThreadedServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-round run of a copy of the demo seeds in which the judge rejects half the rewrites."""
    base = tmp_path_factory.mktemp("run3")
    shutil.copytree(SEEDS, base / "seeds", ignore=shutil.ignore_patterns("*.py", "*.md"))
    fake_server.reset()
    fake_server.set_config(reject_ratio=0.5)
    try:
        run_evolve(fake_server, str(base / "seeds"), "--rounds", str(ROUNDS), "--out", str(base / "run"))
    finally:
        fake_server.reset()
    return base / "run"


def kept_by_round(run: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """Round → seed id → its kept record."""
    return {n: {r["seed_id"]: r for r in lines(run / f"round-{n}" / "kept.jsonl")} for n in range(1, ROUNDS + 1)}


def latest_kept(run: Path) -> dict[str, dict[str, Any]]:
    """Seed id → its kept record of the highest round."""
    latest: dict[str, dict[str, Any]] = {}
    for _, records in sorted(kept_by_round(run).items()):
        latest.update(records)
    return latest


def test_latest_only_gives_each_seeds_newest_version(run3: Path, tmp_path: Path) -> None:
    everything = tmp_path / "all.jsonl"
    latest = tmp_path / "latest.jsonl"
    assert export(str(run3), "-o", str(everything)).exit_code == 0
    result = export(str(run3), "-o", str(latest), "--latest-only")
    assert result.exit_code == 0, result.output
    expected = latest_kept(run3)
    got = lines(latest)
    assert len(lines(everything)) == len(lines(run3 / "final.jsonl")) > len(got)
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in expected.values())
    assert len({r["id"].split("@")[0] for r in got}) == len(got) == len(expected), "one record per seed"
    assert {r["round"] for r in expected.values()} != {ROUNDS}, "some seeds' newest version is of an earlier round"


@pytest.mark.parametrize("mode", ["relative", "absolute", "copy"])
def test_every_image_path_resolves_from_the_output_folder(run3: Path, tmp_path: Path, mode: str) -> None:
    out = tmp_path / "elsewhere" / "deeper" / "train.json"
    result = export(str(run3), "--to", "llava", "-o", str(out), "--json-array", "--image-paths", mode)
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert records and all("image" in r for r in records)
    for record in records:
        image = Path(record["image"])
        assert image.is_absolute() == (mode == "absolute")
        assert (out.parent / image).is_file(), record["image"]
        if mode == "copy":
            assert (out.parent / image).parent == out.parent / "train_images"
    if mode == "copy":
        assert len(list((out.parent / "train_images").iterdir())) == len(DEMO_IMAGES)
    assert "image paths do not point" not in result.output


def test_with_steps_puts_the_steps_into_the_answer(run3: Path, tmp_path: Path) -> None:
    plain, steps = tmp_path / "plain.jsonl", tmp_path / "steps.jsonl"
    assert export(str(run3), "-o", str(plain), "--latest-only").exit_code == 0
    assert export(str(run3), "-o", str(steps), "--latest-only", "--with-steps").exit_code == 0
    source = {r["id"]: r for r in latest_kept(run3).values()}
    checked = 0
    for without, with_steps in zip(lines(plain), lines(steps), strict=True):
        items = [QAS.model_validate(item) for item in source[without["id"]]["qa"]]
        answers = [turn["value"] for turn in with_steps["conversations"][1::2]]
        assert [turn["value"] for turn in without["conversations"][1::2]] == [item.answer for item in items]
        for item, answer in zip(items, answers, strict=True):
            if not item.steps:
                assert answer == item.answer
                continue
            checked += 1
            step_lines = answer.splitlines()
            assert step_lines[-1] == f"Answer: {item.answer}" and len(step_lines) == len(item.steps) + 1
            assert step_lines[0].startswith("Step 1") and item.steps[0].description in step_lines[0]
    assert checked > 0, "the fake model writes steps: some answers must carry them"


def llama_factory_problems(record: dict[str, Any], dataset_dir: Path) -> list[str]:
    """What LLaMA-Factory's ShareGPT conversion (role tags user/assistant) would refuse in one record."""
    problems = []
    messages = record["messages"]
    if not messages or len(messages) % 2:
        problems.append("an odd number of messages")
    for index, message in enumerate(messages):
        if message["role"] != ("user" if index % 2 == 0 else "assistant"):
            problems.append(f"message {index} has role {message['role']}")
    tokens = sum(message["content"].count("<image>") for message in messages)
    if tokens != len(record["images"]):
        problems.append(f"{tokens} <image> tokens for {len(record['images'])} images")
    problems += [f"image {p} missing" for p in record["images"] if not (dataset_dir / p).is_file()]
    return problems


def test_sharegpt_export_passes_llama_factory_rules(run3: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))
    out = data / "evolved.json"
    result = export(str(run3), "--to", "sharegpt", "-o", str(out), "--json-array", "--with-steps")
    assert result.exit_code == 0, result.output
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["other"] == {"file_name": "other.json"}, "existing entries are kept"
    assert info["evolved"] == {
        "file_name": "evolved.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    records = json.loads(out.read_text())
    assert len(records) == len(lines(run3 / "final.jsonl"))
    assert [p for r in records for p in llama_factory_problems(r, data)] == []


def seed_items(seed_file: Path) -> dict[str, list[dict[str, Any]]]:
    """hash_id → the conversations_v0 items of the demo seeds."""
    return {r["hash_id"]: r["conversations_v0"] for r in lines(seed_file)}


def test_mmevol_export_has_the_official_layout(run3: Path, tmp_path: Path) -> None:
    out = tmp_path / "mmevol.json"
    result = export(str(run3), "--to", "mmevol", "-o", str(out), "--json-array")
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    seeds = seed_items(run3.parent / "seeds" / "demo.jsonl")
    kept = kept_by_round(run3)
    assert sorted(r["hash_id"] for r in records) == sorted(seeds)
    versions = [f"conversations_v{n}" for n in range(ROUNDS + 1)]
    empty_rounds = 0
    for record in records:
        assert {"id", "image", "caption", "det", "hash_id", *versions} <= record.keys() and "qa" not in record
        assert [i["question"] for i in record["conversations_v0"]] == [i["question"] for i in seeds[record["hash_id"]]]
        assert set(record["conversations_v0"][0]) == {
            "image_position", "objects", "skills", "format", "question", "steps", "answer",
        }  # fmt: skip
        for number in range(1, ROUNDS + 1):
            items = record[f"conversations_v{number}"]
            survivor = kept[number].get(record["hash_id"])
            if survivor is None:
                assert items == []
                empty_rounds += 1
            else:
                assert [i["question"] for i in items] == [i["question"] for i in survivor["qa"]]
                assert all(isinstance(i["score"], int | float) for i in items)
        assert (out.parent / record["image"]).is_file()
    assert empty_rounds > 0, "with half the rewrites rejected some sample-rounds keep nothing"


def test_parquet_export_reads_back_with_images(run3: Path, tmp_path: Path, hf: ModuleType) -> None:
    out = tmp_path / "evolved.parquet"
    result = export(str(run3), "--to", "parquet", "-o", str(out), "--latest-only", "--with-steps")
    assert result.exit_code == 0, result.output
    loaded = hf.load_dataset("parquet", data_files=str(out), cache_dir=str(tmp_path / "cache"))["train"]
    assert len(loaded) == len(latest_kept(run3))
    row = loaded[0]
    assert row["image"].size[0] > 0 and row["image"].format in ("PNG", "JPEG")
    assert row["conversations"][0]["value"].startswith("<image>\n")


# ---------------------------------------------------------------------------------------------- seeds of other kinds


def exported_parquet_rows(run: Path, tmp_path: Path, hf: ModuleType) -> Iterator[dict[str, Any]]:
    """Export a run to parquet and read it back with `datasets`."""
    out = tmp_path / "export" / "data.parquet"
    result = export(str(run), "--to", "parquet", "-o", str(out), "--latest-only")
    assert result.exit_code == 0, result.output
    yield from hf.load_dataset("parquet", data_files=str(out), cache_dir=str(tmp_path / "hf-cache"))["train"]


@pytest.mark.parametrize("kind", ["parquet", "save_to_disk"])
def test_hf_seeds_through_validate_run_and_export(
    server: ThreadedServer, tmp_path: Path, hf: ModuleType, kind: str
) -> None:
    data = hf.Dataset.from_list(image_rows(6)).cast_column("image", hf.Image())
    seeds = tmp_path / ("train-00000-of-00001.parquet" if kind == "parquet" else "saved")
    if kind == "parquet":
        data.to_parquet(str(seeds))
    else:
        data.save_to_disk(str(seeds))
    checked = CliRunner().invoke(app, ["validate", str(seeds)])
    assert checked.exit_code == 0 and "6 loaded (6 llava" in checked.output, checked.output
    run = tmp_path / "run"
    run_evolve(server, str(seeds), "--rounds", "1", "--out", str(run))
    final = lines(run / "final.jsonl")
    assert final and all(Path(r["image"]).parent.parent == run / "images" for r in final), "images went to RUN/images"
    rows = list(exported_parquet_rows(run, tmp_path, hf))
    assert sorted(row["id"] for row in rows) == sorted(r["id"] for r in final)
    assert {row["image"].size for row in rows} == {(320, 240)}, "every row carries its decoded image"


def test_images_and_csv_folder_through_run_and_export(server: ThreadedServer, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    rows = ["picture,prompt,reply"]
    for path in DEMO_IMAGES[:4]:
        shutil.copy(path, folder / path.name)
        rows.append(f"{path.name},What is drawn in {path.stem}?,A drawing.")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    columns = "image=picture,question=prompt,answer=reply"
    assert CliRunner().invoke(app, ["validate", str(folder), "--columns", columns]).exit_code == 0
    run = tmp_path / "run"
    run_evolve(server, str(folder), "--columns", columns, "--rounds", "1", "--out", str(run))
    out = tmp_path / "out" / "llava.jsonl"
    assert export(str(run), "-o", str(out)).exit_code == 0
    records = lines(out)
    assert len(records) == len(lines(run / "final.jsonl")) > 0
    assert all((out.parent / r["image"]).is_file() for r in records)


# ---------------------------------------------------------------------------------------------- big and bad records


def test_records_over_4_mb_are_exported(tmp_path: Path) -> None:
    items = [{"question": f"Question {i} " + "x" * 40, "answer": "y" * 60} for i in range(40_000)]
    records = tmp_path / "final.jsonl"
    records.write_text(json.dumps({"id": "big@r1", "seed_id": "big", "round": 1, "qa": items}) + "\n")
    assert records.stat().st_size > 4 * 1024 * 1024
    out = tmp_path / "big.jsonl"
    result = export(str(records), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "1 records exported" in result.output
    assert len(lines(out)[0]["conversations"]) == 80_000


def test_unreadable_lines_are_named_and_fail_the_export(tmp_path: Path) -> None:
    good = Sample(id="a@r1", seed_id="a", round=1, qa=[QAS(question="Q?", answer="A.")]).model_dump_json()
    records = tmp_path / "final.jsonl"
    records.write_text(f"{good}\n{{not json\n{good.replace('a@r1', 'b@r1')}\n")
    out = tmp_path / "out.jsonl"
    result = export(str(records), "-o", str(out))
    assert result.exit_code == 3
    assert f"{records}:2: invalid JSON" in result.output and "1 lines could not be read" in result.output
    assert len(lines(out)) == 2


def test_export_usage_errors_are_one_line(run3: Path, tmp_path: Path) -> None:
    for args, says in (
        (["--to", "parquet"], "--to parquet needs --out FILE"),
        (["--image-paths", "copy"], "--image-paths copy needs --out FILE"),
        (["--to", "csv", "-o", str(tmp_path / "x")], "--to: expected one of llava, sharegpt, mmevol, parquet"),
        (["--image-paths", "weird", "-o", str(tmp_path / "x")], "--image-paths: expected one of"),
    ):
        result = export(str(run3), *args)
        assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output, args
    assert not os.path.exists(tmp_path / "x")
