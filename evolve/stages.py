"""The per-record stages of a round, as functions of a record and the run's context (no global state).

evolve: render the operator's prompt → call the endpoint → parse the rewritten Q&A&S into a child sample.
judge:  render the judge prompt (child against its parent) → call → parse one verdict per rewrite.
keep:   improved and score >= --min-score survive; the rest are recorded as dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evolve.accounting import TokenUsage
from evolve.client import ChatClient, ChatRequest, ChatResult
from evolve.config import RunConfig
from evolve.errors import AnswerParseError, EndpointError, FatalEndpointErrors, ImageError
from evolve.images import EncodedImage, ImageEncoder, remote_image
from evolve.operators import choose_operator
from evolve.parse import parse_qas, parse_verdicts
from evolve.prompts import PromptSet
from evolve.records import QAS, Drop, Sample, Stage


@dataclass
class StageContext:
    """What every stage needs: settings, templates, clients and the image encoder."""

    config: RunConfig
    prompts: PromptSet
    client: ChatClient
    judge_client: ChatClient
    encoder: ImageEncoder


@dataclass
class RoundOutcome:
    """Everything one sample-round produced, in the order its lines are written."""

    operator: str
    usage: TokenUsage = field(default_factory=TokenUsage)
    evolved: Sample | None = None
    judged: Sample | None = None
    kept: Sample | None = None
    drops: list[Drop] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when the call or the answer failed (not when the judge rejected the rewrites)."""
        return any(d.stage in ("evolve", "judge") for d in self.drops)


def _count(usage: TokenUsage | None, result: ChatResult) -> None:
    if usage is not None:
        usage.add_call(result.prompt_tokens, result.completion_tokens, result.cached)


def _count_failure(usage: TokenUsage | None) -> None:
    if usage is not None:
        usage.failed += 1


def child_id(seed_id: str, round_number: int) -> str:
    """The stable id of a seed's version in a round."""
    return f"{seed_id}@r{round_number}"


async def _images(ctx: StageContext, image: Path | str | None, send: bool) -> list[EncodedImage]:
    if not send or image is None:
        return []
    if isinstance(image, str):
        return [remote_image(image)]
    return [await ctx.encoder.aencode(image)]


def evolution_request(ctx: StageContext, sample: Sample, round_number: int) -> tuple[str, str]:
    """(operator, prompt text) for a sample in a round; pure."""
    operator = choose_operator(ctx.config.seed, sample.seed_id, round_number, ctx.config.weights)
    return operator, ctx.prompts.render_evolution(operator, sample)


def _unreadable(what: str, exc: AnswerParseError, cut_off: bool) -> str:
    limit = " (cut off at --max-tokens)" if cut_off else ""
    return f"unreadable {what}{limit}: {exc.reason}"


def read_evolution(
    sample: Sample, round_number: int, operator: str, answer: str, cut_off: bool = False
) -> Sample | Drop:
    """The child sample an evolution answer describes, or a Drop keeping the raw text; pure."""
    new_id = child_id(sample.seed_id, round_number)
    try:
        items = parse_qas(answer)
    except AnswerParseError as exc:
        reason = _unreadable("answer", exc, cut_off)
        return make_drop(sample, new_id, round_number, "evolve", reason, operator, exc.raw)
    update = {"id": new_id, "qa": items, "round": round_number, "operator": operator, "parent_id": sample.id}
    return sample.model_copy(update=update)


def read_judgement(child: Sample, answer: str, cut_off: bool = False) -> Sample | Drop:
    """The child with one verdict per rewritten item, or a Drop keeping the raw text; pure."""
    try:
        verdicts = parse_verdicts(answer, len(child.qa))
    except AnswerParseError as exc:
        reason = _unreadable("verdicts", exc, cut_off)
        return make_drop(child, child.id, child.round, "judge", reason, child.operator, exc.raw, child)
    items = [
        item.model_copy(update={"improved": v.improved, "score": v.score, "reason": v.reason})
        for item, v in zip(child.qa, verdicts, strict=True)
    ]
    return child.model_copy(update={"qa": items})


async def evolve_sample(
    ctx: StageContext,
    sample: Sample,
    round_number: int,
    image: Path | str | None,
    usage: TokenUsage | None = None,
) -> tuple[str, Sample | Drop]:
    """Rewrite all Q&A&S of a sample with the operator drawn for it; a failure is a Drop."""
    operator, text = evolution_request(ctx, sample, round_number)
    new_id = child_id(sample.seed_id, round_number)
    try:
        images = await _images(ctx, image, ctx.config.images == "send")
        result = await ctx.client.chat(ChatRequest(system=ctx.prompts.system, text=text, images=images))
    except FatalEndpointErrors:
        raise
    except (EndpointError, ImageError) as exc:
        _count_failure(usage)
        return operator, make_drop(sample, new_id, round_number, "evolve", failure_reason(exc), operator)
    _count(usage, result)
    cut_off = result.finish_reason == "length"
    return operator, read_evolution(sample, round_number, operator, result.text, cut_off)


async def judge_sample(
    ctx: StageContext,
    parent: Sample,
    child: Sample,
    image: Path | str | None,
    usage: TokenUsage | None = None,
) -> Sample | Drop:
    """Ask the judge about every rewrite of `child` against `parent`; returns the child with verdicts."""
    text = ctx.prompts.render_judge(parent, child)
    try:
        images = await _images(ctx, image, ctx.config.images == "send" and ctx.config.judge_images)
        result = await ctx.judge_client.chat(ChatRequest(system=ctx.prompts.system, text=text, images=images))
    except FatalEndpointErrors:
        raise
    except (EndpointError, ImageError) as exc:
        _count_failure(usage)
        return make_drop(child, child.id, child.round, "judge", failure_reason(exc), child.operator, None, child)
    _count(usage, result)
    return read_judgement(child, result.text, result.finish_reason == "length")


def failure_reason(exc: EndpointError | ImageError) -> str:
    """The reason recorded for a call that failed."""
    return f"{'image' if isinstance(exc, ImageError) else 'endpoint'}: {exc}"


def apply_keep_rule(judged: Sample, min_score: float) -> tuple[Sample | None, Drop | None]:
    """Split a judged sample into its survivors and a Drop holding the rest."""
    kept = [item for item in judged.qa if item.survives(min_score)]
    rejected = [item for item in judged.qa if not item.survives(min_score)]
    survivor = judged.model_copy(update={"qa": kept}) if kept else None
    drop = None
    if rejected:
        reasons = sorted({_rejection(item, min_score) for item in rejected})
        drop = make_drop(
            judged,
            judged.id,
            judged.round,
            "eliminate",
            f"{len(rejected)} of {len(judged.qa)} rewrites rejected: {'; '.join(reasons)}",
            judged.operator,
            None,
            judged.model_copy(update={"qa": rejected}),
        )
    return survivor, drop


def _rejection(item: QAS, min_score: float) -> str:
    return "not improved" if not item.improved else f"score below {min_score:g}"


def make_drop(
    sample: Sample,
    new_id: str,
    round_number: int,
    stage: Stage,
    reason: str,
    operator: str | None,
    raw: str | None = None,
    kept_sample: Sample | None = None,
) -> Drop:
    """A Drop of `sample`'s version `new_id` in a round, with the reason and what is worth keeping."""
    return Drop(
        id=new_id,
        seed_id=sample.seed_id,
        round=round_number,
        stage=stage,
        reason=reason,
        operator=operator,
        raw=raw,
        sample=kept_sample,
    )


async def evolve_round(ctx: StageContext, sample: Sample, round_number: int, image: Path | str | None) -> RoundOutcome:
    """One sample through one round: evolve → judge → keep."""
    usage = TokenUsage()
    operator, evolved = await evolve_sample(ctx, sample, round_number, image, usage)
    outcome = RoundOutcome(operator, usage)
    if isinstance(evolved, Drop):
        outcome.drops.append(evolved)
        return outcome
    outcome.evolved = evolved
    judged = await judge_sample(ctx, sample, evolved, image, usage)
    if isinstance(judged, Drop):
        outcome.drops.append(judged)
        return outcome
    outcome.judged = judged
    outcome.kept, rejected = apply_keep_rule(judged, ctx.config.min_score)
    if rejected is not None:
        outcome.drops.append(rejected)
    return outcome
