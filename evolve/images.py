"""Images: resolve a record's image reference, check the file, and encode it once as a JPEG data URL.

Remote `http(s)://` and `data:` URLs pass through untouched. Local files are resized to a longest side
(default 512 px, as in the paper), converted to RGB and sent as base64 JPEG data URLs. Encodings are cached
by the SHA-256 of the file bytes, so an image shared by many samples, or seen again in a later round, is
encoded once per run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from evolve.errors import ImageError, ImageMissingError

MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""Largest image file accepted (bytes)."""
MAX_PIXELS = 40_000_000
"""Largest image accepted (width × height): a small file can hold a huge picture, and decoding one costs
4 bytes a pixel. Checked from the header, before anything is decoded."""
DECODES_AT_ONCE = 2
"""Images decoded at the same time (each in a worker thread, never on the event loop)."""
_decoding = threading.BoundedSemaphore(DECODES_AT_ONCE)
REMOTE_PREFIXES = ("http://", "https://", "data:")


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """An image ready for a request: `url` goes into the message, `key` into the cache key."""

    url: str
    key: str


def is_remote(ref: str) -> bool:
    """True for http(s) and data: URLs, which are sent as they are."""
    return ref[:8].lower().startswith(REMOTE_PREFIXES)


def remote_image(ref: str) -> EncodedImage:
    """An `EncodedImage` for a URL; a data: URL is keyed by its hash, never by its base64 body."""
    if ref[:5].lower() == "data:":
        return EncodedImage(url=ref, key="sha256:" + hashlib.sha256(ref.encode("utf-8")).hexdigest())
    return EncodedImage(url=ref, key="url:" + ref)


def resolve_image(ref: str, root: Path | None, base: Path) -> Path | str:
    """Where an image reference points: a URL (returned as is) or a local path.

    A relative path is joined to `root` (`--image-root`) if given, else to `base` (the seed file's folder).
    With a root, absolute paths and paths escaping it with `..` are refused.
    """
    if is_remote(ref):
        return ref
    if not ref.strip():
        raise ImageError("empty image path")
    path = Path(ref).expanduser()
    if root is None:
        return path if path.is_absolute() else base / path
    if path.is_absolute():
        raise ImageError(f"image path escapes --image-root: {ref} is absolute (root {root})")
    root_abs = Path(os.path.abspath(root))
    joined = Path(os.path.abspath(root_abs / path))
    if not joined.is_relative_to(root_abs):
        raise ImageError(f"image path escapes --image-root: {ref} (root {root})")
    # Symlinks inside the root may point out of it; follow them only when the target exists.
    if joined.exists():
        real = joined.resolve()
        if not real.is_relative_to(root_abs.resolve()):
            raise ImageError(f"image path escapes --image-root: {ref} links to {real} (root {root})")
    return joined


def check_image(path: Path, max_bytes: int = MAX_IMAGE_BYTES) -> None:
    """Raise `ImageError` unless `path` is a readable image file of at most `max_bytes` (cheap: no decode)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageMissingError(f"image not found: {path}") from None
    except OSError as exc:
        raise ImageError(f"image cannot be read: {path}: {exc.strerror or exc}") from exc
    if not path.is_file():
        raise ImageError(f"image is not a file: {path}")
    if st.st_size > max_bytes:
        raise ImageError(f"image too large: {path} is {st.st_size} bytes (limit {max_bytes})")
    if st.st_size == 0:
        raise ImageError(f"image is empty: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_pixels(img.size, path)
                img.verify()
                jpeg = img.format == "JPEG"
            if jpeg:  # verify() does not read JPEG data: decode a small draft to catch truncated files
                with Image.open(path) as img:
                    img.draft("RGB", (64, 64))
                    img.load()
    except UnidentifiedImageError:
        raise ImageError(f"not an image: {path}") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {path}: {exc}") from None
    except OSError as exc:
        raise ImageError(f"image cannot be read: {path}: {exc}") from exc
    except (SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt image: {path}: {exc}") from None


def check_pixels(size: tuple[int, int], path: Path | str) -> None:
    """Raise `ImageError` for a picture over the pixel budget (read from the header: nothing is decoded)."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"image too large: {path} is {width}×{height} px, over the {MAX_PIXELS / 1e6:g} MP limit; shrink it first"
        )


class ImageEncoder:
    """Encode local images as resized JPEG data URLs, each distinct file content once.

    `cache_bytes` bounds the memory the encodings take (least recently used are dropped first).
    Thread-safe: `aencode` runs big files in worker threads.
    """

    def __init__(self, max_side: int = 512, quality: int = 85, *, cache_bytes: int = 256 * 1024 * 1024) -> None:
        if max_side < 1:
            raise ValueError("max_side must be positive")
        self.max_side = max_side
        self.quality = quality
        self.cache_bytes = cache_bytes
        self.encoded = 0
        """How many images were actually decoded and encoded (cache misses)."""
        self._by_key: OrderedDict[str, EncodedImage] = OrderedDict()
        self._by_stat: dict[tuple[str, int, int], str] = {}
        self._size = 0
        self._lock = threading.Lock()

    def encode(self, path: Path | str) -> EncodedImage:
        """The data URL of `path` (a URL string is passed through); raises `ImageError`."""
        if isinstance(path, str):
            if is_remote(path):
                return remote_image(path)
            path = Path(path)
        stat_key = self._stat_key(path)
        with self._lock:
            key = self._by_stat.get(stat_key) if stat_key else None
            hit = self._by_key.get(key) if key else None
            if hit is not None:
                self._by_key.move_to_end(hit.key)
                return hit
        data = self._read(path)
        key = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._lock:
            hit = self._by_key.get(key)
            if hit is not None:
                self._by_key.move_to_end(key)
                if stat_key:
                    self._by_stat[stat_key] = key
                return hit
        result = EncodedImage(url=self._to_data_url(path, data), key=key)
        with self._lock:
            self.encoded += 1
            if key not in self._by_key:
                self._by_key[key] = result
                self._size += len(result.url)
                self._evict()
            if stat_key:
                self._by_stat[stat_key] = key
        return result

    async def aencode(self, path: Path | str) -> EncodedImage:
        """`encode` without blocking the event loop: a hit is answered here, a miss is read, hashed and decoded
        in a worker thread."""
        if isinstance(path, str) and is_remote(path):
            return remote_image(path)
        path = Path(path)
        stat_key = self._stat_key(path)
        with self._lock:
            key = self._by_stat.get(stat_key) if stat_key else None
            hit = self._by_key.get(key) if key else None
        if hit is not None:
            return hit
        return await asyncio.to_thread(self.encode, path)

    # internals ---------------------------------------------------------------------------------
    @staticmethod
    def _stat_key(path: Path) -> tuple[str, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (os.fspath(path), st.st_mtime_ns, st.st_size)

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise ImageError(f"image too large: {path} (limit {MAX_IMAGE_BYTES} bytes)")
            return path.read_bytes()
        except FileNotFoundError:
            raise ImageMissingError(f"image not found: {path}") from None
        except IsADirectoryError:
            raise ImageError(f"image is not a file: {path}") from None
        except OSError as exc:
            raise ImageError(f"image cannot be read: {path}: {exc.strerror or exc}") from exc

    def _to_data_url(self, path: Path, data: bytes) -> str:
        try:
            with warnings.catch_warnings(), _decoding:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as img:
                    check_pixels(img.size, path)
                    side = self.max_side
                    if img.format == "JPEG":
                        img.draft("RGB", (side, side))  # decode at reduced scale: much cheaper
                    out = ImageOps.exif_transpose(img) or img
                    out = _to_rgb(out)
                    out.thumbnail((side, side), Image.Resampling.LANCZOS)
                    buf = io.BytesIO()
                    out.save(buf, format="JPEG", quality=self.quality, optimize=False)
        except UnidentifiedImageError:
            raise ImageError(f"not an image: {path}") from None
        except Image.DecompressionBombError as exc:
            raise ImageError(f"image too large: {path}: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"corrupt image: {path}: {exc}") from None
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    def _evict(self) -> None:
        while self._size > self.cache_bytes and len(self._by_key) > 1:
            key, old = self._by_key.popitem(last=False)
            self._size -= len(old.url)
            for sk in [sk for sk, k in self._by_stat.items() if k == key]:
                del self._by_stat[sk]


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency flattened onto white (not black, as a plain convert would)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")
