"""The baseline client: a bare aiohttp loop of chat-completion calls, no prompt work (bodies are pre-serialized).

    python bench/rawloop.py --base-url URL --prompts FILE --requests N --concurrency C

Prints one JSON line: ok, errors, elapsed (s), cpu (s, this process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import aiohttp


def load_bodies(path: str, model: str) -> list[bytes]:
    """Request bodies from a JSONL file of {"system": ..., "text": user message}."""
    bodies = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            messages = [{"role": "user", "content": item["text"]}]
            if item.get("system"):
                messages.insert(0, {"role": "system", "content": item["system"]})
            body = {"model": model, "messages": messages, "temperature": 0.7}
            bodies.append(json.dumps(body).encode())
    return bodies


async def main_async(args: argparse.Namespace) -> dict[str, float | int]:
    """Send ``args.requests`` requests with ``args.concurrency`` workers sharing one session."""
    bodies = load_bodies(args.prompts, args.model)
    url = args.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    counter = iter(range(args.requests))
    ok = errors = 0
    deadline = time.monotonic() + args.max_seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok, errors
        for i in counter:
            if time.monotonic() > deadline:
                return
            try:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as resp:
                    data = await resp.read()
                    if resp.status == 200 and json.loads(data)["choices"][0]["message"]["content"]:
                        ok += 1
                    else:
                        errors += 1
            except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
                errors += 1

    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - start
    return {"ok": ok, "errors": errors, "elapsed": elapsed}


def main() -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-url", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--model", default="m")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--max-seconds", type=float, default=300.0)
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu"] = usage.ru_utime + usage.ru_stime
    json.dump(result, sys.stdout)
    print()
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
