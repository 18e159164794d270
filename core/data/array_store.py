"""Named sets of NumPy arrays on disk, memory-mapped on read, bounded, least recently used evicted.

The storage under the image cache (`core.data.image_cache`) and the feature cache
(`core.training.feature_cache`). Each entry is a folder `<root>/<key>/` holding
one `.npy` file per array (written with `numpy.lib.format.open_memmap`, read
with `numpy.load(mmap_mode="r")`, so an entry larger than memory is fine) and
`meta.json`. An entry is written into a temporary folder beside it and renamed
into place in one step, so a half-written entry is never read: a writer that
dies leaves only a `.tmp-*` folder, which readers ignore and `evict` removes.
Reading an entry touches its `meta.json`; eviction removes the entries touched
longest ago until the store fits its bound.

Streaming: `read_rows` and `write_rows` move a block of rows between memory and
a whole-file memory map with one file read or write (`numpy.fromfile`,
`os.pwrite`), so the pages go through the page cache without being mapped into
this process: walking or filling an array larger than memory keeps the
process's resident memory (RSS) at one block. `row_blocks` walks an array that
way and `take_rows` gathers chosen rows into another array block by block.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

META_FILE = "meta.json"
TMP_PREFIX = ".tmp-"
#: A temporary folder older than this (seconds) belongs to a dead writer.
STALE_TMP_SECONDS = 3600.0
#: Rows per block of the streaming helpers (256 images of 160 px: about 20 MB).
BLOCK_ROWS = 256


def make_key(fields: dict) -> str:
    """The entry name of `fields` (JSON-able): a SHA-256 of its canonical JSON, 32 hex digits."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class Entry:
    """One stored entry: its arrays (read-only memory maps, by name) and its meta dict."""

    key: str
    arrays: dict[str, np.ndarray]
    meta: dict


class ArrayStore:
    """Entries of memory-mapped arrays under `root`, at most `limit_bytes` in all (None: unbounded)."""

    def __init__(self, root: Path | str, limit_bytes: int | None = None):
        self.root = Path(root)
        self.limit_bytes = limit_bytes

    def path(self, key: str) -> Path:
        return self.root / key

    def contains(self, key: str) -> bool:
        """Whether a complete entry `key` exists (touches nothing)."""
        return (self.path(key) / META_FILE).is_file()

    def get(self, key: str) -> Entry | None:
        """The entry `key`, memory-mapped read-only, or None. Marks it as just used."""
        folder = self.path(key)
        try:
            meta = json.loads((folder / META_FILE).read_text())
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
            os.utime(folder / META_FILE)
        except (OSError, ValueError, KeyError):
            return None  # missing, or evicted by another process while we read it
        return Entry(key, arrays, meta)

    @contextmanager
    def writer(self, key: str, meta: dict | None = None) -> Iterator[Writer]:
        """Write entry `key`: `writer.array(name, shape, dtype)` gives a writable memory
        map to fill (with `write_rows`, block by block, to stay out of resident memory);
        `writer.meta` may be added to until the block ends. On leaving the block without an exception the entry appears at
        once (atomic rename); on an exception nothing appears. If another writer
        published the same key first, its entry is kept and ours is discarded."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        writer = Writer(tmp, meta)
        try:
            yield writer
            writer.flush()
            (tmp / META_FILE).write_text(json.dumps({**writer.meta, "arrays": list(writer.arrays)}))
            try:
                tmp.rename(self.path(key))
            except OSError:
                if not self.contains(key):
                    raise
        finally:
            writer.arrays.clear()
            shutil.rmtree(tmp, ignore_errors=True)
        self.evict()

    def put(self, key: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> Entry:
        """Store in-memory `arrays` as entry `key` and return it, memory-mapped."""
        with self.writer(key, meta) as writer:
            for name, array in arrays.items():
                writer.copy(name, array)
        return self.get(key) or Entry(key, dict(arrays), dict(meta or {}))

    def entries(self) -> list[tuple[Path, float, int]]:
        """(folder, last use as a Unix time, bytes) of every complete entry."""
        found = []
        for folder in self.root.iterdir() if self.root.is_dir() else ():
            meta = folder / META_FILE
            if folder.name.startswith(TMP_PREFIX) or not meta.is_file():
                continue
            try:
                found.append((folder, meta.stat().st_mtime, _folder_bytes(folder)))
            except OSError:
                continue
        return found

    def size_bytes(self) -> int:
        """Bytes on disk of all complete entries."""
        return sum(size for _, _, size in self.entries())

    def evict(self) -> list[str]:
        """Remove least recently used entries until the store fits `limit_bytes`, and
        temporary folders of dead writers. Returns the removed keys."""
        now = time.time()
        for folder in self.root.glob(f"{TMP_PREFIX}*"):
            try:
                if now - folder.stat().st_mtime > STALE_TMP_SECONDS:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass
        if self.limit_bytes is None:
            return []
        entries = sorted(self.entries(), key=lambda entry: entry[1])
        total, removed = sum(size for _, _, size in entries), []
        for folder, _, size in entries:
            if total <= self.limit_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            removed.append(folder.name)
        return removed

    def clear(self) -> None:
        """Remove every entry (open memory maps stay readable until closed)."""
        shutil.rmtree(self.root, ignore_errors=True)


class Writer:
    """The arrays and meta dict of an entry being written (see `ArrayStore.writer`)."""

    def __init__(self, folder: Path, meta: dict | None = None):
        self.folder = folder
        self.meta = dict(meta or {})
        self.arrays: dict[str, np.memmap] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.memmap:
        """A new writable (shape, dtype) memory map stored as `name`."""
        self.arrays[name] = open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=np.dtype(dtype),
                                        shape=tuple(shape))
        return self.arrays[name]

    def copy(self, name: str, values: np.ndarray, block_bytes: int = 64 << 20) -> np.memmap:
        """A new array `name` holding `values` (copied block by block, see `write_rows`)."""
        out = self.array(name, values.shape, values.dtype)
        if values.ndim == 0:
            out[...] = values
            return out
        size = max(1, block_bytes // max(_row_bytes(values), 1))
        for start, block in row_blocks(values, size):
            write_rows(out, start, block)
        return out

    def discard(self, name: str) -> None:
        """Leave array `name` out of the entry (its file is removed; open maps stay readable)."""
        self.arrays.pop(name)
        (self.folder / f"{name}.npy").unlink(missing_ok=True)

    def flush(self) -> None:
        for array in self.arrays.values():
            array.flush()


def _whole_file_map(array: np.ndarray) -> bool:
    """Whether `array` is a whole `.npy` memory map (not a slice of one), so its rows lie
    in its file from `array.offset` on, in C order."""
    return (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and bool(array.filename)
            and array.flags.c_contiguous)


def _row_bytes(array: np.ndarray) -> int:
    return int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize


def read_rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows `start:stop` of `array` (any shape, rows on axis 0) as a new in-memory array.

    A whole-file memory map (`ArrayStore.get`, `Writer.array`) is read with one file
    read (`numpy.fromfile`), so none of its pages stay mapped in this process; any
    other array is sliced and copied.
    """
    start, stop = max(0, start), min(len(array), stop)
    if stop <= start or not _whole_file_map(array):
        return np.array(array[start:stop])
    rows = np.fromfile(array.filename, dtype=array.dtype, count=(stop - start) * _row_bytes(array) // array.dtype.itemsize,
                       offset=array.offset + start * _row_bytes(array))
    return rows.reshape((stop - start, *array.shape[1:]))


def write_rows(array: np.ndarray, start: int, values: np.ndarray) -> None:
    """Set rows `start:start + len(values)` of `array` to `values` (cast to its dtype).

    A whole-file writable memory map is written with `os.pwrite`, so the pages go to
    the page cache and the file without being mapped into this process; any other
    array is assigned to.
    """
    if not len(values):
        return
    if not (_whole_file_map(array) and array.mode in ("r+", "w+")):
        array[start:start + len(values)] = values
        return
    if start < 0 or start + len(values) > len(array) or np.shape(values)[1:] != array.shape[1:]:
        raise ValueError(f"rows {start}:{start + len(values)} of shape {np.shape(values)[1:]} do not fit "
                         f"an array of shape {array.shape}")
    data = np.ascontiguousarray(values, dtype=array.dtype)
    fd = os.open(array.filename, os.O_WRONLY)
    try:
        view, offset = memoryview(data).cast("B"), array.offset + start * _row_bytes(array)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)


def row_blocks(array: np.ndarray, size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows start:start+size as an in-memory copy) over `array`, via `read_rows`;
    `size` defaults to `BLOCK_ROWS`."""
    size = size or BLOCK_ROWS
    for start in range(0, len(array), size):
        yield start, read_rows(array, start, start + size)


def take_rows(source: np.ndarray, rows: np.ndarray, out: np.ndarray, size: int | None = None) -> np.ndarray:
    """Fill `out` with `source[rows]` (rows: int indices, in any order) and return `out`.

    Between two whole-file memory maps (writable `out`) each run of consecutive rows
    is one `os.copy_file_range`: the kernel copies the bytes from file to file, none
    pass through this process. Otherwise `size` rows at a time (default
    `BLOCK_ROWS`), reading each block's span of `source` with `read_rows`.
    """
    rows, size = np.asarray(rows, dtype=np.int64), size or BLOCK_ROWS
    if _copy_file_ranges(source, rows, out):
        return out
    for start in range(0, len(rows), size):
        chosen = rows[start:start + size]
        low, high = int(chosen.min()), int(chosen.max()) + 1
        if high - low <= 4 * len(chosen):  # nearby rows: one read of their span
            block = read_rows(source, low, high)[chosen - low]
        else:
            block = np.stack([read_rows(source, int(i), int(i) + 1)[0] for i in chosen])
        write_rows(out, start, block)
    return out


def _copy_file_ranges(source: np.ndarray, rows: np.ndarray, out: np.ndarray) -> bool:
    """`take_rows` by `os.copy_file_range`, one call per run of consecutive rows; False
    where the arrays are not both whole-file maps of one row layout, or the system or
    file system has no such call (then the caller copies every row itself)."""
    if not (hasattr(os, "copy_file_range") and _whole_file_map(source) and _whole_file_map(out)
            and out.mode in ("r+", "w+") and source.dtype == out.dtype and source.shape[1:] == out.shape[1:]
            and len(rows) == len(out) and (not len(rows) or (0 <= rows.min() and rows.max() < len(source)))):
        return False
    if not len(rows):
        return True
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    row_bytes = _row_bytes(source)
    try:
        with open(source.filename, "rb") as reader, open(out.filename, "r+b") as writer:
            for first, last in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
                offset_in = source.offset + int(rows[first]) * row_bytes
                offset_out = out.offset + int(first) * row_bytes
                remaining = int(last - first) * row_bytes
                while remaining:
                    copied = os.copy_file_range(reader.fileno(), writer.fileno(), remaining, offset_in, offset_out)
                    if not copied:
                        return False
                    offset_in, offset_out, remaining = offset_in + copied, offset_out + copied, remaining - copied
    except OSError:  # e.g. a file system without it: the caller copies every row itself
        return False
    return True


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())

