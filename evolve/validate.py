"""`evolve validate`: load a seed file and report formats, bad lines and image problems."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evolve.errors import ImageError, ImageMissingError
from evolve.images import check_image, is_remote, resolve_image
from evolve.records import Format, Rejected, read_samples


@dataclass
class ValidationReport:
    """Counts of one seed file."""

    path: Path
    loaded: int = 0
    qa_items: int = 0
    formats: Counter[str] = field(default_factory=Counter)
    rejected: list[Rejected] = field(default_factory=list)
    images_checked: int = 0
    images_missing: int = 0
    images_bad: int = 0
    images_remote: int = 0
    no_image: int = 0
    image_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No rejected line and no image problem."""
        return not self.rejected and not self.images_missing and not self.images_bad


def validate_file(
    path: Path,
    *,
    image_root: Path | None = None,
    check_images: bool = True,
    fmt: Format | None = None,
    on_problem: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Read every record of `path`; count formats, rejections and missing or unreadable images."""
    report = ValidationReport(path)
    for item in read_samples(path, fmt=fmt):
        if isinstance(item, Rejected):
            report.rejected.append(item)
            if on_problem:
                on_problem(f"{item.where}: {item.reason}")
            continue
        report.loaded += 1
        report.qa_items += len(item.sample.qa)
        report.formats[item.format] += 1
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
            image = resolve_image(item.sample.image, image_root, path.parent)
            check_image(Path(image))
        except ImageError as exc:
            if isinstance(exc, ImageMissingError):
                report.images_missing += 1
            else:
                report.images_bad += 1
            if len(report.image_problems) < 1000:
                report.image_problems.append(f"{item.where}: {exc}")
    return report
