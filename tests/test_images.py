"""Image resolution, checks and encoding."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from evolve.errors import ImageError
from evolve.images import (
    MAX_PIXELS,
    EncodedImage,
    ImageEncoder,
    check_image,
    remote_image,
    resolve_image,
)


def _png(path: Path, size: tuple[int, int] = (64, 32), mode: str = "RGB") -> Path:
    color = (10, 200, 30, 0) if mode == "RGBA" else (10, 200, 30)
    Image.new(mode, size, color[: len(mode)]).save(path, format="PNG")
    return path


def _noisy_jpeg(path: Path, size: tuple[int, int]) -> Path:
    img = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    img.save(path, format="JPEG", quality=95)
    return path


def _decode(url: str) -> Image.Image:
    assert url.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    img.load()
    return img


# resolve_image ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ref", ["http://example.com/a.jpg", "https://example.com/b.png?x=1", "data:image/png;base64,AAAA"]
)
def test_urls_pass_untouched(ref: str, tmp_path: Path) -> None:
    assert resolve_image(ref, None, tmp_path) == ref
    assert resolve_image(ref, tmp_path, tmp_path) == ref


def test_relative_joins_base_without_root(tmp_path: Path) -> None:
    assert resolve_image("img/a.jpg", None, tmp_path) == tmp_path / "img" / "a.jpg"
    assert resolve_image("/abs/a.jpg", None, tmp_path) == Path("/abs/a.jpg")


def test_relative_joins_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    got = resolve_image("sub/../a.jpg", root, tmp_path / "elsewhere")
    assert got == root / "a.jpg"


@pytest.mark.parametrize("ref", ["../x.jpg", "a/../../x.jpg", "/etc/passwd"])
def test_escaping_root_is_refused(ref: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ImageError, match="escapes --image-root"):
        resolve_image(ref, root, tmp_path)


def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = _png(tmp_path / "secret.png")
    (root / "link.png").symlink_to(outside)
    with pytest.raises(ImageError, match="escapes --image-root"):
        resolve_image("link.png", root, tmp_path)


# check_image --------------------------------------------------------------------------------------
def test_check_good_image(tmp_path: Path) -> None:
    check_image(_png(tmp_path / "a.png"))


def test_check_missing(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        check_image(tmp_path / "nope.png")


def test_check_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a file"):
        check_image(tmp_path)


def test_check_too_large(tmp_path: Path) -> None:
    path = _png(tmp_path / "a.png", (200, 200))
    with pytest.raises(ImageError, match="too large"):
        check_image(path, max_bytes=10)


def test_check_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_text("hello, I am text")
    with pytest.raises(ImageError, match="not an image"):
        check_image(path)


def test_check_corrupt_png(tmp_path: Path) -> None:
    path = _png(tmp_path / "a.png", (100, 100))
    data = bytearray(path.read_bytes())
    data[60:70] = b"\x00" * 10  # damages the IDAT chunk: the CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"corrupt|cannot be read"):
        check_image(path)


# encoding -----------------------------------------------------------------------------------------
def test_encode_resizes_to_max_side_and_keys_by_content(tmp_path: Path) -> None:
    path = _png(tmp_path / "a.png", (1024, 300))
    enc = ImageEncoder(max_side=128)
    got = enc.encode(path)
    assert got.key == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    img = _decode(got.url)
    assert img.mode == "RGB" and max(img.size) == 128 and img.size == (128, 38)


def test_small_image_is_not_enlarged(tmp_path: Path) -> None:
    img = _decode(ImageEncoder(max_side=512).encode(_png(tmp_path / "a.png", (40, 20))).url)
    assert img.size == (40, 20)


def test_transparent_becomes_white(tmp_path: Path) -> None:
    img = _decode(ImageEncoder().encode(_png(tmp_path / "a.png", (16, 16), "RGBA")).url)
    r, g, b = img.getpixel((8, 8))  # type: ignore[misc]
    assert min(r, g, b) > 240


def test_each_content_encoded_once(tmp_path: Path) -> None:
    a = _png(tmp_path / "a.png", (300, 300))
    b = tmp_path / "b.png"
    b.write_bytes(a.read_bytes())  # same bytes, another file
    enc = ImageEncoder()
    first = enc.encode(a)
    assert enc.encode(a) is first
    assert enc.encode(b) is first
    assert enc.encoded == 1
    enc.encode(_png(tmp_path / "c.png", (10, 10)))
    assert enc.encoded == 2


def test_changed_file_is_encoded_again(tmp_path: Path) -> None:
    path = _png(tmp_path / "a.png", (50, 50))
    enc = ImageEncoder()
    first = enc.encode(path)
    _png(path, (60, 60))
    os.utime(path, ns=(1, 1))
    second = enc.encode(path)
    assert second.key != first.key and enc.encoded == 2


def test_cache_is_bounded(tmp_path: Path) -> None:
    enc = ImageEncoder(max_side=64, cache_bytes=1)
    paths = [_png(tmp_path / f"{i}.png", (20 + i, 20)) for i in range(3)]
    for p in paths:
        enc.encode(p)
    enc.encode(paths[0])  # dropped from the cache, so encoded again
    assert enc.encoded == 4


def test_encode_errors_are_image_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    enc = ImageEncoder()
    with pytest.raises(ImageError, match="not an image"):
        enc.encode(bad)
    with pytest.raises(ImageError, match="not found"):
        enc.encode(tmp_path / "missing.jpg")


def test_remote_urls(tmp_path: Path) -> None:
    enc = ImageEncoder()
    assert enc.encode("https://x.org/a.jpg") == EncodedImage("https://x.org/a.jpg", "url:https://x.org/a.jpg")
    data_url = "data:image/png;base64," + "A" * 1000
    got = remote_image(data_url)
    assert got.url == data_url and got.key.startswith("sha256:") and "AAAA" not in got.key


def test_aencode_decodes_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = _png(tmp_path / "s.png", (30, 30))
    big = _noisy_jpeg(tmp_path / "b.jpg", (900, 700))
    enc = ImageEncoder(max_side=100)
    threads: list[int] = []
    pil_open = Image.open

    def watched_open(*args: object, **kwargs: object) -> Image.Image:
        threads.append(threading.get_ident())
        return pil_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", watched_open)  # watch Pillow (not evolve) to see where decoding runs

    async def main() -> tuple[int, tuple[EncodedImage, ...]]:
        found = await asyncio.gather(enc.aencode(small), enc.aencode(big), enc.aencode(big))
        return threading.get_ident(), tuple(found)

    loop_thread, (s, b1, b2) = asyncio.run(main())
    assert threads and loop_thread not in threads  # every miss was decoded in a worker thread
    monkeypatch.undo()
    assert s == enc.encode(small)
    assert b1.key == b2.key == "sha256:" + hashlib.sha256(big.read_bytes()).hexdigest()
    assert max(_decode(b1.url).size) == 100
    assert asyncio.run(enc.aencode("http://h/x.png")).key == "url:http://h/x.png"


def test_a_picture_over_the_pixel_budget_is_refused_from_its_header(tmp_path: Path) -> None:
    side = int(MAX_PIXELS**0.5) + 10
    path = tmp_path / "huge.png"
    Image.new("1", (side, side)).save(path, optimize=True)  # a tiny file holding a huge picture
    assert path.stat().st_size < 2_000_000
    with pytest.raises(ImageError, match=r"image too large: .*px, over the 40 MP limit"):
        check_image(path)
    with pytest.raises(ImageError, match="over the 40 MP limit"):
        ImageEncoder().encode(path)
