"""Where seeds come from: JSON/JSONL files, parquet shards, Hugging Face `datasets` folders and folders of
images with a CSV or JSONL manifest, all read through `read_seed_files` as Loaded/Rejected items.

    reader.py      the entry point: what an input is, folders and globs, ids unique across inputs
    tables.py      CSV manifests read row by row; the layout of datasets folders
    arrowtables.py parquet and Arrow IPC read row by row in bounded memory (pyarrow, imported when needed)
    columns.py     which column plays which part (`--columns`), rows into samples
    imagestore.py  images that arrive as bytes, written once by content
"""

from evolve.sources.columns import ColumnMap
from evolve.sources.imagestore import ImageStore
from evolve.sources.reader import (
    count_records,
    expand_seed_paths,
    image_location,
    read_run_seeds,
    read_seed_files,
    read_source,
    source_kind,
)

__all__ = [
    "ColumnMap",
    "ImageStore",
    "count_records",
    "expand_seed_paths",
    "image_location",
    "read_run_seeds",
    "read_seed_files",
    "read_source",
    "source_kind",
]
