"""Peer: distilabel 1.5.3 ``EvolInstruct`` (one evolution per instruction) with ``OpenAILLM`` on base_url.

Concurrency is the task's ``input_batch_size`` (distilabel sends one batch's requests at once). Run with the
distilabel venv's python inside a loopback-only network namespace. Prints one JSON line: ok, failed, elapsed.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    os.environ.setdefault("DISTILABEL_CACHE_DIR", os.path.join(args.workdir, "distilabel-cache"))

    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import EvolInstruct

    with open(args.prompts, encoding="utf-8") as f:
        prompts = [json.loads(line)["text"] for line in f]
    data = [{"instruction": prompts[i % len(prompts)]} for i in range(args.requests)]

    with Pipeline(name="bench-evol-instruct", cache_dir=os.path.join(args.workdir, "distilabel-cache")) as pipeline:
        load = LoadDataFromDicts(data=data, batch_size=args.concurrency)
        evol = EvolInstruct(
            llm=OpenAILLM(model="gpt-4o-mini", base_url=args.base_url, api_key="x", max_retries=1, timeout=120),
            num_evolutions=1,
            input_batch_size=args.concurrency,
        )
        load >> evol
    start = time.perf_counter()
    distiset = pipeline.run(use_cache=False)
    elapsed = time.perf_counter() - start
    ok = sum(len(split) for config in distiset.values() for split in config.values())
    print(json.dumps({"ok": ok, "failed": args.requests - ok, "elapsed": elapsed}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
