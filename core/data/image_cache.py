"""Decoded images cached on disk as memory-mapped arrays, shared by every process.

A dataset is decoded once per (data config, files' identity): its splits are
stored in an `ArrayStore` under `settings.image_cache_dir()` (bounded by
`TL_IMAGE_CACHE_GB`, least recently used first) and read back memory-mapped, so
the dashboard, its worker processes and the CLI share one copy and a change of
head settings never decodes again. The files' identity is whatever
`core.data.datasets.load_cached` passes (each file's path, size and
modification time), so an edited, added or removed file decodes afresh.

Each split also carries a content digest (`content_digest`), computed once when
the split is stored; the feature cache keys on it.
"""
from __future__ import annotations

import hashlib
import itertools
import weakref
from collections.abc import Callable

import numpy as np

from core import settings
from core.data.array_store import ArrayStore, make_key, row_blocks
from core.data.image_data import SPLITS, ImageData
from core.data.images import SkippedFile
from core.data.leakage import Duplicate

#: Bump when the stored layout or decoding changes, so old entries are not read.
FORMAT = 3

_DIGESTS: dict[int, tuple[weakref.ref, str]] = {}


def store() -> ArrayStore:
    """The decoded-image store, with the bound read from `TL_IMAGE_CACHE_GB`."""
    return ArrayStore(settings.image_cache_dir(), settings.image_cache_bytes())


def content_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """A BLAKE2b digest (32 hex digits) of a split's images (N, H, W, 3) uint8 and labels (N,) int32.

    Remembered per array object, so each split is hashed at most once per process
    (about 0.5 GB/s); splits read from the cache carry the digest stored with them.
    """
    known = _DIGESTS.get(id(images))
    if known is not None and known[0]() is images:
        return known[1]
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((images.shape, str(images.dtype))).encode())
    for _, block in row_blocks(images):  # blocks read from the file: a memory map never stays resident
        digest.update(block.data)
    digest.update(np.ascontiguousarray(labels, dtype="int32").data)
    _remember(images, digest.hexdigest())
    return _DIGESTS[id(images)][1]


def _remember(images: np.ndarray, digest: str) -> None:
    key = id(images)
    _DIGESTS[key] = (weakref.ref(images, lambda _: _DIGESTS.pop(key, None)), digest)


def load(identity: dict, decode: Callable[[Callable[[tuple, str], np.ndarray]], ImageData]) -> ImageData:
    """The dataset `identity` names, read from the cache, else `decode(allocate)`d and stored.

    On a miss the entry is written as it is decoded: `decode` receives
    `allocate(shape, dtype)`, which gives new writable memory maps inside the
    entry being written, and decodes the images into them chunk by chunk (see
    `core.data.datasets.load_folder`); arrays it made but no split uses (the
    decoding's staging array, splits replaced by `ImageData.keep`) are dropped, and
    splits it built in memory (TFDS) are copied in. The entry appears only when
    complete (`ArrayStore.writer`: a half-written entry is never read).

    Args:
        identity: JSON-able fields that determine the decoded images (the data
            config and the files' paths, sizes and modification times).
        decode: makes the `ImageData` on a miss (it raises the UserErrors of the
            data source; nothing is stored then).
    Returns:
        An `ImageData` whose split arrays are read-only memory maps of the cache.
    """
    cache = store()
    key = make_key({"format": FORMAT, **identity})
    entry = cache.get(key)
    if entry is not None:
        return _image_data(entry.arrays, entry.meta)
    with cache.writer(key) as writer:
        names = itertools.count()

        def allocate(shape: tuple, dtype: str) -> np.ndarray:
            return writer.array(f"a{next(names)}", shape, dtype)

        data = decode(allocate)
        data.allocate = None
        made = {id(array): name for name, array in writer.arrays.items()}
        splits, digests = {}, {}
        for split in SPLITS:
            images, labels = data.splits[split]
            images_name = made.get(id(images))
            if images_name is None:  # built in memory (the TFDS source)
                images_name = f"a{next(names)}"
                writer.copy(images_name, images)
            labels_name = f"a{next(names)}"
            writer.copy(labels_name, np.asarray(labels, dtype="int32"))
            splits[split] = [images_name, labels_name]
            digests[split] = content_digest(images, labels)
        for name in set(made.values()) - {name for pair in splits.values() for name in pair}:
            writer.discard(name)
        writer.meta.update({
            "splits": splits, "class_names": data.class_names, "description": data.description,
            "skipped": [[s.path, s.reason] for s in data.skipped],
            "image_sizes": [list(size) for size in data.image_sizes], "notes": data.notes, "digests": digests,
            "sources": data.sources, "file_digests": data.digests,
            "duplicates": [duplicate.to_dict() for duplicate in data.duplicates],
        })
    entry = cache.get(key)
    return data if entry is None else _image_data(entry.arrays, entry.meta)  # None: larger than the cache's bound


def _image_data(arrays: dict[str, np.ndarray], meta: dict) -> ImageData:
    splits = {}
    for split in SPLITS:
        images, labels = (arrays[name] for name in meta["splits"][split])
        _remember(images, meta["digests"][split])
        splits[split] = (images, labels)
    return ImageData(
        class_names=list(meta["class_names"]), splits=splits, description=meta["description"],
        skipped=[SkippedFile(path, reason) for path, reason in meta["skipped"]],
        image_sizes=[tuple(size) for size in meta["image_sizes"]], notes=list(meta["notes"]),
        sources={split: list(names) for split, names in meta["sources"].items()},
        digests={split: list(values) for split, values in meta["file_digests"].items()},
        duplicates=[Duplicate(**fields) for fields in meta["duplicates"]],
    )
