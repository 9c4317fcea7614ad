"""Seeds from where users keep them: Hugging Face parquet shards and save_to_disk folders (made with the real
`datasets` library), folders of images with a CSV or JSONL manifest, and bad input that must become a rejected
line, never an exception. Read through `evolve validate` and through the reader the run uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from evolve.cli import app
from evolve.errors import UsageError
from evolve.fakeserver import ThreadedServer
from evolve.records import Loaded, Rejected
from evolve.sources import ImageStore, arrowtables, count_records, expand_seed_paths, read_seed_files

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = sorted((REPO / "seeds" / "images").iterdir())


def llava_turns(question: str, answer: str) -> list[dict[str, str]]:
    """One LLaVA question/answer pair with the image token."""
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def image_rows(count: int) -> list[dict[str, Any]]:
    """`count` rows of id, an `Image` struct with a demo image's bytes (cycling through the ten), conversations."""
    return [
        {
            "id": f"row-{i}",
            "image": {"bytes": DEMO_IMAGES[i % 10].read_bytes(), "path": DEMO_IMAGES[i % 10].name},
            "conversations": llava_turns(f"What is in picture {i}?", f"Picture {i}."),
        }
        for i in range(count)
    ]


def validate(*args: str) -> Any:
    """`evolve validate ARGS` through the CLI."""
    return CliRunner().invoke(app, ["validate", *args])


def loaded(items: list[Loaded | Rejected]) -> list[Loaded]:
    """Only the Loaded items."""
    return [item for item in items if isinstance(item, Loaded)]


# ---------------------------------------------------------------------------------------------- parquet


def test_parquet_shards_with_embedded_images(hf: ModuleType, tmp_path: Path) -> None:
    data = hf.Dataset.from_list(image_rows(12)).cast_column("image", hf.Image())
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    for index in range(2):
        data.shard(2, index, contiguous=True).to_parquet(str(folder / f"train-0000{index}-of-00002.parquet"))
    cache = tmp_path / "image-cache"
    result = validate(str(folder / "train-*.parquet"), "--image-cache", str(cache))
    assert result.exit_code == 0, result.output
    for index in range(2):
        assert f"train-0000{index}-of-00002.parquet [parquet]: 6 loaded (6 llava; 6 Q&A items), 0 rejected" in (
            result.output
        )
    assert result.output.count("6 ok (6 embedded as bytes), 0 missing") == 2
    stored = sorted(p for p in cache.rglob("*") if p.is_file())
    assert len(stored) == 10, "12 rows show 10 distinct images: each is written once"
    assert sorted(p.suffix for p in stored) == sorted(p.suffix for p in DEMO_IMAGES)
    items = loaded(list(read_seed_files(sorted(folder.iterdir()), image_store=ImageStore(cache))))
    assert [item.sample.id for item in items] == [f"row-{i}" for i in range(12)]
    assert items[7].where == f"{folder / 'train-00001-of-00002.parquet'}:row 2"
    assert items[0].stored_image and Path(str(items[0].sample.image)).read_bytes() == DEMO_IMAGES[0].read_bytes()
    assert items[0].sample.qa[0].question == "What is in picture 0?"


def test_save_to_disk_folder_with_sharegpt_messages(hf: ModuleType, tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"<image>How many things in picture {i}?"},
                {"role": "assistant", "content": f"{i} things."},
            ],
            "images": [{"bytes": DEMO_IMAGES[i].read_bytes(), "path": None}],
        }
        for i in range(4)
    ]
    features = hf.Features(
        {"messages": [{"role": hf.Value("string"), "content": hf.Value("string")}], "images": [hf.Image()]}
    )
    saved = tmp_path / "saved"
    hf.Dataset.from_list(rows, features=features).save_to_disk(str(saved))
    assert (saved / "state.json").is_file() and list(saved.glob("data-*.arrow"))
    result = validate(str(saved))
    assert result.exit_code == 0, result.output
    assert f"{saved} [dataset]: 4 loaded (4 sharegpt; 4 Q&A items), 0 rejected" in result.output
    assert "4 ok (4 embedded as bytes)" in result.output
    items = loaded(list(read_seed_files([saved], image_store=ImageStore(tmp_path / "store"))))
    assert items[2].sample.qa[0].answer == "2 things." and items[2].where.endswith(".arrow:row 3")
    dict_folder = tmp_path / "dict"
    hf.DatasetDict({"train": hf.Dataset.from_list(rows[:3], features=features)}).save_to_disk(str(dict_folder))
    assert count_records([dict_folder, saved]) == 7


def test_question_answer_columns_named_with_columns(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    for path in DEMO_IMAGES[:3]:
        shutil.copy(path, images / path.name)
    table = pa.table(
        {
            "img": [f"imgs/{p.name}" for p in DEMO_IMAGES[:3]],
            "q": ["Q1?", "Q2?", "Q3?"],
            "a": ["A1.", "A2.", "A3."],
            "source": ["x", "y", "z"],
        }
    )
    seeds = tmp_path / "qa.parquet"
    pq.write_table(table, seeds)
    unmapped = validate(str(seeds))
    assert unmapped.exit_code == 2
    assert f"{seeds}:row 1: not a known record" in unmapped.output and "--columns" in unmapped.output
    mapped = validate(str(seeds), "--columns", "image=img,question=q,answer=a")
    assert mapped.exit_code == 0, mapped.output
    assert "3 loaded (3 qa-columns; 3 Q&A items), 0 rejected" in mapped.output and "3 ok, 0 missing" in mapped.output
    [first, *_] = loaded(list(read_seed_files([seeds], columns="image=img,question=q,answer=a")))
    assert (first.sample.image, first.sample.qa[0].answer, first.sample.meta) == (
        "imgs/demo-001.png",
        "A1.",
        {"source": "x"},
    )
    wrong = validate(str(seeds), "--columns", "image=picture")
    assert wrong.exit_code == 2 and "--columns image=picture: no such column" in wrong.output
    assert "Traceback" not in wrong.output


def test_undecodable_image_bytes_are_an_image_problem(tmp_path: Path) -> None:
    rows = image_rows(2)
    rows[1]["image"] = {"bytes": b"these bytes are no picture", "path": "broken.png"}
    seeds = tmp_path / "broken.parquet"
    pq.write_table(pa.Table.from_pylist(rows), seeds)
    result = validate(str(seeds))
    assert result.exit_code == 2
    assert "1 ok (2 embedded as bytes), 0 missing, 1 unreadable" in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith(f"{seeds}:row 2:")]
    assert "not an image" in line and "embedded in the row" in line


def test_validate_without_images_writes_no_image(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.parquet"
    pq.write_table(pa.Table.from_pylist(image_rows(3)), seeds)
    result = validate(str(seeds), "--no-images", "--image-cache", str(tmp_path / "cache"))
    assert result.exit_code == 0 and "3 loaded (3 llava" in result.output
    assert not (tmp_path / "cache").exists()


def test_parquet_read_in_small_batches_keeps_every_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seeds = tmp_path / "groups.parquet"
    pq.write_table(pa.Table.from_pylist(image_rows(25)), seeds, row_group_size=10)
    monkeypatch.setattr(arrowtables, "BATCH_BYTES", 1)  # one row per batch
    items = loaded(list(read_seed_files([seeds], image_store=ImageStore(tmp_path / "store"))))
    assert [item.sample.id for item in items] == [f"row-{i}" for i in range(25)]
    assert items[-1].where == f"{seeds}:row 25"


def test_not_a_parquet_file_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"PAR1 but nothing after it")
    result = validate(str(fake))
    assert result.exit_code == 2 and "not a readable parquet file" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------- manifests


def image_folder(tmp_path: Path, manifest: str, text: str) -> Path:
    """A folder of the first three demo images and one manifest file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in DEMO_IMAGES[:3]:
        shutil.copy(path, folder / path.name)
    (folder / manifest).write_text(text, encoding="utf-8")
    return folder


def test_images_folder_with_csv_manifest(tmp_path: Path) -> None:
    rows = "".join(f'{p.name},"What is, in {p.stem}?",It is {p.stem}.\n' for p in DEMO_IMAGES[:3])
    folder = image_folder(tmp_path, "metadata.csv", "file_name,question,answer\n" + rows + "\n")
    result = validate(str(folder))
    assert result.exit_code == 0, result.output
    assert "metadata.csv [csv]: 3 loaded (3 qa-columns; 3 Q&A items), 0 rejected" in result.output
    assert "3 ok, 0 missing" in result.output
    items = loaded(list(read_seed_files(expand_seed_paths([folder]))))
    assert items[0].sample.qa[0].question == "What is, in demo-001?" and items[0].where.endswith("metadata.csv:2")


def test_tsv_manifest_with_own_column_names_and_bad_rows(tmp_path: Path) -> None:
    text = "pic\tprompt\treply\ndemo-001.png\tQ1?\tA1.\nmissing.png\tQ2?\tA2.\ndemo-003.png\t\tA3.\n"
    folder = image_folder(tmp_path, "list.tsv", text)
    result = validate(str(folder), "--columns", "image=pic,question=prompt,answer=reply")
    assert result.exit_code == 2
    assert "2 loaded (2 qa-columns; 2 Q&A items), 1 rejected" in result.output
    assert f"{folder / 'list.tsv'}:4: empty question or answer" in result.output
    assert f"{folder / 'list.tsv'}:3: image not found" in result.output


def test_jsonl_manifest_in_images_folder(tmp_path: Path) -> None:
    lines = "".join(json.dumps({"file_name": p.name, "question": "Q?", "answer": "A."}) + "\n" for p in DEMO_IMAGES[:3])
    folder = image_folder(tmp_path, "metadata.jsonl", lines)
    (folder / "dataset_info.json").write_text("{}", encoding="utf-8")  # an index, not seeds: skipped
    result = validate(str(folder))
    assert result.exit_code == 0, result.output
    assert "metadata.jsonl: 3 loaded (3 qa-columns; 3 Q&A items)" in result.output
    assert "dataset_info" not in result.output


def test_folder_without_seeds_says_what_it_looked_for(tmp_path: Path) -> None:
    folder = tmp_path / "only-images"
    folder.mkdir()
    shutil.copy(DEMO_IMAGES[0], folder / DEMO_IMAGES[0].name)
    with pytest.raises(UsageError, match=r"no seed file in this folder \(.*\.csv.*\.parquet"):
        expand_seed_paths([folder])


# ---------------------------------------------------------------------------------------------- ids


def test_ids_unique_across_files_and_the_same_every_time(tmp_path: Path) -> None:
    record = {"id": "x", "conversations": llava_turns("Q?", "A.")}
    first = tmp_path / "a.jsonl"
    second = tmp_path / "b.jsonl"
    first.write_text(json.dumps(record) + "\n" + json.dumps({**record, "id": "y"}) + "\n")
    second.write_text(json.dumps(record) + "\n" + json.dumps({**record, "id": "x~2"}) + "\n")

    def ids() -> list[str]:
        return [item.sample.id for item in loaded(list(read_seed_files([first, second])))]

    assert ids() == ["x", "y", "x~2", "x~2~2"]
    assert ids() == ids(), "the same inputs in the same order give the same ids"
    assert [i.index for i in loaded(list(read_seed_files([first, second])))] == [0, 0, 1, 1]


# ---------------------------------------------------------------------------------------------- bad input

GOOD = json.dumps({"id": "good", "conversations": llava_turns("Q?", "A.")})


def nested(depth: int) -> str:
    """A LLaVA record whose extra field `deep` is `depth` lists deep."""
    return GOOD[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"


BAD_LINES = {
    "nested 1,100 levels": (nested(1100), "nested more than 100 levels deep"),
    "nested 300 levels": (nested(300), "nested more than 100 levels deep"),
    "5,000-digit integer": (GOOD[:-1] + ', "n": ' + "7" * 5000 + "}", "unusable number"),
    "lone surrogate": (GOOD.replace("Q?", "Q\\ud800?"), "lone surrogate (\\ud800)"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_json_is_a_rejected_line(tmp_path: Path, case: str) -> None:
    line, reason = BAD_LINES[case]
    seeds = tmp_path / "bad.jsonl"
    seeds.write_text(f"{GOOD}\n{line}\n{GOOD}\n", encoding="utf-8")
    items = list(read_seed_files([seeds]))
    [rejected] = [item for item in items if isinstance(item, Rejected)]
    assert rejected.where == f"{seeds}:2" and reason in rejected.reason
    assert len(loaded(items)) == 2
    result = validate(str(seeds), "--no-images")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{seeds}:2: " in result.output and reason in result.output
    array = tmp_path / "bad.json"
    array.write_text(f"[{GOOD}, {line}]", encoding="utf-8")
    if case == "nested 1,100 levels" or case.endswith("integer"):  # the whole array cannot be decoded
        assert validate(str(array), "--no-images").exit_code == 2
    else:
        [rejected] = [item for item in read_seed_files([array]) if isinstance(item, Rejected)]
        assert rejected.where == f"{array}:item 2" and reason in rejected.reason


def test_what_is_accepted_can_be_written(tmp_path: Path) -> None:
    seeds = tmp_path / "odd.jsonl"
    seeds.write_text(GOOD[:-1] + ', "n": ' + "9" * 40 + ', "deep": ' + "[" * 90 + "]" * 90 + "}\n", encoding="utf-8")
    [item] = list(read_seed_files([seeds]))
    assert isinstance(item, Loaded)
    written = json.loads(item.sample.model_dump_json())["meta"]
    assert written["n"] == pytest.approx(1e40) and len(json.dumps(written["deep"])) == 180


# ---------------------------------------------------------------------------------------------- through evolve run


def run_cli(server: ThreadedServer, *args: str) -> Any:
    """`evolve run ARGS` in-process against the test server."""
    base = ["--base-url", server.base_url, "--api-key", "test-key", "--model", "fake-vlm", "--quiet"]
    return CliRunner().invoke(app, ["run", *args, *base])


def test_bad_json_lines_do_not_stop_a_run(server: ThreadedServer, tmp_path: Path) -> None:
    seeds = tmp_path / "bad.jsonl"
    seeds.write_text("\n".join([GOOD, *(line for line, _ in BAD_LINES.values()), GOOD]) + "\n", encoding="utf-8")
    result = run_cli(server, str(seeds), "--rounds", "1", "--out", str(tmp_path / "run"), "--images", "skip")
    assert result.exit_code == 0, result.output
    rejected = [json.loads(line) for line in (tmp_path / "run" / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rejected) == [f"{seeds}:{n}" for n in range(2, 2 + len(BAD_LINES))]
    evolved = (tmp_path / "run" / "round-1" / "evolved.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["seed_id"] for line in evolved) == ["good", "good~2"]


def test_seed_files_sharing_ids_resume_to_the_clean_run(server: ThreadedServer, tmp_path: Path) -> None:
    for name in ("a", "b"):
        shutil.copytree(REPO / "seeds", tmp_path / name, ignore=shutil.ignore_patterns("*.py", "*.md"))
    seeds = [str(tmp_path / "a" / "demo.jsonl"), str(tmp_path / "b" / "demo.jsonl")]

    def final(out: Path) -> list[tuple[str, str]]:
        records = [json.loads(line) for line in (out / "final.jsonl").read_text().splitlines()]
        return sorted((r["id"], r["qa"][0]["question"]) for r in records)

    assert run_cli(server, *seeds, "--rounds", "2", "--out", str(tmp_path / "clean")).exit_code == 0
    assert run_cli(server, *seeds, "--rounds", "1", "--out", str(tmp_path / "resumed")).exit_code == 0
    assert run_cli(server, *seeds, "--rounds", "2", "--out", str(tmp_path / "resumed")).exit_code == 0
    clean = final(tmp_path / "clean")
    ids = [record_id for record_id, _ in clean]
    assert len(ids) == len(set(ids)) and any("~2@r" in i for i in ids), "the second file's ids get ~2"
    assert final(tmp_path / "resumed") == clean
