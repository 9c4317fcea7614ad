"""Reliability of `evolve run` as a real process against the test server: kill -9 and resume, signals,
endpoint faults, the run-folder lock, and the API key never written down.

Every run here is a subprocess (`python -m evolve run ...`) talking to the session's fake server over a real
socket; the server's request log is the ground truth of what was sent (and paid for).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evolve.fakeserver import ThreadedServer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "seeds" / "demo.jsonl"
ROUND_FILES = ("evolved", "judged", "kept", "dropped", "outcomes")
KEY = "test-key"
REJECT = 0.3
"""The fake judge rejects this share of rewrites, so runs have kept, dropped and carried-forward samples."""
ROUNDS = 2
CONCURRENCY = 3
SECRET = "sk-test-SECRET123"
FIRST_QUESTION = {  # seed_id -> a text only that seed's round-1 prompts contain (to aim a fault at it)
    "0_images_demo-001.png": "What colour is the car in the image?",
    "1_images_demo-002.jpg": "How many cups are on the table?",
    "2_images_demo-003.png": "What kind of seat is shown in the park?",
    "3_images_demo-004.jpg": "What text is written on the sign?",
    "9_images_demo-010.jpg": "How many books are on the top shelf?",
}
_DROP_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


# ---------------------------------------------------------------------------------------------- helpers


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child `evolve`: no OPENAI_* or proxy variables, no EVOLVE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "EVOLVE_")) and k not in _DROP_ENV}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cmd(
    server: ThreadedServer,
    out: Path,
    *extra: str,
    seeds: Path = DEMO,
    rounds: int = ROUNDS,
    concurrency: int = CONCURRENCY,
    key: str | None = KEY,
    quiet: bool = True,
) -> list[str]:
    """The argv of `evolve run` on the demo seeds against the test server."""
    argv = [sys.executable, "-m", "evolve", "run", str(seeds), "--rounds", str(rounds),
            "--concurrency", str(concurrency), "--out", str(out), "--base-url", server.base_url,
            "--model", "fake-vlm"]  # fmt: skip
    if key is not None:
        argv += ["--api-key", key]
    if quiet:
        argv.append("--quiet")
    return argv + list(extra)


def run(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end, capturing its output."""
    return subprocess.run(
        argv, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def start(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start a command in the background (output to pipes read at the end)."""
    return subprocess.Popen(
        argv, cwd=cwd, env=env or clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, proc: subprocess.Popen[str] | None = None) -> bool:
    """Poll until `condition()` holds (True), the process ends or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return condition()
        time.sleep(0.01)
    return False


def round_paths(out: Path, rounds: int = ROUNDS) -> dict[str, Path]:
    """final.jsonl and every round file, by a short name."""
    paths = {"final": out / "final.jsonl"}
    for number in range(1, rounds + 1):
        for name in ROUND_FILES:
            paths[f"round-{number}/{name}"] = out / f"round-{number}" / f"{name}.jsonl"
    return paths


def check_file(path: Path) -> list[str]:
    """The lines of a JSONL file we wrote, after checking: no torn line, each line JSON, no record twice (a
    sample-round writes at most one line per file, and one drop per stage)."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path}: torn last line {data[-80:]!r}"
    lines = data.decode("utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    ids = [(r.get("id") or r["seed_id"], r.get("stage"), r.get("round")) for r in records]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"{path}: duplicate ids {duplicates}"
    return lines


def comparable(name: str, line: str) -> str:
    """A line as it must equal the reference run's: an outcome's token usage depends on what was cached."""
    if not name.endswith("outcomes"):
        return line
    record = json.loads(line)
    record.pop("usage", None)
    return json.dumps(record, sort_keys=True)


def snapshot(out: Path, rounds: int = ROUNDS) -> dict[str, list[str]]:
    """Every record file as a sorted list of its (checked) lines: what must equal the reference run."""
    return {
        name: sorted(comparable(name, line) for line in check_file(path))
        for name, path in round_paths(out, rounds).items()
    }


def by_seed(lines: list[str]) -> dict[str, list[str]]:
    """Lines grouped by seed id."""
    groups: dict[str, list[str]] = {}
    for line in lines:
        groups.setdefault(json.loads(line)["seed_id"], []).append(line)
    return groups


def status_of(out: Path) -> str:
    """run.json's status."""
    return str(json.loads((out / "run.json").read_text(encoding="utf-8"))["status"])


def cache_rows(path: Path) -> int:
    """Answers stored in a cache file."""
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])


def total_requests(server: ThreadedServer) -> int:
    """Chat requests the server received since its last reset."""
    return int(server.stats()["total"])


def assert_no_partial_sample_rounds(out: Path, reference: dict[str, list[str]], rounds: int = ROUNDS) -> None:
    """Each sample-round present in `out` has all of its reference lines, in every file of its round."""
    mine = snapshot(out, rounds)
    for number in range(1, rounds + 1):
        names = [f"round-{number}/{name}" for name in ROUND_FILES]
        present = set().union(*(by_seed(mine[n]).keys() for n in names))
        for name in names:
            got, want = by_seed(mine[name]), by_seed(reference[name])
            for seed_id in present:
                assert sorted(got.get(seed_id, [])) == sorted(want.get(seed_id, [])), (
                    f"{name}: sample-round of {seed_id} is partial or differs from the clean run"
                )


# ---------------------------------------------------------------------------------------------- the clean run


@pytest.fixture(scope="module")
def reference(fake_server: ThreadedServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run (2 rounds, demo seeds, concurrency 3): its records and how many requests it made."""
    fake_server.reset()
    fake_server.set_config(reject_ratio=REJECT, latency=0.02)
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "run"
    result = run(run_cmd(fake_server, out), tmp)
    assert result.returncode == 0, result.stderr
    files = snapshot(out)
    assert len(files["round-1/evolved"]) == 10 and len(files["round-2/evolved"]) == 10
    assert files["round-1/dropped"] or files["round-2/dropped"], "reject_ratio should drop some rewrites"
    info = {"files": files, "requests": total_requests(fake_server), "cache_rows": cache_rows(out / "cache.sqlite")}
    fake_server.reset()
    return info


@pytest.fixture
def srv(server: ThreadedServer) -> Iterator[ThreadedServer]:
    """The test server (reset) with the reference run's judge and a small latency."""
    server.set_config(reject_ratio=REJECT, latency=0.02)
    yield server


# ---------------------------------------------------------------------------------------------- 1. kill -9


def test_kill9_at_random_points_then_resume_equals_clean_run(
    srv: ThreadedServer, reference: dict[str, Any], tmp_path: Path
) -> None:
    srv.set_config(latency=0.08)
    out = tmp_path / "run"
    argv = run_cmd(srv, out)
    rng = random.Random(20240607)
    kills = landed = 0
    for attempt in range(4):
        before = total_requests(srv)
        proc = start(argv, tmp_path)
        if attempt == 0:  # once during start-up (run.json, scan, lock) ...
            time.sleep(rng.uniform(0.1, 0.5))
        else:  # ... then while requests flow (start-up time varies with the machine's load)
            wait_for(lambda b=before: total_requests(srv) > b, proc=proc)  # type: ignore[misc]
            time.sleep(rng.uniform(0.05, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
            landed += total_requests(srv) > before
        proc.communicate(timeout=30)
    assert kills >= 3 and landed >= 2, "the kills should land while the run works"
    srv.set_config(latency=0.02)
    final = run(argv, tmp_path)
    assert final.returncode == 0, final.stderr
    assert status_of(out) == "done"
    assert snapshot(out) == reference["files"]
    sent = total_requests(srv)
    # at most the requests in flight at each kill are sent again; every answer received was cached
    assert sent <= reference["requests"] + kills * CONCURRENCY

    # the finished command again: nothing to do, nothing sent
    again = run(argv, tmp_path)
    assert again.returncode == 0, again.stderr
    assert total_requests(srv) == sent
    assert snapshot(out) == reference["files"]
    assert status_of(out) == "done"


QUALITY_STAGES = ("--annotate", "--verify", "claims", "--judge-votes", "3", "--items-per-call", "2")
"""Every optional stage on, beside the default ones (rule checks, dedup): annotation as round 0, chunked calls,
votes and claim verification."""


def test_kill9_with_every_quality_stage_resumes_to_the_clean_run(srv: ThreadedServer, tmp_path: Path) -> None:
    srv.set_config(false_claim_ratio=0.3, verdict_noise=0.3)  # verify and the votes have something to decide
    clean = tmp_path / "clean"
    assert run(run_cmd(srv, clean, *QUALITY_STAGES), tmp_path).returncode == 0

    def files(out: Path) -> dict[str, list[str]]:
        return snapshot(out) | {"round-0/annotated": sorted(check_file(out / "round-0" / "annotated.jsonl"))}

    want = files(clean)
    stages = {json.loads(line)["stage"] for n in (1, 2) for line in want[f"round-{n}/dropped"]}
    assert {"verify", "eliminate"} <= stages, stages
    assert len(want["round-0/annotated"]) == 10
    out = tmp_path / "killed"
    argv = run_cmd(srv, out, *QUALITY_STAGES)
    rng = random.Random(20261201)
    srv.set_config(latency=0.08)
    kills = 0
    for _ in range(3):
        before = total_requests(srv)
        proc = start(argv, tmp_path)
        wait_for(lambda b=before: total_requests(srv) > b, proc=proc)  # type: ignore[misc]
        time.sleep(rng.uniform(0.05, 0.8))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=30)
    assert kills >= 2, "the kills should land while the run works"
    srv.set_config(latency=0.02)
    final = run(argv, tmp_path)
    assert final.returncode == 0, final.stderr
    assert files(out) == want


JUDGE_HEADING = "### Original Q&A&S"
"""Only judge prompts hold this line (the fake server's prompt contract)."""


def keep_only_cache(out: Path) -> None:
    """Delete everything in a run folder but cache.sqlite."""
    for path in sorted(out.rglob("*"), reverse=True):
        if path.name != "cache.sqlite":
            path.rmdir() if path.is_dir() else path.unlink()


def test_kill9_keeps_every_answer_received(srv: ThreadedServer, reference: dict[str, Any], tmp_path: Path) -> None:
    """Seed 1 finishes, seed 2's judge hangs, kill -9: seed 1's answers must be in the cache."""
    srv.set_config(latency=0.0)
    evolved = [json.loads(line) for line in reference["files"]["round-1/evolved"]]
    second = next(r for r in evolved if r["seed_id"] == "1_images_demo-002.jpg")
    srv.add_fault("hang", count=1, hang_seconds=30, match=second["qa"][0]["question"])
    out = tmp_path / "run"
    argv = run_cmd(srv, out, rounds=1, concurrency=1)
    proc = start(argv, tmp_path)
    assert wait_for(lambda: srv.stats()["faults_fired"].get("hang") == 1, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert len(check_file(out / "round-1" / "evolved.jsonl")) == 1, "seed 1 was finished before the kill"
    srv.clear_faults()
    assert run(argv, tmp_path).returncode == 0
    assert cache_rows(out / "cache.sqlite") == reference["cache_rows"] // 2
    sent = total_requests(srv)
    keep_only_cache(out)
    rebuilt = run(argv, tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert total_requests(srv) == sent, "every record is rebuilt from the cache alone"
    assert round1(out) == one_round(reference)


def test_kill9_resends_only_requests_in_flight(srv: ThreadedServer, tmp_path: Path) -> None:
    """Kill while every worker waits for its judge: the evolve answers, received, must not be bought again."""
    out = tmp_path / "run"
    argv = run_cmd(srv, out, rounds=1)
    kills = 2
    for _ in range(kills):
        srv.add_fault("hang", count=CONCURRENCY, match=JUDGE_HEADING, hang_seconds=30)
        before = srv.stats()["faults_fired"].get("hang", 0)
        proc = start(argv, tmp_path)
        hung = wait_for(lambda b=before: srv.stats()["faults_fired"].get("hang", 0) - b == CONCURRENCY, proc=proc)  # type: ignore[misc]
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert hung, "every worker should be waiting for its judge"
        srv.clear_faults()
    final = run(argv, tmp_path)
    assert final.returncode == 0, final.stderr
    log = srv.log()
    resent = [e["kind"] for i, e in enumerate(log) if e["sha256"] in {x["sha256"] for x in log[:i]}]
    assert len(log) == 20 + len(resent)
    assert resent.count("evolve") == 0, f"evolve answers received before a kill were bought again: {resent}"
    assert len(resent) <= kills * CONCURRENCY


def test_rerun_from_the_records_alone_or_the_cache_alone(
    srv: ThreadedServer, reference: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = run_cmd(srv, out, quiet=False)
    assert run(argv, tmp_path).returncode == 0
    sent = total_requests(srv)
    # only the cache left: every record is rebuilt from it without a request
    keep_only_cache(out)
    rebuilt = run(argv, tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert total_requests(srv) == sent
    assert snapshot(out) == reference["files"]
    assert status_of(out) == "done"
    # only the records left: finished sample-rounds are kept, not redone
    (out / "cache.sqlite").unlink()
    again = run(argv, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming: 20 sample-rounds already done" in again.stderr
    assert total_requests(srv) == sent
    assert snapshot(out) == reference["files"]
    assert status_of(out) == "done"


def test_torn_last_line_is_dropped_and_the_record_rebuilt_from_cache(
    srv: ThreadedServer, reference: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = run_cmd(srv, out)
    assert run(argv, tmp_path).returncode == 0
    sent = total_requests(srv)
    evolved = out / "round-1" / "evolved.jsonl"

    # a crash in the middle of a sample-round: its lines are gone but for half of its evolved line
    whole = evolved.read_bytes()
    last = json.loads(whole.splitlines()[-1])
    victim = last["seed_id"]
    for name in ROUND_FILES:
        path = out / "round-1" / f"{name}.jsonl"
        kept = [line for line in path.read_bytes().splitlines(keepends=True) if json.loads(line)["seed_id"] != victim]
        path.write_bytes(b"".join(kept))
    line = json.dumps(last, separators=(",", ":")).encode()
    with evolved.open("ab") as fp:
        fp.write(line[: len(line) // 2])
    # a crash while appending a line of a finished sample-round: half a line at the end
    kept_file = out / "round-2" / "kept.jsonl"
    first = kept_file.read_bytes().splitlines(keepends=True)[0]
    with kept_file.open("ab") as fp:
        fp.write(first[: len(first) // 2])

    resumed = run(argv, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert snapshot(out) == reference["files"]
    assert total_requests(srv) == sent, "the lost sample-round is redone from the cache"
    assert status_of(out) == "done"


# ---------------------------------------------------------------------------------------------- 2. signals


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_cleanly_and_resume_completes(
    srv: ThreadedServer, reference: dict[str, Any], tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    srv.set_config(latency=0.5)
    out = tmp_path / "run"
    argv = run_cmd(srv, out, quiet=False)
    proc = start(argv, tmp_path)
    # once round 2 has records (stopping earlier is test_stop_before_the_first_record_is_clean)
    assert wait_for(lambda: (out / "round-2" / "evolved.jsonl").exists(), proc=proc), "the run should be working"
    began = time.monotonic()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr
    assert time.monotonic() - began < 8, "in-flight work gets a few seconds, not more"
    assert status_of(out) == "interrupted"
    assert "resume" in stderr
    files = snapshot(out)  # no torn line, no duplicate
    assert files["round-1/evolved"], "finished sample-rounds are flushed"
    assert_no_partial_sample_rounds(out, reference["files"])
    sent = total_requests(srv)
    assert sent < reference["requests"], "the stop should come before the end"
    if sig == signal.SIGINT:
        return  # the resume is the same as after SIGTERM

    srv.set_config(latency=0.02)
    resumed = run(argv, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert snapshot(out) == reference["files"]
    assert total_requests(srv) <= reference["requests"] + CONCURRENCY
    assert status_of(out) == "done"


def test_sigterm_lets_in_flight_sample_rounds_finish(srv: ThreadedServer, tmp_path: Path) -> None:
    srv.set_config(latency=0.5)
    out = tmp_path / "run"
    argv = run_cmd(srv, out, rounds=1)
    proc = start(argv, tmp_path)
    assert wait_for(lambda: total_requests(srv) == CONCURRENCY, proc=proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert len(check_file(out / "round-1" / "evolved.jsonl")) == CONCURRENCY, "in-flight sample-rounds finish"
    assert total_requests(srv) == 2 * CONCURRENCY, "each finishes its judge call, and nothing new starts"
    srv.set_config(latency=0.02)
    assert run(argv, tmp_path).returncode == 0
    log = srv.log()
    assert len(log) == 20 and len({e["sha256"] for e in log}) == 20, "nothing is bought twice"


# ---------------------------------------------------------------------------------------------- 3. endpoint faults


def one_round(reference: dict[str, Any]) -> dict[str, list[str]]:
    """The reference's round-1 files (a 1-round run gives the same)."""
    return {k: v for k, v in reference["files"].items() if k.startswith("round-1/")}


def round1(out: Path) -> dict[str, list[str]]:
    """The round-1 files of a run."""
    files = snapshot(out, 1)
    files.pop("final")
    return files


def drops(out: Path, number: int = 1) -> list[dict[str, Any]]:
    """The failures (stage evolve or judge) in dropped.jsonl of a round, decoded."""
    lines = check_file(out / f"round-{number}" / "dropped.jsonl")
    return [d for d in map(json.loads, lines) if d["stage"] in ("evolve", "judge")]


def test_transient_faults_are_retried_and_the_run_finishes(
    srv: ThreadedServer, reference: dict[str, Any], tmp_path: Path
) -> None:
    faults = [{"kind": "429", "count": 1, "retry_after": 0.2}, {"kind": "500", "count": 2},
              {"kind": "503", "count": 1}, {"kind": "reset", "count": 1}]  # fmt: skip
    srv.add_faults(*faults)
    out = tmp_path / "run"
    result = run(run_cmd(srv, out, rounds=1), tmp_path)
    assert result.returncode == 0, result.stderr
    assert round1(out) == one_round(reference)
    stats = srv.stats()
    assert stats["faults_fired"] == {"429": 1, "500": 2, "503": 1, "reset": 1} and stats["faults_pending"] == 0
    assert stats["total"] == reference["requests"] // 2 + 5, "each fault costs exactly one retry"
    assert status_of(out) == "done"


def test_429_pauses_all_workers_together(srv: ThreadedServer, reference: dict[str, Any], tmp_path: Path) -> None:
    srv.add_fault("429", count=1, retry_after=2.0)
    out = tmp_path / "run"
    proc = start(run_cmd(srv, out, rounds=1), tmp_path)
    assert wait_for(lambda: srv.stats()["faults_fired"].get("429") == 1, proc=proc)
    time.sleep(0.3)  # the 429 answer reaches the client; calls already on the wire land
    paused_at = total_requests(srv)
    time.sleep(0.7)
    assert total_requests(srv) == paused_at, "no worker may send during the shared cool-down"
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert round1(out) == one_round(reference)
    assert total_requests(srv) == reference["requests"] // 2 + 1


def test_hang_is_retried_after_the_timeout_or_dropped_with_reason(srv: ThreadedServer, tmp_path: Path) -> None:
    retried, dropped = "0_images_demo-001.png", "2_images_demo-003.png"
    srv.add_faults(
        {"kind": "hang", "count": 1, "hang_seconds": 30, "match": FIRST_QUESTION[retried]},
        {"kind": "hang", "count": 2, "hang_seconds": 30, "match": FIRST_QUESTION[dropped]},
    )
    out = tmp_path / "run"
    began = time.monotonic()
    result = run(run_cmd(srv, out, "--timeout", "0.5", "--max-retries", "1", rounds=1), tmp_path)
    assert time.monotonic() - began < 20
    assert result.returncode == 3, result.stderr
    [drop] = drops(out)
    assert drop["seed_id"] == dropped and drop["stage"] == "evolve"
    assert "timed out" in drop["reason"]
    evolved = by_seed(check_file(out / "round-1" / "evolved.jsonl"))
    assert retried in evolved and len(evolved) == 9
    assert srv.stats()["faults_fired"] == {"hang": 3}
    assert status_of(out) == "done_with_failures"


def test_broken_answers_are_dropped_with_raw_text_or_parsed(srv: ThreadedServer, tmp_path: Path) -> None:
    """malformed / truncated / garbage / empty answers and a 400, each aimed at one seed's evolve call."""
    from evolve.fakeserver.content import MALFORMED_TEXT

    aimed = {"malformed": "2_images_demo-003.png", "truncated": "3_images_demo-004.jpg",
             "garbage_body": "1_images_demo-002.jpg", "empty": "0_images_demo-001.png",
             "400": "9_images_demo-010.jpg"}  # fmt: skip
    srv.add_faults(*({"kind": kind, "count": 1, "match": FIRST_QUESTION[seed]} for kind, seed in aimed.items()))
    out = tmp_path / "run"
    result = run(run_cmd(srv, out, rounds=1), tmp_path)
    assert result.returncode == 3, result.stderr
    assert srv.stats()["faults_fired"] == dict.fromkeys(aimed, 1)
    evolved = by_seed(check_file(out / "round-1" / "evolved.jsonl"))
    failed = {d["seed_id"]: d for d in drops(out)}
    assert all(d["stage"] == "evolve" for d in failed.values())
    for seed in aimed.values():
        assert (seed in evolved) != (seed in failed), f"{seed} is either evolved or dropped, exactly once"
    assert len(evolved) + len(failed) == 10

    malformed = failed[aimed["malformed"]]
    assert malformed["reason"].startswith("unreadable answer") and malformed["raw"] == MALFORMED_TEXT
    if aimed["truncated"] in failed:
        assert failed[aimed["truncated"]]["raw"], "the raw text of an unreadable answer is kept"
    garbage = failed[aimed["garbage_body"]]  # it may have been billed: one unreadable answer, not retried
    assert garbage["reason"].startswith("unreadable answer: endpoint sent a body that is not JSON")
    assert "400" in failed[aimed["400"]]["reason"]

    log = srv.log()
    for kind in ("malformed", "400", "garbage_body"):
        [entry] = [e for e in log if e["fault"] == kind]
        assert sum(1 for e in log if e["sha256"] == entry["sha256"]) == 1, f"{kind}: not retried"


def test_401_stops_the_run_at_once(srv: ThreadedServer, tmp_path: Path) -> None:
    srv.add_fault("401", count=100, match=FIRST_QUESTION["9_images_demo-010.jpg"])
    out = tmp_path / "run"
    argv = run_cmd(srv, out, rounds=1, concurrency=1, quiet=False)
    result = run(argv, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "check OPENAI_API_KEY" in result.stderr
    assert result.stderr.count("check OPENAI_API_KEY") == 1
    assert "Traceback" not in result.stderr
    log = srv.log()
    assert [e["status"] for e in log].count(401) == 1, "a 401 is not retried"
    assert log[-1]["status"] == 401, "nothing is sent after a 401"
    assert status_of(out) == "failed"
    snapshot(out, 1)
    # with a good key the same command resumes and finishes
    srv.clear_faults()
    resumed = run(argv, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert len(check_file(out / "round-1" / "evolved.jsonl")) == 10
    assert sum(1 for e in srv.log() if e["status"] == 200) == 20


def test_failure_budget_stops_cleanly_with_exit_3(srv: ThreadedServer, tmp_path: Path) -> None:
    srv.add_fault("500", count=10_000)
    out = tmp_path / "run"
    argv = run_cmd(srv, out, "--max-failures", "0", "--max-retries", "1", rounds=1, quiet=False)
    result = run(argv, tmp_path)
    assert result.returncode == 3, result.stderr
    assert "--max-failures" in result.stderr
    assert "Traceback" not in result.stderr
    files = snapshot(out, 1)
    failed = [d for d in drops(out) if d["stage"] == "evolve"]
    assert 1 <= len(failed) <= CONCURRENCY, "the run stops after the first failure (in-flight ones may fail too)"
    assert all("500" in d["reason"] for d in failed)
    assert len(files["round-1/evolved"]) == 0
    assert srv.stats()["total"] <= 2 * (CONCURRENCY + 1), "no new request after the budget is spent"
    assert status_of(out) != "done"


def test_resume_after_failure_budget_retries_the_failed_samples(
    srv: ThreadedServer, reference: dict[str, Any], tmp_path: Path
) -> None:
    srv.add_fault("500", count=10_000)
    out = tmp_path / "run"
    argv = run_cmd(srv, out, "--max-failures", "0", "--max-retries", "1")
    assert run(argv, tmp_path).returncode == 3
    srv.clear_faults()
    resumed = run(argv, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert snapshot(out) == reference["files"]
    assert status_of(out) == "done"


def test_text_only_endpoint_is_reported_once_with_hint(srv: ThreadedServer, tmp_path: Path) -> None:
    # a text-only seed first, so the run has written records before the endpoint refuses an image
    seeds = tmp_path / "seeds.jsonl"
    first = json.loads(DEMO.read_text(encoding="utf-8").splitlines()[0])
    first.pop("image")
    first["hash_id"] = "no-image"
    seeds.write_text(json.dumps(first) + "\n" + DEMO.read_text(encoding="utf-8"), encoding="utf-8")
    srv.set_config(text_only=True)
    out = tmp_path / "run"
    argv = run_cmd(srv, out, "--image-root", str(DEMO.parent), seeds=seeds, rounds=1, concurrency=1, quiet=False)
    result = run(argv, tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("endpoint rejected image input") == 1, result.stderr
    assert "--images skip" in result.stderr
    assert "Traceback" not in result.stderr
    assert sum(1 for e in srv.log() if e["has_image"]) == 1, "the run stops at the first refusal"
    assert status_of(out) == "failed"


@pytest.mark.parametrize("stop", ["401", "text_only", "sigterm", "max_failures"])
def test_stop_before_the_first_record_is_clean(srv: ThreadedServer, tmp_path: Path, stop: str) -> None:
    """A run of 2 rounds stopped in round 1 (round-2/ does not exist yet): one clean line, the right code."""
    wanted, code, status = {
        "401": ("check OPENAI_API_KEY", 1, "failed"),
        "text_only": ("--images skip", 1, "failed"),
        "sigterm": ("resume", 143, "interrupted"),
        "max_failures": ("--max-failures", 3, None),
    }[stop]
    extra: list[str] = []
    if stop == "401":
        srv.add_fault("401", count=100)
    elif stop == "text_only":
        srv.set_config(text_only=True)
    elif stop == "max_failures":
        srv.add_fault("500", count=10_000)
        extra = ["--max-failures", "0", "--max-retries", "0"]
    else:
        srv.set_config(latency=1.0)
    out = tmp_path / "run"
    proc = start(run_cmd(srv, out, *extra, quiet=False), tmp_path)
    if stop == "sigterm":
        assert wait_for(lambda: total_requests(srv) > 0, proc=proc)
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert stderr.count(wanted) == 1, stderr
    assert status_of(out) == status or (status is None and status_of(out) != "done")
    snapshot(out)


# ---------------------------------------------------------------------------------------------- 4. lock


def test_second_run_on_the_same_folder_exits_4(srv: ThreadedServer, tmp_path: Path) -> None:
    srv.set_config(latency=0.3)
    out = tmp_path / "run"
    argv = run_cmd(srv, out, quiet=False)
    first = start(argv, tmp_path)
    try:
        assert wait_for(lambda: total_requests(srv) > 0, proc=first)
        second = run(argv, tmp_path)
        assert second.returncode == 4, second.stderr
        assert f"already running (pid {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 143
    assert status_of(out) == "interrupted", "the refused run must not touch run.json"


# ---------------------------------------------------------------------------------------------- 5. secrets


def assert_secret_nowhere(places: dict[str, bytes]) -> None:
    """The key, in clear, in none of the given contents."""
    leaks = [name for name, data in places.items() if SECRET.encode() in data]
    assert not leaks, f"the API key was written to {leaks}"


def folder_bytes(*roots: Path) -> dict[str, bytes]:
    """Every file under the roots (cache.sqlite and its WAL included), by path."""
    found: dict[str, bytes] = {}
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in paths:
            with contextlib.suppress(FileNotFoundError):  # SQLite removes its -wal/-shm files on close
                found[str(path)] = path.read_bytes()
    return found


def test_api_key_is_never_written(srv: ThreadedServer, tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "cron.log"
    seen: dict[str, bytes] = {}
    runs = [
        # --api-key, a 500 that exhausts the retries (a dropped sample), then a 401 that stops the run
        ("flag", [{"kind": "500", "count": 2, "match": FIRST_QUESTION["1_images_demo-002.jpg"]},
                  {"kind": "401", "count": 5, "match": FIRST_QUESTION["9_images_demo-010.jpg"]}]),
        # OPENAI_API_KEY from the environment, same faults
        ("env", [{"kind": "500", "count": 2, "match": FIRST_QUESTION["1_images_demo-002.jpg"]},
                 {"kind": "401", "count": 5, "match": FIRST_QUESTION["9_images_demo-010.jpg"]}]),
    ]  # fmt: skip
    for name, faults in runs:
        srv.reset()
        srv.set_config(reject_ratio=REJECT)
        srv.add_faults(*faults)
        out = tmp_path / name
        key = SECRET if name == "flag" else None
        env = clean_env() if name == "flag" else clean_env(OPENAI_API_KEY=SECRET)
        argv = run_cmd(srv, out, "--max-retries", "1", "--log-file", str(log_file), rounds=1, concurrency=1,
                       key=key, quiet=False)  # fmt: skip
        argv.insert(argv.index("run"), "--debug")
        result = run(argv, tmp_path, env)
        assert result.returncode == 1, result.stderr
        assert "check OPENAI_API_KEY" in result.stderr
        assert any("500" in d["reason"] for d in drops(out)), "the 500 should have dropped a sample"
        assert cache_rows(out / "cache.sqlite") > 0
        seen[f"{name} stdout"] = result.stdout.encode()
        seen[f"{name} stderr"] = result.stderr.encode()
        seen.update(folder_bytes(out))
    seen.update(folder_bytes(log_file))
    assert any(path.endswith("evolve.log") for path in seen) and str(log_file) in seen
    assert_secret_nowhere(seen)
