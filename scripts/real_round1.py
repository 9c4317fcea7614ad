"""Turn the 50 real gpt-4o-mini round-1 answers of the MMEvol demo into an evolved file `evolve check` reads.

    python scripts/real_round1.py ../shared/data --out real_round1.jsonl
    evolve check real_round1.jsonl --parents ../shared/data/mmevol_demo_seeds.jsonl

Each answer (`hash_id`, official `operator` tag, raw `evolution_response`) becomes the child of its seed (the
seed's id after reading is its `hash_id`): items parsed with evolve.parse.parse_qas, id `<seed>@r1`,
`parent_id`, our operator name and round 1. Answers that cannot be read are reported and left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evolve.errors import AnswerParseError
from evolve.operators import OFFICIAL_TAGS
from evolve.parse import parse_qas
from evolve.records import Loaded, Sample, read_samples, write_samples

RESPONSES = "gpt4o_mini_round1_responses.jsonl"
SEEDS = "mmevol_demo_seeds.jsonl"


def round_one_children(data: Path) -> tuple[list[Sample], list[str]]:
    """The children of the real round-1 answers in `data`, and a line per answer that could not be used."""
    seeds = {item.sample.id: item.sample for item in read_samples(data / SEEDS) if isinstance(item, Loaded)}
    children: list[Sample] = []
    problems: list[str] = []
    with (data / RESPONSES).open(encoding="utf-8") as fp:
        for lineno, line in enumerate(fp, start=1):
            record = json.loads(line)
            seed = seeds.get(record["hash_id"])
            if seed is None:
                problems.append(f"{RESPONSES}:{lineno}: no seed {record['hash_id']!r}")
                continue
            try:
                items = parse_qas(record["evolution_response"])
            except AnswerParseError as exc:
                problems.append(f"{RESPONSES}:{lineno}: {exc.reason}")
                continue
            update = {
                "id": f"{seed.seed_id}@r1",
                "qa": items,
                "round": 1,
                "operator": OFFICIAL_TAGS[record["operator"]],
                "parent_id": seed.id,
            }
            children.append(seed.model_copy(update=update))
    return children, problems


def main(argv: list[str] | None = None) -> int:
    """Write the evolved file; exit 1 when the data folder lacks the two files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help=f"folder holding {RESPONSES} and {SEEDS}")
    parser.add_argument("--out", type=Path, required=True, help="evolved JSONL file to write")
    args = parser.parse_args(argv)
    if not (args.data / RESPONSES).is_file() or not (args.data / SEEDS).is_file():
        print(f"{args.data}: needs {RESPONSES} and {SEEDS}", file=sys.stderr)
        return 1
    children, problems = round_one_children(args.data)
    for line in problems:
        print(line, file=sys.stderr)
    count = write_samples(args.out, children)
    items = sum(len(child.qa) for child in children)
    print(f"{count} evolved samples ({items} items) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
