"""The fake OpenAI-compatible server, exercised from the client side over real sockets."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from evolve.fakeserver import ThreadedServer, messages_sha256, stable_fraction
from evolve.fakeserver.content import QAS_KEYS

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
    assert server.stats()["by_kind"] == {"evolve": 0, "judge": 1, "other": 0}


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
    assert stats["by_kind"] == {"evolve": 1, "judge": 1, "other": 1}
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
