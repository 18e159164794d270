"""Image loading: every pixel mode to RGB, corrupt and hostile files, batches."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.data.images import (
    ImageError,
    LoadedImages,
    SkippedFile,
    is_image_file,
    load_image,
    load_images,
)
from core.errors import UserError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def save(image: Image.Image, path, **params):
    image.save(path, **params)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height whose pixel data is a few bytes: cheap to build."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes(64))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def two_colour_image(width=40, height=20) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (width // 2, 0, width, height))
    return image


# --- pixel modes -------------------------------------------------------------


@pytest.mark.parametrize("mode, fmt", [("I;16", "PNG"), ("I;16B", "TIFF")])
def test_16_bit_gradient_spans_full_8_bit_range(mode, fmt):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    raw = np.tile(ramp, (4, 1)).astype(">u2" if mode == "I;16B" else "<u2")
    image = Image.frombytes(mode, (256, 4), raw.tobytes())
    assert Image.open(io.BytesIO(encode(image, fmt))).mode == mode

    pixels = load_image(encode(image, fmt))

    row = pixels[0, :, 0].astype(int)
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 256, 3)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 200
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


@pytest.mark.parametrize("mode, values", [("I", [-5000, 0, 70000]), ("F", [0.0, 0.25, 1.0])])
def test_32_bit_integer_and_float_data_is_stretched_to_full_range(mode, values):
    image = Image.fromarray(np.array([values], dtype=np.int32 if mode == "I" else np.float32))
    assert image.mode == mode

    pixels = load_image(encode(image, "TIFF"))

    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 2].tolist() == [255, 255, 255]
    assert 0 < pixels[0, 1, 0] < 255


def test_grey_and_bilevel_images_become_grey_rgb():
    grey = load_image(encode(Image.new("L", (3, 3), 77), "PNG"))
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)

    assert grey[1, 1].tolist() == [77, 77, 77]
    assert load_image(encode(bilevel, "BMP"))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_rgba_transparent_pixel_becomes_white_and_partial_alpha_blends():
    image = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 255, 255))
    image.putpixel((2, 0), (0, 0, 0, 128))

    pixels = load_image(encode(image, "PNG"))

    assert pixels[0, 0].tolist() == list(WHITE)
    assert pixels[0, 1].tolist() == list(BLUE)
    assert 120 <= pixels[0, 2, 0] <= 135


def test_grey_with_alpha_transparent_pixel_becomes_white():
    image = Image.new("LA", (2, 1), (30, 255))
    image.putpixel((0, 0), (30, 0))

    pixels = load_image(encode(image, "PNG"))

    assert pixels[0].tolist() == [list(WHITE), [30, 30, 30]]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparent_index_becomes_white(fmt):
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 255, 0, *RED])
    image.putpixel((1, 0), 1)

    pixels = load_image(encode(image, fmt, transparency=0))

    assert pixels[0].tolist() == [list(WHITE), list(RED)]


def test_palette_without_transparency_keeps_its_colours():
    image = Image.new("P", (1, 1), 0)
    image.putpalette([*BLUE])

    assert load_image(encode(image, "PNG"))[0, 0].tolist() == list(BLUE)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_red_stays_red(fmt):
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    assert Image.open(io.BytesIO(encode(image, fmt))).mode == "CMYK"

    red, green, blue = load_image(encode(image, fmt))[4, 4].tolist()

    assert red > 200 and green < 60 and blue < 60


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_every_supported_format_loads(fmt):
    pixels = load_image(
        encode(two_colour_image(), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    )

    assert pixels.shape == (20, 40, 3)
    assert pixels[10, 5, 0] > 200 and pixels[10, 5, 2] < 60
    assert pixels[10, 35, 2] > 200 and pixels[10, 35, 0] < 60


# --- sources, orientation, resizing ----------------------------------------


def test_path_bytes_and_file_object_sources_agree(tmp_path):
    path = save(two_colour_image(), tmp_path / "pic.png")

    from_path = load_image(path)
    from_bytes = load_image(path.read_bytes())
    with open(path, "rb") as stream:
        from_stream = load_image(stream)
        assert not stream.closed

    assert np.array_equal(from_path, from_bytes) and np.array_equal(from_path, from_stream)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image is shown rotated 90 degrees clockwise
    path = save(two_colour_image(40, 20), tmp_path / "phone.jpg", exif=exif, quality=95)

    pixels = load_image(path)
    result = load_images([path], size=16)

    assert pixels.shape == (40, 20, 3)
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60  # stored left (red) is now on top
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 60
    assert result.sizes == [(20, 40)]


def pillow_only(data: bytes, size: int | None) -> np.ndarray:
    """What Pillow alone decodes: draft scale, EXIF orientation, RGB, antialiased resize."""
    with Image.open(io.BytesIO(data)) as image:
        if size:
            image.draft("RGB", (size, size))
        image = ImageOps.exif_transpose(image).convert("RGB")
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR) if size else image)


@pytest.mark.parametrize("width, height, size", [(300, 280, 160), (700, 500, 160), (1600, 1200, 64),
                                                 (2000, 1000, 96), (90, 70, None)])
@pytest.mark.parametrize("mode, params", [("RGB", {}), ("RGB", {"progressive": True, "subsampling": 0}),
                                          ("L", {}), ("RGB", {"orientation": 6}), ("L", {"orientation": 3})])
def test_a_jpeg_decoded_once_by_tensorflow_has_pillows_pixels_bit_for_bit(width, height, size, mode, params):
    params = dict(params)
    exif = Image.Exif()
    if "orientation" in params:
        exif[0x0112] = params.pop("orientation")
    rng = np.random.default_rng(width + height)
    pixels = np.repeat(np.repeat(rng.integers(0, 255, (height // 10 + 1, width // 10 + 1, 3), np.uint8), 10, 0), 10, 1)
    photo = Image.fromarray(pixels[:height, :width]).convert(mode)
    data = encode(photo, "JPEG", quality=90, exif=exif, **params)

    np.testing.assert_array_equal(load_image(data, size=size), pillow_only(data, size))


def test_resize_squashes_to_square_without_cropping():
    pixels = load_image(encode(two_colour_image(60, 30), "PNG"), size=32)

    assert pixels.shape == (32, 32, 3)
    assert pixels[16, 2].tolist() == list(RED) and pixels[16, 29].tolist() == list(BLUE)


def test_large_jpeg_downscale_keeps_content():
    photo = two_colour_image(1600, 1200)

    pixels = load_image(encode(photo, "JPEG", quality=90), size=64)

    assert pixels.shape == (64, 64, 3)
    assert pixels[32, 8, 0] > 200 and pixels[32, 8, 2] < 60
    assert pixels[32, 56, 2] > 200 and pixels[32, 56, 0] < 60


def test_resize_is_antialiased():
    stripes = np.zeros((64, 64), dtype=np.uint8)
    stripes[:, ::2] = 255

    pixels = load_image(encode(Image.fromarray(stripes), "PNG"), size=8)

    assert np.all(np.abs(pixels.astype(int) - 128) < 20)


# --- bad and hostile files ---------------------------------------------------


def test_truncated_jpeg_is_refused(tmp_path):
    data = encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "JPEG"
    )
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageError) as raised:
        load_image(path)

    assert raised.value.reason == "truncated or corrupt image data"
    assert str(path) in raised.value.message and raised.value.hint
    assert isinstance(raised.value, UserError)


def test_text_file_renamed_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list: milk, eggs\n")

    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_unsupported_decoder_is_not_used():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"

    with pytest.raises(ImageError, match="not an image"):
        load_image(eps)


def test_missing_file_says_it_cannot_be_read(tmp_path):
    with pytest.raises(ImageError, match="cannot read file"):
        load_image(tmp_path / "nope.png")


def test_huge_header_is_refused_before_decoding():
    with pytest.raises(ImageError) as raised:
        load_image(png_header_only(8000, 8000))

    assert (
        raised.value.reason == "image too large: 8000×8000 pixels exceeds the limit of 40,000,000"
    )


def test_pixel_limit_is_checked_before_the_missing_data_is_decoded():
    small_claim = png_header_only(300, 200)

    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(small_claim)
    with pytest.raises(ImageError, match="image too large: 300×200"):
        load_image(small_claim, max_pixels=50_000)


def test_pillow_decompression_bomb_error_is_an_image_error():
    with pytest.raises(ImageError, match="image too large"):
        load_image(png_header_only(100_000, 100_000), max_pixels=10**12)


def test_lowered_pixel_limit_refuses_a_real_image():
    data = encode(two_colour_image(100, 100), "PNG")

    with pytest.raises(ImageError, match=r"100×100 pixels exceeds the limit of 9,999"):
        load_image(data, max_pixels=9_999)
    assert load_image(data, max_pixels=10_000).shape == (100, 100, 3)


# --- batches -----------------------------------------------------------------


def test_load_images_keeps_order_and_reports_skipped(tmp_path):
    colours = [RED, (0, 255, 0), BLUE]
    good = [
        save(Image.new("RGB", (30 + i, 20), c), tmp_path / f"{i}.png")
        for i, c in enumerate(colours)
    ]
    text = tmp_path / "readme.jpg"
    text.write_text("hello")
    paths = [good[0], text, good[1], tmp_path / "missing.png", good[2]]
    calls = []

    result = load_images(
        paths, size=8, workers=3, progress=lambda done, total: calls.append((done, total))
    )

    assert isinstance(result, LoadedImages)
    assert result.images.shape == (3, 8, 8, 3) and result.images.dtype == np.uint8
    assert result.kept == [0, 2, 4]
    assert [tuple(image[4, 4]) for image in result.images] == colours
    assert result.sizes == [(30, 20), (31, 20), (32, 20)]
    assert result.skipped[0] == SkippedFile(str(text), "not an image")
    assert (
        result.skipped[1].path == str(paths[3]) and "cannot read file" in result.skipped[1].reason
    )
    assert calls[-1] == (5, 5) and [done for done, _ in calls] == [1, 2, 3, 4, 5]


def test_decoding_uses_one_thread_per_core_the_process_may_run_on(tmp_path, monkeypatch):
    import os
    import threading

    from core.data import images as images_module

    paths = [save(Image.new("RGB", (40, 40), RED), tmp_path / f"{i}.png") for i in range(24)]
    threads = set()
    real_load = images_module._load

    def load(*args):
        threads.add(threading.get_ident())
        return real_load(*args)

    monkeypatch.setattr(images_module, "_load", load)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # a worker pinned to one core
    assert len(load_images(paths, size=8).kept) == 24 and len(threads) == 1


def test_load_images_of_nothing_is_empty():
    result = load_images([], size=8)

    assert result.images.shape == (0, 8, 8, 3) and result.kept == [] and result.skipped == []


def test_is_image_file_ignores_case_and_hidden_files():
    assert is_image_file("cats/IMG_001.JPG") and is_image_file("a.tiff") and is_image_file("b.WebP")
    assert not is_image_file("notes.txt") and not is_image_file("cats/._IMG_001.jpg")
    assert not is_image_file("jpg")
