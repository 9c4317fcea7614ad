"""`evolve stats --workers N` and `--executor ray`: the same numbers as one process, on real seed lines.

Ray listens on all interfaces, so the Ray run happens only inside a loopback-only network namespace
(`unshare -rn`, as in tests/test_ray.py), as a real `evolve stats` process with its temp folder under /tmp.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from evolve.cli import app
from evolve.stats import RUN_FIELDS, compute_stats, resolve_inputs
from evolve.statspool import InProcess, ParserSpec, ProcessPool
from tests.test_ray import netns_unavailable, ray_installed  # noqa: F401  (a fixture)

SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mmevol_demo_seeds.jsonl"
EVOLVE = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "evolve"


@pytest.fixture
def real_lines(tmp_path: Path) -> Path:
    """The first 150 demo seeds (~1,000 real questions, repeats included)."""
    if not SEEDS.is_file():
        pytest.skip(f"{SEEDS} not available")
    path = tmp_path / "seeds.jsonl"
    with SEEDS.open(encoding="utf-8") as source:
        path.write_text("".join(line for _, line in zip(range(150), source, strict=False)), encoding="utf-8")
    return path


def stats_json(*args: str) -> dict[str, Any]:
    """`evolve stats ARGS --json -` through the CLI, parsed."""
    result = CliRunner().invoke(app, ["stats", *args, "--json", "-", "--quiet"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def numbers(report: dict[str, Any]) -> dict[str, Any]:
    """A report without the fields that say how it was computed."""
    return {k: v for k, v in report.items() if k not in RUN_FIELDS}


def test_two_workers_give_the_numbers_of_one_process(real_lines: Path) -> None:
    one = stats_json(str(real_lines))
    two = stats_json(str(real_lines), "--workers", "2")
    assert (one["engine"], one["workers"]) == ("local", 1)
    assert (two["engine"], two["workers"]) == ("processes", 2)
    assert numbers(two) == numbers(one)
    column = one["columns"][0]
    assert column["qa_items"] > 900 and column["distinct_pairs"] > 100  # a real workload, parsed in several chunks
    assert one["parsed_texts"] > 512


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sample", "0"], "--workers and --sample: use 1 or more"),
        (["--workers", "0"], "--workers and --sample: use 1 or more"),
        (["--executor", "spark"], "--executor: expected local or ray"),
    ],
)
def test_bad_engine_flags_are_one_line_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"id": "a", "qa": [{"question": "Describe it.", "answer": "No."}]}) + "\n")
    result = CliRunner().invoke(app, ["stats", str(path), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_help_names_the_scale_options() -> None:
    result = CliRunner().invoke(app, ["stats", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--sample", "--sample-seed", "--workers", "--executor", "--ray-address"):
        assert flag in result.output


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short folder for Ray's sockets (their paths must stay under 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rst-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.usefixtures("ray_installed")
@pytest.mark.timeout(300)
def test_ray_executor_gives_the_numbers_of_one_process(real_lines: Path, tmp_path: Path, ray_tmp: Path) -> None:
    why = netns_unavailable()
    if why:
        pytest.skip(why)
    if not EVOLVE.exists():
        pytest.skip(f"{EVOLVE} not installed")
    lines = real_lines.read_text(encoding="utf-8").splitlines(keepends=True)[:60]
    small = tmp_path / "small.jsonl"  # Ray's start-up dominates: a few hundred questions are enough
    small.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "ray.json"
    command = f"{EVOLVE} stats {small} --executor ray --workers 2 --json {out} --quiet"
    done = subprocess.run(
        ["unshare", "-rn", "sh", "-c", f"ip link set lo up && exec {command}"],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "RAY_TMPDIR": str(ray_tmp)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ray = json.loads(out.read_text(encoding="utf-8"))
    local = stats_json(str(small))
    assert (ray["engine"], ray["workers"]) == ("ray", 2)
    assert numbers(ray) == numbers(local)
    assert local["columns"][0]["qa_items"] > 300


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_pool_gives_in_process_numbers_with_parked_samples_and_sampling(tmp_path: Path, start_method: str) -> None:
    """Samples park until their names come back (and force drains past the limit); sampled or not, a pool of
    two workers gives the numbers of this process."""
    names = ["traffic lights", "traffic light", "yellow cat", "cats", "cat", "hot dogs", "person with suitcase"]
    records = [
        {
            "id": f"s{i}",
            "qa": [{"question": f"Describe object {i}.", "answer": "A thing.", "objects": [names[i % 7], f"box {i}"]}],
        }
        for i in range(40)
    ]
    path = tmp_path / "objects.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    inputs = resolve_inputs([path])
    local = InProcess(ParserSpec().build())
    local.park_limit = 3
    pool = ProcessPool(ParserSpec(), 2, start_method)
    pool.park_limit = 3
    try:
        parallel = compute_stats(inputs, pool, progress=False)
        parallel_sample = compute_stats(inputs, pool, sample=15, sample_seed=3, progress=False)
    finally:
        pool.close()
    alone = compute_stats(inputs, local, progress=False)
    assert parallel.columns[0].model_dump() == alone.columns[0].model_dump()
    alone_sample = compute_stats(inputs, local, sample=15, sample_seed=3, progress=False)
    assert parallel_sample.columns[0].model_dump() == alone_sample.columns[0].model_dump()
    assert alone_sample.columns[0].verb_noun_questions == 15
    counts = {o.name: o.count for o in alone.columns[0].top_objects}
    assert counts["traffic light"] == 12 and counts["cat"] == 18 and counts["box"] == 40  # 6+6, 6+6+6, all


def test_ctrl_c_stops_the_workers_with_one_line(tmp_path: Path) -> None:
    """SIGINT during a parallel parse: exit 130, "interrupted", no traceback, and no worker left running."""
    if not EVOLVE.exists():
        pytest.skip(f"{EVOLVE} not installed")
    records = [
        {"id": f"x{i}", "qa": [{"question": f"Describe the red car parked near house number {i} {k}.", "answer": "A."}
                               for k in range(4)]}
        for i in range(1000)
    ]  # fmt: skip
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    mark = f"stats-sigint-{os.getpid()}"
    proc = subprocess.Popen(
        [str(EVOLVE), "stats", str(path), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EVOLVE_TEST_MARK": mark},
    )
    time.sleep(2.5)  # workers are loading or parsing: either way Ctrl-C must stop everything cleanly
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-1000:]
    assert "interrupted" in err and "Traceback" not in err
    time.sleep(0.5)
    assert not marked_processes(mark)


def marked_processes(mark: str) -> list[int]:
    """Pids of processes whose environment carries `mark`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
