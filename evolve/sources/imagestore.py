"""Images that arrive as bytes (Hugging Face `Image` structs, binary columns) written once to disk by content.

A file is named by the SHA-256 of its bytes with its format's extension, under a two-character fan-out
folder (`ab/abcd….png`), so the same picture in many rows, files or runs is written once, and a file that
exists is complete: it is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from evolve.errors import InputError

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
"""File extension per PIL format name (other formats take PIL's first registered extension)."""
UNKNOWN_EXTENSION = ".bin"


SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, ".png"), (b"\xff\xd8\xff", 0, ".jpg"), (b"GIF8", 0, ".gif"),
    (b"WEBP", 8, ".webp"), (b"BM", 0, ".bmp"), (b"II*\x00", 0, ".tif"), (b"MM\x00*", 0, ".tif"),
)  # fmt: skip
"""(magic bytes, offset, extension) of the common formats, checked before asking PIL."""


def image_extension(data: bytes, name_hint: str | None = None) -> str:
    """The extension of the image format `data` is in (read from its header), else the hint's, else `.bin`."""
    for magic, offset, extension in SIGNATURES:
        if data.startswith(magic, offset):
            return extension
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                found = img.format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        found = None
    if found:
        if found in EXTENSIONS:
            return EXTENSIONS[found]
        registered = [ext for ext, fmt in Image.registered_extensions().items() if fmt == found]
        if registered:
            return registered[0]
    suffix = Path(name_hint).suffix.lower() if name_hint else ""
    return suffix if 1 < len(suffix) <= 6 and suffix[1:].isalnum() else UNKNOWN_EXTENSION


class ImageStore:
    """A content-addressed folder of image files; `put` returns the absolute path of the stored copy.

    With `write=False` nothing is written and `put` only names the path (for readers that never open images:
    stats, `validate --no-images`).
    """

    def __init__(self, root: Path, *, write: bool = True) -> None:
        self.root = Path(os.path.abspath(root))
        self.write = write
        self.written = 0
        """How many files this store object wrote (the rest were there already)."""
        self._folders: set[Path] = set()

    def path_for(self, data: bytes, name_hint: str | None = None) -> Path:
        """Where `data` is (or would be) stored."""
        digest = hashlib.sha256(data).hexdigest()
        return self.root / digest[:2] / f"{digest}{image_extension(data, name_hint)}"

    def put(self, data: bytes, name_hint: str | None = None) -> Path:
        """Store `data` unless a file of that content is there already; returns its path."""
        target = self.path_for(data, name_hint)
        if not self.write or target.exists():
            return target
        try:
            if target.parent not in self._folders:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._folders.add(target.parent)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
            try:
                with os.fdopen(fd, "wb") as fp:
                    fp.write(data)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise InputError(f"cannot write images to {self.root}: {exc.strerror or exc}") from exc
        self.written += 1
        return target

    def holds(self, path: Path | str) -> bool:
        """True when `path` lies inside this store."""
        return Path(os.path.abspath(path)).is_relative_to(self.root)
