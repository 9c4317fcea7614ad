"""A reference client, not evolve: the least one Python process on aiohttp does for one round of evolve's work.

    python bench/leanloop.py --base-url URL --seeds FILE --prompts FILE --out DIR --concurrency C

Per seed: decode the line, build the evolution prompt (the fixed text of a real evolve prompt, then the sample's
description, boxes and items as JSON), call, decode the fenced rewrites and check their field types by hand,
write the evolved line, build the judge prompt, call, decode the verdicts, write the judged, kept and outcome
lines and flush. No models, templates, stages, retries, accounting, cache or resume. Row 3 reports it to show
how close to the raw loop a client doing this work can get in Python at all.

Prints one JSON line: samples, errors, elapsed (s), cpu (s, this process).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import resource
import time
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

OPERATORS = ("perceptual", "reasoning", "interaction")
CORE_FIELDS = ("image_position", "objects", "skills", "format", "question", "steps", "answer")
ROUND_FILES = ("evolved", "judged", "kept", "outcomes")
_DECODER = json.JSONDecoder(strict=False)


def fixed_texts(prompts: Path) -> dict[str, tuple[str, str]]:
    """(system, fixed head) of the first evolve and the first judge prompt of a prompts file."""
    found: dict[str, tuple[str, str]] = {}
    cut = {"evolve": "### Image Description", "judge": "### Original Q&A&S"}
    with prompts.open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            kind = item.get("kind")
            if kind in cut and kind not in found:
                found[kind] = (item.get("system") or "", item["text"][: item["text"].index(cut[kind])])
            if len(found) == len(cut):
                return found
    raise SystemExit(f"{prompts}: needs an evolve and a judge prompt")


def fenced_array(text: str) -> list[Any]:
    """The JSON array in the first ```json fence of an answer."""
    start = text.find("```json")
    end = text.find("```", start + 7)
    try:
        value = orjson.loads(text[start + 7 : end if end >= 0 else None])
    except orjson.JSONDecodeError:
        value = _DECODER.raw_decode(text, text.index("[", start))[0]
    return value if isinstance(value, list) else []


def checked_item(raw: Any) -> dict[str, Any] | None:
    """A rewrite with the types evolve's records require, or None."""
    if not isinstance(raw, dict) or not isinstance(raw.get("question"), str) or not isinstance(raw.get("answer"), str):
        return None
    return {
        "question": raw["question"],
        "answer": raw["answer"],
        "objects": [o for o in raw.get("objects") or [] if isinstance(o, str)],
        "skills": [s for s in raw.get("skills") or [] if isinstance(s, str)],
        "steps": [s for s in raw.get("steps") or [] if isinstance(s, dict)],
        "format": str(raw.get("format") or "Norm"),
        "image_position": str(raw.get("image_position") or "single"),
    }


def caption_text(caption: Any) -> str:
    """A seed's description: a string, or the last model turn of a list of turns."""
    if isinstance(caption, list):
        return next((str(t.get("value")) for t in reversed(caption) if t.get("from") == "gpt"), "")
    return str(caption or "")


class LeanRound:
    """One round over a seed file, shared by the concurrent workers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url = args.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
        self.fixed = fixed_texts(Path(args.prompts))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, IO[str]] = {n: (out / f"{n}.jsonl").open("w", encoding="utf-8") for n in ROUND_FILES}
        self.done = self.errors = 0

    async def call(self, session: aiohttp.ClientSession, kind: str, text: str) -> tuple[str, dict[str, Any]]:
        """One chat completion: the answer's text and usage."""
        system, _ = self.fixed[kind]
        messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        body = orjson.dumps({"model": "m", "messages": messages, "temperature": 0.7})
        async with session.post(self.url, data=body, headers=self.headers) as resp:
            data = orjson.loads(await resp.read())
        return data["choices"][0]["message"]["content"], data["usage"]

    async def sample(self, session: aiohttp.ClientSession, line: bytes) -> None:
        """Evolve and judge one seed; write its four lines."""
        seed = orjson.loads(line)
        seed_id = str(seed.get("hash_id") or seed["id"])
        items = seed.get("conversations_v0") or seed.get("qa") or []
        caption = caption_text(seed.get("caption"))
        boxes = seed.get("det") or []
        operator = OPERATORS[hashlib.blake2b(f"{seed_id}:1".encode(), digest_size=8).digest()[0] % 3]
        given = orjson.dumps([{k: it.get(k) for k in CORE_FIELDS} for it in items], option=orjson.OPT_INDENT_2)
        box_line = "%s: [%.3f, %.3f, %.3f, %.3f]"  # as evolve writes boxes
        locations = "\n".join(box_line % (b["label"], *b["bbox"]) for b in boxes)
        n = len(items)
        text = (
            f"{self.fixed['evolve'][1]}### Image Description\n{caption}\n\n### Object Locations\n{locations}\n\n"
            f"### Given Q&A&S\n```json\n{given.decode()}\n```\n\nRewrite the {n} given items above. Answer with only "
            f"a JSON array of {n} rewritten Q&A&S objects, one per given item and in the same order, each with all "
            "seven fields, inside a ```json fence. Write nothing before or after the fence.\n"
        )
        answer, usage = await self.call(session, "evolve", text)
        rewrites = [c for raw in fenced_array(answer) if (c := checked_item(raw)) is not None]
        record = {"id": f"{seed_id}@r1", "image": seed.get("image"), "caption": caption, "objects": boxes,
                  "qa": rewrites, "round": 1, "operator": operator, "parent_id": seed_id,
                  "seed_id": seed_id}  # fmt: skip
        evolved = orjson.dumps(record)
        shown = orjson.dumps(
            [{"question": r["question"], "answer": r["answer"], "format": r["format"]} for r in rewrites],
            option=orjson.OPT_INDENT_2,
        )
        text = (
            f"{self.fixed['judge'][1]}### Original Q&A&S\n```json\n{given.decode()}\n```\n\n### Rewritten Q&A&S\n"
            f"```json\n{shown.decode()}\n```\n\nJudge the {len(rewrites)} rewritten items above. Answer with only a "
            f"JSON list of exactly {len(rewrites)} objects, one per rewritten item and in the same order, each of the "
            'form {"improved": "yes" or "no", "score": an integer from 1 to 10, "reason": "one short sentence"}, '
            "inside a ```json fence. Write nothing before or after the fence.\n"
        )
        answer, judge_usage = await self.call(session, "judge", text)
        for item, verdict in zip(rewrites, fenced_array(answer), strict=False):
            if isinstance(verdict, dict):
                item["improved"] = str(verdict.get("improved")).lower() in ("yes", "true")
                item["score"] = float(verdict.get("score") or 0)
                item["reason"] = str(verdict.get("reason") or "")
        kept = [item for item in rewrites if item.get("improved") and item.get("score", 0) >= 6]
        tokens = usage["prompt_tokens"] + judge_usage["prompt_tokens"]
        outcome = {"seed_id": seed_id, "round": 1, "operator": operator, "kept": bool(kept), "prompt_tokens": tokens}
        lines = (evolved, orjson.dumps(record), orjson.dumps({**record, "qa": kept}), orjson.dumps(outcome))
        for name, data in zip(ROUND_FILES, lines, strict=True):
            self.files[name].write(data.decode() + "\n")
        for fp in self.files.values():
            fp.flush()

    async def worker(self, session: aiohttp.ClientSession, lines: Any) -> None:
        """Take seed lines until none are left."""
        for line in lines:
            try:
                await self.sample(session, line)
                self.done += 1
            except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError, IndexError):
                self.errors += 1


async def main_async(args: argparse.Namespace) -> dict[str, float | int]:
    """Run the round with ``args.concurrency`` workers sharing one session."""
    lean = LeanRound(args)
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    with open(args.seeds, "rb", buffering=1 << 20) as seeds:
        lines = iter(seeds)
        async with aiohttp.ClientSession(connector=connector) as session:
            start = time.perf_counter()
            await asyncio.gather(*(lean.worker(session, lines) for _ in range(args.concurrency)))
            elapsed = time.perf_counter() - start
    for fp in lean.files.values():
        fp.close()
    return {"samples": lean.done, "errors": lean.errors, "elapsed": elapsed}


def main() -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True)
    p.add_argument("--seeds", required=True)
    p.add_argument("--prompts", required=True, help="a prompts file with real evolve and judge prompts")
    p.add_argument("--out", required=True, help="folder for the four round files")
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(result))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
