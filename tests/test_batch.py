"""`evolve run --batch`: the Batch API as a transport under the same round, across cron invocations."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner

from evolve.batch import MAX_BATCH_REQUESTS, run_batch
from evolve.cli import app
from evolve.config import RunConfig
from evolve.errors import ImageInputRejected, RunLockedError, UsageError
from evolve.fakeserver import ThreadedServer
from evolve.fakeserver.content import MALFORMED_TEXT
from evolve.manifest import RunManifest
from evolve.pipeline import run_evolution

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "seeds" / "demo.jsonl"
SEED_COUNT = 10
ROUND_FILES = ("evolved", "judged", "kept", "dropped", "outcomes")


def lines(path: Path) -> list[dict[str, Any]]:
    """Decoded JSONL lines of a file ([] when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def by_seed(records: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """Records keyed by seed id (and stage, for drops: a sample-round drops at most once per stage)."""
    keyed = {(r["seed_id"], r["stage"]) if "stage" in r else r["seed_id"]: r for r in records}
    assert len(keyed) == len(records), "a sample-round appears twice in one round file"
    return keyed


def make_config(server: ThreadedServer, **extra: Any) -> RunConfig:
    """Settings pointing at the test server."""
    values: dict[str, Any] = {"base_url": server.base_url, "api_key": "test-key", "model": "fake-vlm", "seed": 7}
    values.update(extra)
    return RunConfig(**values)


def step(
    config: RunConfig, out: Path, messages: list[str] | None = None, *, max_requests: int = MAX_BATCH_REQUESTS,
    cancel: bool = False,
) -> RunManifest:  # fmt: skip
    """One invocation, as cron would make it."""
    sink = messages if messages is not None else []
    return asyncio.run(run_batch(config, [DEMO], out, sink.append, max_requests=max_requests, cancel=cancel))


def run_to_end(config: RunConfig, out: Path, limit: int = 20, max_requests: int = MAX_BATCH_REQUESTS) -> list[
    RunManifest
]:  # fmt: skip
    """Invoke until the run is done; the manifests written."""
    steps = []
    for _ in range(limit):
        steps.append(step(config, out, max_requests=max_requests))
        if steps[-1].status != "waiting":
            return steps
    raise AssertionError(f"not done after {limit} invocations")


def core(record: dict[str, Any]) -> dict[str, Any]:
    """What a record says, without fields that may legitimately differ between two runs."""
    keys = ("id", "seed_id", "parent_id", "round", "operator", "qa", "image", "caption", "stage", "reason", "kept",
            "items", "rules", "scores")  # fmt: skip
    return {k: record[k] for k in keys if k in record}


def pending_ids(out: Path) -> list[str]:
    return [b["id"] for b in json.loads((out / "batch.json").read_text())["pending"]]


@pytest.mark.parametrize(("images", "rounds"), [("send", 1), ("skip", 2)])
def test_batch_run_writes_what_the_live_run_writes(
    server: ThreadedServer, tmp_path: Path, images: str, rounds: int
) -> None:
    flaws = {"flawed_ratio": 0.2, "echo_ratio": 0.2, "false_claim_ratio": 0.2}  # every stage drops something
    server.set_config(**flaws)
    config = make_config(server, images=images, rounds=rounds, verify="claims")
    live_out = tmp_path / "live"
    live = run_evolution(config, [DEMO], live_out, lambda _: None)
    assert live.status == "done"
    stages = {d["stage"] for n in range(1, rounds + 1) for d in lines(live_out / f"round-{n}" / "dropped.jsonl")}
    assert {"check", "dedup", "verify"} <= stages, stages
    live_log = server.log()
    server.reset()
    server.set_config(**flaws)

    out = tmp_path / "batch"
    first = step(config, out)
    assert first.status == "waiting" and first.mode == "batch"
    assert first.batch is not None and first.batch["pending"]["counts"]["total"] == SEED_COUNT
    assert lines(out / "round-1" / "evolved.jsonl") == []  # nothing is written before the batch is done
    assert server.stats()["total"] == 0  # nothing answered yet
    with openai.OpenAI(base_url=server.base_url, api_key="test-key") as client:
        batch = client.batches.retrieve(pending_ids(out)[0])
        uploaded = client.files.content(batch.input_file_id).text
    requests = [json.loads(line) for line in uploaded.splitlines()]
    assert len(requests) == SEED_COUNT and len({r["custom_id"] for r in requests}) == SEED_COUNT
    for request in requests:
        assert (request["method"], request["url"]) == ("POST", "/v1/chat/completions")
        assert len(request["custom_id"]) == 64  # the digest of the request's cache key
        body = request["body"]
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("fake-vlm", 1.0, 4096)

    steps = [first, *run_to_end(config, out)]
    assert steps[-1].status == "done" and all(s.status == "waiting" for s in steps[:-1])
    assert len(steps) == 1 + 4 * rounds  # each round: evolution, judging, claim splitting, claim checking
    for number in range(1, rounds + 1):
        for name in ROUND_FILES:
            ours = by_seed(lines(out / f"round-{number}" / f"{name}.jsonl"))
            theirs = by_seed(lines(live_out / f"round-{number}" / f"{name}.jsonl"))
            assert {k: core(v) for k, v in ours.items()} == {k: core(v) for k, v in theirs.items()}, (number, name)
    assert sorted(map(json.dumps, lines(out / "final.jsonl"))) == sorted(
        map(json.dumps, lines(live_out / "final.jsonl"))
    )

    # The very same requests reached the server, each once, all through the Batch API.
    batch_log = server.log()
    assert sorted(e["sha256"] for e in batch_log) == sorted(e["sha256"] for e in live_log)
    assert all(e["batch"] for e in batch_log) and not any(e["batch"] for e in live_log)
    assert server.stats()["batches"] == 4 * rounds

    manifest = steps[-1]
    assert manifest.final_samples == live.final_samples
    usage, live_usage = manifest.usage, live.usage
    assert usage.batch_requests == live_usage.requests and usage.requests == 0  # paid, at the batch price
    assert usage.batch_prompt_tokens == live_usage.prompt_tokens
    for number in map(str, range(1, rounds + 1)):
        for key in ("samples", "kept_samples", "judged_items", "improvement_rate", "operators", "items"):
            assert getattr(manifest.rounds[number], key) == getattr(live.rounds[number], key), key
    assert "test-key" not in (out / "run.json").read_text() + (out / "batch.json").read_text()

    # A finished run stays finished: cron may go on calling without any request.
    before = server.stats()["http_total"]
    again = step(config, out)
    assert again.status == "done"
    assert server.stats()["http_total"] == before + 1  # + 1: this stats call itself


def test_a_pending_batch_is_only_polled(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(batch_polls=3)
    config = make_config(server, rounds=1)
    out = tmp_path / "run"
    messages: list[str] = []
    step(config, out, messages)
    submitted = pending_ids(out)
    for _ in range(2):
        pending = step(config, out, messages)
        assert pending.status == "waiting" and pending_ids(out) == submitted
        assert pending.batch is not None and pending.batch["pending"]["status"] == "in_progress"
        assert lines(out / "round-1" / "evolved.jsonl") == []
    assert any("in_progress" in m and submitted[0] in m for m in messages)
    assert server.stats()["total"] == 0
    third = step(config, out, messages)  # the third poll finds it done: evolution collected, judging submitted
    assert pending_ids(out) != submitted and third.batch is not None and third.batch["answers"] == SEED_COUNT
    assert lines(out / "round-1" / "evolved.jsonl") == []  # a sample-round is written once it is complete


def test_failed_lines_become_dropped_records_with_reasons(server: ThreadedServer, tmp_path: Path) -> None:
    config = make_config(server, rounds=1, checks="none", dedup_threshold=0)
    out = tmp_path / "run"
    step(config, out)
    server.add_fault("500", match="What colour is the car in the image?")  # demo-001's evolution
    server.add_fault("malformed", match="What kind of seat is shown in the park?")  # demo-003's evolution
    second = step(config, out)
    assert second.batch is not None and second.batch["failed"] == 1 and second.batch["answers"] == SEED_COUNT - 1
    assert second.batch["pending"]["counts"]["total"] == SEED_COUNT - 2  # only the evolved samples are judged
    dropped = {seed: d for (seed, _), d in by_seed(lines(out / "round-1" / "dropped.jsonl")).items()}
    assert set(dropped) == {"0_images_demo-001.png", "2_images_demo-003.png"}
    car = dropped["0_images_demo-001.png"]
    assert car["stage"] == "evolve" and car["reason"].startswith("endpoint: ") and "(500)" in car["reason"]
    seat = dropped["2_images_demo-003.png"]
    assert seat["stage"] == "evolve" and seat["reason"].startswith("unreadable answer: ")
    assert seat["raw"] == MALFORMED_TEXT
    outcomes = by_seed(lines(out / "round-1" / "outcomes.jsonl"))
    assert outcomes["0_images_demo-001.png"]["retry"] and not outcomes["2_images_demo-003.png"]["retry"]

    server.add_fault("malformed", match="How many cups are on the table?")  # demo-002's judging
    third = step(config, out)
    # The failed call is asked again by this invocation (as a live run would), in a batch of its own.
    assert third.status == "waiting" and third.batch is not None and third.batch["pending"]["counts"]["total"] == 1
    cups = by_seed(lines(out / "round-1" / "dropped.jsonl"))["1_images_demo-002.jpg", "judge"]
    assert cups["stage"] == "judge" and cups["reason"].startswith("unreadable verdicts: ")
    assert cups["sample"]["id"] == "1_images_demo-002.jpg@r1"  # the rewrite is kept for inspection

    done = run_to_end(config, out)[-1]
    assert done.status == "done_with_failures"  # the two unreadable answers stay final
    stats = done.rounds["1"]
    assert (stats.failed, stats.unreadable, stats.kept_samples) == (0, 2, SEED_COUNT - 2)
    assert done.final_samples == SEED_COUNT - 2
    assert "0_images_demo-001.png" in by_seed(lines(out / "round-1" / "kept.jsonl"))


def test_text_only_endpoint_refusing_images_stops_the_run(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(text_only=True)
    config = make_config(server, rounds=1)
    out = tmp_path / "run"
    step(config, out)
    with pytest.raises(ImageInputRejected, match="endpoint rejected image input"):
        step(config, out)
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert lines(out / "round-1" / "evolved.jsonl") == []


def test_cancel_then_the_requests_are_sent_again(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(batch_polls=5)
    config = make_config(server, rounds=1)
    out = tmp_path / "run"
    step(config, out)
    first = pending_ids(out)
    messages: list[str] = []
    cancelled = step(config, out, messages, cancel=True)
    assert any("cancelled" in m and first[0] in m for m in messages) and cancelled.batch["pending"] is None  # type: ignore[index]
    assert cancelled.status == "waiting"  # nothing was evolved: the run is not done
    again = step(config, out)
    assert again.status == "waiting" and pending_ids(out) != first
    server.set_config(batch_polls=1)
    run_to_end(config, out)
    assert json.loads((out / "run.json").read_text())["status"] in ("done", "done_with_failures")


def test_expired_batch_lines_are_sent_again(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(batch_polls=2)
    config = make_config(server, rounds=1)
    out = tmp_path / "run"
    step(config, out)
    with openai.OpenAI(base_url=server.base_url, api_key="test-key") as client:
        assert client.batches.cancel(pending_ids(out)[0]).status == "cancelling"
    messages: list[str] = []
    again = step(config, out, messages)
    assert any("0 answers, 0 failed" in m for m in messages)
    assert again.status == "waiting" and again.batch is not None
    assert again.batch["pending"]["counts"]["total"] == SEED_COUNT


def test_large_stages_are_split_into_several_batches(server: ThreadedServer, tmp_path: Path) -> None:
    config = make_config(server, rounds=1)
    out = tmp_path / "run"
    step(config, out, max_requests=4)
    state = json.loads((out / "batch.json").read_text())
    assert [b["requests"] for b in state["pending"]] == [4, 4, 2]
    run_to_end(config, out, max_requests=4)
    assert len(by_seed(lines(out / "final.jsonl"))) >= 1
    assert not list((out / "batch").glob("*.input.jsonl"))  # inputs are removed once submitted


def test_a_kill_between_invocations_resumes(server: ThreadedServer, tmp_path: Path) -> None:
    """Torn lines and a batch.json from before the last collection: the next invocation repairs both."""
    config = make_config(server, rounds=1)
    live = run_evolution(config, [DEMO], tmp_path / "live", lambda _: None)
    server.reset()
    out = tmp_path / "run"
    step(config, out)
    state_before = (out / "batch.json").read_text()
    step(config, out)  # collects the evolution, submits the judging
    (out / "batch.json").write_text(state_before)  # as if killed before batch.json was saved
    with (out / "round-1" / "evolved.jsonl").open("a") as fp:
        fp.write('{"id": "torn')
    run_to_end(config, out)
    for name in ROUND_FILES:
        ours = by_seed(lines(out / "round-1" / f"{name}.jsonl"))
        theirs = by_seed(lines(tmp_path / "live" / "round-1" / f"{name}.jsonl"))
        assert {k: core(v) for k, v in ours.items()} == {k: core(v) for k, v in theirs.items()}, name
    assert json.loads((out / "run.json").read_text())["final_samples"] == live.final_samples


def test_kill9_during_invocations_then_later_ones_finish_with_the_live_records(
    server: ThreadedServer, tmp_path: Path
) -> None:
    """Real `evolve run --batch` processes, SIGKILLed at random moments (start-up, collection, submission): the
    invocations after them complete the run with the records of a live run."""
    config = make_config(server, rounds=2, images="skip")
    live = tmp_path / "live"
    run_evolution(config, [DEMO], live, lambda _: None)
    server.reset()
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "evolve", "run", str(DEMO), "--batch", "--out", str(out), "--rounds", "2",
            "--images", "skip", "--seed", "7", "--base-url", server.base_url, "--model", "fake-vlm",
            "--quiet"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVOLVE_", "OPENAI_"))} | {"OPENAI_API_KEY": "k"}
    rng = random.Random(20261201)
    kills, status = 0, None
    for _ in range(40):
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 4:
            time.sleep(rng.uniform(0.3, 1.5))
            if proc.poll() is None:
                proc.kill()
                kills += 1
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -9), err.decode()
        status = json.loads((out / "run.json").read_text())["status"] if (out / "run.json").exists() else None
        if kills >= 4 and status == "done":
            break
    assert kills >= 3, "the kills should land while invocations run"
    assert status == "done"
    for number in (1, 2):
        for name in ROUND_FILES:
            ours = by_seed(lines(out / f"round-{number}" / f"{name}.jsonl"))
            theirs = by_seed(lines(live / f"round-{number}" / f"{name}.jsonl"))
            assert {k: core(v) for k, v in ours.items()} == {k: core(v) for k, v in theirs.items()}, (number, name)


def test_a_second_concurrent_invocation_is_refused(server: ThreadedServer, tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from evolve.runfolder import RunFolder, run_lock\n"
         "with run_lock(RunFolder(Path(sys.argv[1]))):\n    print('locked', flush=True); sys.stdin.read()",
         str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"already running \\(pid {holder.pid}\\)"):
            step(make_config(server), out)
        assert server.stats()["http_total"] == 1 and not (out / "batch.json").exists()  # 1: this stats call
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    assert step(make_config(server), out).status == "waiting"  # free again once the holder is gone


def test_other_settings_are_refused(server: ThreadedServer, tmp_path: Path) -> None:
    out = tmp_path / "run"
    step(make_config(server, rounds=1), out)
    with pytest.raises(UsageError, match="seed differs"):
        step(make_config(server, rounds=1, seed=8), out)


def test_batch_through_the_cli_and_conflicting_engines(server: ThreadedServer, tmp_path: Path) -> None:
    base = ["--base-url", server.base_url, "--api-key", "k", "--model", "m", "--images", "skip", "--rounds", "1"]
    out = tmp_path / "run"
    for _ in range(3):
        result = CliRunner().invoke(app, ["run", str(DEMO), "--batch", "--out", str(out), *base])
        assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["status"] in ("done", "done_with_failures")
    refused = CliRunner().invoke(app, ["run", str(DEMO), "--batch", "--executor", "ray", *base])
    assert refused.exit_code == 2 and "--batch and --executor ray cannot be combined" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    no_cache = CliRunner().invoke(app, ["run", str(DEMO), "--batch", "--no-cache", "--out", str(tmp_path / "x"), *base])
    assert no_cache.exit_code == 2 and "needs the response cache" in no_cache.output
