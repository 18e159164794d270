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
"""
from __future__ import annotations

import hashlib
import json
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
        map to fill. On leaving the block without an exception the entry appears at
        once (atomic rename); on an exception nothing appears. If another writer
        published the same key first, its entry is kept and ours is discarded."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        writer = Writer(tmp)
        try:
            yield writer
            writer.flush()
            (tmp / META_FILE).write_text(json.dumps({**(meta or {}), "arrays": list(writer.arrays)}))
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
                writer.array(name, array.shape, array.dtype)[...] = array
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
    """The arrays of an entry being written (see `ArrayStore.writer`)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.arrays: dict[str, np.memmap] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.memmap:
        """A new writable (shape, dtype) memory map stored as `name`."""
        self.arrays[name] = open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=np.dtype(dtype),
                                        shape=tuple(shape))
        return self.arrays[name]

    def flush(self) -> None:
        for array in self.arrays.values():
            array.flush()


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())

