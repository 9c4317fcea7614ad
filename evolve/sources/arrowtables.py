"""Parquet files and Arrow IPC files (the `data-*.arrow` shards of a Hugging Face `save_to_disk` folder), read
row by row in bounded memory with pyarrow: batch by batch (`iter_batches`, or a memory-mapped IPC stream), each
batch cut to about `BATCH_BYTES` before it becomes Python rows; the whole table is never loaded. Binary columns
that play no part (other images, embeddings) are not read at all. Each row comes with its place, `file:row N`
(N from 1).

Imported only when such a file is read: pyarrow costs ~35 MB of memory in every process that loads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from evolve.errors import InputError
from evolve.records import Rejected
from evolve.sources.tables import Keep, Row

BATCH_BYTES = 16 * 1024 * 1024
"""About how many bytes of a table become Python rows at a time."""
MAX_BATCH_ROWS = 1024


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
