"""`evolve validate`: read a seed input of any kind and report shapes, bad records and image problems."""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from evolve.errors import ImageError, ImageMissingError
from evolve.images import check_image, is_remote
from evolve.records import Format, Rejected
from evolve.sources import ColumnMap, ImageStore, image_location, read_seed_files, source_kind

MAX_IMAGE_PROBLEMS_KEPT = 1000


@dataclass
class ValidationReport:
    """Counts of one seed input (a file or a datasets folder)."""

    path: Path
    kind: str = "json"
    loaded: int = 0
    qa_items: int = 0
    formats: Counter[str] = field(default_factory=Counter)
    rejected: list[Rejected] = field(default_factory=list)
    images_checked: int = 0
    images_missing: int = 0
    images_bad: int = 0
    images_remote: int = 0
    images_embedded: int = 0
    no_image: int = 0
    image_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No rejected record and no image problem."""
        return not self.rejected and not self.images_missing and not self.images_bad


def validate_file(
    path: Path,
    *,
    image_root: Path | None = None,
    check_images: bool = True,
    fmt: Format | None = None,
    on_problem: Callable[[str], None] | None = None,
    image_store: ImageStore | None = None,
    columns: ColumnMap | str | None = None,
) -> ValidationReport:
    """Read every record of `path`; count shapes, rejections and missing or undecodable images.

    Images that arrive as bytes are written to `image_store` and checked there like image files.
    """
    report = ValidationReport(path, kind=source_kind(path))
    for item in read_seed_files([path], fmt=fmt, image_store=image_store, columns=columns):
        if isinstance(item, Rejected):
            report.rejected.append(item)
            if on_problem:
                on_problem(f"{item.where}: {item.reason}")
            continue
        report.loaded += 1
        report.qa_items += len(item.sample.qa)
        report.formats[item.format] += 1
        report.images_embedded += item.stored_image
        if not check_images:
            continue
        if not item.sample.image:
            report.no_image += 1
            continue
        if is_remote(item.sample.image):
            report.images_remote += 1
            continue
        report.images_checked += 1
        try:
            check_image(Path(image_location(item, image_root)))
        except ImageError as exc:
            if isinstance(exc, ImageMissingError):
                report.images_missing += 1
            else:
                report.images_bad += 1
            if len(report.image_problems) < MAX_IMAGE_PROBLEMS_KEPT:
                embedded = " (image bytes embedded in the row)" if item.stored_image else ""
                report.image_problems.append(f"{item.where}: {exc}{embedded}")
    return report


def validate_seeds(
    paths: list[Path],
    *,
    image_root: Path | None = None,
    check_images: bool = True,
    fmt: Format | None = None,
    on_problem: Callable[[str], None] | None = None,
    image_cache: Path | None = None,
    columns: str | None = None,
) -> Iterator[ValidationReport]:
    """A report per seed input; embedded images go to `image_cache` (kept, for a later run to reuse) or to a
    temporary folder removed at the end."""
    mapping = ColumnMap.parse(columns)
    with contextlib.ExitStack() as stack:
        folder = image_cache or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evolve-validate-")))
        store = ImageStore(folder, write=check_images)
        for path in paths:
            yield validate_file(
                path, image_root=image_root, check_images=check_images, fmt=fmt, on_problem=on_problem,
                image_store=store, columns=mapping,
            )  # fmt: skip
