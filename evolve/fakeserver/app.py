"""The OpenAI-compatible application: models, chat completions, files, batches, and the control API."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from evolve.fakeserver import content
from evolve.fakeserver.http import Reply, Request, json_reply
from evolve.fakeserver.prefixcache import PrefixCache

FAULT_KINDS = (
    "429", "500", "503", "400", "401", "404", "hang", "reset", "malformed", "truncated", "garbage_body",
    "empty",
)  # fmt: skip
STATUS_FAULTS = {"429": 429, "500": 500, "503": 503, "400": 400, "401": 401, "404": 404}
# Fault kinds a batch line can suffer (the others only make sense on a live connection).
BATCH_FAULTS = frozenset({*STATUS_FAULTS, "malformed", "truncated", "empty"})
ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}
_SETTING_NAMES = tuple(f.name for f in dataclasses.fields(content.Settings))  # Config fields of the same name
TEXT_ONLY_MESSAGE = "image input is not supported by this model (text-only server, no multimodal projector)"


@dataclass
class Config:
    """Settable behaviour. CLI flags and ``POST /_control/config`` set the same fields."""

    model: str = "fake-mm-1"
    latency: float = 0.0
    reject_ratio: float = 0.0
    score_min: int = 5
    score_max: int = 9
    text_only: bool = False
    batch_polls: int = 1
    strict_model: bool = False
    log_max: int = 200_000
    verdict_noise: float = 0.0  # with a request seed: share of verdicts flipped per (question, seed)
    false_claim_ratio: float = 0.0  # share of claims (by stable hash of their text) the checker denies
    item_tokens: int = 0  # pad each rewritten item's answer to about this many tokens (0: no padding)
    flawed_ratio: float = 0.0  # share of rewrites that refer to "the original question" (a rule violation)
    echo_ratio: float = 0.0  # share of rewrites that nearly repeat the given question (a near duplicate)
    prefix_cache: bool = True  # report usage.prompt_tokens_details.cached_tokens like OpenAI
    prefix_cache_blocks: int = 65_536  # prefix hashes (one per 128-token boundary) the LRU keeps

    def update(self, values: dict[str, Any]) -> None:
        """Set known fields from ``values`` (coerced to each field's type); unknown keys raise KeyError."""
        names = {f.name: f for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in names:
                raise KeyError(key)
            current = getattr(self, key)
            if isinstance(current, bool):
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            else:
                value = type(current)(value)
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return dataclasses.asdict(self)


@dataclass
class Fault:
    """One queued fault, consumed by matching chat requests until ``count`` reaches 0."""

    kind: str
    count: int = 1
    match: str | None = None
    retry_after: float = 1.0
    hang_seconds: float = 3600.0

    @classmethod
    def from_json(cls, value: Any) -> Fault:
        """Validate one fault description."""
        if not isinstance(value, dict):
            raise ValueError("a fault is an object")
        kind = str(value.get("kind"))
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        match = value.get("match")
        return cls(
            kind=kind,
            count=int(value.get("count", 1)),
            match=None if match is None else str(match),
            retry_after=float(value.get("retry_after", 1.0)),
            hang_seconds=float(value.get("hang_seconds", 3600.0)),
        )


@dataclass
class FileRecord:
    """An uploaded or generated file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def as_json(self) -> dict[str, Any]:
        """The OpenAI FileObject."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class BatchRecord:
    """A batch job; it completes on the ``polls_needed``-th retrieve."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None
    created_at: int
    polls_needed: int
    polls: int = 0
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    times: dict[str, int | None] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The OpenAI Batch object."""
        out: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 86400,
            "request_counts": dict(self.counts),
            "metadata": self.metadata,
        }
        for key in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                    "cancelling_at", "cancelled_at"):  # fmt: skip
            out[key] = self.times.get(key)
        return out


def error_body(status: int, message: str) -> dict[str, Any]:
    """An OpenAI-style error object."""
    err_type, code = ERROR_TYPES.get(status, ("server_error", None))
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Reply:
    return json_reply(error_body(status, message), status, headers)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Fields of a multipart/form-data body: name -> (filename or None, bytes)."""
    boundary = ""
    for piece in content_type.split(";")[1:]:
        key, _, value = piece.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise ValueError("multipart body without a boundary")
    fields: dict[str, tuple[str | None, bytes]] = {}
    delimiter = b"--" + boundary.encode("latin-1")
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        data = data.removesuffix(b"\r\n")
        name: str | None = None
        filename: str | None = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                for attr in line.split(";")[1:]:
                    key, _, value = attr.strip().partition("=")
                    if key.lower() == "name":
                        name = value.strip('"')
                    elif key.lower() == "filename":
                        filename = value.strip('"')
        if name is not None:
            fields[name] = (filename, data)
    return fields


class App:
    """All server state and the request router. Runs on one event loop: no locks needed."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._initial = dataclasses.replace(self.config)
        self._ids = itertools.count(1)
        self.reset(keep_config=True)

    # state -------------------------------------------------------------------------------------
    def reset(self, keep_config: bool = False) -> None:
        """Forget faults, stats, log, files and batches; restore the start-up config unless told not to."""
        if not keep_config:
            self.config = dataclasses.replace(self._initial)
        self.faults: list[Fault] = []
        self.log: deque[dict[str, Any]] = deque(maxlen=max(1, self.config.log_max))
        self.http_total = 0
        self.chat_total = 0
        self.by_kind: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.faults_fired: Counter[str] = Counter()
        self.files: dict[str, FileRecord] = {}
        self.batches: dict[str, BatchRecord] = {}
        self.prefix = PrefixCache(self.config.prefix_cache_blocks)
        self.prompt_tokens = 0

    def settings(self) -> content.Settings:
        """The answer-shaping part of the config."""
        return content.Settings(**{name: getattr(self.config, name) for name in _SETTING_NAMES})

    def stats(self) -> dict[str, Any]:
        """Request counters."""
        return {
            "http_total": self.http_total,
            "total": self.chat_total,
            "by_kind": {k: self.by_kind.get(k, 0) for k in content.KINDS},
            "by_status": dict(sorted(self.by_status.items())),
            "faults_fired": dict(self.faults_fired),
            "faults_pending": sum(f.count for f in self.faults),
            "files": len(self.files),
            "batches": len(self.batches),
            "prompt_tokens": self.prompt_tokens,
            "prefix_cache": {"enabled": self.config.prefix_cache, **self.prefix.stats()},
        }

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}{os.urandom(6).hex()}"

    def _take_fault(self, text: str, allowed: frozenset[str] | None = None) -> Fault | None:
        for i, fault in enumerate(self.faults):
            if allowed is not None and fault.kind not in allowed:
                continue
            if fault.match is None or fault.match in text:
                fault.count -= 1
                if fault.count <= 0:
                    del self.faults[i]
                self.faults_fired[fault.kind] += 1
                return fault
        return None

    # routing -----------------------------------------------------------------------------------
    def handle(self, request: Request) -> Reply:
        """Route one request."""
        self.http_total += 1
        path = request.path.rstrip("/") or "/"
        if path.startswith("/_control/"):
            return self._control(request, path[len("/_control/") :])
        if path.startswith("/v1/"):
            path = path[3:]
        method = request.method
        if path == "/chat/completions":
            return self._chat(request) if method == "POST" else _error(405, "use POST")
        if path == "/models":
            return self._models()
        if path.startswith("/models/"):
            name = path[len("/models/") :]
            return json_reply({"id": name, "object": "model", "created": 0, "owned_by": "fakeserver"})
        if path == "/files" or path.startswith("/files/"):
            return self._files(request, path)
        if path == "/batches" or path.startswith("/batches/"):
            return self._batches(request, path)
        return _error(404, f"no route for {request.method} {request.path}")

    def _models(self) -> Reply:
        model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "fakeserver"}
        return json_reply({"object": "list", "data": [model]})

    # control -----------------------------------------------------------------------------------
    def _control(self, request: Request, action: str) -> Reply:
        try:
            if action == "config":
                if request.method == "POST":
                    values = request.json() if request.body else {}
                    if not isinstance(values, dict):
                        raise ValueError("config is a JSON object")
                    self.config.update(values)
                return json_reply(self.config.as_dict())
            if action == "reset" and request.method == "POST":
                self.reset()
                return json_reply({"ok": True})
            if action == "stats":
                return json_reply(self.stats())
            if action == "log":
                return json_reply({"log": list(self.log)})
            if action == "faults":
                if request.method == "POST":
                    body = request.json()
                    raw = body.get("faults", []) if isinstance(body, dict) else body
                    new = [Fault.from_json(f) for f in raw]
                    if isinstance(body, dict) and body.get("replace"):
                        self.faults = []
                    self.faults.extend(new)
                elif request.method == "DELETE":
                    self.faults = []
                return json_reply({"faults": [dataclasses.asdict(f) for f in self.faults]})
        except (KeyError, ValueError, TypeError) as exc:
            return _error(400, f"bad control request: {exc!r}")
        return _error(404, f"no control route for {request.method} {action}")

    # chat --------------------------------------------------------------------------------------
    def _chat(self, request: Request) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return self._record_bad(_error(400, "request body is not valid JSON"))
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._record_bad(_error(400, "'messages' must be a list"))
        status, payload, fault = self._complete(body, allowed=None)
        delay = self.config.latency
        if fault is not None:
            if fault.kind == "reset":
                return Reply(reset=True, delay=delay)
            if fault.kind == "hang":
                delay = fault.hang_seconds
            elif fault.kind == "garbage_body":
                return Reply(200, b"<html><body>upstream proxy error</body></html> {not json", delay=delay)
        headers: list[tuple[str, str]] = [("x-request-id", payload.pop("_request_id"))]
        if fault is not None and fault.kind == "429":
            headers += [
                ("Retry-After", _number_text(fault.retry_after)),
                ("retry-after-ms", str(int(fault.retry_after * 1000))),
            ]
        return json_reply(payload, status, headers) if delay <= 0 else _delayed(payload, status, headers, delay)

    def _record_bad(self, reply: Reply) -> Reply:
        """Count and log a chat request too broken to read (sha256 and model are then None)."""
        self.log.append(
            {"kind": "other", "status": reply.status, "sha256": None, "model": None, "has_image": False,
             "n_items": None, "fault": None, "batch": False, "cached_tokens": None}
        )  # fmt: skip
        self.chat_total += 1
        self.by_kind["other"] += 1
        self.by_status[str(reply.status)] += 1
        return reply

    def _complete(
        self, body: dict[str, Any], allowed: frozenset[str] | None, batch: bool = False
    ) -> tuple[int, dict[str, Any], Fault | None]:
        """Run one chat completion: (status, JSON payload incl. ``_request_id``, fault consumed)."""
        messages = body["messages"]
        caching = self.config.prefix_cache
        info = content.read_messages(messages, stream=caching)
        model = str(body.get("model") or self.config.model)
        request_id = "req_" + os.urandom(12).hex()
        fault = self._take_fault(info.text, allowed)
        answer: content.Answer | None = None
        cached: int | None = None
        status = 200
        payload: dict[str, Any]
        if fault is not None and fault.kind in STATUS_FAULTS:
            status = STATUS_FAULTS[fault.kind]
            payload = error_body(status, f"fakeserver injected fault {fault.kind}")
        elif self.config.strict_model and model != self.config.model:
            status = 404
            payload = error_body(404, f"The model '{model}' does not exist")
        elif self.config.text_only and info.has_image:
            status = 500
            payload = error_body(500, TEXT_ONLY_MESSAGE)
        else:
            answer = content.answer(info.text, self.settings(), _integer(body.get("seed")))
            text = answer.content
            finish = "stop"
            if fault is not None:
                if fault.kind == "malformed":
                    text = content.MALFORMED_TEXT
                elif fault.kind == "truncated":
                    text = text[: len(text) // 2]
                    finish = "length"
                elif fault.kind == "empty":
                    text = ""
            limit = _integer(body.get("max_completion_tokens", body.get("max_tokens")))
            if limit is not None and limit > 0 and len(text) > 4 * limit:
                text = text[: 4 * limit]
                finish = "length"
            if caching:
                self.prefix.capacity = self.config.prefix_cache_blocks
                cached = self.prefix.lookup(model, info.stream)
            payload = self._completion(model, text, finish, info, cached)
        if fault is not None and fault.kind == "reset":
            status = 0  # the connection is dropped: no HTTP status at all
        kind = content.classify(info.text) if answer is None else answer.kind
        entry: dict[str, Any] = {
            "kind": kind,
            "status": status,
            "sha256": content.messages_sha256(messages),
            "model": model,
            "has_image": info.has_image,
            "n_items": None if answer is None else answer.n_items,
            "fault": None if fault is None else fault.kind,
            "batch": batch,
            "cached_tokens": cached,
        }
        self.log.append(entry)
        self.chat_total += 1
        self.by_kind[kind] += 1
        self.by_status[str(status)] += 1
        payload["_request_id"] = request_id
        return status, payload, fault

    def _completion(
        self, model: str, text: str, finish: str, info: content.PromptInfo, cached: int | None
    ) -> dict[str, Any]:
        prompt_tokens = max(1, math.ceil(info.prompt_chars / 4)) + content.IMAGE_TOKENS * info.images
        completion_tokens = math.ceil(len(text) / 4)
        self.prompt_tokens += prompt_tokens
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if cached is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": cached, "audio_tokens": 0}
        return {
            "id": "chatcmpl-" + os.urandom(12).hex(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fakeserver",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }

    # files -------------------------------------------------------------------------------------
    def _files(self, request: Request, path: str) -> Reply:
        parts = path.split("/")  # ["", "files", id?, "content"?]
        if len(parts) == 2:
            if request.method == "POST":
                return self._upload(request)
            data = [f.as_json() for f in self.files.values()]
            return json_reply({"object": "list", "data": data, "has_more": False})
        record = self.files.get(parts[2])
        if record is None:
            return _error(404, f"No such File object: {parts[2]}")
        if len(parts) == 4 and parts[3] == "content":
            return Reply(200, record.data, content_type="application/octet-stream")
        if len(parts) == 3:
            if request.method == "DELETE":
                del self.files[record.id]
                return json_reply({"id": record.id, "object": "file", "deleted": True})
            return json_reply(record.as_json())
        return _error(404, f"no route for {request.method} {request.path}")

    def _upload(self, request: Request) -> Reply:
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            return _error(400, "file upload must be multipart/form-data")
        try:
            fields = parse_multipart(request.body, ctype)
        except ValueError as exc:
            return _error(400, str(exc))
        if "file" not in fields:
            return _error(400, "missing 'file' field")
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if purpose not in ("batch", "fine-tune", "assistants", "vision", "user_data", "evals"):
            return _error(400, f"unsupported purpose {purpose!r}")
        filename, data = fields["file"]
        record = FileRecord(self._new_id("file"), filename or "upload.jsonl", purpose, data, int(time.time()))
        self.files[record.id] = record
        return json_reply(record.as_json())

    # batches -----------------------------------------------------------------------------------
    def _batches(self, request: Request, path: str) -> Reply:
        parts = path.split("/")  # ["", "batches", id?, "cancel"?]
        if len(parts) == 2:
            if request.method == "POST":
                return self._create_batch(request)
            data = [b.as_json() for b in self.batches.values()]
            return json_reply({"object": "list", "data": data, "has_more": False})
        batch = self.batches.get(parts[2])
        if batch is None:
            return _error(404, f"No such Batch object: {parts[2]}")
        if len(parts) == 4 and parts[3] == "cancel" and request.method == "POST":
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                return _error(400, f"Cannot cancel a batch with status '{batch.status}'.")
            batch.status = "cancelling"
            batch.times["cancelling_at"] = int(time.time())
            return json_reply(batch.as_json())
        if len(parts) == 3 and request.method == "GET":
            self._advance(batch)
            return json_reply(batch.as_json())
        return _error(404, f"no route for {request.method} {request.path}")

    def _create_batch(self, request: Request) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "body must be an object")
        file_id = str(body.get("input_file_id", ""))
        endpoint = str(body.get("endpoint", ""))
        if file_id not in self.files:
            return _error(404, f"No such File object: {file_id}")
        if endpoint != "/v1/chat/completions":
            return _error(400, f"unsupported endpoint {endpoint!r}; only /v1/chat/completions")
        metadata = body.get("metadata")
        batch = BatchRecord(
            id=self._new_id("batch"),
            input_file_id=file_id,
            endpoint=endpoint,
            completion_window=str(body.get("completion_window", "24h")),
            metadata=metadata if isinstance(metadata, dict) else None,
            created_at=int(time.time()),
            polls_needed=self.config.batch_polls,
        )
        self.batches[batch.id] = batch
        if batch.polls_needed <= 0:
            self._run_batch(batch)
        return json_reply(batch.as_json())

    def _advance(self, batch: BatchRecord) -> None:
        """One retrieve poll: move the batch along."""
        if batch.status == "cancelling":
            batch.status = "cancelled"
            batch.times["cancelled_at"] = int(time.time())
            return
        if batch.status not in ("validating", "in_progress"):
            return
        batch.polls += 1
        if batch.polls >= batch.polls_needed:
            self._run_batch(batch)
        else:
            batch.status = "in_progress"
            batch.times.setdefault("in_progress_at", int(time.time()))

    def _run_batch(self, batch: BatchRecord) -> None:
        """Answer every input line and write the output (and error) files."""
        now = int(time.time())
        outputs: list[str] = []
        errors: list[str] = []
        lines = self.files[batch.input_file_id].data.decode("utf-8", "replace").splitlines()
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            batch.counts["total"] += 1
            custom_id: Any = None
            try:
                item = json.loads(line)
                custom_id = item.get("custom_id")
                body = item["body"]
                if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                    raise ValueError("body.messages must be a list")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                batch.counts["failed"] += 1
                err = {"code": "invalid_request", "message": f"line {number + 1}: {exc}", "line": number + 1}
                errors.append(_line(self._new_id("batch_req"), custom_id, None, err))
                continue
            status, payload, _fault = self._complete(body, allowed=BATCH_FAULTS, batch=True)
            request_id = payload.pop("_request_id")
            response = {"status_code": status, "request_id": request_id, "body": payload}
            if status == 200:
                batch.counts["completed"] += 1
                outputs.append(_line(self._new_id("batch_req"), custom_id, response, None))
            else:
                batch.counts["failed"] += 1
                errors.append(_line(self._new_id("batch_req"), custom_id, response, None))
        if outputs:
            batch.output_file_id = self._store_output(batch, "output", outputs)
        if errors:
            batch.error_file_id = self._store_output(batch, "error", errors)
        batch.status = "completed"
        for key in ("in_progress_at", "finalizing_at", "completed_at"):
            batch.times.setdefault(key, now)

    def _store_output(self, batch: BatchRecord, what: str, lines: list[str]) -> str:
        data = ("\n".join(lines) + "\n").encode("utf-8")
        record = FileRecord(self._new_id("file"), f"{batch.id}_{what}.jsonl", "batch_output", data, int(time.time()))
        self.files[record.id] = record
        return record.id


def _integer(value: Any) -> int | None:
    """An integer request field (``seed``, ``max_tokens``), or None when absent or not an integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _line(line_id: str, custom_id: Any, response: Any, error: Any) -> str:
    return json.dumps({"id": line_id, "custom_id": custom_id, "response": response, "error": error}, ensure_ascii=False)


def _delayed(payload: dict[str, Any], status: int, headers: list[tuple[str, str]], delay: float) -> Reply:
    reply = json_reply(payload, status, headers)
    reply.delay = delay
    return reply
