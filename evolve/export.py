"""`evolve export`: canonical records → LLaVA, ShareGPT (LLaMA-Factory) or canonical JSONL."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from evolve.errors import UsageError
from evolve.records import EXPORTERS, Sample, load_samples
from evolve.runfolder import RunFolder


def _source_file(source: Path) -> Path:
    if source.is_dir():
        final = RunFolder(source).final
        if not final.exists():
            raise UsageError(f"{source}: no final.jsonl (is it a finished run folder?)")
        return final
    if not source.exists():
        raise UsageError(f"{source}: no such file or folder")
    return source


def _filtered(samples: Iterator[Sample], min_score: float | None) -> Iterator[Sample]:
    for sample in samples:
        if min_score is not None:
            items = [i for i in sample.qa if i.score is not None and i.score >= min_score]
            if not items:
                continue
            sample = sample.model_copy(update={"qa": items})
        yield sample


def export_records(
    source: Path, to: str, out_file: Path | None, *, min_score: float | None = None, json_array: bool = False
) -> int:
    """Write every record of `source` converted with the `to` exporter; returns how many."""
    if to not in EXPORTERS:
        raise UsageError(f"--to: expected one of {', '.join(EXPORTERS)}")
    convert = EXPORTERS[to]
    samples = _filtered(load_samples(_source_file(source)), min_score)
    fp: IO[str] = sys.stdout if out_file is None else out_file.open("w", encoding="utf-8")
    count = 0
    try:
        if json_array:
            fp.write("[\n")
        for sample in samples:
            text = json.dumps(convert(sample), ensure_ascii=False)
            fp.write((",\n" if json_array and count else "") + text + ("" if json_array else "\n"))
            count += 1
        if json_array:
            fp.write("\n]\n")
    finally:
        if out_file is not None:
            fp.close()
    return count
