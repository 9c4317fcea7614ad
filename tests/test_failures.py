"""Reliability II, as an adversarial user would try it: every failure ends in seconds with one line and the
documented exit code (never a hang, never a traceback), the cache never answers for another endpoint or replays
a failure, workers never outlive their parent. Every run is a real subprocess against the test server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evolve.fakeserver import ServerHandle, ThreadedServer, serve_in_thread
from tests.test_reliability import DEMO, KEY, REPO, clean_env, run, run_cmd, start, status_of, total_requests, wait_for

SEEDS_DIR = REPO / "seeds"


def lines(path: Path) -> list[dict[str, object]]:
    """Decoded JSONL lines ([] when the file does not exist), without an outcome's token usage (it depends on
    what was cached)."""
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for record in found:
        record.pop("usage", None)
    return found


def one_error_line(stderr: str) -> str:
    """The run's single error line (and nothing that looks like a traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


# ---------------------------------------------------------------------------------------- 1. no hang, ever


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a small tmpfs")
def test_a_full_disk_stops_the_run_with_one_line_and_releases_the_lock(server: ThreadedServer, tmp_path: Path) -> None:
    """ENOSPC while writing records: the run stops within seconds (exit 1), no traceback, no stale lock."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    out = mount / "run"
    argv = run_cmd(server, out, "--cache", str(tmp_path / "cache.sqlite"), rounds=3)
    shell = (
        f'mount -t tmpfs -o size=96k none "{mount}" && "$0" "$@"; rc=$?; echo "=====" >&2; "$0" "$@"; '
        'echo "second=$?" >&2; exit $rc'
    )
    started = time.monotonic()
    done = subprocess.run(["unshare", "-rm", "sh", "-c", shell, *argv], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert time.monotonic() - started < 60
    if "Operation not permitted" in done.stderr and "mount" in done.stderr:
        pytest.skip(f"mounting a tmpfs in a user namespace is not allowed here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 1, done.stderr
    first = done.stderr.split("=====")[0]
    line = one_error_line(first)
    assert "No space left on device" in line or "ENOSPC" in line or "disk" in line.lower(), line
    assert "second=1" in done.stderr  # the second invocation got the lock: it fails the same way, not with 4


def test_unreadable_seeds_are_rejected_lines_never_crashes(server: ThreadedServer, tmp_path: Path) -> None:
    """Depth, huge integers and lone surrogates: rejected with file:line in validate and run alike."""
    seeds = tmp_path / "seeds.jsonl"
    good = (DEMO.read_text().splitlines())[:2]
    deep = '{"id": "deep", "qa": [{"question": "q", "answer": "a", "x": ' + "[" * 1100 + "]" * 1100 + "}]}"
    huge = '{"id": "huge", "qa": [{"question": "q", "answer": "a"}], "n": ' + "9" * 5000 + "}"
    lone = '{"id": "lone", "qa": [{"question": "what \\ud800 is this?", "answer": "a"}]}'
    seeds.write_text("\n".join([*good, deep, huge, lone]) + "\n", encoding="utf-8")
    checked = run([sys.executable, "-m", "evolve", "validate", str(seeds), "--no-images"], tmp_path)
    assert checked.returncode == 2 and "Traceback" not in checked.stderr + checked.stdout
    assert all(f"{seeds}:{n}:" in checked.stderr + checked.stdout for n in (3, 4, 5))
    ran = run(run_cmd(server, tmp_path / "run", "--images", "skip", seeds=seeds, rounds=1), tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr
    rejected = lines(tmp_path / "run" / "rejected.jsonl")
    assert sorted(str(r["reason"]).split(":")[1] for r in rejected) == ["3", "4", "5"]


def test_a_damaged_cache_file_is_one_line(server: ThreadedServer, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "cache.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x07" * 500)  # truncated by a kill -9
    done = run(run_cmd(server, out, rounds=1), tmp_path)
    assert done.returncode == 1 and "cache" in one_error_line(done.stderr)
    assert total_requests(server) == 0
    assert run(run_cmd(server, out, "--cache", str(tmp_path / "fresh.sqlite"), rounds=1), tmp_path).returncode == 0


# ---------------------------------------------------------------------------------------- 2-3. the cache


def test_a_run_folder_of_another_endpoint_is_refused(server: ThreadedServer, tmp_path: Path) -> None:
    """The README's try-it step, then the real endpoint on the same folder: refused, naming both."""
    out = tmp_path / "run"
    assert run(run_cmd(server, out, rounds=1), tmp_path).returncode == 0
    with serve_in_thread() as other:
        moved = run(run_cmd(other, out, rounds=1), tmp_path)
        assert moved.returncode == 2
        line = one_error_line(moved.stderr)
        assert server.base_url in line and other.base_url in line and "--allow-endpoint-change" in line
        assert total_requests(other) == 0
        allowed = run(run_cmd(other, out, "--allow-endpoint-change", rounds=2), tmp_path)
        assert allowed.returncode == 0, allowed.stderr
        assert total_requests(other) > 0  # round 2 was asked of the new endpoint, not answered from the cache


def test_credentials_in_the_url_reach_no_file(server: ThreadedServer, tmp_path: Path) -> None:
    url = server.base_url.replace("http://", "http://user:hunter2@")
    out = tmp_path / "run"
    done = run(run_cmd(server, out, "--base-url", url, rounds=1), tmp_path)
    assert done.returncode == 0, done.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), path


def test_a_failure_is_not_replayed_in_a_later_round_and_can_be_reasked(server: ThreadedServer, tmp_path: Path) -> None:
    server.add_fault("malformed", count=1, match="What colour is the car in the image?")
    out = tmp_path / "run"
    done = run(run_cmd(server, out, "--images", "skip", rounds=2), tmp_path)
    assert done.returncode == 3, done.stderr  # an unreadable answer is a failed sample
    car = "0_images_demo-001.png"
    assert [d["stage"] for d in lines(out / "round-1" / "dropped.jsonl") if d["seed_id"] == car] == ["evolve"]
    assert any(r["seed_id"] == car for r in lines(out / "round-2" / "evolved.jsonl")), "round 2 asked afresh"
    before = total_requests(server)
    again = run(run_cmd(server, out, "--images", "skip", rounds=2), tmp_path)
    assert again.returncode == 3 and total_requests(server) == before  # final unless asked to re-ask
    reask = run(run_cmd(server, out, "--images", "skip", "--reask-unreadable", rounds=2), tmp_path)
    assert reask.returncode == 0, reask.stderr
    assert total_requests(server) > before
    outcome = next(o for o in lines(out / "round-1" / "outcomes.jsonl") if o["seed_id"] == car)
    assert outcome["attempt"] == 1 and not outcome["unreadable"]


# ---------------------------------------------------------------------------------------- 4. fail fast


def test_an_unreachable_endpoint_stops_in_seconds_naming_the_url(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "evolve", "run", str(DEMO), "--base-url", "http://127.0.0.1:9/v1", "--api-key",
            KEY, "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    started = time.monotonic()
    done = run(argv, tmp_path)
    assert time.monotonic() - started < 15
    assert done.returncode == 1
    assert "cannot reach http://127.0.0.1:9/v1" in one_error_line(done.stderr)


def test_the_breaker_stops_a_run_whose_endpoint_goes_away(tmp_path: Path) -> None:
    """The endpoint answers the probe, then dies: N connection failures in a row stop the run."""
    port_file = tmp_path / "port"
    endpoint = subprocess.Popen([sys.executable, "-m", "evolve", "fake-endpoint", "--port-file", str(port_file),
                                 "--latency", "0.3"], cwd=REPO, env=clean_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wait_for(port_file.exists, timeout=20)
        url = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"
        argv = [sys.executable, "-m", "evolve", "run", str(DEMO), "--base-url", url, "--api-key", KEY, "--out",
                str(tmp_path / "run"), "--breaker", "4", "--concurrency", "2", "--quiet"]  # fmt: skip
        proc = start(argv, tmp_path)
        handle = ServerHandle("127.0.0.1", int(port_file.read_text()))
        assert wait_for(lambda: handle.stats()["total"] > 0, timeout=30, proc=proc)  # probe passed, calls flow
        endpoint.kill()
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 1
        line = one_error_line(stderr)
        assert "connection failures in a row" in line and url in line
        assert status_of(tmp_path / "run") == "failed"
    finally:
        endpoint.kill()
        endpoint.wait(10)


# ---------------------------------------------------------------------------------------- 5. ids


def test_ids_are_unique_across_seed_files_and_rounds_add_up(server: ThreadedServer, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (seeds / name).write_text(DEMO.read_text(), encoding="utf-8")
        shutil.copytree(SEEDS_DIR / "images", seeds / "images", dirs_exist_ok=True)
    both = run(run_cmd(server, tmp_path / "two", seeds=seeds, rounds=2), tmp_path)
    assert both.returncode == 0, both.stderr
    ids = [r["id"] for r in lines(tmp_path / "two" / "final.jsonl")]
    assert len(ids) == len(set(ids)) and len(lines(tmp_path / "two" / "round-1" / "outcomes.jsonl")) == 20
    step = tmp_path / "step"
    assert run(run_cmd(server, step, seeds=seeds, rounds=1), tmp_path).returncode == 0
    assert run(run_cmd(server, step, seeds=seeds, rounds=2), tmp_path).returncode == 0
    for name in ("evolved", "judged", "kept", "dropped", "outcomes"):
        for number in (1, 2):
            key = f"round-{number}/{name}.jsonl"
            assert sorted(map(json.dumps, lines(step / key))) == sorted(map(json.dumps, lines(tmp_path / "two" / key)))


# ---------------------------------------------------------------------------------------- 7. workers


def children_of(pid: int) -> set[int]:
    """Pids whose parent is `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


def test_kill9_of_the_workers_parent_takes_the_workers_down(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(latency=0.2)
    out = tmp_path / "run"
    argv = run_cmd(server, out, "--workers", "2", rounds=2)
    proc = start(argv, tmp_path)
    assert wait_for(lambda: len(children_of(proc.pid)) >= 2 and total_requests(server) > 2, timeout=60, proc=proc)
    workers = children_of(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert wait_for(lambda: not any(alive(p) for p in workers), timeout=20), "orphaned workers kept running"
    server.set_config(latency=0.0)
    resumed = run(argv, tmp_path, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert status_of(out) == "done"
    clean = tmp_path / "clean"
    assert run(run_cmd(server, clean, rounds=2), tmp_path).returncode == 0
    for name in ("evolved", "judged", "kept", "dropped", "outcomes"):
        key = f"round-2/{name}.jsonl"
        assert sorted(map(json.dumps, lines(out / key))) == sorted(map(json.dumps, lines(clean / key))), name


def test_sigint_of_workers_exits_130(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(latency=0.3)
    proc = start(run_cmd(server, tmp_path / "run", "--workers", "2", rounds=2), tmp_path)
    assert wait_for(lambda: total_requests(server) > 2, timeout=60, proc=proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr


# ---------------------------------------------------------------------------------------- 10. the smaller items


def test_sighup_leaves_an_interrupted_run_that_resumes(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(latency=0.2)
    out = tmp_path / "run"
    argv = run_cmd(server, out, rounds=2)
    proc = start(argv, tmp_path)
    assert wait_for(lambda: total_requests(server) > 2, timeout=60, proc=proc)
    proc.send_signal(signal.SIGHUP)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGHUP and status_of(out) == "interrupted"
    server.set_config(latency=0.0)
    assert run(argv, tmp_path).returncode == 0 and status_of(out) == "done"


def test_a_read_only_run_folder_is_one_line(server: ThreadedServer, tmp_path: Path) -> None:
    if os.geteuid() == 0 and shutil.which("unshare") is None:
        pytest.skip("root ignores file permissions and unshare is missing")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    argv = run_cmd(server, out, rounds=1)
    if os.geteuid() == 0:  # as root, permissions bind only as an unprivileged user of a user namespace
        argv = ["unshare", "-r", "--map-user=65534", "--map-group=65534", *argv]
        tmp_path.chmod(0o777)
    done = run(argv, tmp_path)
    out.chmod(0o700)
    if done.returncode != 2 and "unshare" in done.stderr:
        pytest.skip(f"cannot drop privileges here: {done.stderr.strip()[-200:]}")
    assert done.returncode in (1, 2), done.stderr
    assert "cannot write" in one_error_line(done.stderr)


def test_retries_and_pauses_are_in_the_log(server: ThreadedServer, tmp_path: Path) -> None:
    server.add_faults({"kind": "503", "count": 2}, {"kind": "429", "count": 1, "retry_after": 0.2})
    out = tmp_path / "run"
    assert run(run_cmd(server, out, rounds=1), tmp_path).returncode == 0
    log = (out / "evolve.log").read_text()
    assert "retry 1/6" in log and "endpoint error (503)" in log and "rate limited (429)" in log


def test_debug_never_prints_the_key(server: ThreadedServer, tmp_path: Path) -> None:
    server.add_fault("401", count=20)
    secret = "sk-test-EchoedBack0123456789"
    argv = [*run_cmd(server, tmp_path / "run", "--transport", "sdk", key=secret, rounds=1)]
    argv.insert(3, "--debug")
    done = run(argv, tmp_path)
    assert done.returncode == 1 and secret not in done.stdout + done.stderr
    assert "check OPENAI_API_KEY" in done.stderr


def test_help_of_the_key_points_to_the_variable() -> None:
    done = run([sys.executable, "-m", "evolve", "run", "--help"], REPO, env=clean_env(COLUMNS="200"))
    assert "OPENAI_API_KEY" in done.stdout and "mmevolve[ray]" in done.stdout
