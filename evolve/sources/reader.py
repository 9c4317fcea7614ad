"""One entry point for reading seeds of every kind, with ids unique across all the seed inputs of a run."""

from __future__ import annotations

import glob
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from evolve.errors import InputError, RecordError, UsageError
from evolve.idset import CompactIdSet
from evolve.images import resolve_image
from evolve.records import (
    MAX_RECORD_BYTES,
    Format,
    Loaded,
    Rejected,
    iter_raw,
    known_format,
    parse_record,
    unique_id,
)
from evolve.sources.columns import ColumnMap, sample_from_row
from evolve.sources.imagestore import ImageStore
from evolve.sources.tables import CsvTable, dataset_files, is_dataset_folder

if TYPE_CHECKING:
    from evolve.sources.arrowtables import ArrowTable, ParquetTable

Kind = Literal["json", "parquet", "arrow", "csv", "dataset"]
SUFFIXES: dict[str, Kind] = {
    ".jsonl": "json", ".json": "json", ".ndjson": "json",
    ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".tsv": "csv",
}  # fmt: skip
NOT_SEEDS = frozenset({"dataset_info.json", "state.json", "dataset_dict.json"})
"""JSON files of a folder that describe data rather than hold it (datasets, LLaMA-Factory)."""
_MAGIC: dict[bytes, Kind] = {b"PAR1": "parquet", b"ARRO": "arrow", b"\xff\xff\xff\xff": "arrow"}


def source_kind(path: Path) -> Kind:
    """What a seed input is: a datasets folder, or a file by its suffix (or, failing that, its first bytes)."""
    if path.is_dir():
        if is_dataset_folder(path):
            return "dataset"
        raise InputError(f"{path}: a folder, but not a datasets save_to_disk folder (no state.json)")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        return kind
    try:
        with path.open("rb") as fp:
            head = fp.read(4)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return _MAGIC.get(head, "json")


def expand_seed_paths(paths: Sequence[Path]) -> list[Path]:
    """The seed inputs named: files, glob patterns, datasets folders, and the seed files inside other folders
    (JSON/JSONL, parquet, arrow and CSV/TSV manifests, sorted by name); UsageError when one names nothing."""
    found: list[Path] = []
    for path in paths:
        if not path.exists() and any(c in str(path) for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file() or is_dataset_folder(Path(p)))
            if not matches:
                raise UsageError(f"{path}: no file matches this pattern")
            found.extend(matches)
        elif path.is_dir() and is_dataset_folder(path):
            found.append(path)
        elif path.is_dir():
            inside = sorted(
                p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.name not in NOT_SEEDS and p.is_file()
            )
            if not inside:
                kinds = ", ".join(sorted(SUFFIXES))
                raise UsageError(f"{path}: no seed file in this folder ({kinds}) and not a datasets folder")
            found.extend(inside)
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    return found


def read_seed_files(
    paths: Sequence[Path],
    *,
    fmt: Format | None = None,
    image_store: ImageStore | None = None,
    columns: ColumnMap | str | None = None,
    max_bytes: int | None = MAX_RECORD_BYTES,
) -> Iterator[Loaded | Rejected]:
    """Every record of the seed inputs `paths`, in order, as Loaded or Rejected; ids unique across all of them.

    The same inputs in the same order always give the same ids (a repeated id becomes `id~2`, `id~3` ...),
    so a resume, a shard or a later round sees the ids a clean run saw. Images that arrive as bytes are
    written to `image_store`; a file that cannot be opened at all raises InputError.
    """
    mapping = columns if isinstance(columns, ColumnMap) else ColumnMap.parse(columns)
    seen = CompactIdSet()
    for index, path in enumerate(paths):
        for item in read_source(path, fmt=fmt, image_store=image_store, columns=mapping, max_bytes=max_bytes):
            if isinstance(item, Rejected):
                yield Rejected(item.where, item.reason, source=path, index=index)
                continue
            unique_id(item.sample, seen)
            yield Loaded(item.sample, item.format, item.where, item.base, item.stored_image, path, index)


def read_source(
    path: Path,
    *,
    fmt: Format | None = None,
    image_store: ImageStore | None = None,
    columns: ColumnMap | None = None,
    max_bytes: int | None = MAX_RECORD_BYTES,
) -> Iterator[Loaded | Rejected]:
    """The records of one seed input (ids as they are: `read_seed_files` makes them unique)."""
    mapping = columns or ColumnMap()
    kind = source_kind(path)
    if kind == "json":
        yield from _json_records(path, fmt, image_store, mapping, max_bytes)
        return
    files = dataset_files(path) if kind == "dataset" else [path]
    for file in files:
        table = CsvTable(file) if kind == "csv" else _arrow_table(file, kind)
        parts = mapping.resolve(table.names, str(file))
        used = parts.used()
        for row in table.rows(used.__contains__):
            if isinstance(row, Rejected):
                yield row
                continue
            where, values = row
            try:
                read = sample_from_row(values, parts, image_store, where, fmt)
            except RecordError as exc:
                yield Rejected(exc.where, exc.reason)
                continue
            yield Loaded(read.sample, read.shape, where, file.parent, read.stored_image)


def _json_records(
    path: Path, fmt: Format | None, store: ImageStore | None, mapping: ColumnMap, max_bytes: int | None
) -> Iterator[Loaded | Rejected]:
    """Records of a JSON/JSONL file: known formats as they are, other objects (manifests) by their columns."""
    for item in iter_raw(path, max_bytes):
        if isinstance(item, Rejected):
            yield item
            continue
        where, raw = item
        try:
            if not mapping.named and (fmt is not None or not isinstance(raw, dict) or known_format(raw) is not None):
                sample, found = parse_record(raw, where, fmt)
                yield Loaded(sample, found, where, path.parent)
                continue
            read = sample_from_row(raw, mapping.resolve(raw.keys(), where), store, where, fmt)
        except RecordError as exc:
            yield Rejected(exc.where, exc.reason)
            continue
        yield Loaded(read.sample, read.shape, where, path.parent, read.stored_image)


def read_run_seeds(
    paths: Sequence[Path], config: Mapping[str, Any], images: Path, *, write: bool = True
) -> Iterator[Loaded | Rejected]:
    """A run's seeds read again as the run read them: its --format and --columns from run.json's `config`, and
    images that arrive as bytes in its --image-cache, else in `images` (the run folder's, or any folder)."""
    root = Path(config["image_cache"]) if config.get("image_cache") else images
    return read_seed_files(
        paths, fmt=config.get("format"), image_store=ImageStore(root, write=write), columns=config.get("columns")
    )


def _arrow_table(path: Path, kind: str) -> ParquetTable | ArrowTable:
    """A parquet or Arrow file's reader (pyarrow is imported here, the first time one is read)."""
    from evolve.sources.arrowtables import ArrowTable, ParquetTable

    return ParquetTable(path) if kind == "parquet" else ArrowTable(path)


def count_records(paths: Sequence[Path]) -> int:
    """About how many records the seed inputs hold (for progress bars): lines of text files, rows of tables."""
    total = 0
    for path in paths:
        kind = source_kind(path)
        if kind in ("parquet", "arrow", "dataset"):
            total += sum(
                _arrow_table(file, kind).num_rows() for file in (dataset_files(path) if kind == "dataset" else [path])
            )
        else:
            with path.open("rb") as fp:
                total += sum(chunk.count(b"\n") for chunk in iter(lambda: fp.read(1 << 20), b""))
    return total


def image_location(item: Loaded, image_root: Path | None) -> Path | str:
    """Where a loaded seed's image is: the stored copy, a URL, or its path resolved against --image-root or
    the seed file's folder (raises ImageError for an empty path or one escaping --image-root)."""
    ref = item.sample.image
    if ref is None:
        raise InputError(f"{item.where}: no image")
    if item.stored_image:
        return Path(ref)
    return resolve_image(ref, image_root, item.base or Path("."))
