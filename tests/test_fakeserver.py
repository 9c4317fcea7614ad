"""The fake OpenAI-compatible server, exercised from the client side over real sockets."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from evolve.checks import check_sample, parse_checks
from evolve.fakeserver import Config, ThreadedServer, messages_sha256, stable_fraction
from evolve.fakeserver.__main__ import parse_args
from evolve.fakeserver.content import ATOMIC_PROPOSITIONS, QAS_KEYS, Brief, Settings, answer, read_brief, rewrite_item
from evolve.parse import parse_qas
from evolve.prompts import PromptSet
from evolve.records import QAS, Sample, parse_record

REPO = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"```json\s*(.*?)\s*```", re.DOTALL)


def given_items(n: int, tag: str = "") -> list[dict[str, Any]]:
    """n seed-like Q&A&S items."""
    return [
        {
            "image_position": "single",
            "objects": ["car"],
            "skills": [],
            "format": "Norm",
            "question": f"What colour is the car number {i}{tag}?",
            "steps": [],
            "answer": "It is red.",
        }
        for i in range(n)
    ]


def evolve_prompt(items: list[dict[str, Any]], with_example: bool = True) -> str:
    """An evolution prompt; the in-context example also has a Given heading, which must be ignored."""
    example = ""
    if with_example:
        example = (
            "### Example\n### Given Q&A&S\n```json\n" + json.dumps(given_items(7, "x")) + "\n```\n"
            "### Rewritten Q&A&S\n```json\n[]\n```\n\n"
        )
    return (
        "You rewrite questions about an image.\n" + example + "### Objective\nMake them harder.\n"
        "### Given Q&A&S\n```json\n" + json.dumps(items) + "\n```\n### Rewritten Q&A&S\n"
    )


def judge_prompt(original: list[dict[str, Any]], rewritten: list[dict[str, Any]]) -> str:
    """A judge prompt; a decoy Rewritten heading comes first, the last one holds the real items."""
    return (
        "Compare the rewritten questions with the originals.\n"
        '### Rewritten Q&A&S\n```json\n[{"question": "decoy"}]\n```\n'
        "### Original Q&A&S\n```json\n" + json.dumps(original) + "\n```\n"
        "### Rewritten Q&A&S\n```json\n" + json.dumps(rewritten) + "\n```\n"
    )


def fenced_json(text: str) -> Any:
    match = FENCE.search(text)
    assert match, f"no ```json fence in {text!r}"
    return json.loads(match.group(1))


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def client(server: ThreadedServer) -> Any:
    with openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0, timeout=10) as c:
        yield c


def test_models_list(server: ThreadedServer, client: openai.OpenAI) -> None:
    server.set_config(model="served-model")
    assert [m.id for m in client.models.list()] == ["served-model"]


def test_evolution_prompt_sync(server: ThreadedServer, client: openai.OpenAI) -> None:
    items = given_items(3)
    prompt = evolve_prompt(items)
    first = client.chat.completions.create(model="m1", messages=user(prompt))
    text = first.choices[0].message.content or ""
    rewritten = fenced_json(text)
    assert len(rewritten) == 3
    for old, new in zip(items, rewritten, strict=True):
        assert set(new) == set(QAS_KEYS)
        assert new["objects"] and new["skills"] and new["steps"]
        assert all(set(step) == {"manipulation", "description"} for step in new["steps"])
        assert len(new["question"]) > len(old["question"])
        assert new["image_position"] == "single"
    assert first.model == "m1"
    assert first.usage is not None
    assert first.usage.prompt_tokens == pytest.approx(len(prompt) / 4, abs=1)
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    # Same prompt, same bytes; another prompt, another answer.
    again = client.chat.completions.create(model="m1", messages=user(prompt))
    assert again.choices[0].message.content == text
    other = client.chat.completions.create(model="m1", messages=user(evolve_prompt(given_items(3, "b"))))
    assert other.choices[0].message.content != text
    assert [e["kind"] for e in server.log()] == ["evolve"] * 3


def test_judge_prompt_async(server: ThreadedServer) -> None:
    rewritten = [{"question": f"Identify thing {i} and explain it", "answer": "a"} for i in range(4)]

    async def run() -> str:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as aclient:
            resp = await aclient.chat.completions.create(
                model="judge", messages=user(judge_prompt(given_items(4), rewritten))
            )
            return resp.choices[0].message.content or ""

    verdicts = fenced_json(asyncio.run(run()))
    assert len(verdicts) == 4
    for verdict in verdicts:
        assert set(verdict) == {"improved", "score", "reason"}
        assert verdict["improved"] == "yes"
        assert 5 <= verdict["score"] <= 9
        assert verdict["reason"]
    assert server.stats()["by_kind"] == {
        "evolve": 0, "judge": 1, "annotate": 0, "claims_split": 0, "claims_check": 0, "other": 0,
    }  # fmt: skip


def test_many_concurrent_async_requests_and_diversity(server: ThreadedServer) -> None:
    prompts = [evolve_prompt(given_items(2, f"-{i}"), with_example=False) for i in range(40)]

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as aclient:
            resps = await asyncio.gather(
                *(aclient.chat.completions.create(model="m", messages=user(p)) for p in prompts)
            )
            return [r.choices[0].message.content or "" for r in resps]

    items = [item for text in asyncio.run(run()) for item in fenced_json(text)]
    assert len(items) == 80
    verbs = {item["question"].split()[0] for item in items}
    objects = {obj for item in items for obj in item["objects"]}
    formats = {item["format"] for item in items}
    assert len(verbs) >= 8 and len(objects) >= 20 and len(formats) >= 5
    assert len({item["question"] for item in items}) == 80


def test_other_prompt_gets_plain_answer(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="m", messages=user("Describe the image briefly."))
    text = resp.choices[0].message.content or ""
    assert text and "```" not in text and "{" not in text


def test_image_parts_accepted_and_logged(server: ThreadedServer, client: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You are helpful."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "### Given Q&A&S\n```json\n"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "text", "text": json.dumps(given_items(2)) + "\n```"},
            ],
        },
    ]
    resp = client.chat.completions.create(model="vision", messages=messages)
    assert len(fenced_json(resp.choices[0].message.content or "")) == 2
    (entry,) = server.log()
    assert entry["has_image"] is True and entry["kind"] == "evolve" and entry["status"] == 200
    assert entry["sha256"] == messages_sha256(messages)
    assert entry["model"] == "vision"


def test_text_only_rejects_images(server: ThreadedServer, client: openai.OpenAI) -> None:
    server.set_config(text_only=True)
    image_msg: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=image_msg)
    assert info.value.status_code == 500
    assert "image input is not supported" in str(info.value)
    assert client.chat.completions.create(model="m", messages=user("What is this?")).choices[0].message.content
    assert server.stats()["by_status"] == {"200": 1, "500": 1}


STATUS_FAULTS = [
    ("429", openai.RateLimitError),
    ("500", openai.InternalServerError),
    ("503", openai.InternalServerError),
    ("400", openai.BadRequestError),
    ("401", openai.AuthenticationError),
    ("404", openai.NotFoundError),
]


@pytest.mark.parametrize(("kind", "error"), STATUS_FAULTS)
def test_status_faults(server: ThreadedServer, client: openai.OpenAI, kind: str, error: type) -> None:
    server.add_fault(kind, count=2, retry_after=3)
    for _ in range(2):
        with pytest.raises(error) as info:
            client.chat.completions.create(model="m", messages=user("hello"))
        assert info.value.status_code == int(kind)
        if kind == "429":
            assert info.value.response.headers["retry-after"] == "3"
    # Consumed: the third request succeeds.
    assert client.chat.completions.create(model="m", messages=user("hello")).choices[0].message.content
    stats = server.stats()
    assert stats["by_status"] == {kind: 2, "200": 1}
    assert stats["faults_fired"] == {kind: 2} and stats["faults_pending"] == 0


def test_sdk_retries_honour_retry_after(server: ThreadedServer) -> None:
    server.add_fault("429", count=2, retry_after=0.2)
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=3) as retrying:
        start = time.monotonic()
        resp = retrying.chat.completions.create(model="m", messages=user("hi"))
        elapsed = time.monotonic() - start
    assert resp.choices[0].message.content
    assert elapsed >= 0.35
    assert [e["status"] for e in server.log()] == [429, 429, 200]


def test_fault_match_only_hits_matching_text(server: ThreadedServer, client: openai.OpenAI) -> None:
    server.add_faults({"kind": "500", "count": 5, "match": "POISON"})
    assert client.chat.completions.create(model="m", messages=user("clean text")).choices
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=user("some POISON here"))
    assert server.stats()["faults_pending"] == 4


def test_hang_fault(server: ThreadedServer) -> None:
    server.add_fault("hang", count=1, hang_seconds=0.4)
    server.add_fault("hang", count=1)  # the default: an hour
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=5) as slow:
        start = time.monotonic()
        assert slow.chat.completions.create(model="m", messages=user("a")).choices[0].message.content
        assert 0.35 <= time.monotonic() - start < 3
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=0.3) as impatient:
        start = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model="m", messages=user("b"))
        assert time.monotonic() - start < 2


def test_reset_fault(server: ThreadedServer, client: openai.OpenAI) -> None:
    server.add_fault("reset")
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=user("hello"))
    assert client.chat.completions.create(model="m", messages=user("hello")).choices
    assert [e["status"] for e in server.log()] == [0, 200]


def test_content_faults(server: ThreadedServer, client: openai.OpenAI) -> None:
    prompt = evolve_prompt(given_items(2))
    normal = client.chat.completions.create(model="m", messages=user(prompt)).choices[0].message.content or ""
    server.add_faults({"kind": "malformed"}, {"kind": "truncated"}, {"kind": "empty"})
    malformed = client.chat.completions.create(model="m", messages=user(prompt)).choices[0]
    assert malformed.message.content and not set("{}[]") & set(malformed.message.content)
    truncated = client.chat.completions.create(model="m", messages=user(prompt)).choices[0]
    assert truncated.message.content == normal[: len(normal) // 2]
    assert truncated.finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        fenced_json(truncated.message.content + "```")
    assert client.chat.completions.create(model="m", messages=user(prompt)).choices[0].message.content == ""
    assert [e["fault"] for e in server.log()] == [None, "malformed", "truncated", "empty"]


def test_garbage_body_fault(server: ThreadedServer) -> None:
    server.add_fault("garbage_body")
    with httpx.Client(base_url=server.base_url, trust_env=False) as http:
        body = {"model": "m", "messages": user("hello")}
        resp = http.post("/chat/completions", json=body)
        assert resp.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(resp.content)
        assert http.post("/chat/completions", json=body).json()["object"] == "chat.completion"


def test_latency_is_honoured_without_blocking(server: ThreadedServer) -> None:
    server.set_config(latency=0.3)

    async def run() -> float:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as aclient:
            start = time.monotonic()
            await asyncio.gather(
                *(aclient.chat.completions.create(model="m", messages=user(f"q{i}")) for i in range(20))
            )
            return time.monotonic() - start

    elapsed = asyncio.run(run())
    assert 0.3 <= elapsed < 1.5  # 20 requests served concurrently, not one after another
    with httpx.Client(trust_env=False) as http:
        start = time.monotonic()
        assert http.get(server.root_url + "/_control/stats").json()["total"] == 20
        assert time.monotonic() - start < 0.25  # the control API is never delayed


def test_reject_ratio(server: ThreadedServer, client: openai.OpenAI) -> None:
    rewritten = [{"question": f"Locate object number {i} in the picture", "answer": "x"} for i in range(60)]
    prompt = judge_prompt(given_items(60), rewritten)

    def verdicts() -> list[dict[str, Any]]:
        resp = client.chat.completions.create(model="m", messages=user(prompt))
        result: list[dict[str, Any]] = fenced_json(resp.choices[0].message.content or "")
        return result

    assert all(v["improved"] == "yes" for v in verdicts())
    server.set_config(reject_ratio=0.5, score_min=1, score_max=3)
    half = verdicts()
    for item, verdict in zip(rewritten, half, strict=True):
        expected = "no" if stable_fraction("judge", item["question"]) < 0.5 else "yes"
        assert verdict["improved"] == expected
        assert 1 <= verdict["score"] <= 3
    assert 15 <= sum(v["improved"] == "no" for v in half) <= 45
    server.set_config(reject_ratio=1.0)
    assert all(v["improved"] == "no" for v in verdicts())


def test_stats_log_and_reset(server: ThreadedServer, client: openai.OpenAI) -> None:
    evolve_msgs = user(evolve_prompt(given_items(1)))
    client.chat.completions.create(model="a", messages=evolve_msgs)
    client.chat.completions.create(model="b", messages=user(judge_prompt(given_items(1), given_items(1))))
    client.chat.completions.create(model="c", messages=user("hi"))
    stats = server.stats()
    assert stats["total"] == 3
    assert stats["by_kind"] == {
        "evolve": 1,
        "judge": 1,
        "annotate": 0,
        "claims_split": 0,
        "claims_check": 0,
        "other": 1,
    }
    assert stats["by_status"] == {"200": 3}
    log = server.log()
    assert [(e["kind"], e["model"], e["n_items"]) for e in log] == [
        ("evolve", "a", 1),
        ("judge", "b", 1),
        ("other", "c", None),
    ]
    assert log[0]["sha256"] == messages_sha256(evolve_msgs)
    server.set_config(latency=2)
    server.add_fault("500")
    server.reset()
    assert server.stats()["total"] == 0 and server.log() == [] and server.stats()["faults_pending"] == 0
    assert server.config()["latency"] == 0


def test_control_rejects_bad_input(server: ThreadedServer) -> None:
    with pytest.raises(RuntimeError, match="400"):
        server.set_config(no_such_setting=1)
    with pytest.raises(RuntimeError, match="unknown fault kind"):
        server.add_fault("explode")
    with httpx.Client(base_url=server.base_url, trust_env=False) as http:
        resp = http.post("/chat/completions", content=b"{not json")
        assert resp.status_code == 400 and "error" in resp.json()
        assert http.get("/nowhere").status_code == 404
    assert [(e["status"], e["sha256"]) for e in server.log()] == [(400, None)]


def test_files_and_batches_with_sdk(server: ThreadedServer, client: openai.OpenAI) -> None:
    server.set_config(batch_polls=2)
    prompts = {
        "s1-evolve": evolve_prompt(given_items(2)),
        "s2-judge": judge_prompt(given_items(3), given_items(3)),
    }
    lines = [
        {
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": user(p)},
        }
        for cid, p in prompts.items()
    ]
    payload = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("requests.jsonl", payload), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(payload)
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    assert client.files.content(uploaded.id).read() == payload

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "validating"
    assert client.batches.retrieve(batch.id).status == "in_progress"
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id is None
    assert done.request_counts is not None and done.request_counts.completed == 2

    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert {o["custom_id"] for o in out} == set(prompts)
    by_id = {o["custom_id"]: o for o in out}
    for o in out:
        assert o["error"] is None and o["id"]
        assert o["response"]["status_code"] == 200 and o["response"]["request_id"]
        assert o["response"]["body"]["object"] == "chat.completion"
    evolve_text = by_id["s1-evolve"]["response"]["body"]["choices"][0]["message"]["content"]
    assert len(fenced_json(evolve_text)) == 2
    direct = client.chat.completions.create(model="m", messages=user(prompts["s1-evolve"]))
    assert direct.choices[0].message.content == evolve_text
    assert len(fenced_json(by_id["s2-judge"]["response"]["body"]["choices"][0]["message"]["content"])) == 3
    assert [e["batch"] for e in server.log()] == [True, True, False]

    second = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.cancel(second.id).status == "cancelling"
    assert client.batches.retrieve(second.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(done.id)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch-missing")


def test_batch_lines_with_failures(server: ThreadedServer, client: openai.OpenAI) -> None:
    server.set_config(text_only=True)
    server.add_fault("429", match="RATE")
    lines = [
        {
            "custom_id": "ok",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": user("fine")},
        },
        {
            "custom_id": "rl",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": user("RATE me")},
        },
        {
            "custom_id": "img",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
        },
    ]
    payload = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", payload), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id
    errors = {
        json.loads(x)["custom_id"]: json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()
    }
    assert errors["rl"]["response"]["status_code"] == 429
    assert errors["img"]["response"]["status_code"] == 500
    assert [json.loads(x)["custom_id"] for x in client.files.content(done.output_file_id).text.splitlines()] == ["ok"]


def _raw_exchange(port: int, data: bytes, expect: int) -> list[bytes]:
    """Send raw bytes, read ``expect`` responses (Content-Length framed), return their bodies."""
    bodies: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        buf = b""
        while len(bodies) < expect:
            chunk = sock.recv(65536)
            assert chunk, "server closed early"
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                if len(rest) < length:
                    break
                bodies.append(rest[:length])
                buf = rest[length:]
    return bodies


def test_raw_http_pipelined_chunked_and_keepalive(server: ThreadedServer) -> None:
    body = json.dumps({"model": "m", "messages": user("chunky")}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    data = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
        + b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    )  # fmt: skip
    first, second, models = _raw_exchange(server.port, data, 3)
    assert (
        json.loads(first)["choices"][0]["message"]["content"] == json.loads(second)["choices"][0]["message"]["content"]
    )
    assert json.loads(models)["object"] == "list"


def test_cli_port_file_and_cross_process_determinism(server: ThreadedServer, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "evolve.fakeserver", "--port", "0", "--port-file", str(port_file),
         "--model", "cli-model", "--latency", "0.05"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no port file"
            time.sleep(0.02)
        port = int(port_file.read_text())
        prompt = evolve_prompt(given_items(2))
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0) as other:
            assert [m.id for m in other.models.list()] == ["cli-model"]
            theirs = other.chat.completions.create(model="m", messages=user(prompt)).choices[0].message.content
        with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as ours:
            mine = ours.chat.completions.create(model="m", messages=user(prompt)).choices[0].message.content
        assert theirs == mine  # stable hashes: same answer in another process (other PYTHONHASHSEED)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        if proc.stderr:
            proc.stderr.close()


def test_cli_refuses_non_loopback_host() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "evolve.fakeserver", "--host", "0.0.0.0"],
        cwd=REPO, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 2 and "loopback" in result.stderr


# --------------------------------------------------------------------------- annotation and claims


def items_prompt(heading: str, items: list[dict[str, Any]], lead: str = "Instructions.\n") -> str:
    """A prompt of the new kinds: instructions, then the heading and its fenced items."""
    return f"{lead}{heading}\n```json\n{json.dumps(items)}\n```\nAnswer with JSON.\n"


def test_annotate_kind(server: ThreadedServer, client: openai.OpenAI) -> None:
    items = [
        {"index": 1, "question": "What colour is the car parked near the fire hydrant?", "answer": "Red."},
        {"index": 2, "question": "", "answer": "Nothing to annotate."},
        {"index": 3, "question": "Is the umbrella open?", "answer": "Yes."},
    ]
    prompt = items_prompt("### Q&A&S to Annotate", items, "### Given Q&A&S is mentioned here, not as the heading\n")
    reply = client.chat.completions.create(model="m", messages=user(prompt)).choices[0].message.content or ""
    first, empty, third = fenced_json(reply)
    assert first["index"] == 1 and first["objects"] == ["car", "fire", "hydrant"]
    assert 1 <= len(first["skills"]) <= 3 and 1 <= len(first["steps"]) <= 3
    assert set(first["skills"]) <= set(ATOMIC_PROPOSITIONS)
    assert all(re.fullmatch(r"\w+(_\d)?\(.+\)->\w+_\d", s["manipulation"]) for s in first["steps"])
    assert empty == {"index": 2, "objects": [], "skills": [], "steps": []}
    assert third["objects"] == ["umbrella", "open"]
    assert [e["kind"] for e in server.log()] == ["annotate"]
    again = client.chat.completions.create(model="m", messages=user(prompt)).choices[0].message.content
    assert again == reply


def test_claims_split_and_check_kinds(server: ThreadedServer, client: openai.OpenAI) -> None:
    answers = [
        "A dog runs. It chases a red ball!  The grass is wet? Four sentences make no fourth claim.",
        "Only one sentence here",
        "",
    ]
    items = [{"index": i + 1, "question": f"q{i}", "answer": a} for i, a in enumerate(answers)]
    split = client.chat.completions.create(model="m", messages=user(items_prompt("### Q&A&S to Split", items)))
    claims = fenced_json(split.choices[0].message.content or "")
    assert claims == [
        {"index": 1, "claims": ["A dog runs.", "It chases a red ball!", "The grass is wet?"]},
        {"index": 2, "claims": ["Only one sentence here"]},
        {"index": 3, "claims": []},
    ]
    flat = [c for item in claims for c in item["claims"]] + [f"Claim number {i}." for i in range(40)]
    listed = [{"id": i + 1, "claim": c} for i, c in enumerate(flat)] + [{"id": 99, "claim": " "}]
    prompt = items_prompt("### Claims to Check", listed)
    verdicts = fenced_json(client.chat.completions.create(model="m", messages=user(prompt)).choices[0].message.content)
    assert [v["verdict"] for v in verdicts] == ["yes"] * len(flat) + ["unsure"]  # false_claim_ratio 0: all true
    server.set_config(false_claim_ratio=0.3)
    verdicts = fenced_json(client.chat.completions.create(model="m", messages=user(prompt)).choices[0].message.content)
    expected = ["no" if stable_fraction("claim", c) < 0.3 else "yes" for c in flat]
    assert [v["verdict"] for v in verdicts[:-1]] == expected and [v["id"] for v in verdicts] == [
        *range(1, len(flat) + 1),
        99,
    ]
    assert 4 <= expected.count("no") <= 24
    assert [e["kind"] for e in server.log()] == ["claims_split", "claims_check", "claims_check"]


def test_text_parts_are_concatenated(server: ThreadedServer, client: openai.OpenAI) -> None:
    """A prompt split around an image (even inside a heading) reads as the concatenation of its text parts."""
    whole = items_prompt("### Q&A&S to Annotate", [{"index": 1, "question": "Where is the kite?", "answer": "Up."}])
    cut = whole.index("to Annotate")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    content: list[Any] = [{"type": "text", "text": whole[:cut]}, image, {"type": "text", "text": whole[cut:]}]
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}])
    (annotation,) = fenced_json(reply.choices[0].message.content or "")
    assert annotation["objects"] == ["kite"]
    (entry,) = server.log()
    assert entry["kind"] == "annotate" and entry["has_image"] and entry["n_items"] == 1
    assert reply.usage is not None and reply.usage.prompt_tokens == math.ceil(len(whole) / 4) + 85


# --------------------------------------------------------------------------- judge votes


def test_verdict_noise_follows_question_and_seed(server: ThreadedServer, client: openai.OpenAI) -> None:
    rewritten = [{"question": f"Which object number {i} is nearest?", "answer": "x"} for i in range(50)]
    prompt = judge_prompt(given_items(50), rewritten)

    def vote(**body: Any) -> list[dict[str, Any]]:
        resp = client.chat.completions.create(model="m", messages=user(prompt), **body)
        result: list[dict[str, Any]] = fenced_json(resp.choices[0].message.content or "")
        return result

    server.set_config(reject_ratio=0.2, score_min=3, score_max=8)
    base = vote()
    assert vote(seed=3) == base  # no noise configured: the seed changes nothing
    server.set_config(verdict_noise=0.25)
    assert vote() == base  # noise needs a seed
    ballots = {seed: vote(seed=seed) for seed in range(5)}
    flips = 0
    for seed, verdicts in ballots.items():
        for item, plain, noisy in zip(rewritten, base, verdicts, strict=True):
            flipped = stable_fraction("verdict_noise", item["question"], seed) < 0.25
            flips += flipped
            assert (noisy["improved"] != plain["improved"]) == flipped
            moved = noisy["score"] - plain["score"]
            assert moved in (-2, -1, 1, 2) or noisy["score"] in (1, 10)
            assert 1 <= noisy["score"] <= 10
    assert 30 <= flips <= 95  # about a quarter of 250
    assert vote(seed=2) == ballots[2]
    for index, item in enumerate(rewritten):  # majority of 5 votes, computed from the hashes alone
        base_yes = stable_fraction("judge", item["question"]) >= 0.2
        yes = sum(base_yes != (stable_fraction("verdict_noise", item["question"], s) < 0.25) for s in range(5))
        assert (sum(ballots[s][index]["improved"] == "yes" for s in range(5)) >= 3) == (yes >= 3)
    with httpx.Client(trust_env=False) as http:  # a boolean is not a seed
        body = {"model": "m", "messages": user(prompt), "seed": True}
        reply = http.post(server.base_url + "/chat/completions", json=body).json()
    assert fenced_json(reply["choices"][0]["message"]["content"]) == base


# --------------------------------------------------------------------------- token budget


def test_max_tokens_cuts_the_answer(server: ThreadedServer, client: openai.OpenAI) -> None:
    prompt = evolve_prompt(given_items(4))
    full = client.chat.completions.create(model="m", messages=user(prompt), max_tokens=100_000).choices[0]
    text = full.message.content or ""
    assert full.finish_reason == "stop" and len(text) > 400
    cut = client.chat.completions.create(model="m", messages=user(prompt), max_tokens=100)
    assert cut.choices[0].message.content == text[:400] and cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 100
    newer = client.chat.completions.create(model="m", messages=user(prompt), max_completion_tokens=50)
    assert newer.choices[0].message.content == text[:200] and newer.choices[0].finish_reason == "length"
    exact = client.chat.completions.create(model="m", messages=user(prompt), max_tokens=math.ceil(len(text) / 4))
    assert exact.choices[0].message.content == text and exact.choices[0].finish_reason == "stop"


def test_eight_reasoning_items_of_500_tokens_do_not_fit_in_4096(server: ThreadedServer, client: openai.OpenAI) -> None:
    prompts = PromptSet.load()
    sample = Sample(id="s", qa=[QAS(question=f"What is object {i} doing?", answer="It rests.") for i in range(8)])
    messages: Any = [
        {"role": "system", "content": prompts.system},
        {"role": "user", "content": prompts.render_evolution("reasoning", sample)},
    ]
    server.set_config(item_tokens=500)
    roomy = client.chat.completions.create(model="m", messages=messages, max_tokens=8192).choices[0]
    items = parse_qas(roomy.message.content or "")
    assert roomy.finish_reason == "stop" and len(items) == 8
    assert all(len(item.answer) == 2000 for item in items)  # padded to 500 tokens each
    tight = client.chat.completions.create(model="m", messages=messages, max_tokens=4096)
    assert tight.choices[0].finish_reason == "length" and tight.usage is not None
    assert tight.usage.completion_tokens == 4096
    complete = sum(1 for line in (roomy.message.content or "")[:16384].split("\n")[2:] if line.endswith(("},", "}")))
    assert len(parse_qas(tight.choices[0].message.content or "")) == complete == 6  # 16,384 characters hold 6
    server.set_config(item_tokens=0)
    short = parse_qas(
        client.chat.completions.create(model="m", messages=messages, max_tokens=4096).choices[0].message.content or ""
    )
    assert len(short) == 8 and all(len(item.answer) < 200 for item in short)


# --------------------------------------------------------------------------- prompt caching


def cached_tokens(reply: Any) -> int | None:
    details = reply.usage.prompt_tokens_details
    return None if details is None else details.cached_tokens


def test_prefix_cache_figures(server: ThreadedServer, client: openai.OpenAI) -> None:
    fixed = "F" * 4096  # exactly 1,024 tokens: 8 blocks of 128 tokens (512 characters)
    replies: list[Any] = []

    def send(*parts: Any, model: str = "m") -> int | None:
        content = [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])
        replies.append(reply)
        return cached_tokens(reply)

    assert send(fixed, "tail one") == 0  # first sight
    assert send(fixed, "tail two") == 1024  # the 8 shared blocks
    assert send(fixed, "x" * 2000) == 1024  # 11 blocks, 8 seen
    assert send(fixed, "x" * 2000) == 1408  # all 11 (the last 464 characters make no block)
    assert send(fixed, "x" * 1000, "y" * 1000) == 1152  # x up to character 5,096: block 9 shared, 10 not
    assert send(fixed, model="other") == 0  # per model
    assert send("F" * 3000, "short") == 0  # under 1,024 tokens: never cached, not counted
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,ONE"}}
    other = {"type": "image_url", "image_url": {"url": "data:image/png;base64,TWO"}}
    head, tail = "h" * 3000, "t" * 2000
    assert send(head, image, tail) == 0  # 3,000 + 340 (85 tokens) + 2,000 characters: 10 blocks
    assert replies[-1].usage.prompt_tokens == 750 + 85 + 500
    assert send(head, other, tail) == 0  # another image: only 5 blocks in common
    assert send(head, image, tail[:1000] + "u" * 1000) == 1024  # 4,340 characters in common: 8 blocks
    assert send(head, image, tail) == 1280
    stats = server.stats()
    assert stats["prefix_cache"]["enabled"] is True
    assert (stats["prefix_cache"]["requests"], stats["prefix_cache"]["hits"]) == (10, 6)
    assert stats["prefix_cache"]["cached_tokens"] == 1024 + 1024 + 1408 + 1152 + 1024 + 1280
    assert stats["prompt_tokens"] == sum(r.usage.prompt_tokens for r in replies)
    assert [e["cached_tokens"] for e in server.log()] == [cached_tokens(r) for r in replies]


def test_prefix_cache_is_bounded_and_can_be_off(server: ThreadedServer, client: openai.OpenAI) -> None:
    server.set_config(prefix_cache_blocks=2)
    prompts = [c * 4200 for c in "abc"]  # 8 blocks each: one remembered prefix each
    for prompt in prompts:
        client.chat.completions.create(model="m", messages=user(prompt))
    assert server.stats()["prefix_cache"]["entries"] == 2  # "a" was evicted
    reply = client.chat.completions.create(model="m", messages=user(prompts[0]))
    assert cached_tokens(reply) == 0
    reply = client.chat.completions.create(model="m", messages=user(prompts[2]))
    assert cached_tokens(reply) == 1024
    server.set_config(prefix_cache=False)
    reply = client.chat.completions.create(model="m", messages=user(prompts[2]))
    assert reply.usage is not None and reply.usage.prompt_tokens_details is None
    assert server.stats()["prefix_cache"]["enabled"] is False
    server.reset()
    assert server.stats()["prefix_cache"]["entries"] == 0


def test_cli_has_a_flag_for_every_setting() -> None:
    defaults = vars(parse_args([]))
    for name, value in Config().as_dict().items():
        assert defaults[name] == value, name
    args = parse_args(["--verdict-noise", "0.2", "--false-claim-ratio", "0.1", "--item-tokens", "500",
                       "--no-prefix-cache", "--prefix-cache-blocks", "64"])  # fmt: skip
    assert (args.verdict_noise, args.false_claim_ratio, args.item_tokens) == (0.2, 0.1, 500)
    assert (args.prefix_cache, args.prefix_cache_blocks) == (False, 64)


# --------------------------------------------------------------------------- the fake model follows the prompts

SHARED_SEEDS = REPO.parent / "shared" / "data" / "mmevol_demo_seeds.jsonl"


@pytest.mark.skipif(not SHARED_SEEDS.is_file(), reason=f"{SHARED_SEEDS} is not beside the checkout")
def test_fake_rewrites_pass_the_rule_checks_on_the_demo_seeds() -> None:
    """What the prompts forbid, the fake rewriter does not do: counts or locations without boxes, fewer
    reasoning steps, multiple choice without options (checked by evolve.checks on 300 demo seeds)."""
    prompts = PromptSet.load()
    rules = parse_checks("all")
    operators = ("perceptual", "reasoning", "interaction")
    seen: Counter[tuple[str, bool]] = Counter()
    with SHARED_SEEDS.open(encoding="utf-8") as lines:
        for number, line in enumerate(itertools.islice(lines, 300)):
            seed = parse_record(json.loads(line), f"seed:{number}")[0]
            operator = operators[number % 3]
            text = prompts.render_evolution(operator, seed)
            assert read_brief(text) == Brief(operator, bool(seed.objects))
            items = parse_qas(answer(text, Settings()).content)
            child = seed.model_copy(update={"id": "c", "qa": items, "operator": operator, "round": 1})
            assert all(not found for found in check_sample(child, seed, rules)), (operator, seed.id)
            seen[(operator, bool(seed.objects))] += 1
            if operator == "reasoning":
                assert all(len(new.steps) > len(old.steps) for old, new in zip(seed.qa, items, strict=True))
    assert min(seen.values()) >= 5 and len(seen) == 6  # every operator, with and without boxes


def test_fake_multiple_choice_has_options() -> None:
    items = [rewrite_item({"question": f"q{i}?", "answer": "a."}, "s", i) for i in range(200)]
    choices = [item for item in items if item["format"] == "multi_choice"]
    assert len(choices) >= 10
    for item in choices:
        letter = item["answer"][0]
        assert item["answer"][1:3] == ". " and f"{letter}. the " in item["question"] and "B. the " in item["question"]
