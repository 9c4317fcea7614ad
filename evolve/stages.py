"""A round, defined once: the stages one sample goes through, as functions of (context, work).

    round 0 (--annotate): annotate  fill objects/skills/steps of seed items that lack them
    round N:  evolve  rewrite the items, ≤ --items-per-call per call; a cut-off answer's missing items asked once
           → check   rule checks, no call                         drops: stage "check", with the rule
           → judge   operator-aware verdicts (votes), keep rule   drops: "eliminate" (and "judge" on failure)
           → verify  claims split, then checked with the image    drops: "verify", with the claim
           → dedup   near-duplicates within the lineage           drops: "dedup", with the twin
           → keep    the survivors: round-N/kept.jsonl, the input of round N+1

Every engine runs these same functions: how a request gets its answer (live HTTP, the Batch API, a Ray actor)
is the client's and the pool's business. A stage may ask the clients for answers; everything else is pure and
deterministic (any random draw is keyed by --seed, sample id and round), so order, concurrency, resume, shards
and engines never change the records. A sample-round ends in a `RoundResult`: its record lines in write order,
its outcome line last.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from evolve.accounting import TokenUsage
from evolve.checks import check_sample, parse_checks
from evolve.client import ChatClient, ChatRequest, ChatResult
from evolve.config import RunConfig
from evolve.dedup import find_twins
from evolve.errors import AnswerDeferred, AnswerParseError, EndpointError, FatalEndpointErrors, ImageError
from evolve.images import EncodedImage, ImageEncoder, remote_image
from evolve.operators import choose_operator
from evolve.parse import parse_annotations, parse_claim_verdicts, parse_claims, parse_qas_detailed, parse_verdicts
from evolve.prompts import PromptParts, PromptSet
from evolve.records import QAS, Claim, Drop, DropStage, Outcome, Sample, Vote

ImageRef = Path | str | None
T = TypeVar("T")


@dataclass
class StageContext:
    """What every stage needs: settings, templates, the clients and the image encoder."""

    config: RunConfig
    prompts: PromptSet
    client: ChatClient
    judge_client: ChatClient
    encoder: ImageEncoder


def child_id(seed_id: str, round_number: int) -> str:
    """The stable id of a seed's version in a round."""
    return f"{seed_id}@r{round_number}"


class Refused(Exception):
    """The model refused (the answer carries a refusal instead of content)."""


@dataclass
class Work:
    """One sample through one round: what the stages pass along, and what they found."""

    seed_id: str
    number: int
    parent: Sample
    image: ImageRef
    operator: str | None = None
    attempt: int = 0
    lineage: tuple[str, ...] = ()
    """Questions of the seed and of its versions in earlier rounds (references for the dedup stage)."""
    child: Sample | None = None
    """The rewrite still alive after the stages so far (None: nothing left)."""
    lines: list[tuple[str, str]] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)
    items: Counter[str] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    scores: list[float] = field(default_factory=list)
    agreement: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    failed: str | None = None
    retry: bool = False
    unreadable: bool = False
    _images: list[EncodedImage] | None = None

    @property
    def new_id(self) -> str:
        """The id of this round's version of the seed."""
        return child_id(self.seed_id, self.number)

    def record(self, name: str, sample: Sample) -> None:
        """Append a sample to a round file (written when the sample-round completes)."""
        self.lines.append((name, sample.model_dump_json()))

    def drop(
        self, stage: DropStage, reason: str, items: Sequence[QAS] = (), raw: str | None = None, *, count: bool = True
    ) -> None:
        """Record a drop of some items (or of the whole version) at a stage, with the reason."""
        base = self.child or self.parent
        kept = base.model_copy(update={"id": self.new_id, "qa": list(items)}) if items else None
        drop = Drop(
            id=self.new_id, seed_id=self.seed_id, round=self.number, stage=stage, reason=reason,
            operator=self.operator, raw=raw, sample=kept,
        )  # fmt: skip
        self.lines.append(("dropped", drop.model_dump_json()))
        self.reasons.append(f"{stage}: {reason_class(reason)}")
        if count and items:
            self.items[f"dropped_{stage}"] += len(items)

    def fail(self, stage: str, exc: BaseException) -> None:
        """A call of `stage` failed or its answer could not be read: mark the outcome."""
        self.failed = self.failed or stage
        if isinstance(exc, (AnswerParseError, Refused)) or _unreadable_body(exc):
            self.unreadable = True
        else:
            self.retry = True

    def count(self, result: ChatResult) -> None:
        """Count one answered call."""
        self.answers["calls"] += 1
        self.usage.add_call(
            result.prompt_tokens, result.completion_tokens, result.cached and not result.batch, result.cached_tokens,
            result.batch,
        )  # fmt: skip

    def outcome(self) -> Outcome:
        """The outcome line of this sample-round."""
        kept = self.child is not None and bool(self.child.qa) and self.failed != "annotate"
        return Outcome(
            seed_id=self.seed_id, round=self.number, operator=self.operator, attempt=self.attempt, kept=kept,
            failed=self.failed, retry=self.retry, unreadable=self.unreadable, items=dict(self.items),
            rules=dict(self.rules), answers=dict(self.answers), scores=self.scores, agreement=self.agreement,
            reasons=self.reasons, usage=self.usage.as_dict(),
        )  # fmt: skip


@dataclass
class RoundResult:
    """A finished sample-round: its lines in write order (the outcome last) and the version the next round
    starts from (its survivor, else its parent; None when rebuilt from a payload on a Ray driver)."""

    seed_id: str
    number: int
    lines: list[tuple[str, str]]
    outcome: Outcome
    next_version: Sample | None
    usage: TokenUsage

    @property
    def stop_chain(self) -> bool:
        """A call failed: the next invocation redoes this sample-round, so later rounds must wait for it."""
        return self.outcome.retry

    def payload(self) -> bytes:
        """The lines, serialized once (what a Ray actor sends its driver)."""
        return orjson.dumps(self.lines)

    @classmethod
    def from_payload(cls, seed_id: str, number: int, payload: bytes) -> RoundResult:
        """The result a payload describes (its outcome is its last line)."""
        lines = [(str(name), str(line)) for name, line in orjson.loads(payload)]
        outcome = Outcome.model_validate_json(lines[-1][1])
        return cls(seed_id, number, lines, outcome, None, TokenUsage.from_dict(outcome.usage))


_COUNTS = re.compile(r"^\d+ of \d+ ")


def reason_class(reason: str) -> str:
    """The kind of a drop reason without its particulars (for counting): "rewrites rejected: not improved",
    "endpoint: endpoint error (500)", "rewrites failed rule checks: choice_named" ..."""
    head = reason.split(":", 2)
    if reason.startswith(("endpoint", "unreadable", "image", "refused")) and len(head) > 1:
        return f"{head[0]}: {head[1].strip()[:60]}"
    return _COUNTS.sub("", reason).split(", e.g.")[0][:80]


def _unreadable_body(exc: BaseException) -> bool:
    from evolve.errors import UnreadableAnswer

    return isinstance(exc, UnreadableAnswer)


def failure_reason(exc: BaseException, what: str = "answer") -> str:
    """The reason recorded for a failed call or an unreadable answer (`what` names what could not be read)."""
    if isinstance(exc, ImageError):
        return f"image: {exc}"
    if isinstance(exc, Refused):
        return f"refused: {' '.join(str(exc).split())[:200]}"
    if isinstance(exc, AnswerParseError):
        return f"unreadable {what}: {exc.reason}"
    if _unreadable_body(exc):
        return f"unreadable answer: {exc}"
    return f"endpoint: {exc}"


# ------------------------------------------------------------------------------------------ helpers


def chunks(items: Sequence[T], size: int) -> list[tuple[int, list[T]]]:
    """(start, items) pieces of at most `size` (0: one piece)."""
    if size <= 0 or len(items) <= size:
        return [(0, list(items))]
    return [(start, list(items[start : start + size])) for start in range(0, len(items), size)]


async def gather_answers(calls: Iterable[Awaitable[T]]) -> list[T | BaseException]:
    """Await every call (so every request of a stage reaches a batch together); a deferred or fatal one raises
    after all have run, other failures come back in place of their result."""
    pending = list(calls)
    if len(pending) == 1:  # the common case: no task, no gather (~60 µs a call at L = 0)
        try:
            found: list[T | BaseException] = [await pending[0]]
        except Exception as exc:
            found = [exc]
    else:
        found = await asyncio.gather(*pending, return_exceptions=True)
    for item in found:
        if isinstance(item, (AnswerDeferred, *FatalEndpointErrors)):
            raise item
    for item in found:
        if isinstance(item, BaseException) and not isinstance(item, (EndpointError, ImageError, AnswerParseError,
                                                                      Refused)):  # fmt: skip
            raise item
    return list(found)


async def _images(ctx: StageContext, work: Work, send: bool) -> list[EncodedImage]:
    """The sample's image, encoded once per sample-round ([] when not sent)."""
    if not send or work.image is None:
        return []
    if work._images is None:
        if isinstance(work.image, str):
            work._images = [remote_image(work.image)]
        else:
            work._images = [await ctx.encoder.aencode(work.image)]
    return work._images


def _request(
    ctx: StageContext, work: Work, parts: PromptParts, images: list[EncodedImage], **extra: Any
) -> ChatRequest:
    return ChatRequest(
        system=ctx.prompts.system, prefix=parts.fixed, text=parts.sample, images=images, round=work.number,
        attempt=work.attempt, **extra,
    )  # fmt: skip


async def _ask(client: ChatClient, work: Work, request: ChatRequest) -> ChatResult:
    result = await client.chat(request)
    work.count(result)
    if result.refusal and not result.text:
        raise Refused(result.refusal)
    if result.finish_reason == "length":
        work.answers["cut_off"] += 1
    return result


def _part(sample: Sample, items: list[QAS]) -> Sample:
    return sample.model_copy(update={"qa": items})


# ------------------------------------------------------------------------------------------ round 0


def needs_annotation(item: QAS) -> bool:
    """An item lacking objects, skills or steps."""
    return not (item.objects and item.skills and item.steps)


async def annotate_stage(ctx: StageContext, work: Work) -> None:
    """Fill objects, skills and steps of the items that lack them (never the question or answer)."""
    seed = work.parent
    todo = [i for i, item in enumerate(seed.qa) if needs_annotation(item)]
    work.items["parent"] = len(seed.qa)
    work.child = seed
    if not todo:
        work.record("annotated", seed)
        return
    try:
        images = await _images(ctx, work, ctx.config.images == "send")
    except ImageError as exc:
        work.fail("annotate", exc)
        work.drop("annotate", failure_reason(exc))
        return

    async def one(start: int, positions: list[int]) -> list[Any]:
        part = _part(seed, [seed.qa[p] for p in positions])
        result = await _ask(ctx.client, work, _request(ctx, work, ctx.prompts.render_annotation_parts(part), images,
                                                       tag="annotate"))  # fmt: skip
        return parse_annotations(result.text, len(positions))

    pieces = chunks(todo, ctx.config.items_per_call)
    found = await gather_answers(one(start, positions) for start, positions in pieces)
    items = list(seed.qa)
    for (_, positions), answer in zip(pieces, found, strict=True):
        if isinstance(answer, BaseException):
            work.fail("annotate", answer)
            work.drop("annotate", failure_reason(answer), [seed.qa[p] for p in positions], raw=_raw(answer))
            continue
        for position, note in zip(positions, answer, strict=True):
            if note is None:
                continue
            item = items[position]
            items[position] = item.model_copy(
                update={
                    "objects": item.objects or note.objects,
                    "skills": item.skills or note.skills,
                    "steps": item.steps or note.steps,
                }
            )
            work.items["annotated"] += 1
    work.child = seed.model_copy(update={"qa": items})
    if work.retry:
        return
    work.record("annotated", work.child)


# ------------------------------------------------------------------------------------------ round N


async def evolve_stage(ctx: StageContext, work: Work) -> None:
    """Rewrite every item of the parent with the operator drawn for the sample, a chunk of items per call."""
    parent = work.parent
    work.items["parent"] = len(parent.qa)
    try:
        images = await _images(ctx, work, ctx.config.images == "send")
    except ImageError as exc:
        work.fail("evolve", exc)
        work.drop("evolve", failure_reason(exc))
        return
    operator = work.operator or ""

    async def rewrite(start: int, items: list[QAS]) -> list[QAS]:
        parts = ctx.prompts.render_evolution_parts(operator, _part(parent, items))
        result = await _ask(ctx.client, work, _request(ctx, work, parts, images, tag="evolve"))
        try:
            got = parse_qas_detailed(result.text).items[: len(items)]
        except AnswerParseError:
            if result.finish_reason != "length":
                raise
            got = []
        for i, item in enumerate(got):  # fresh objects of this answer: set in place (lines are written as text)
            item.source = start + i
        if result.finish_reason == "length" and len(got) < len(items):
            got += await _reask(start + len(got), items[len(got) :])
        elif len(got) < len(items):
            work.items["lost"] += len(items) - len(got)
        if not got:
            raise AnswerParseError("no complete item before the answer was cut off", result.text)
        return got

    async def _reask(start: int, missing: list[QAS]) -> list[QAS]:
        """The items a cut-off answer did not reach, asked once more (in halves when none was complete)."""
        work.answers["reasked"] += len(missing)
        size = len(missing) if start > 0 or len(missing) == 1 else (len(missing) + 1) // 2
        found: list[QAS] = []
        for offset, piece in chunks(missing, size):
            work.answers["reask_calls"] += 1
            parts = ctx.prompts.render_evolution_parts(operator, _part(parent, piece))
            try:
                result = await _ask(ctx.client, work, _request(ctx, work, parts, images, tag="evolve"))
                got = parse_qas_detailed(result.text).items[: len(piece)]
            except (AnswerParseError, Refused):
                got = []
            for i, item in enumerate(got):
                item.source = start + offset + i
            found += got
            work.items["lost"] += len(piece) - len(got)
        return found

    pieces = chunks(parent.qa, ctx.config.items_per_call)
    answers = await gather_answers(rewrite(start, items) for start, items in pieces)
    rewritten: list[QAS] = []
    for answer in answers:
        if isinstance(answer, BaseException):
            work.fail("evolve", answer)
            work.drop("evolve", failure_reason(answer), raw=_raw(answer), count=False)
            continue
        rewritten.extend(answer)
    if not rewritten:
        work.child = None
        return
    work.child = parent.model_copy(
        update={
            "id": work.new_id,
            "qa": rewritten,
            "round": work.number,
            "operator": work.operator,
            "parent_id": parent.id,
        }
    )
    work.items["evolved"] = len(rewritten)
    work.record("evolved", work.child)


def _raw(exc: BaseException) -> str | None:
    if isinstance(exc, AnswerParseError):
        return exc.raw
    if isinstance(exc, Refused):
        return str(exc)
    return None


async def check_stage(ctx: StageContext, work: Work) -> None:
    """Rule checks before the judge (no call): an item breaking a rule is dropped with the rule's name."""
    child = work.child
    assert child is not None
    rules = parse_checks(ctx.config.checks)
    found = check_sample(child, work.parent, rules)
    passing: list[QAS] = []
    failing: list[QAS] = []
    for item, violations in zip(child.qa, found, strict=True):
        if not violations:
            passing.append(item)
            continue
        for violation in violations:
            work.rules[violation.rule] += 1
        item.violations = [f"{v.rule}: {v.detail}" for v in violations]
        failing.append(item)
    names = sorted({v.split(":", 1)[0] for item in failing for v in item.violations or []})
    _split(work, "check", passing, failing, f"rewrites failed rule checks: {', '.join(names)}")


def _split(work: Work, stage: DropStage, passing: list[QAS], failing: list[QAS], why: str) -> None:
    """After a filtering stage: one drop line for the failing items, the passing ones go on (if any)."""
    child = work.child
    assert child is not None
    if failing:
        work.drop(stage, f"{len(failing)} of {len(passing) + len(failing)} {why}", failing)
    work.child = child.model_copy(update={"qa": passing}) if passing else None


async def judge_stage(ctx: StageContext, work: Work) -> None:
    """Judge every rewrite against the parent item it came from (chunked, with votes), then apply the keep rule."""
    child = work.child
    assert child is not None
    parent = work.parent
    config = ctx.config
    try:
        images = await _images(ctx, work, config.images == "send" and config.judge_images)
    except ImageError as exc:
        work.fail("judge", exc)
        work.drop("judge", failure_reason(exc), child.qa, count=False)
        work.child = None
        return
    votes = config.judge_votes

    async def vote(items: list[QAS], seed: int | None) -> list[Any]:
        sources = sorted({item.source for item in items if item.source is not None and item.source < len(parent.qa)})
        originals = [parent.qa[s] for s in sources] or parent.qa
        parts = ctx.prompts.render_judge_parts(_part(parent, originals), _part(child, items))
        result = await _ask(ctx.judge_client, work, _request(ctx, work, parts, images, seed=seed, tag="judge"))
        return parse_verdicts(result.text, len(items))

    pieces = chunks(child.qa, config.items_per_call)
    seeds: list[int | None] = [None] if votes == 1 else list(range(votes))
    answers = await gather_answers(vote(items, seed) for _, items in pieces for seed in seeds)
    judged: list[QAS] = []
    for index, (_, items) in enumerate(pieces):
        ballots = answers[index * len(seeds) : (index + 1) * len(seeds)]
        problem = next((b for b in ballots if isinstance(b, BaseException)), None)
        if problem is not None:
            work.fail("judge", problem)
            work.drop("judge", failure_reason(problem, "verdicts"), items, raw=_raw(problem), count=False)
            continue
        for position, item in enumerate(items):
            judged.append(_verdict(item, [ballot[position] for ballot in ballots], work))  # type: ignore[index]
    if not judged:
        work.child = None
        return
    verdicts = child.model_copy(update={"qa": judged})
    work.items["judged"] = len(judged)
    work.items["improved"] = sum(1 for item in judged if item.improved)
    work.record("judged", verdicts)
    kept = [item for item in judged if item.survives(config.min_score)]
    rejected = [item for item in judged if not item.survives(config.min_score)]
    work.child = verdicts
    if rejected:
        reasons = sorted({"not improved" if not i.improved else f"score below {config.min_score:g}" for i in rejected})
        work.drop("eliminate", f"{len(rejected)} of {len(judged)} rewrites rejected: {'; '.join(reasons)}", rejected)
    work.child = verdicts.model_copy(update={"qa": kept}) if kept else None


def _verdict(item: QAS, ballots: list[Any], work: Work) -> QAS:
    """The item with the majority of its votes: improved if most said so, the mean score, a majority reason
    (set in place: the item is this round's own, and the lines written before hold their text already)."""
    yes = sum(1 for b in ballots if b.improved)
    improved = yes * 2 > len(ballots)
    item.improved = improved
    item.score = round(sum(float(b.score) for b in ballots) / len(ballots), 3)
    item.reason = next((b.reason for b in ballots if b.improved == improved), ballots[0].reason)
    if len(ballots) > 1:
        item.votes = [Vote(improved=b.improved, score=b.score) for b in ballots]
        work.agreement.append(round(max(yes, len(ballots) - yes) / len(ballots), 4))
    return item


async def verify_stage(ctx: StageContext, work: Work) -> None:
    """Claim verification: split each surviving answer into yes/no claims (text only), check them against the
    image; an item with a contradicted claim is dropped."""
    child = work.child
    assert child is not None
    config = ctx.config
    try:
        images = await _images(ctx, work, config.images == "send")
    except ImageError as exc:
        work.fail("verify", exc)
        work.drop("verify", failure_reason(exc), child.qa, count=False)
        work.child = None
        return

    async def verify(items: list[QAS]) -> list[list[Claim]]:
        part = _part(child, items)
        split = await _ask(ctx.judge_client, work, _request(ctx, work, ctx.prompts.render_claim_split_parts(part), [],
                                                             tag="claims"))  # fmt: skip
        claims = parse_claims(split.text, len(items))
        flat = [c for per_item in claims for c in per_item]
        if not flat:
            return [[] for _ in items]
        parts = ctx.prompts.render_claim_check_parts(part, claims)
        check = await _ask(ctx.judge_client, work, _request(ctx, work, parts, images, tag="verify"))
        verdicts = iter(parse_claim_verdicts(check.text, len(flat)))
        return [[Claim(claim=c, verdict=next(verdicts)) for c in per_item] for per_item in claims]

    pieces = chunks(child.qa, config.items_per_call)
    answers = await gather_answers(verify(items) for _, items in pieces)
    passing: list[QAS] = []
    failing: list[QAS] = []
    for (_, items), answer in zip(pieces, answers, strict=True):
        if isinstance(answer, BaseException):
            work.fail("verify", answer)
            work.drop("verify", failure_reason(answer), items, raw=_raw(answer), count=False)
            continue
        for item, claims in zip(items, answer, strict=True):
            item.claims = claims
            work.items["claims"] += len(claims)
            (failing if any(c.verdict is False for c in claims) else passing).append(item)
    first = next((c.claim for item in failing for c in item.claims or [] if c.verdict is False), "")
    _split(work, "verify", passing, failing, f"rewrites make a claim the image contradicts, e.g. {first!r}")


async def dedup_stage(ctx: StageContext, work: Work) -> None:
    """Drop rewrites whose question nearly repeats a question of the lineage or an earlier sibling."""
    child = work.child
    assert child is not None
    references = list(dict.fromkeys([*work.lineage, *(item.question for item in work.parent.qa)]))
    questions = [item.question for item in child.qa]
    twins = find_twins(questions, references, ctx.config.dedup_threshold)
    passing: list[QAS] = []
    failing: list[QAS] = []
    for item, twin in zip(child.qa, twins, strict=True):
        if twin is None:
            passing.append(item)
        else:
            item.twin = twin.describe(questions, references)
            failing.append(item)
    example = failing[0].twin if failing else ""
    _split(work, "dedup", passing, failing, f"rewrites nearly repeat an earlier question, e.g. {example!r}")


async def keep_stage(ctx: StageContext, work: Work) -> None:
    """The survivors: the input of the next round."""
    child = work.child
    assert child is not None
    work.items["kept"] = len(child.qa)
    work.scores.extend(float(item.score) for item in child.qa if item.score is not None)
    work.record("kept", child)


Stage = Callable[[StageContext, Work], Awaitable[None]]


def round_stages(config: RunConfig) -> list[Stage]:
    """The stages of rounds 1..N under these settings, in order."""
    stages: list[Stage] = [evolve_stage]
    if parse_checks(config.checks):
        stages.append(check_stage)
    stages.append(judge_stage)
    if config.verify == "claims":
        stages.append(verify_stage)
    if config.dedup_threshold > 0:
        stages.append(dedup_stage)
    stages.append(keep_stage)
    return stages


ANNOTATION_STAGES: list[Stage] = [annotate_stage]


async def run_round(ctx: StageContext, work: Work, stages: Sequence[Stage]) -> RoundResult:
    """One sample through the stages of one round; raises AnswerDeferred when a request waits for a batch."""
    if work.number > 0 and work.operator is None:
        work.operator = choose_operator(ctx.config.seed, work.seed_id, work.number, ctx.config.weights)
    for stage in stages:
        await stage(ctx, work)
        if work.child is None:
            break
    outcome = work.outcome()
    lines = [*work.lines, ("outcomes", outcome.model_dump_json())]
    survivor = work.child if outcome.kept and work.child is not None else None
    return RoundResult(work.seed_id, work.number, lines, outcome, survivor or work.parent, work.usage)
