"""`evolve run --batch` (evolve.batch.batch_step) across invocations against the test server's Batch API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from evolve.batch import MAX_BATCH_REQUESTS, STATE_FILE, BatchStep, batch_step, custom_id, split_custom_id
from evolve.config import RunConfig
from evolve.errors import ImageInputRejected, RunLockedError, UsageError
from evolve.fakeserver import ThreadedServer
from evolve.fakeserver.content import MALFORMED_TEXT
from evolve.pipeline import run_evolution

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "seeds" / "demo.jsonl"
SEED_COUNT = 10


def lines(path: Path) -> list[dict[str, Any]]:
    """Decoded JSONL lines of a file ([] when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def by_seed(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Records keyed by seed id (each seed at most once per file)."""
    keyed = {r["seed_id"]: r for r in records}
    assert len(keyed) == len(records), "a seed appears twice in one round file"
    return keyed


def make_config(server: ThreadedServer, **extra: Any) -> RunConfig:
    """Settings pointing at the test server."""
    values: dict[str, Any] = {"base_url": server.base_url, "api_key": "test-key", "model": "fake-vlm", "seed": 7}
    values.update(extra)
    return RunConfig(**values)


def step(
    config: RunConfig, out: Path, messages: list[str] | None = None, *, max_requests: int = MAX_BATCH_REQUESTS
) -> BatchStep:
    """One invocation, as cron would make it."""
    sink = messages if messages is not None else []
    return batch_step(config, [DEMO], out, sink.append, max_requests=max_requests)


def run_to_end(
    config: RunConfig, out: Path, limit: int = 20, max_requests: int = MAX_BATCH_REQUESTS
) -> list[BatchStep]:
    """Invoke until the run is done; the steps taken."""
    steps = []
    for _ in range(limit):
        steps.append(step(config, out, max_requests=max_requests))
        if steps[-1].done:
            return steps
    raise AssertionError(f"not done after {limit} invocations: {[s.line() for s in steps]}")


def core(record: dict[str, Any]) -> dict[str, Any]:
    """What a record says, without fields that may legitimately differ between two runs."""
    return {k: record[k] for k in ("id", "seed_id", "parent_id", "round", "operator", "qa", "image", "caption")}


@pytest.mark.parametrize(("images", "rounds"), [("send", 1), ("skip", 2)])
def test_batch_flow_writes_what_the_live_run_writes(
    server: ThreadedServer, tmp_path: Path, images: str, rounds: int
) -> None:
    config = make_config(server, images=images, rounds=rounds)
    live_out = tmp_path / "live"
    live = run_evolution(config, [DEMO], live_out, lambda _: None)
    assert live.summary["status"] == "done"
    live_log = server.log()
    server.reset()

    out = tmp_path / "batch"
    first = step(config, out)
    assert (first.action, first.stage, first.round) == ("submitted", "evolve", 1)
    assert first.counts["total"] == SEED_COUNT and len(first.batch_ids) == 1
    state = json.loads((out / STATE_FILE).read_text())
    assert state["pending"]["batches"][0]["id"] == first.batch_ids[0]
    ids = state["pending"]["batches"][0]["custom_ids"]
    assert len(ids) == SEED_COUNT and all(split_custom_id(cid)[0::2] == ("evolve", 1) for cid in ids)
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert lines(out / "round-1" / "evolved.jsonl") == []  # nothing is written before the batch is done
    with openai.OpenAI(base_url=server.base_url, api_key="test-key") as client:
        uploaded = client.files.content(state["pending"]["batches"][0]["input_file_id"]).text
    requests = [json.loads(line) for line in uploaded.splitlines()]
    assert [r["custom_id"] for r in requests] == ids
    for request in requests:
        assert (request["method"], request["url"]) == ("POST", "/v1/chat/completions")
        body = request["body"]
        assert list(body) == ["model", "temperature", "max_tokens", "messages"]
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("fake-vlm", 1.0, 4096)
        system, user = body["messages"]
        assert system["role"] == "system" and user["role"] == "user"
        if images == "send":
            picture, text = user["content"]
            assert picture["image_url"]["url"].startswith("data:image/jpeg;base64,") and text["type"] == "text"
        else:
            assert isinstance(user["content"], str) and "### Given Q&A&S" in user["content"]
    assert server.stats()["total"] == 0  # and nothing was answered yet

    second = step(config, out)
    assert (second.action, second.stage, second.round) == ("submitted", "judge", 1)
    assert second.collected and second.collected[0].startswith("collected evolve round 1: 10 answers")
    assert len(lines(out / "round-1" / "evolved.jsonl")) == SEED_COUNT
    assert lines(out / "round-1" / "judged.jsonl") == []

    steps = [first, second, *run_to_end(config, out)]
    expected = [pair for number in range(1, rounds + 1) for pair in (("evolve", number), ("judge", number))]
    assert [(s.stage, s.round) for s in steps if s.action == "submitted"] == expected
    assert steps[-1].done and steps[-1].summary is not None

    for number in range(1, rounds + 1):
        for name in ("evolved", "judged", "kept"):
            ours = by_seed(lines(out / f"round-{number}" / f"{name}.jsonl"))
            theirs = by_seed(lines(live_out / f"round-{number}" / f"{name}.jsonl"))
            assert len(ours) == SEED_COUNT
            assert {k: core(v) for k, v in ours.items()} == {k: core(v) for k, v in theirs.items()}
        assert lines(out / f"round-{number}" / "dropped.jsonl") == []
    assert len(lines(out / "final.jsonl")) == rounds * SEED_COUNT

    # The very same requests reached the server, each once, all through the Batch API.
    batch_log = server.log()
    assert sorted(e["sha256"] for e in batch_log) == sorted(e["sha256"] for e in live_log)
    assert all(e["batch"] for e in batch_log) and not any(e["batch"] for e in live_log)
    assert all(e["has_image"] == (images == "send") for e in batch_log)
    assert server.stats()["batches"] == 2 * rounds

    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "done" and summary["final_samples"] == rounds * SEED_COUNT
    assert summary["mode"] == "batch" and summary["batch"]["pending"] is None
    assert summary["usage"] == live.summary["usage"]  # the same tokens, counted from the batch outputs
    assert summary["usage"]["requests"] == 2 * rounds * SEED_COUNT
    for number in range(1, rounds + 1):
        for key in ("samples", "kept_samples", "judged_items", "improvement_rate", "operators", "usage"):
            assert summary["rounds"][str(number)][key] == live.summary["rounds"][str(number)][key], key
    assert "test-key" not in (out / "run.json").read_text() + (out / STATE_FILE).read_text()

    # A finished run stays finished: cron may go on calling without any request.
    before = server.stats()["http_total"]
    again = step(config, out)
    assert again.done and again.summary is not None and again.summary["status"] == "done"
    assert server.stats()["http_total"] == before + 1  # + 1: this stats call itself


def test_pending_batch_only_reports_its_status(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(batch_polls=3)
    config = make_config(server, rounds=1)
    out = tmp_path / "run"
    messages: list[str] = []
    submitted = step(config, out, messages)
    for _ in range(2):
        pending = step(config, out, messages)
        assert (pending.action, pending.stage, pending.round) == ("pending", "evolve", 1)
        assert pending.batch_ids == submitted.batch_ids and pending.status == "in_progress"
        assert pending.counts["total"] == SEED_COUNT and not pending.done
        assert "in_progress" in pending.line() and submitted.batch_ids[0] in pending.line()
        assert lines(out / "round-1" / "evolved.jsonl") == []
        summary = json.loads((out / "run.json").read_text())
        assert summary["status"] == "running" and summary["batch"]["pending"]["status"] == "in_progress"
    assert server.stats()["total"] == 0
    collected = step(config, out, messages)  # the third poll finds it done
    assert (collected.action, collected.stage) == ("submitted", "judge")
    assert len(lines(out / "round-1" / "evolved.jsonl")) == SEED_COUNT
    assert messages == []  # side notes only; the status is the step's line()


def test_failed_lines_become_dropped_records_with_reasons(server: ThreadedServer, tmp_path: Path) -> None:
    config = make_config(server, rounds=1)
    out = tmp_path / "run"
    step(config, out)
    server.add_fault("500", match="What colour is the car in the image?")  # demo-001's evolution
    server.add_fault("malformed", match="What kind of seat is shown in the park?")  # demo-003's evolution
    second = step(config, out)
    assert second.collected[0].startswith("collected evolve round 1: 10 answers, 2 failed")
    assert second.counts["total"] == SEED_COUNT - 2  # only the evolved samples are judged
    server.add_fault("malformed", match="How many cups are on the table?")  # demo-002's judging
    done = step(config, out)
    assert done.done and done.summary is not None

    dropped = by_seed(lines(out / "round-1" / "dropped.jsonl"))
    assert set(dropped) == {"0_images_demo-001.png", "2_images_demo-003.png", "1_images_demo-002.jpg"}
    car = dropped["0_images_demo-001.png"]
    assert car["stage"] == "evolve" and car["reason"].startswith("endpoint: ") and "(500)" in car["reason"]
    assert car["id"] == "0_images_demo-001.png@r1" and car["operator"]
    seat = dropped["2_images_demo-003.png"]
    assert (
        seat["stage"] == "evolve" and seat["reason"].startswith("unreadable answer: ") and seat["raw"] == MALFORMED_TEXT
    )
    cups = dropped["1_images_demo-002.jpg"]
    assert cups["stage"] == "judge" and cups["reason"].startswith("unreadable verdicts: ")
    assert cups["sample"]["id"] == "1_images_demo-002.jpg@r1"  # the rewrite is kept for inspection

    evolved = by_seed(lines(out / "round-1" / "evolved.jsonl"))
    assert len(evolved) == SEED_COUNT - 2 and "1_images_demo-002.jpg" in evolved
    kept = by_seed(lines(out / "round-1" / "kept.jsonl"))
    assert len(kept) == SEED_COUNT - 3
    summary = done.summary
    assert summary["status"] == "done_with_failures"
    stats = summary["rounds"]["1"]
    assert (stats["evolve_failed"], stats["judge_failed"], stats["kept_samples"]) == (2, 1, SEED_COUNT - 3)
    assert summary["final_samples"] == SEED_COUNT - 3
    assert summary["usage"]["requests"] == (SEED_COUNT - 1) + (SEED_COUNT - 2)  # 200 answers only


def test_text_only_endpoint_refusing_images_stops_the_run(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(text_only=True)
    config = make_config(server, rounds=1)
    out = tmp_path / "run"
    step(config, out)
    with pytest.raises(ImageInputRejected, match="endpoint rejected image input"):
        step(config, out)
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert lines(out / "round-1" / "evolved.jsonl") == [] and lines(out / "round-1" / "dropped.jsonl") == []


def test_cancelled_batch_is_sent_again(server: ThreadedServer, tmp_path: Path) -> None:
    server.set_config(batch_polls=2)
    config = make_config(server, rounds=1)
    out = tmp_path / "run"
    first = step(config, out)
    with openai.OpenAI(base_url=server.base_url, api_key="test-key") as client:
        assert client.batches.cancel(first.batch_ids[0]).status == "cancelling"
    again = step(config, out)
    assert (again.action, again.stage, again.round) == ("submitted", "evolve", 1)
    assert again.batch_ids != first.batch_ids and again.counts["total"] == SEED_COUNT
    assert "0 answers, 0 failed, 10 to send again" in again.collected[0]
    run_to_end(config, out)
    assert len(by_seed(lines(out / "round-1" / "kept.jsonl"))) == SEED_COUNT


def test_large_stages_are_split_into_several_batches(server: ThreadedServer, tmp_path: Path) -> None:
    config = make_config(server, rounds=1)
    out = tmp_path / "run"
    first = step(config, out, max_requests=4)
    assert len(first.batch_ids) == 3 and first.counts["total"] == SEED_COUNT
    state = json.loads((out / STATE_FILE).read_text())
    assert [len(b["custom_ids"]) for b in state["pending"]["batches"]] == [4, 4, 2]
    run_to_end(config, out, max_requests=4)
    assert len(by_seed(lines(out / "final.jsonl"))) == SEED_COUNT
    assert server.stats()["batches"] == 6
    assert not list((out / "batch").glob("*.input.jsonl"))  # inputs are removed once submitted


def test_collecting_again_after_a_crash_writes_each_record_once(server: ThreadedServer, tmp_path: Path) -> None:
    config = make_config(server, rounds=1)
    out = tmp_path / "run"
    step(config, out)
    state_before = (out / STATE_FILE).read_text()
    step(config, out)  # collects the evolution, submits the judging
    # A crash right after writing the round files: batch.json still names the evolution batch, and a
    # torn line sits at the end of evolved.jsonl.
    (out / STATE_FILE).write_text(state_before)
    with (out / "round-1" / "evolved.jsonl").open("a") as fp:
        fp.write('{"id": "torn')
    redo = step(config, out)
    assert (redo.action, redo.stage) == ("submitted", "judge")
    assert len(by_seed(lines(out / "round-1" / "evolved.jsonl"))) == SEED_COUNT
    run_to_end(config, out)
    assert len(by_seed(lines(out / "round-1" / "judged.jsonl"))) == SEED_COUNT
    assert len(lines(out / "final.jsonl")) == SEED_COUNT


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
        assert server.stats()["http_total"] == 1 and not (out / STATE_FILE).exists()  # 1: this stats call
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    assert step(make_config(server), out).action == "submitted"  # free again once the holder is gone


def test_other_settings_are_refused(server: ThreadedServer, tmp_path: Path) -> None:
    out = tmp_path / "run"
    step(make_config(server, rounds=1), out)
    with pytest.raises(UsageError, match="seed differs"):
        step(make_config(server, rounds=1, seed=8), out)


def test_custom_ids_round_trip() -> None:
    assert split_custom_id(custom_id("judge", "a:b:r2", 3)) == ("judge", "a:b:r2", 3)
    with pytest.raises(ValueError):
        split_custom_id("other:x:r1")
