"""`evolve run --batch`: the rounds of `evolve run` through the OpenAI Batch API, one step per invocation (cron).

Each invocation (`batch_step`), under the run folder's lock, reads `batch.json` and then:
- no batch pending: builds the next stage's requests (round r's evolution for every seed without a round-r
  version yet, or round r's judging of every evolved sample without a verdict) as Batch input files, uploads
  and submits them, records the batch ids and returns;
- a batch pending and not finished: reports its status and counts and returns;
- a batch finished: downloads its output and error files, reads every answer with the live run's parsers,
  writes the round files as the live run does (runfolder's layout), and submits the next stage at once; after
  the last round's judging it writes final.jsonl and run.json with status done.

A request body is exactly what the live client sends (same prompt, images, model, temperature, max_tokens), so
a batch run's records equal a live run's. Writing a batch's results first removes any lines of the same
samples, so a crash while writing is repaired by processing the same downloaded output again. Requests a
batch did not answer because it expired, was cancelled or failed validation are sent again in the next
batch; a request answered with an error status or an unreadable answer is recorded as dropped with its
reason, as the live run does once its retries are spent.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from openai import OpenAI
from pydantic import BaseModel, Field

from evolve import __version__
from evolve.accounting import TokenUsage, estimate_cost
from evolve.cache import NullCache
from evolve.client import (
    NO_KEY_MESSAGE,
    ChatClient,
    ChatRequest,
    EndpointSettings,
    answer_fields,
    error_message_of,
    map_exception,
    map_status,
)
from evolve.config import RunConfig
from evolve.errors import (
    EndpointError,
    EvolveError,
    FailureBudgetExceeded,
    FatalEndpointErrors,
    ImageError,
    InputError,
    RequestRejected,
    UsageError,
)
from evolve.images import EncodedImage, ImageEncoder
from evolve.pipeline import check_fingerprint, fingerprint, iter_seeds, round_summaries
from evolve.prompts import PromptSet
from evolve.records import Drop, Sample
from evolve.runfolder import (
    ROUND_FILES,
    AppendFiles,
    RoundState,
    RunFolder,
    concat_files,
    iter_json_lines,
    purge_lines,
    read_sample_at,
    repair_tail,
    run_lock,
    scan_round,
    write_atomic,
)
from evolve.stages import (
    StageContext,
    apply_keep_rule,
    child_id,
    evolution_request,
    failure_reason,
    make_drop,
    read_evolution,
    read_judgement,
)

Stage = Literal["evolve", "judge"]
Message = Callable[[str], None]

STATE_FILE = "batch.json"
WORK_DIR = "batch"
ENDPOINT: Final = "/v1/chat/completions"
MAX_BATCH_REQUESTS = 50_000
"""OpenAI's limit of requests in one batch."""
MAX_BATCH_BYTES = 190 * 1024 * 1024
"""Input files are split below OpenAI's 200 MB limit."""
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
RESEND_CODES = frozenset({"batch_expired", "batch_cancelled"})


# ---------------------------------------------------------------------------------------------- batch.json
class RemoteBatch(BaseModel):
    """One submitted batch: its ids, the requests it holds and what the server last said about it."""

    id: str
    input_file_id: str
    custom_ids: list[str]
    status: str = "validating"
    counts: dict[str, int] = Field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = Field(default_factory=list)


class PendingStage(BaseModel):
    """The stage waiting for the Batch API (one or more batches)."""

    stage: Stage
    round: int
    submitted: str
    batches: list[RemoteBatch] = Field(default_factory=list)


class CollectedStage(BaseModel):
    """A stage's batches once their results are written: counts and token usage."""

    stage: Stage
    round: int
    batch_ids: list[str]
    answered: int
    failed: int
    resend: int
    usage: dict[str, int]
    finished: str


class BatchState(BaseModel):
    """`batch.json`: where the run stands, what is pending, and what was collected."""

    version: int = 1
    round: int = 1
    stage: Literal["evolve", "judge", "done"] = "evolve"
    pending: PendingStage | None = None
    history: list[CollectedStage] = Field(default_factory=list)
    base_usage: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Token usage per round from live invocations before batch mode started."""


@dataclass(frozen=True)
class BatchStep:
    """What one invocation did: submitted a stage, found it still pending, or finished the run."""

    action: Literal["submitted", "pending", "done"]
    stage: Stage | None = None
    round: int | None = None
    batch_ids: tuple[str, ...] = ()
    status: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    collected: tuple[str, ...] = ()
    """The stages whose results this invocation wrote, e.g. ("evolve round 1: 10 answers, 0 failed",)."""
    summary: dict[str, Any] | None = None
    """run.json as written by this invocation."""

    @property
    def done(self) -> bool:
        """True when every round is written and final.jsonl is there."""
        return self.action == "done"

    def line(self) -> str:
        """One status line for cron logs."""
        head = "; ".join(self.collected)
        head = f"{head}; " if head else ""
        if self.action == "done":
            status = (self.summary or {}).get("status", "done")
            final = (self.summary or {}).get("final_samples")
            return f"{head}run {status}: {final} samples in final.jsonl"
        ids = ", ".join(self.batch_ids)
        what = f"{self.stage} round {self.round}"
        if self.action == "submitted":
            return f"{head}submitted {what}: {self.counts.get('total', 0)} requests ({ids})"
        counts = self.counts
        return (
            f"{head}{what} {self.status}: {counts.get('completed', 0)}/{counts.get('total', 0)} done, "
            f"{counts.get('failed', 0)} failed ({ids})"
        )


# ---------------------------------------------------------------------------------------------- helpers
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def custom_id(stage: Stage, seed_id: str, round_number: int) -> str:
    """The stable id of one request in a batch: `evolve:{seed_id}:r{n}` or `judge:{seed_id}:r{n}`."""
    return f"{stage}:{seed_id}:r{round_number}"


def split_custom_id(value: str) -> tuple[str, str, int]:
    """(stage, seed id, round) of a custom_id; raises ValueError for one we did not write."""
    stage, sep, rest = value.partition(":")
    seed_id, sep2, number = rest.rpartition(":r")
    if not sep or not sep2 or stage not in ("evolve", "judge") or not number.isdigit():
        raise ValueError(f"not an evolve batch custom_id: {value!r}")
    return stage, seed_id, int(number)


def request_body(settings: EndpointSettings, request: ChatRequest) -> dict[str, Any]:
    """The chat completions body the live client sends for `request`."""
    body: dict[str, Any] = {
        "model": settings.model,
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
    }
    if settings.response_format_json:
        body["response_format"] = {"type": "json_object"}
    body["messages"] = request.messages()
    return body


@dataclass
class _Line:
    """One answered (or failed) request of a batch's output or error file."""

    body: Any = None
    status: int | None = None
    message: str = ""
    resend: bool = False

    @classmethod
    def read(cls, raw: dict[str, Any]) -> _Line:
        response = raw.get("response")
        if isinstance(response, dict) and response.get("status_code") is not None:
            status = int(response["status_code"])
            body = response.get("body")
            if status == 200:
                return cls(body=body, status=200)
            return cls(status=status, message=error_message_of(body))
        error = raw.get("error") or {}
        code = str(error.get("code") or "") if isinstance(error, dict) else ""
        message = str(error.get("message") or "") if isinstance(error, dict) else str(error)
        return cls(message=f"batch request failed ({code or 'no code'}): {message}", resend=code in RESEND_CODES)

    def text(self, has_images: bool, usage: TokenUsage) -> str:
        """The answer text; raises the EndpointError a live call would have raised."""
        if self.status == 200:
            text, prompt_tokens, completion_tokens, _finish = answer_fields(self.body)
            usage.add_call(prompt_tokens, completion_tokens, False)
            return text
        if self.status is not None:
            raise map_status(self.status, self.message, has_images=has_images)
        raise RequestRejected(self.message)


@dataclass
class _RoundView:
    """A round's files read without changing them: who was evolved, judged or dropped."""

    evolved: dict[str, int] = field(default_factory=dict)
    judged: set[str] = field(default_factory=set)
    drops: dict[str, set[str]] = field(default_factory=dict)

    def evolve_done(self) -> set[str]:
        """Seeds whose evolution in this round has a result (a version or a drop)."""
        return set(self.evolved) | {s for s, stages in self.drops.items() if "evolve" in stages}

    def awaiting_judge(self) -> list[str]:
        """Evolved seeds without a verdict, in evolved.jsonl's order."""
        return [s for s in self.evolved if s not in self.judged and "judge" not in self.drops.get(s, set())]


# ---------------------------------------------------------------------------------------------- the Batch API
class _Remote:
    """openai SDK clients for the Files and Batches APIs: one for the evolution endpoint, one for the judge's."""

    def __init__(self, config: RunConfig) -> None:
        self.settings: dict[Stage, EndpointSettings] = {
            "evolve": config.endpoint_settings(),
            "judge": config.judge_settings(),
        }
        for settings in self.settings.values():
            if settings.needs_key() and settings.key_value() is None:
                raise UsageError(NO_KEY_MESSAGE)
        self._clients: dict[tuple[str, str | None], OpenAI] = {}

    def client(self, stage: Stage) -> OpenAI:
        """The SDK client of a stage's endpoint."""
        settings = self.settings[stage]
        key = (settings.base_url, settings.key_value())
        if key not in self._clients:
            self._clients[key] = OpenAI(
                base_url=settings.base_url,
                api_key=settings.key_value() or "no-key",
                timeout=settings.timeout,
                max_retries=settings.max_retries,
            )
        return self._clients[key]

    @contextlib.contextmanager
    def mapped(self, stage: Stage) -> Iterator[None]:
        """Turn SDK exceptions into evolve's EndpointError, with the API key masked."""
        try:
            yield
        except EvolveError:
            raise
        except Exception as exc:
            error = map_exception(exc, timeout=self.settings[stage].timeout)
            key = self.settings[stage].key_value()
            if key and len(key) >= 4 and key in str(error):
                error.args = (str(error).replace(key, "***"),)
            raise error from exc

    def close(self) -> None:
        """Close every HTTP client."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()


# ---------------------------------------------------------------------------------------------- one invocation
class _BatchRun:
    """One invocation of `evolve run --batch` on one run folder (the caller holds the lock)."""

    def __init__(
        self,
        config: RunConfig,
        seeds: list[Path],
        folder: RunFolder,
        prompts: PromptSet,
        message: Message,
        max_requests: int,
        max_bytes: int,
    ) -> None:
        self.config = config
        self.seeds = seeds
        self.folder = folder
        self.prompts = prompts
        self.message = message
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.state_path = folder.root / STATE_FILE
        self.work = folder.root / WORK_DIR
        encoder = ImageEncoder(config.image_size)
        self.encoder = encoder
        # Clients are never started here: the context only serves the pure renderers of evolve.stages.
        self.ctx = StageContext(
            config,
            prompts,
            ChatClient(config.endpoint_settings(), NullCache()),
            ChatClient(config.judge_settings(), NullCache()),
            encoder,
        )
        self.remote = _Remote(config)
        self.previous: dict[str, Any] = {}
        self.print: dict[str, Any] = {}

    # ------------------------------------------------------------------ state
    def load_state(self) -> BatchState | None:
        if not self.state_path.exists():
            return None
        try:
            return BatchState.model_validate_json(self.state_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UsageError(f"{self.state_path}: unreadable ({exc}); move it away to start over") from exc

    def save_state(self, state: BatchState) -> None:
        write_atomic(self.state_path, state.model_dump_json(indent=2) + "\n")

    def fresh_state(self) -> BatchState:
        """The first batch invocation: tidy up an interrupted live run, keep its token usage."""
        for number in range(1, self.config.rounds + 1):
            scan_round(self.folder, number, self.config.min_score)
        usage = {key: dict(value.get("usage") or {}) for key, value in (self.previous.get("rounds") or {}).items()}
        return BatchState(base_usage=usage)

    # ------------------------------------------------------------------ the step
    def step(self) -> BatchStep:
        self.previous = self.folder.read_run_json() or {}
        self.print = fingerprint(self.config, self.seeds, self.prompts)
        check_fingerprint(self.previous.get("fingerprint"), self.print, self.folder.root)
        state = self.load_state()
        if state is None:
            state = self.fresh_state()
            self.save_state(state)
        if state.stage == "done" and state.pending is None:
            if state.round >= self.config.rounds:
                summary = self.previous or self.write_summary(state, final=True)
                return BatchStep("done", summary=summary)
            state.round, state.stage = state.round + 1, "evolve"
        try:
            return self._step(state)
        except FatalEndpointErrors as exc:
            self.write_summary(state, status="failed", error=str(exc))
            raise
        finally:
            self.remote.close()

    def _step(self, state: BatchState) -> BatchStep:
        collected: list[str] = []
        if state.pending is not None:
            pending = state.pending
            self.poll(pending)
            self.save_state(state)
            if not all(b.status in TERMINAL for b in pending.batches):
                self.write_summary(state)
                step = BatchStep(
                    "pending", pending.stage, pending.round, tuple(b.id for b in pending.batches),
                    _joint_status(pending), _joint_counts(pending),
                )  # fmt: skip
                return step
            record = self.collect(state, pending)
            collected.append(
                f"collected {record.stage} round {record.round}: {record.answered} answers, {record.failed} failed"
                + (f", {record.resend} to send again" if record.resend else "")
            )
            self.write_summary(state)
            failed_batches = [
                f"{b.id}: {'; '.join(b.errors) or 'failed'}" for b in pending.batches if b.status == "failed"
            ]
            if failed_batches:
                self.message(collected[-1])
                raise EndpointError(
                    f"batch failed ({' | '.join(failed_batches)}); the next invocation submits its requests again"
                )
            budget = self.config.max_failures
            if budget is not None and record.failed > budget:
                self.message(collected[-1])
                raise FailureBudgetExceeded(
                    f"{record.failed} samples failed, over --max-failures {budget}; "
                    "fix the cause and run the same command again to go on"
                )
        return self.advance(state, tuple(collected))

    def advance(self, state: BatchState, collected: tuple[str, ...]) -> BatchStep:
        """Submit the next stage that has requests, or finish the run."""
        while state.round <= self.config.rounds:
            stage: Stage = "judge" if state.stage == "judge" else "evolve"
            files = self.write_inputs(stage, state.round)
            if files:
                pending = self.submit(state, stage, state.round, files)
                self.write_summary(state)
                step = BatchStep(
                    "submitted", stage, state.round, tuple(b.id for b in pending.batches), _joint_status(pending),
                    _joint_counts(pending), collected,
                )  # fmt: skip
                return step
            if stage == "evolve":
                state.stage = "judge"
            else:
                state.round, state.stage = state.round + 1, "evolve"
            self.save_state(state)
        state.round, state.stage = self.config.rounds, "done"
        self.save_state(state)
        summary = self.write_summary(state, final=True)
        return BatchStep("done", collected=collected, summary=summary)

    # ------------------------------------------------------------------ building requests
    def kept_states(self, number: int) -> list[RoundState]:
        """Where each seed's survivor of every round before `number` is (without changing the files)."""
        states = []
        for earlier in range(1, number):
            state = RoundState(earlier)
            for offset, record in iter_json_lines(self.folder.round_file(earlier, "kept")):
                state.kept_offsets[record["seed_id"]] = offset
            states.append(state)
        return states

    def current(self, seed: Sample, states: list[RoundState]) -> Sample:
        """The version of a seed a round starts from: its latest survivor, else the seed (as Runner._chain)."""
        current = seed
        for state in states:
            current = state.kept_sample(self.folder, seed.seed_id) or current
        return current

    def view(self, number: int) -> _RoundView:
        view = _RoundView()
        for name in ROUND_FILES:
            repair_tail(self.folder.round_file(number, name))
        for offset, record in iter_json_lines(self.folder.round_file(number, "evolved")):
            view.evolved[record["seed_id"]] = offset
        for _, record in iter_json_lines(self.folder.round_file(number, "judged")):
            view.judged.add(record["seed_id"])
        for _, record in iter_json_lines(self.folder.round_file(number, "dropped")):
            view.drops.setdefault(record["seed_id"], set()).add(record["stage"])
        return view

    def seeds_with(
        self, number: int, wanted: Callable[[str], bool], rejected: list[Drop] | None = None
    ) -> Iterator[tuple[Sample, Sample, Path | str | None]]:
        """(seed, the version round `number` starts from, image) of the seeds `wanted` says yes to."""
        states = self.kept_states(number)
        for item in iter_seeds(self.seeds, self.config):
            if isinstance(item, Drop):
                if rejected is not None:
                    rejected.append(item)
                continue
            sample, image = item
            if wanted(sample.seed_id):
                yield sample, self.current(sample, states), image

    def images(self, image: Path | str | None, stage: Stage) -> list[EncodedImage]:
        send = self.config.images == "send" and (stage == "evolve" or self.config.judge_images)
        if not send or image is None:
            return []
        if isinstance(image, str):
            return [EncodedImage(url=image, key="url:" + image)]
        return [self.encoder.encode(image)]

    def evolve_requests(self, number: int, drops: list[Drop]) -> Iterator[tuple[str, dict[str, Any]]]:
        """custom_id and body of round `number`'s evolution of every seed without a result in that round."""
        done = self.view(number).evolve_done()
        rejected: list[Drop] = []
        settings = self.remote.settings["evolve"]
        for seed, current, image in self.seeds_with(number, lambda seed_id: seed_id not in done, rejected):
            operator, text = evolution_request(self.ctx, current, number)
            try:
                images = self.images(image, "evolve")
            except ImageError as exc:
                new_id = child_id(seed.seed_id, number)
                drops.append(make_drop(current, new_id, number, "evolve", failure_reason(exc), operator))
                continue
            request = ChatRequest(system=self.prompts.system, text=text, images=images)
            yield custom_id("evolve", seed.seed_id, number), request_body(settings, request)
        with self.folder.rejected.open("w", encoding="utf-8") as fp:
            for drop in rejected:
                fp.write(drop.model_dump_json() + "\n")

    def judge_requests(self, number: int, drops: list[Drop]) -> Iterator[tuple[str, dict[str, Any]]]:
        """custom_id and body of the judging of every evolved sample of round `number` without a verdict."""
        view = self.view(number)
        waiting = view.awaiting_judge()
        if not waiting:
            return
        settings = self.remote.settings["judge"]
        found: dict[str, tuple[Sample, Path | str | None]] = {}
        for seed, current, image in self.seeds_with(number, set(waiting).__contains__):
            found[seed.seed_id] = (current, image)
        evolved_path = self.folder.round_file(number, "evolved")
        for seed_id in waiting:
            if seed_id not in found:
                self.message(f"{seed_id}: evolved in round {number} but no longer in the seed files; not judged")
                continue
            parent, image = found[seed_id]
            child = read_sample_at(evolved_path, view.evolved[seed_id])
            text = self.prompts.render_judge(parent, child)
            try:
                images = self.images(image, "judge")
            except ImageError as exc:
                reason = failure_reason(exc)
                drops.append(make_drop(child, child.id, number, "judge", reason, child.operator, None, child))
                continue
            request = ChatRequest(system=self.prompts.system, text=text, images=images)
            yield custom_id("judge", seed_id, number), request_body(settings, request)

    def write_inputs(self, stage: Stage, number: int) -> list[tuple[Path, list[str]]]:
        """Write a stage's requests as Batch input files (split by count and size); [] when there are none."""
        drops: list[Drop] = []
        requests = self.evolve_requests(number, drops) if stage == "evolve" else self.judge_requests(number, drops)
        self.work.mkdir(parents=True, exist_ok=True)
        files: list[tuple[Path, list[str]]] = []
        fp = None
        size = 0
        try:
            for cid, body in requests:
                line = {"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body}
                data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
                ids = files[-1][1] if files else []
                if fp is None or len(ids) >= self.max_requests or (ids and size + len(data) > self.max_bytes):
                    if fp is not None:
                        fp.close()
                    path = self.work / f"{stage}-r{number}-part{len(files) + 1}.input.jsonl"
                    fp = path.open("wb")
                    files.append((path, []))
                    size = 0
                fp.write(data)
                files[-1][1].append(cid)
                size += len(data)
        finally:
            if fp is not None:
                fp.close()
        if drops:
            self.append(number, [], [], [], drops)
        return files

    def submit(self, state: BatchState, stage: Stage, number: int, files: list[tuple[Path, list[str]]]) -> PendingStage:
        """Upload every input file and create its batch; batch.json records each batch as soon as it exists."""
        client = self.remote.client(stage)
        pending = PendingStage(stage=stage, round=number, submitted=_now())
        for path, ids in files:
            with self.remote.mapped(stage), path.open("rb") as fp:
                uploaded = client.files.create(file=(path.name, fp), purpose="batch")
            with self.remote.mapped(stage):
                batch = client.batches.create(
                    input_file_id=uploaded.id,
                    endpoint=ENDPOINT,
                    completion_window="24h",
                    metadata={"tool": "evolve", "stage": stage, "round": str(number), "run": self.folder.root.name},
                )
            pending.batches.append(
                RemoteBatch(id=batch.id, input_file_id=uploaded.id, custom_ids=ids, status=batch.status)
            )
            state.pending = pending
            state.stage = stage
            self.save_state(state)
            path.unlink()
        return pending

    # ------------------------------------------------------------------ polling and collecting
    def poll(self, pending: PendingStage) -> None:
        """Ask the server about every unfinished batch of the pending stage."""
        client = self.remote.client(pending.stage)
        for record in pending.batches:
            if record.status in TERMINAL:
                continue
            with self.remote.mapped(pending.stage):
                batch = client.batches.retrieve(record.id)
            record.status = batch.status
            counts = batch.request_counts
            if counts is not None:
                record.counts = {"total": counts.total, "completed": counts.completed, "failed": counts.failed}
            record.output_file_id = batch.output_file_id
            record.error_file_id = batch.error_file_id
            if batch.errors is not None and batch.errors.data:
                record.errors = [f"{e.code or 'error'}: {e.message or ''}".strip() for e in batch.errors.data]

    def download(self, stage: Stage, file_id: str) -> Iterator[dict[str, Any]]:
        """The lines of a batch output or error file, kept in the run folder's batch/ for the record."""
        path = self.work / f"{file_id}.jsonl"
        if not path.exists():
            with self.remote.mapped(stage):
                data = self.remote.client(stage).files.content(file_id).content
            self.work.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        for _, raw in iter_json_lines(path):
            yield raw

    def results(self, pending: PendingStage) -> tuple[list[tuple[str, _Line]], int]:
        """Every request of the pending stage with its line, in submission order; and how many to send again."""
        found: list[tuple[str, _Line]] = []
        resend = 0
        for record in pending.batches:
            lines: dict[str, _Line] = {}
            for file_id in (record.output_file_id, record.error_file_id):
                if file_id:
                    for raw in self.download(pending.stage, file_id):
                        lines[str(raw.get("custom_id"))] = _Line.read(raw)
            for cid in record.custom_ids:
                line = lines.get(cid)
                if line is None and record.status == "completed":
                    line = _Line(message=f"no answer for this request in the output of batch {record.id}")
                if line is None or line.resend:
                    resend += 1
                    continue
                found.append((cid, line))
        return found, resend

    def collect(self, state: BatchState, pending: PendingStage) -> CollectedStage:
        """Write the results of a finished stage into the round files; batch.json then forgets the batches."""
        results, resend = self.results(pending)
        usage = TokenUsage()
        number = pending.round
        wanted = {split_custom_id(cid)[1] for cid, _ in results}
        versions = {
            seed.seed_id: (current, image) for seed, current, image in self.seeds_with(number, wanted.__contains__)
        }
        if pending.stage == "evolve":
            evolved, drops = self.evolve_results(number, results, versions, usage)
            self.replace(number, wanted, ("evolved", "dropped"), evolved, [], [], drops)
            failed = sum(d.stage == "evolve" for d in drops)
        else:
            judged, kept, drops = self.judge_results(number, results, versions, usage)
            self.replace(number, wanted, ("judged", "kept", "dropped"), [], judged, kept, drops)
            failed = sum(d.stage == "judge" for d in drops)
        record = CollectedStage(
            stage=pending.stage, round=number, batch_ids=[b.id for b in pending.batches], answered=len(results),
            failed=failed, resend=resend, usage=usage.as_dict(), finished=_now(),
        )  # fmt: skip
        state.history.append(record)
        state.pending = None
        self.save_state(state)
        return record

    def evolve_results(
        self,
        number: int,
        results: list[tuple[str, _Line]],
        versions: dict[str, tuple[Sample, Path | str | None]],
        usage: TokenUsage,
    ) -> tuple[list[Sample], list[Drop]]:
        """The evolved versions and drops of an evolution batch (as stages.evolve_sample makes them)."""
        evolved: list[Sample] = []
        drops: list[Drop] = []
        for cid, line in results:
            seed_id = split_custom_id(cid)[1]
            if seed_id not in versions:
                self.message(f"{seed_id}: answered but no longer in the seed files; answer ignored")
                continue
            sample, image = versions[seed_id]
            operator, _ = evolution_request(self.ctx, sample, number)
            new_id = child_id(seed_id, number)
            has_images = self.config.images == "send" and image is not None
            try:
                answer = line.text(has_images, usage)
            except FatalEndpointErrors:
                raise
            except EndpointError as exc:
                drops.append(make_drop(sample, new_id, number, "evolve", failure_reason(exc), operator))
                continue
            result = read_evolution(sample, number, operator, answer)
            if isinstance(result, Drop):
                drops.append(result)
            else:
                evolved.append(result)
        return evolved, drops

    def judge_results(
        self,
        number: int,
        results: list[tuple[str, _Line]],
        versions: dict[str, tuple[Sample, Path | str | None]],
        usage: TokenUsage,
    ) -> tuple[list[Sample], list[Sample], list[Drop]]:
        """Judged samples, survivors and drops of a judge batch (as stages.judge_sample + apply_keep_rule)."""
        view = self.view(number)
        evolved_path = self.folder.round_file(number, "evolved")
        judged: list[Sample] = []
        kept: list[Sample] = []
        drops: list[Drop] = []
        send = self.config.images == "send" and self.config.judge_images
        for cid, line in results:
            seed_id = split_custom_id(cid)[1]
            if seed_id not in versions or seed_id not in view.evolved:
                self.message(f"{seed_id}: judged but its evolved version is gone; verdict ignored")
                continue
            child = read_sample_at(evolved_path, view.evolved[seed_id])
            has_images = send and versions[seed_id][1] is not None
            try:
                answer = line.text(has_images, usage)
            except FatalEndpointErrors:
                raise
            except EndpointError as exc:
                reason = failure_reason(exc)
                drops.append(make_drop(child, child.id, number, "judge", reason, child.operator, None, child))
                continue
            verdict = read_judgement(child, answer)
            if isinstance(verdict, Drop):
                drops.append(verdict)
                continue
            judged.append(verdict)
            survivor, rejected = apply_keep_rule(verdict, self.config.min_score)
            if survivor is not None:
                kept.append(survivor)
            if rejected is not None:
                drops.append(rejected)
        return judged, kept, drops

    # ------------------------------------------------------------------ writing
    def replace(
        self,
        number: int,
        seed_ids: set[str],
        names: tuple[str, ...],
        evolved: list[Sample],
        judged: list[Sample],
        kept: list[Sample],
        drops: list[Drop],
    ) -> None:
        """Remove the seeds' earlier lines from the named round files, then append the new ones."""
        for name in names:
            path = self.folder.round_file(number, name)
            repair_tail(path)
            purge_lines(path, seed_ids)
        self.append(number, evolved, judged, kept, drops)

    def append(
        self, number: int, evolved: list[Sample], judged: list[Sample], kept: list[Sample], drops: list[Drop]
    ) -> None:
        files = AppendFiles()
        try:
            for name, records in (("evolved", evolved), ("judged", judged), ("kept", kept)):
                for sample in records:
                    files.write(self.folder.round_file(number, name), sample)
            for drop in drops:
                files.write(self.folder.round_file(number, "dropped"), drop)
        finally:
            files.close()

    # ------------------------------------------------------------------ run.json
    def write_summary(
        self, state: BatchState, *, final: bool = False, status: str | None = None, error: str | None = None
    ) -> dict[str, Any]:
        """Write run.json (the live run's shape) from the round files and the usage batch.json holds."""
        config = self.config
        usages: dict[int, TokenUsage] = {}
        for number in range(1, config.rounds + 1):
            usages[number] = TokenUsage.from_dict(state.base_usage.get(str(number)))
            for record in state.history:
                if record.round == number:
                    usages[number].merge(TokenUsage.from_dict(record.usage))
        rounds, total, prices = round_summaries(self.folder, config, usages)
        failures = sum(int(r["evolve_failed"]) + int(r["judge_failed"]) for r in rounds.values())
        summary = dict(self.previous)
        summary.update(
            {
                "tool": "evolve",
                "version": __version__,
                "created": summary.get("created", _now()),
                "updated": _now(),
                "status": status or ("running" if not final else "done_with_failures" if failures else "done"),
                "mode": "batch",
                "seeds": [str(p.resolve()) for p in self.seeds],
                "config": config.public(),
                "fingerprint": self.print,
                "prompt_hashes": self.prompts.hashes(),
                "prompt_sources": self.prompts.sources(),
                "rng_seed": config.seed,
                "rounds": rounds,
                "rejected_seeds": sum(1 for _ in iter_json_lines(self.folder.rejected)),
                "usage": total.as_dict(),
                "cost_usd": estimate_cost(total, prices),
                "prices_per_million": list(prices) if prices else None,
                "batch": _batch_summary(state),
            }
        )
        if final:
            kept_files = [self.folder.round_file(n, "kept") for n in range(1, config.rounds + 1)]
            summary["final_samples"] = concat_files(kept_files, self.folder.final)
        summary.pop("error", None)
        if error is not None:
            summary["error"] = error
        self.folder.write_run_json(summary)
        self.previous = summary
        return summary


def _joint_status(pending: PendingStage) -> str:
    statuses = sorted({b.status for b in pending.batches})
    return "/".join(statuses) or "submitting"


def _joint_counts(pending: PendingStage) -> dict[str, int]:
    counts = {"total": 0, "completed": 0, "failed": 0}
    for record in pending.batches:
        counts["total"] += record.counts.get("total") or len(record.custom_ids)
        counts["completed"] += record.counts.get("completed", 0)
        counts["failed"] += record.counts.get("failed", 0)
    return counts


def _batch_summary(state: BatchState) -> dict[str, Any]:
    pending = state.pending
    return {
        "stage": state.stage,
        "round": state.round,
        "pending": None
        if pending is None
        else {
            "stage": pending.stage,
            "round": pending.round,
            "batch_ids": [b.id for b in pending.batches],
            "status": _joint_status(pending),
            "counts": _joint_counts(pending),
        },
        "collected": len(state.history),
    }


def batch_step(
    config: RunConfig,
    seeds: list[Path],
    out: Path,
    message: Message,
    *,
    max_requests: int = MAX_BATCH_REQUESTS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> BatchStep:
    """One cron-safe step of a Batch API run: submit the next stage, report a pending one, or collect it.

    The caller prints the returned step's `line()`; `message` only gets side notes (a seed gone from the
    seed files, what was collected before an error is raised).

    Raises RunLockedError when another invocation holds the run folder, UsageError for other settings than
    the run folder's, EndpointError when the Batch API cannot be reached or a batch failed, and the fatal
    endpoint errors (bad key, images refused) found in a batch's answers.
    """
    if not seeds:
        raise UsageError("no seed files given")
    for path in seeds:
        if not path.is_file():
            raise InputError(f"{path}: no such seed file")
    if max_requests < 1 or max_bytes < 1:
        raise UsageError("batch limits must be positive")
    prompts = PromptSet.load(config.prompts)
    folder = RunFolder(out)
    with run_lock(folder):
        run = _BatchRun(config, seeds, folder, prompts, message, max_requests, max_bytes)
        return run.step()
