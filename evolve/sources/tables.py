"""Tables read row by row in bounded memory: parquet files, Arrow IPC files (the `data-*.arrow` shards of a
Hugging Face `save_to_disk` folder) and CSV/TSV manifests.

Parquet and Arrow are read batch by batch with pyarrow (`iter_batches`, or a memory-mapped IPC stream),
each batch cut to about `BATCH_BYTES` before it becomes Python rows; the whole table is never loaded.
Binary columns that play no part (other images, embeddings) are not read at all. Each row comes with its
place, `file:row N` (N from 1) for parquet and Arrow, `file:LINE` for CSV.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from evolve.errors import InputError
from evolve.records import MAX_RECORD_BYTES, Rejected

BATCH_BYTES = 16 * 1024 * 1024
"""About how many bytes of a table become Python rows at a time."""
MAX_BATCH_ROWS = 1024
DATASET_STATE = "state.json"
DATASET_DICT = "dataset_dict.json"
_SURROGATE = re.compile("[\udc80-\udcff]")

Row = tuple[str, dict[str, Any]]
Keep = Callable[[str], bool]
"""Whether a column is read: the columns that play a part, and any that is not binary."""


def is_binary_type(kind: pa.DataType) -> bool:
    """True for binary columns and structs or lists holding binary (image structs, raw bytes)."""
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return True
    if pa.types.is_struct(kind):
        return any(is_binary_type(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return is_binary_type(kind.value_type)
    return False


def _rows_per_batch(nbytes: int, rows: int) -> int:
    per_row = max(1, nbytes // max(1, rows))
    return max(1, min(MAX_BATCH_ROWS, BATCH_BYTES // per_row))


def _numbered(path: Path, rows: Iterator[dict[str, Any]], what: str) -> Iterator[Row | Rejected]:
    """(`file:row N`, row) per row, and one Rejected where the file stops being readable."""
    number = 0
    try:
        for row in rows:
            number += 1
            yield f"{path}:row {number}", row
    except (pa.ArrowException, OSError) as exc:
        yield Rejected(f"{path}:row {number + 1}", f"unreadable {what} data from here on: {exc}")


def _batch_rows(batch: pa.RecordBatch) -> Iterator[dict[str, Any]]:
    """The rows of a record batch as dicts, converted a slice of about BATCH_BYTES at a time."""
    step = _rows_per_batch(batch.nbytes, batch.num_rows)
    for start in range(0, batch.num_rows, step):
        yield from batch.slice(start, step).to_pylist()


class ParquetTable:
    """A parquet file, read in batches of about BATCH_BYTES (one row group at most is decoded at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering would keep every row group read
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path}: not a readable parquet file ({exc})") from exc
        self.schema = self._file.schema_arrow
        self.names: list[str] = list(self.schema.names)

    def num_rows(self) -> int:
        """Rows in the file, from its footer."""
        try:
            return int(self._file.metadata.num_rows)
        finally:
            self._file.close()

    def rows(self, keep: Keep) -> Iterator[Row | Rejected]:
        """(where, row) per row, or one Rejected where the file stops being readable."""
        columns = [f.name for f in self.schema if keep(f.name) or not is_binary_type(f.type)]
        meta = self._file.metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))

        def rows() -> Iterator[dict[str, Any]]:
            for batch in self._file.iter_batches(batch_size=_rows_per_batch(size, meta.num_rows), columns=columns):
                yield from batch.to_pylist()

        try:
            yield from _numbered(self.path, rows(), "parquet")
        finally:
            self._file.close()


class ArrowTable:
    """An Arrow IPC file (stream or file format, as `datasets` writes), memory-mapped and read per batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._source = pa.memory_map(str(path))
            self._reader: pa.ipc.RecordBatchStreamReader | pa.ipc.RecordBatchFileReader
            try:
                self._reader = pa.ipc.open_stream(self._source)
            except pa.ArrowInvalid:
                self._source.seek(0)
                self._reader = pa.ipc.open_file(self._source)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path}: not a readable Arrow file ({exc})") from exc
        self.schema = self._reader.schema
        self.names: list[str] = list(self.schema.names)

    def _batches(self) -> Iterator[pa.RecordBatch]:
        if isinstance(self._reader, pa.ipc.RecordBatchFileReader):
            for index in range(self._reader.num_record_batches):
                yield self._reader.get_batch(index)
        else:
            yield from self._reader

    def num_rows(self) -> int:
        """Rows in the file (reads only the batch headers of the memory-mapped file)."""
        try:
            return sum(batch.num_rows for batch in self._batches())
        finally:
            self._source.close()

    def rows(self, keep: Keep) -> Iterator[Row | Rejected]:
        """(where, row) per row, or one Rejected where the file stops being readable."""
        columns = [f.name for f in self.schema if keep(f.name) or not is_binary_type(f.type)]
        rows = (row for batch in self._batches() for row in _batch_rows(batch.select(columns)))
        try:
            yield from _numbered(self.path, rows, "Arrow")
        finally:
            self._source.close()


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
