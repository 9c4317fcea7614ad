"""Peer: bespokelabs-curator 0.1.31 online mode (OpenAI backend with base_url) over the bench prompts.

Run with the curator venv's python, inside a loopback-only network namespace, with TELEMETRY_ENABLED=false and
bench/peers/shim on PYTHONPATH (tiktoken stand-in). Prints one JSON line: ok, failed, elapsed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    os.environ.setdefault("CURATOR_CACHE_DIR", os.path.join(args.workdir, "curator-cache"))

    from bespokelabs import curator

    with open(args.prompts, encoding="utf-8") as f:
        prompts = [json.loads(line) for line in f]
    rows = [dict(prompts[i % len(prompts)], row=i) for i in range(args.requests)]

    class Bench(curator.LLM):
        def prompt(self, row: dict) -> list[dict]:
            return [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["text"]}]

        def parse(self, row: dict, response: str) -> dict:
            return {"row": row["row"], "chars": len(response)}

    llm = Bench(
        model_name="gpt-4o-mini",
        backend="openai",
        backend_params={
            "base_url": args.base_url,
            "api_key": "x",
            "max_concurrent_requests": args.concurrency,
            "max_requests_per_minute": 100_000_000,
            "max_tokens_per_minute": 100_000_000_000,
            "max_retries": 1,
            "require_all_responses": False,
            "request_timeout": 120,
        },
    )
    start = time.perf_counter()
    result = llm(rows)
    elapsed = time.perf_counter() - start
    dataset = getattr(result, "dataset", result)
    ok = len(dataset)
    print(json.dumps({"ok": ok, "failed": args.requests - ok, "elapsed": elapsed}))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
