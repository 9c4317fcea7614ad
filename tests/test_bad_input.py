"""Bad seeds, one class at a time: `evolve validate` names each problem by file:line (exit 2), and `evolve run`
rejects each bad seed with a one-line message and a row in rejected.jsonl while the rest of the run goes on."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from evolve.fakeserver import ThreadedServer
from tests.test_reliability import check_file, run, run_cmd, status_of

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "seeds"
SHARED_SEEDS = REPO.parent / "shared" / "data" / "mmevol_demo_seeds.jsonl"
HUGE_IMAGE_BYTES = 21 * 1024 * 1024  # over the 20 MB image limit (a sparse file: no disk used)
HUGE_LINE_BYTES = 10 * 1024 * 1024  # over the 4 MB record limit


@dataclass(frozen=True)
class Bad:
    """One class of bad seed line: how to write it and what the message must say."""

    name: str
    line: Callable[[Path], bytes]
    says: str
    record_level: bool
    """True when the line itself cannot be read (it is not loaded); False for image problems."""


def demo_records() -> list[dict[str, Any]]:
    """The ten demo seeds."""
    return [json.loads(line) for line in (DEMO / "demo.jsonl").read_text(encoding="utf-8").splitlines()]


def record(index: int, image: str, **extra: Any) -> bytes:
    """Demo seed `index` with its own id, pointing at `image`."""
    raw = dict(demo_records()[index], hash_id=f"seed-{index}", image=image)
    raw.update(extra)
    return json.dumps(raw).encode()


# fmt: off
BAD = [
    Bad("unreadable JSON", lambda _: b'{"id": "broken", "conversations_v0": [{"question": "Q?"', "JSON", True),
    Bad("wrong types", lambda _: json.dumps({"id": "t", "conversations_v0": "not a list"}).encode(), "list", True),
    Bad("wrong item types",
        lambda _: json.dumps({"id": "t2", "conversations_v0": [{"question": 5, "answer": None}]}).encode(),
        "question", True),
    Bad("empty Q&A", lambda _: json.dumps({"id": "e", "image": "images/ok.png", "conversations_v0": []}).encode(),
        "no Q&A", True),
    Bad("non-UTF-8", lambda _: b'{"id": "latin", "caption": "caf\xe9", "conversations_v0": []}', "UTF-8", True),
    Bad("10 MB line", lambda _: record(3, "images/ok.png", pad="x" * HUGE_LINE_BYTES), "MB", True),
    Bad("missing image", lambda _: record(4, "images/missing.png"), "not found", False),
    Bad("huge image", lambda _: record(5, "images/huge.png"), "too large", False),
    Bad("non-image .jpg", lambda _: record(6, "images/text.jpg"), "not an image", False),
    Bad("escape via ..", lambda _: record(7, "../outside.png"), "escapes --image-root", False),
    Bad("escape via absolute path", lambda base: record(8, str(base / "outside.png")), "escapes --image-root", False),
]
# fmt: on
CORRUPT = Bad("corrupt image (truncated JPEG)", lambda _: record(9, "images/truncated.jpg"), "corrupt", False)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """tmp_path with root/images/{ok.png, truncated.jpg, text.jpg, huge.png} and outside.png beside root/."""
    images = tmp_path / "root" / "images"
    images.mkdir(parents=True)
    shutil.copy(DEMO / "images" / "demo-001.png", images / "ok.png")
    jpeg = (DEMO / "images" / "demo-002.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (images / "text.jpg").write_text("this is a text file, not a JPEG\n", encoding="utf-8")
    with (images / "huge.png").open("wb") as fp:
        fp.write(b"\x89PNG\r\n\x1a\n")
        fp.truncate(HUGE_IMAGE_BYTES)
    shutil.copy(DEMO / "images" / "demo-003.png", tmp_path / "outside.png")
    return tmp_path


def write_seeds(workdir: Path, bad: list[Bad], name: str = "seeds.jsonl") -> tuple[Path, dict[int, Bad]]:
    """A seed file: a good line, then the bad ones, then another good line; returns it and {line: Bad}."""
    lines = [record(0, "images/ok.png")]
    where: dict[int, Bad] = {}
    for item in bad:
        lines.append(item.line(workdir))
        where[len(lines)] = item
    lines.append(record(1, "images/ok.png"))
    path = workdir / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, where


def validate(workdir: Path, *args: str) -> Any:
    """`evolve validate ... --image-root root` as a subprocess."""
    argv = [sys.executable, "-m", "evolve", "validate", *args, "--image-root", str(workdir / "root")]
    return run(argv, workdir)


def problem_lines(stderr: str) -> list[str]:
    """Non-empty lines of stderr."""
    return [line for line in stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- validate


@pytest.mark.parametrize("level", ["record", "image"])
def test_validate_names_each_problem_by_file_and_line(workdir: Path, level: str) -> None:
    bad = [b for b in BAD if b.record_level == (level == "record")]
    seeds, where = write_seeds(workdir, bad)
    result = validate(workdir, str(seeds))
    assert result.returncode == 2, result.stderr
    lines = problem_lines(result.stderr)
    assert len(lines) == len(bad), f"one line per problem, got:\n{result.stderr}"
    for number, item in where.items():
        mine = [line for line in lines if line.startswith(f"{seeds}:{number}: ")]
        assert len(mine) == 1, f"{item.name}: expected one line naming {seeds}:{number}, got:\n{result.stderr}"
        assert item.says in mine[0], f"{item.name}: {mine[0]}"
    loaded = 2 if level == "record" else 2 + len(bad)
    assert f"{loaded} loaded" in result.stdout and f"{len(bad) if level == 'record' else 0} rejected" in result.stdout


def test_validate_counts_good_images_right(workdir: Path) -> None:
    seeds, _ = write_seeds(workdir, [b for b in BAD if not b.record_level])
    result = validate(workdir, str(seeds))
    assert "images: 2 ok, 1 missing, 4 unreadable" in result.stdout, result.stdout


def test_corrupt_image_is_reported_and_rejected(workdir: Path, server: ThreadedServer) -> None:
    seeds, _ = write_seeds(workdir, [CORRUPT])
    result = validate(workdir, str(seeds))
    assert result.returncode == 2, result.stdout
    assert problem_lines(result.stderr) and problem_lines(result.stderr)[0].startswith(f"{seeds}:2: ")
    out = workdir / "run"
    ran = run(run_cmd(server, out, "--image-root", str(workdir / "root"), seeds=seeds, rounds=1), workdir)
    assert ran.returncode == 0, ran.stderr
    [row] = [json.loads(line) for line in check_file(out / "rejected.jsonl")]
    assert "corrupt" in row["reason"]
    assert not check_file(out / "round-1" / "dropped.jsonl")


def test_validate_empty_file(workdir: Path) -> None:
    empty = workdir / "empty.jsonl"
    empty.write_bytes(b"")
    result = validate(workdir, str(empty))
    assert result.returncode == 2
    [line] = problem_lines(result.stderr)
    assert "empty" in line and str(empty) in line and "Traceback" not in result.stderr


def test_validate_counts_all_image_problems(workdir: Path) -> None:
    seeds = workdir / "many.jsonl"
    seeds.write_bytes(b"\n".join(record(i % 10, f"images/missing-{i}.png") for i in range(1010)) + b"\n")
    result = validate(workdir, str(seeds))
    assert result.returncode == 2
    assert "1,010 missing" in result.stdout
    assert "and 1,005 more image problems" in result.stderr, result.stderr[-300:]


@pytest.mark.skipif(not SHARED_SEEDS.exists(), reason="shared/data is not beside the checkout")
def test_validate_shared_demo_seeds() -> None:
    argv = [sys.executable, "-m", "evolve", "validate", str(SHARED_SEEDS)]
    result = run(argv, REPO)
    assert result.returncode == 2, "the images are not shipped: validate reports them missing"
    assert "1,612 loaded" in result.stdout and "0 rejected" in result.stdout
    assert "1,612 missing" in result.stdout


# ---------------------------------------------------------------------------------------------- run


def rejected_rows(out: Path) -> list[dict[str, Any]]:
    """rejected.jsonl, decoded."""
    return [json.loads(line) for line in check_file(out / "rejected.jsonl")]


def test_run_rejects_each_bad_seed_and_goes_on(workdir: Path, server: ThreadedServer) -> None:
    seeds, where = write_seeds(workdir, BAD)
    out = workdir / "run"
    argv = run_cmd(server, out, "--image-root", str(workdir / "root"), seeds=seeds, rounds=1, quiet=False)
    result = run(argv, workdir)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = rejected_rows(out)
    assert len(rows) == len(BAD)
    for number, item in where.items():
        place = f"{seeds}:{number}"
        mine = [r for r in rows if r["id"] == place or r["reason"].startswith(place + ":")]
        assert len(mine) == 1, f"{item.name}: no row of rejected.jsonl names {place}"
        assert item.says in mine[0]["reason"] and mine[0]["stage"] == "input"
    skipped = [line for line in problem_lines(result.stderr) if line.startswith("skipped ")]
    assert len(skipped) == len(BAD), result.stderr
    assert len(check_file(out / "round-1" / "evolved.jsonl")) == 2, "the good seeds are evolved"
    assert json.loads((out / "run.json").read_text())["rejected_seeds"] == len(BAD)
    assert status_of(out) == "done"


def test_run_messages_name_file_and_line(workdir: Path, server: ThreadedServer) -> None:
    seeds, where = write_seeds(workdir, BAD[:3])
    out = workdir / "run"
    argv = run_cmd(server, out, "--image-root", str(workdir / "root"), seeds=seeds, rounds=1, quiet=False)
    result = run(argv, workdir)
    skipped = [line for line in problem_lines(result.stderr) if line.startswith("skipped ")]
    for number in where:
        assert sum(1 for line in skipped if f"{seeds}:{number}:" in line) == 1, result.stderr


@pytest.mark.parametrize("case", ["strict", "empty file"])
def test_run_stops_with_exit_2(workdir: Path, server: ThreadedServer, case: str) -> None:
    if case == "strict":
        seeds, _ = write_seeds(workdir, BAD[:1])
        extra = ["--strict"]
    else:
        seeds = workdir / "empty.jsonl"
        seeds.write_bytes(b"")
        extra = []
    out = workdir / "run"
    result = run(run_cmd(server, out, "--image-root", str(workdir / "root"), *extra, seeds=seeds, rounds=1), workdir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = problem_lines(result.stderr)
    assert line.startswith("error: ") and str(seeds) in line
    assert server.stats()["total"] <= (1 if case == "strict" else 0), "nothing after the first bad line"
