"""CSV/TSV manifests read row by row (each row placed by its first line, `file:LINE`), what every table reader
yields, and the layout of a Hugging Face `save_to_disk` folder. Parquet and Arrow files are read by
`evolve.sources.arrowtables`, imported only when one is read."""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from evolve.errors import InputError
from evolve.records import MAX_RECORD_BYTES, Rejected

DATASET_STATE = "state.json"
DATASET_DICT = "dataset_dict.json"
_SURROGATE = re.compile("[\udc80-\udcff]")

Row = tuple[str, dict[str, Any]]
Keep = Callable[[str], bool]
"""Whether a column is read: the columns that play a part, and any that is not binary."""


class CsvTable:
    """A CSV (or, by its suffix, TSV) manifest with a header line; rows are placed by their first line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        try:
            with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fp:
                header = next(csv.reader(fp, delimiter=self.delimiter), None)
        except OSError as exc:
            raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        except csv.Error as exc:
            raise InputError(f"{path}:1: unreadable CSV header ({exc})") from exc
        if not header or not any(name.strip() for name in header):
            raise InputError(f"{path}: empty file, no header line")
        self.names: list[str] = [name.strip() for name in header]

    def num_rows(self) -> int:
        """An upper bound of the rows: the lines after the header."""
        with self.path.open("rb") as fp:
            return max(0, sum(chunk.count(b"\n") for chunk in iter(lambda: fp.read(1 << 20), b"")) - 1)

    def rows(self, keep: Keep) -> Iterator[Row | Rejected]:
        """(where, row) per row, or a Rejected for a row that is not UTF-8 or that CSV cannot read."""
        csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, MAX_RECORD_BYTES)))
        with self.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fp:
            reader = csv.reader(fp, delimiter=self.delimiter)
            next(reader, None)
            while True:
                where = f"{self.path}:{reader.line_num + 1}"
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield Rejected(where, f"unreadable CSV from here on: {exc}")
                    return
                if not any(cell.strip() for cell in cells):
                    continue
                if any(_SURROGATE.search(cell) for cell in cells if not cell.isascii()):
                    yield Rejected(where, "not UTF-8 text")
                    continue
                if len(cells) > len(self.names):
                    yield Rejected(where, f"{len(cells)} cells but the header names {len(self.names)} columns")
                    continue
                yield (
                    where,
                    {name: (cell if cell != "" else None) for name, cell in zip(self.names, cells, strict=False)},
                )


def dataset_files(folder: Path) -> list[Path]:
    """The Arrow files of a `datasets` save_to_disk folder, in order (every split of a DatasetDict)."""
    if (folder / DATASET_DICT).is_file():
        splits = read_json_object(folder / DATASET_DICT).get("splits") or sorted(
            p.name for p in folder.iterdir() if (p / DATASET_STATE).is_file()
        )
        return [path for split in splits for path in dataset_files(folder / str(split))]
    state = folder / DATASET_STATE
    if state.is_file():
        names = [entry.get("filename") for entry in read_json_object(state).get("_data_files") or []]
        files = [folder / name for name in names if isinstance(name, str)]
    else:
        files = sorted(folder.glob("data-*.arrow"))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{folder}: datasets folder lists missing files: {', '.join(missing[:3])}")
    if not files:
        raise InputError(f"{folder}: datasets folder without data-*.arrow files")
    return files


def is_dataset_folder(folder: Path) -> bool:
    """True for a `datasets` save_to_disk folder (a Dataset or a DatasetDict)."""
    return (folder / DATASET_DICT).is_file() or (folder / DATASET_STATE).is_file()


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding one object (datasets' state.json, LLaMA-Factory's dataset_info.json); InputError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data
