"""Robust image loading: any common file or upload -> uint8 RGB array.

Images come from users' folders and uploads, so every file is treated as
untrusted: the pixel count is checked from the header before decoding, the
whole file is decoded so truncation is caught, and every failure becomes an
`ImageError` with a short reason instead of a traceback.

Decoding is strict: Pillow's warnings are errors, and a JPEG must pass
TensorFlow's decoder (`tf.io.decode_jpeg`, which refuses the corrupt entropy-coded
data that Pillow decodes silently into a grey smear). An RGB or greyscale JPEG is
decoded by that decoder alone, with Pillow's settings (the same DCT scaling as
Pillow's draft mode, its accurate integer DCT), so its pixels are Pillow's bit for
bit and the file is entropy-decoded once; other JPEGs (CMYK) are decoded by Pillow
and checked by TensorFlow at 1/8 scale.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

from core.data.array_store import write_rows
from core.errors import UserError

#: File name suffixes treated as images (lower case; matching ignores case).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

#: Default limit on width x height, checked before decoding (decompression bombs).
MAX_PIXELS = 40_000_000

#: Files decoded per chunk by `decode_images` (about 20 MB of 160 px images in memory).
DECODE_CHUNK = 256

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

# Only these decoders are ever used, so odd formats (EPS runs Ghostscript) are refused.
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_WHITE = (255, 255, 255)

# Strict decoding: whatever Pillow warns about (corrupt EXIF, truncated TIFF tags...)
# is refused. Warning filters are process-wide, so this is set once, for the decoder
# warnings Pillow raises (UserWarning) only: its DeprecationWarnings stay warnings.
warnings.filterwarnings("error", category=UserWarning, module=r"PIL(\.|$)")

_FORMAT_HINT = "Use a JPEG, PNG, BMP, GIF, WebP or TIFF image."
_CORRUPT_HINT = "Re-export or re-download the file, or remove it from the data."


class ImageError(UserError):
    """An image that cannot be used; `reason` is the short cause ("not an image")."""

    def __init__(self, reason: str, hint: str = "", source: str = ""):
        super().__init__(f"{source}: {reason}" if source else reason, hint)
        self.reason = reason
        self.source = source


@dataclass
class SkippedFile:
    """A file `load_images` left out, and why."""

    path: str
    reason: str


def count_by_reason(skipped: Sequence[SkippedFile]) -> dict[str, int]:
    """How many files were skipped for each reason, most common first."""
    counts: dict[str, int] = {}
    for item in skipped:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda pair: -pair[1]))


@dataclass
class LoadedImages:
    """Result of `load_images`.

    images: (N, size, size, 3) uint8 array of the images that loaded.
    kept: for each row of `images`, its index in the input list.
    sizes: original (width, height) of each kept image, as displayed (EXIF applied).
    digests: SHA-1 hex digest of each kept image's file bytes (finds byte-identical copies).
    skipped: the files that could not be used, with their reasons.
    """

    images: np.ndarray
    kept: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether `path` has an image suffix (any case) and is not a hidden file.

    Hidden files such as macOS' `._photo.jpg` resource forks are not images.
    """
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_image(
    source: ImageSource, size: int | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Load one image as a uint8 (height, width, 3) RGB array.

    Args:
        source: a file path, the file's bytes, or a binary file object such
            as an upload (read from its current position, left open).
        size: when given, the image is resized to (size, size) with
            antialiasing, squashed without cropping, like Keras'
            `image_dataset_from_directory`.
        max_pixels: images whose header declares more pixels than this are
            refused before any decoding.

    Raises:
        ImageError: the source is unreadable, not an image, corrupt or too large.
    """
    pixels, _, _ = _load(source, size, max_pixels)
    return pixels


def load_images(
    paths: Sequence[str | os.PathLike],
    size: int,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
) -> LoadedImages:
    """Load many image files in parallel, resized to (size, size), into memory.

    Never raises for a bad file: it is reported in `skipped` with its reason.
    Rows of `images` keep the input order. For data larger than memory, use
    `decode_images` into a memory map.

    Args:
        paths: image files to load.
        size: side of the square output images.
        workers: decoding threads (default: one per CPU core this process may
            run on; more only contend for the GIL, about 8 % slower on 2 cores).
        max_pixels: per-image limit, as in `load_image`.
        progress: called as `progress(done, total)` after each file, from the
            calling thread.
    """
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    loaded = decode_images(paths, size, images, workers=workers, max_pixels=max_pixels, progress=progress)
    if len(loaded.kept) < len(paths):
        loaded.images = images[loaded.kept]
    return loaded


def decode_images(
    paths: Sequence[str | os.PathLike],
    size: int,
    out: np.ndarray,
    chunk: int | None = None,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
) -> LoadedImages:
    """Decode `paths` into `out` (len(paths), size, size, 3) uint8, `chunk` files at a time
    (default `DECODE_CHUNK`).

    Each chunk is decoded in parallel into a buffer of its own and written to rows
    `i:i + chunk` of `out` with `core.data.array_store.write_rows` while the next
    chunk decodes, so a memory map of any size is filled with at most two chunks in
    memory at a time; the bytes written do not depend on `chunk`. Row i holds file
    i; the rows of skipped files are left unwritten. Never raises for a bad file (see
    `load_images`).

    Returns a `LoadedImages` whose `images` is `out` (all rows, not only the kept).
    """
    total, chunk = len(paths), max(1, chunk or DECODE_CHUNK)
    sizes: dict[int, tuple[int, int]] = {}
    digests: dict[int, str] = {}
    reasons: dict[int, str] = {}
    done = 0

    def load_into(buffer: np.ndarray, row: int, index: int) -> None:
        try:
            buffer[row], sizes[index], digests[index] = _load(paths[index], size, max_pixels)
        except ImageError as error:
            reasons[index] = error.reason

    def submit(pool: ThreadPoolExecutor, start: int) -> tuple[int, np.ndarray, list]:
        stop = min(start + chunk, total)
        buffer = np.zeros((stop - start, size, size, 3), dtype=np.uint8)
        return start, buffer, [pool.submit(load_into, buffer, index - start, index) for index in range(start, stop)]

    with ThreadPoolExecutor(max_workers=workers or _usable_cores()) as pool:
        starts = iter(range(0, total, chunk))
        pending = [submit(pool, start) for start in itertools.islice(starts, 2)]
        while pending:  # two chunks in flight: the threads decode the next while this one is written
            start, buffer, futures = pending.pop(0)
            for future in as_completed(futures):
                future.result()
                done += 1
                if progress is not None:
                    progress(done, total)
            pending += [submit(pool, next_start) for next_start in itertools.islice(starts, 1)]
            write_rows(out, start, buffer)

    kept = sorted(sizes)
    return LoadedImages(
        images=out,
        kept=kept,
        sizes=[sizes[index] for index in kept],
        digests=[digests[index] for index in kept],
        skipped=[SkippedFile(str(paths[index]), reasons[index]) for index in sorted(reasons)],
    )


def _usable_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. a pinned job worker's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _load(
    source: ImageSource, size: int | None, max_pixels: int
) -> tuple[np.ndarray, tuple[int, int], str]:
    """Decode `source`; returns the RGB pixels, the original displayed size and
    the SHA-1 digest of the file's bytes."""
    name = _source_name(source)
    with _binary_stream(source, name) as stream:
        content = stream.read()
    try:
        with Image.open(io.BytesIO(content), formats=_PIL_FORMATS) as image:
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                pixels, shown = _decode_jpeg(image, content, size, max_pixels, name)
            else:
                pixels, shown = _decode(image, size, max_pixels, name)
                if image.format == "JPEG":
                    _check_jpeg(content, name)
            return pixels, shown, hashlib.sha1(content).hexdigest()
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not an image", _FORMAT_HINT, name) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as bomb:
        raise ImageError(f"image too large: {bomb}", _CORRUPT_HINT, name) from None
    except Warning as warning:  # Pillow decoded it, but not cleanly
        raise ImageError(f"corrupt image data ({warning})", _CORRUPT_HINT, name) from None
    except Exception as error:  # decoders of untrusted data raise many exception types
        raise ImageError("truncated or corrupt image data", _CORRUPT_HINT, name) from error


def _decode_jpeg(
    image: Image.Image, content: bytes, size: int | None, max_pixels: int, name: str
) -> tuple[np.ndarray, tuple[int, int]]:
    """An RGB or greyscale JPEG (`image`: opened, not loaded) decoded by TensorFlow's
    decoder, which also refuses corrupt data, into the pixels `_decode` gives: Pillow
    chooses the DCT scale (`draft`) and TensorFlow decodes at it with the accurate
    integer DCT, as Pillow does; Pillow then applies the EXIF orientation and resizes.
    A file TensorFlow refuses is decoded by Pillow, so the reason given is Pillow's
    where Pillow sees the fault (a truncated file) and TensorFlow's otherwise.
    """
    import tensorflow as tf

    width, height = image.size
    _check_pixels(width, height, max_pixels, name)
    if size:
        image.draft("RGB", (size, size))  # only picks the 1/2, 1/4 or 1/8 scale to decode at
    try:
        pixels = tf.io.decode_jpeg(content, channels=3, ratio=max(1, round(width / image.size[0])),
                                   dct_method="INTEGER_ACCURATE").numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        with Image.open(io.BytesIO(content), formats=_PIL_FORMATS) as fresh:
            _decode(fresh, size, max_pixels, name)
        raise ImageError("corrupt JPEG data (TensorFlow's decoder rejects it)", _CORRUPT_HINT, name) from None
    decoded = Image.fromarray(pixels)
    decoded.info.update(image.info)  # the EXIF (and XMP) orientation, for exif_transpose
    return _orient_and_resize(decoded, width, height, size)


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}×{height} pixels exceeds the limit of {max_pixels:,}",
            "Downscale the image or remove it from the data.",
            name,
        )


def _check_jpeg(content: bytes, name: str) -> None:
    """Refuse a JPEG that TensorFlow's decoder rejects (garbled or cut-short scans).

    Entropy decoding runs in full at any scale, so decoding at 1/8 scale finds the
    same faults at a fraction of the cost.
    """
    import tensorflow as tf

    try:
        tf.io.decode_jpeg(content, ratio=8)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        raise ImageError("corrupt JPEG data (TensorFlow's decoder rejects it)", _CORRUPT_HINT, name) from None


def _source_name(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", ""))


@contextmanager
def _binary_stream(source: ImageSource, name: str) -> Iterator[BinaryIO]:
    """A readable binary stream over `source`; files opened here are closed here."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            stream = open(source, "rb")
        except OSError as error:
            raise ImageError(
                f"cannot read file ({error.strerror})", "Check that the file exists.", name
            ) from None
        with stream:
            yield stream
    else:
        with nullcontext(source) as stream:
            yield stream


def _decode(
    image: Image.Image, size: int | None, max_pixels: int, name: str
) -> tuple[np.ndarray, tuple[int, int]]:
    width, height = image.size
    _check_pixels(width, height, max_pixels, name)
    if size and image.format == "JPEG":
        image.draft("RGB", (size, size))  # decode at 1/2, 1/4 or 1/8 scale: much faster
    image.load()
    return _orient_and_resize(image, width, height, size)


def _orient_and_resize(
    image: Image.Image, width: int, height: int, size: int | None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decoded `image` (stored `width` x `height`) turned upright per its EXIF orientation,
    in RGB, resized to (size, size); returns its pixels and its displayed size."""
    if image.getexif().get(ExifTags.Base.Orientation) in _ROTATED_ORIENTATIONS:
        width, height = height, width
    ImageOps.exif_transpose(image, in_place=True)
    rgb = _to_rgb(image)
    if size and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)  # antialiased when shrinking
    return np.asarray(rgb, dtype=np.uint8), (width, height)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB; transparency is composited over white."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(np.round(np.asarray(image) / 257.0))
    if image.mode in ("I", "F"):
        return _gray_to_rgb(_stretch(np.asarray(image, dtype=np.float64)))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map the range of 32-bit integer or float data (no declared depth) onto 0..255."""
    values = np.nan_to_num(values)
    low, high = values.min(), values.max()
    return (values - low) * (255.0 / (high - low if high > low else 1.0))


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), "L").convert("RGB")
