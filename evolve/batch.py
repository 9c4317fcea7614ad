"""`evolve run --batch`: the OpenAI Batch API as a way of answering requests, under the same round as a live run.

Each invocation (cron), under the run folder's lock:
1. if batches are pending, polls them; while one is unfinished, reports and returns;
2. collects finished batches: every answer goes into the response cache (marked as billed through the Batch
   API), every error line becomes the failure of its request for this invocation; requests a batch did not
   answer (expired, cancelled) are simply asked again;
3. runs the ordinary pass (`pipeline.LocalPool`, the live run's stages) with a `BatchTransport`: a request the
   cache can answer goes on, one it cannot is queued and its sample-round ends unrecorded, like an
   interrupted one;
4. submits the queued requests as batches (one model per batch, split below OpenAI's limits) and records
   them in batch.json.
So a batch run writes exactly the records of a live run, and a kill -9 at any point is repaired by the next
invocation. `--cancel` cancels the pending batches. The custom_id of a request is the digest of its cache key.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
from openai import OpenAI
from pydantic import BaseModel, Field

from evolve.cache import KEY_VERSION, ResponseCache
from evolve.client import ChatClient, ChatRequest, answer_record
from evolve.config import RunConfig
from evolve.endpoint import NO_KEY_MESSAGE, EndpointSettings
from evolve.errors import AnswerDeferred, EndpointError, EvolveError, RequestRejected, UnreadableAnswer, UsageError
from evolve.manifest import Mode, RunManifest, now
from evolve.pipeline import LocalPool, Message, Run
from evolve.runfolder import RunFolder, iter_json_lines, write_atomic
from evolve.transport import Answer, answer_fields, error_message_of, map_exception, map_status

Side = Literal["evolve", "judge"]
ENDPOINT: Final = "/v1/chat/completions"
MAX_BATCH_REQUESTS = 50_000
"""OpenAI's limit of requests in one batch."""
MAX_BATCH_BYTES = 190 * 1024 * 1024
"""Input files are split below OpenAI's 200 MB limit."""
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
RESEND_CODES = frozenset({"batch_expired", "batch_cancelled"})


class RemoteBatch(BaseModel):
    """One submitted batch: its ids, which endpoint and model, and what the server last said about it."""

    id: str
    side: Side
    model: str
    input_file_id: str
    requests: int
    status: str = "validating"
    counts: dict[str, int] = Field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = Field(default_factory=list)


class BatchState(BaseModel):
    """batch.json: the batches pending, and how many were collected so far."""

    version: int = 2
    pending: list[RemoteBatch] = Field(default_factory=list)
    collected: int = 0
    answers: int = 0
    failed: int = 0
    resent: int = 0

    def summary(self) -> dict[str, Any]:
        """What run.json says about the Batch API."""
        counts = {"total": 0, "completed": 0, "failed": 0}
        for b in self.pending:
            counts["total"] += b.counts.get("total") or b.requests
            counts["completed"] += b.counts.get("completed", 0)
            counts["failed"] += b.counts.get("failed", 0)
        statuses = "/".join(sorted({b.status for b in self.pending}))
        pending = {"batch_ids": [b.id for b in self.pending], "status": statuses, "counts": counts}
        return {"pending": pending if self.pending else None, "collected": self.collected, "answers": self.answers,
                "failed": self.failed, "resent": self.resent}  # fmt: skip


def load_state(folder: RunFolder) -> BatchState:
    """batch.json, or a fresh state."""
    path = folder.batch_state
    if not path.exists():
        return BatchState()
    try:
        state = BatchState.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UsageError(
            f"{path}: unreadable ({' '.join(str(exc).split())[:120]}); move it away to start over"
        ) from exc
    return state


def save_state(folder: RunFolder, state: BatchState) -> None:
    """Write batch.json atomically."""
    write_atomic(folder.batch_state, state.model_dump_json(indent=2) + "\n")


Failure = tuple[int | None, str]
"""How a batch answered a request it could not do: (HTTP status or None, message); 200: not a completion."""
HTTP_OK = 200


class BatchTransport:
    """Answers nothing itself: a request the cache could not answer is queued for the next batch (and
    `AnswerDeferred` raised), unless a collected batch answered it with an error, which is raised instead."""

    def __init__(self, side: Side, failures: dict[str, Failure]) -> None:
        self.side = side
        self.failures = failures
        self.queued: dict[str, dict[str, Any]] = {}

    def start(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Nothing to close."""

    async def send(self, key: str, body: dict[str, Any], request: ChatRequest) -> Answer:
        """Raise the failure a batch reported for this request, else queue it and raise AnswerDeferred."""
        if not key:
            raise UsageError("--batch needs the response cache: drop --no-cache")
        failure = self.failures.pop(key, None)
        if failure is not None:
            status, message = failure
            if status is None:
                raise RequestRejected(message)
            if status == HTTP_OK:  # answered, but not with a chat completion
                raise UnreadableAnswer(message)
            raise map_status(status, message, has_images=bool(request.images))
        self.queued.setdefault(key, body)
        raise AnswerDeferred()


class Remote:
    """openai SDK clients for the Files and Batches APIs of the evolution and judge endpoints."""

    def __init__(self, config: RunConfig) -> None:
        self.settings: dict[Side, EndpointSettings] = {
            "evolve": config.endpoint_settings(),
            "judge": config.judge_settings(),
        }
        for settings in self.settings.values():
            if settings.needs_key() and settings.key_value() is None:
                raise UsageError(NO_KEY_MESSAGE)
        self._clients: dict[Side, OpenAI] = {}

    def client(self, side: Side) -> OpenAI:
        """The SDK client of an endpoint."""
        if side not in self._clients:
            s = self.settings[side]
            self._clients[side] = OpenAI(
                base_url=s.base_url, api_key=s.key_value() or "no-key", timeout=s.timeout, max_retries=s.max_retries
            )
        return self._clients[side]

    @contextlib.contextmanager
    def mapped(self, side: Side) -> Iterator[None]:
        """Turn SDK exceptions into evolve's EndpointError, with the API key masked."""
        try:
            yield
        except EvolveError:
            raise
        except Exception as exc:
            error = map_exception(exc, timeout=self.settings[side].timeout)
            key = self.settings[side].key_value()
            if key and len(key) >= 4 and key in str(error):
                error.args = (str(error).replace(key, "***"),)
            raise error from exc

    def close(self) -> None:
        """Close every HTTP client."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()


@dataclass
class Collected:
    """What a finished batch gave: answers put into the cache, failures for this pass, requests to resend."""

    answers: int = 0
    failures: dict[str, Failure] = field(default_factory=dict)
    resend: int = 0


class BatchPool:
    """One cron step of a Batch API run: poll, collect into the cache, run the pass, submit what is missing."""

    mode: Mode = "batch"

    def __init__(
        self,
        config: RunConfig,
        cache: ResponseCache,
        *,
        cancel: bool = False,
        max_requests: int = MAX_BATCH_REQUESTS,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        if max_requests < 1 or max_bytes < 1:
            raise UsageError("batch limits must be positive")
        self.config = config
        self.cache = cache
        self.cancel = cancel
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.remote = Remote(config)

    async def run(self, run: Run, chains: Iterator[Any]) -> None:
        """Poll and collect, then (unless batches are still running) the pass, then submit."""
        folder = run.folder
        state = load_state(folder)
        try:
            if self.cancel:
                self._cancel(run, state)
                return
            failures: dict[str, Failure] = {}
            if state.pending:
                self._poll(state)
                if not all(b.status in TERMINAL for b in state.pending):
                    run.waiting = True
                    run.message(_pending_line(state))
                    return
                failures = self._collect(run, state).failures
            transports = self._transports(failures)
            await LocalPool(self._clients(transports), probe=False).run(run, chains)
            self._submit(run, state, transports)
        finally:
            save_state(folder, state)
            run.manifest.batch = state.summary()
            self.remote.close()

    # ------------------------------------------------------------------ the pass
    def _transports(self, failures: dict[str, Failure]) -> dict[Side, BatchTransport]:
        evolve = BatchTransport("evolve", failures)
        same = self.remote.settings["evolve"].base_url == self.remote.settings["judge"].base_url
        return {"evolve": evolve, "judge": evolve if same else BatchTransport("judge", failures)}

    def _clients(self, transports: dict[Side, BatchTransport]) -> tuple[ChatClient, ChatClient]:
        config = self.config
        client = ChatClient(config.endpoint_settings(), self.cache, transport=transports["evolve"])
        judge = ChatClient(config.judge_settings(), self.cache, transport=transports["judge"], usage=client.usage)
        return client, judge

    # ------------------------------------------------------------------ submitting
    def _submit(self, run: Run, state: BatchState, transports: dict[Side, BatchTransport]) -> None:
        """Queued requests → input files (one model each, split by count and size) → batches in batch.json."""
        submitted = 0
        for side, transport in {id(t): (s, t) for s, t in transports.items()}.values():
            by_model: dict[str, list[tuple[str, dict[str, Any]]]] = {}
            for key, body in transport.queued.items():
                by_model.setdefault(str(body["model"]), []).append((key, body))
            for model, requests in by_model.items():
                for path, count in self._write_inputs(run.folder, side, model, requests):
                    state.pending.append(self._create(run, side, model, path, count))
                    save_state(run.folder, state)  # a batch is recorded as soon as it exists
                    path.unlink()
                    submitted += count
        if submitted:
            run.waiting = True
            run.message(f"submitted {submitted:,} requests in {len(state.pending)} batch(es): "
                        f"{', '.join(b.id for b in state.pending)}")  # fmt: skip

    def _write_inputs(
        self, folder: RunFolder, side: Side, model: str, requests: list[tuple[str, dict[str, Any]]]
    ) -> Iterator[tuple[Any, int]]:
        """Input files of at most max_requests lines and max_bytes bytes."""
        folder.batch_dir.mkdir(parents=True, exist_ok=True)
        part, size = 0, 0
        lines: list[bytes] = []
        for key, body in requests:
            data = orjson.dumps({"custom_id": key.split(":", 1)[1], "method": "POST", "url": ENDPOINT, "body": body})
            if lines and (len(lines) >= self.max_requests or size + len(data) + 1 > self.max_bytes):
                yield self._flush(folder, side, model, part, lines), len(lines)
                part, lines, size = part + 1, [], 0
            lines.append(data)
            size += len(data) + 1
        if lines:
            yield self._flush(folder, side, model, part, lines), len(lines)

    @staticmethod
    def _flush(folder: RunFolder, side: Side, model: str, part: int, lines: list[bytes]) -> Any:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
        path = folder.batch_file(f"{side}-{safe}-{now().replace(':', '')}-part{part + 1}.input.jsonl")
        path.write_bytes(b"\n".join(lines) + b"\n")
        return path

    def _create(self, run: Run, side: Side, model: str, path: Any, count: int) -> RemoteBatch:
        client = self.remote.client(side)
        with self.remote.mapped(side), path.open("rb") as fp:
            uploaded = client.files.create(file=(path.name, fp), purpose="batch")
        with self.remote.mapped(side):
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h",
                metadata={"tool": "evolve", "run": run.folder.root.name, "model": model},
            )  # fmt: skip
        return RemoteBatch(id=batch.id, side=side, model=model, input_file_id=uploaded.id, requests=count,
                           status=batch.status)  # fmt: skip

    # ------------------------------------------------------------------ polling, collecting, cancelling
    def _poll(self, state: BatchState) -> None:
        for record in state.pending:
            if record.status in TERMINAL:
                continue
            with self.remote.mapped(record.side):
                batch = self.remote.client(record.side).batches.retrieve(record.id)
            record.status = batch.status
            if batch.request_counts is not None:
                c = batch.request_counts
                record.counts = {"total": c.total, "completed": c.completed, "failed": c.failed}
            record.output_file_id = batch.output_file_id
            record.error_file_id = batch.error_file_id
            if batch.errors is not None and batch.errors.data:
                record.errors = [f"{e.code or 'error'}: {e.message or ''}".strip() for e in batch.errors.data]

    def _download(self, folder: RunFolder, side: Side, file_id: str) -> Iterator[dict[str, Any]]:
        """The lines of a batch output or error file (kept under batch/ for the record)."""
        path = folder.batch_file(f"{file_id}.jsonl")
        if not path.exists():
            with self.remote.mapped(side):
                data = self.remote.client(side).files.content(file_id).content
            folder.batch_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        for _, raw in iter_json_lines(path):
            yield raw

    def _collect(self, run: Run, state: BatchState) -> Collected:
        """Answers of the finished batches into the cache (committed before batch.json forgets the batches)."""
        found = Collected()
        for record in state.pending:
            for file_id in (record.output_file_id, record.error_file_id):
                for raw in self._download(run.folder, record.side, file_id) if file_id else ():
                    self._take(raw, found)
            if record.status == "failed":
                run.message(f"batch {record.id} failed ({'; '.join(record.errors) or 'no reason given'}); "
                            "its requests are sent again")  # fmt: skip
        self.cache.flush()
        state.collected += len(state.pending)
        state.answers += found.answers
        state.failed += len(found.failures)
        state.resent += found.resend
        run.message(f"collected {len(state.pending)} batch(es): {found.answers:,} answers, "
                    f"{len(found.failures):,} failed, {found.resend:,} to send again")  # fmt: skip
        state.pending = []
        return found

    def _take(self, raw: dict[str, Any], found: Collected) -> None:
        key = f"{KEY_VERSION}:{raw.get('custom_id')}"
        response = raw.get("response")
        if isinstance(response, dict) and response.get("status_code") is not None:
            status = int(response["status_code"])
            if status == 200:
                try:
                    answer = answer_fields(response.get("body"))
                except EndpointError as exc:
                    found.failures[key] = (HTTP_OK, str(exc))
                    return
                if answer.text or answer.refusal:
                    self.cache.put(key, {**answer_record(answer), "batch": True})
                    found.answers += 1
                return
            found.failures[key] = (status, error_message_of(response.get("body")))
            return
        error: dict[str, Any] = raw["error"] if isinstance(raw.get("error"), dict) else {}
        code = str(error.get("code") or "")
        if code in RESEND_CODES:
            found.resend += 1
            return
        found.failures[key] = (None, f"batch request failed ({code or 'no code'}): {error.get('message', '')}")

    def _cancel(self, run: Run, state: BatchState) -> None:
        if not state.pending:
            run.message("no batch is pending: nothing to cancel")
            return
        for record in state.pending:
            if record.status not in TERMINAL:
                with self.remote.mapped(record.side):
                    record.status = self.remote.client(record.side).batches.cancel(record.id).status
        run.message(f"cancelled {', '.join(b.id for b in state.pending)}; the next invocation sends their requests "
                    "again")  # fmt: skip
        state.pending = []
        run.waiting = True  # not done: the next invocation sends the cancelled requests again


def _pending_line(state: BatchState) -> str:
    counts = state.summary()["pending"]["counts"]
    ids = ", ".join(b.id for b in state.pending)
    statuses = "/".join(sorted({b.status for b in state.pending}))
    return f"batch {statuses}: {counts['completed']:,}/{counts['total']:,} done, {counts['failed']:,} failed ({ids})"


async def run_batch(
    config: RunConfig,
    seeds: list[Any],
    out: Any,
    message: Message,
    *,
    cancel: bool = False,
    max_requests: int = MAX_BATCH_REQUESTS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> RunManifest:
    """One cron-safe step of a Batch API run; returns the manifest it wrote (status "waiting" while batches run)."""
    if config.no_cache:
        raise UsageError("--batch needs the response cache: drop --no-cache")
    run = Run(config, seeds, out, message)
    cache = run.open_cache()
    assert isinstance(cache, ResponseCache)
    try:
        return await run.execute(BatchPool(config, cache, cancel=cancel, max_requests=max_requests,
                                           max_bytes=max_bytes))  # fmt: skip
    finally:
        cache.close()
