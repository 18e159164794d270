"""`ImageData`: the images and labels of every split, the one type all data sources produce.

A leaf module (it imports nothing else from `core.data`), so every source can
build one without importing the others.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.data.array_store import read_rows, take_rows
from core.data.images import SkippedFile
from core.errors import UserError

SPLITS = ("train", "validation", "test")
#: Largest / smallest class count above which classes are reported as unbalanced.
IMBALANCE_RATIO = 3.0


@dataclass
class ImageData:
    """Images and labels per split, plus what the Data page reports about them.

    splits: {split: ((N, size, size, 3) uint8 images, (N,) int32 labels)}.
    sources: {split: [where each image came from]} (a file path, or a TFDS split and index).
    digests: {split: [SHA-1 of each image's file bytes]} (folder sources only).
    ignored: hidden and tool folders left out of a folder source.
    duplicates: validation/test images that copy training images (`core.data.leakage.Duplicate`).
    allocate: `allocate(shape, dtype)` gives a new array (a memory map of the decoded-image
        cache's entry being written, see `core.data.image_cache.load`) for `keep` to copy
        kept rows into; None: in memory.
    """

    class_names: list[str]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    description: str
    skipped: list[SkippedFile] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)
    digests: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    allocate: Callable[[tuple, str], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def source(self, split: str, index: int) -> str:
        """Where image `index` of `split` came from (its file, else "split #index")."""
        names = self.sources.get(split, [])
        return names[index] if index < len(names) else f"{split} #{index}"

    def keep(self, split: str, mask: np.ndarray) -> None:
        """Keep only the rows of `split` where the boolean `mask` is true (images, labels, sources, digests)."""
        images, labels = self.splits[split]
        if self.allocate is None:
            self.splits[split] = (images[mask], labels[mask])
        else:  # block by block into a new array: the split is never in memory whole
            rows = np.flatnonzero(mask)
            self.splits[split] = (take_rows(images, rows, self.allocate((len(rows), *images.shape[1:]), images.dtype)),
                                  labels[mask])
        for per_split in (self.sources, self.digests):
            if split in per_split:
                per_split[split] = [value for value, kept in zip(per_split[split], mask) if kept]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> dict[str, list[int]]:
        """Images per class for each split."""
        return {
            split: np.bincount(labels, minlength=self.num_classes).tolist()
            for split, (_, labels) in self.splits.items()
        }

    def imbalance(self) -> float:
        """Largest over smallest class count in the training split."""
        train = self.counts()["train"]
        return max(train) / max(min(train), 1)

    def size_stats(self) -> dict[str, float]:
        """Original image sizes: min / median / max of width and height."""
        if not self.image_sizes:
            return {}
        sizes = np.asarray(self.image_sizes)
        return {
            f"{stat}_{axis}": float(fn(sizes[:, i]))
            for i, axis in enumerate(("width", "height"))
            for stat, fn in (("min", np.min), ("median", np.median), ("max", np.max))
        }

    def tf_dataset(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0):
        """A batched tf.data pipeline of (float32 images in [0, 255], int32 labels); see `images_dataset`."""
        images, labels = self.splits[split]
        return images_dataset(images, labels, batch_size, shuffle, seed)


def images_dataset(images: np.ndarray, labels: np.ndarray | None, batch_size: int, shuffle: bool = False,
                   seed: int = 0):
    """A batched, prefetched tf.data pipeline of float32 images (N, H, W, 3) in [0, 255]
    (with their int32 labels unless `labels` is None), shuffled each epoch if asked.

    A memory map (the decoded-image cache's splits) is read batch by batch with
    `read_rows` (file reads: no page of the map stays resident), so a split larger
    than memory streams; an in-memory array is sliced by `from_tensor_slices`. Both
    give the same batches in the same order for a seed (tf.data's shuffle depends on
    the seed and the number of elements only).
    """
    import tensorflow as tf

    cast = (lambda x, y: (tf.cast(x, tf.float32), y)) if labels is not None else (lambda x: tf.cast(x, tf.float32))
    if not isinstance(images, np.memmap):
        dataset = tf.data.Dataset.from_tensor_slices((images, labels) if labels is not None else images)
        if shuffle:
            dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        return dataset.batch(batch_size).map(cast, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    labels = None if labels is None else np.asarray(labels, dtype=np.int32)

    def rows(index: np.ndarray):
        if len(index) and index[-1] - index[0] == len(index) - 1 and (np.diff(index) == 1).all():
            batch = read_rows(images, int(index[0]), int(index[-1]) + 1)  # in order: one read
        else:
            batch = np.stack([read_rows(images, int(i), int(i) + 1)[0] for i in index]) if len(index) else \
                np.zeros((0, *images.shape[1:]), images.dtype)
        return (batch, labels[index]) if labels is not None else batch

    dtype = tf.as_dtype(images.dtype)  # uint8 pixels from the cache; any dtype a memory map (or a view of one) has

    def load(index):
        if labels is None:
            batch = tf.numpy_function(rows, [index], dtype)
            return tf.ensure_shape(batch, (None, *images.shape[1:]))
        batch, batch_labels = tf.numpy_function(rows, [index], (dtype, tf.int32))
        return tf.ensure_shape(batch, (None, *images.shape[1:])), tf.ensure_shape(batch_labels, (None,))

    dataset = tf.data.Dataset.range(len(images))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.map(cast, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def check_usable(data: ImageData) -> None:
    """Refuse data that cannot train (a class without training images, no validation
    images) and note unbalanced classes.

    Raises:
        UserError: naming the classes without training images and where their images are.
    """
    counts = data.counts()
    empty = [
        f"{name!r} ({counts['validation'][i] + counts['test'][i]} in validation/test)"
        for i, name in enumerate(data.class_names) if counts["train"][i] == 0
    ]
    if empty:
        raise UserError(
            f"No training images for class(es): {', '.join(empty)}.",
            "Add training images for those classes (train/<class>/), or remove them from validation/test.",
        )
    if sum(counts["validation"]) == 0:
        raise UserError("The validation split is empty.", "Add images or raise the validation fraction.")
    ratio = data.imbalance()
    if ratio > IMBALANCE_RATIO:
        data.notes.append(
            f"Classes are unbalanced: the largest has {ratio:.1f}x the images of the smallest. "
            "Consider class weights when training."
        )



def class_counts_table(data: ImageData) -> list[dict]:
    """Long-format rows (split, class, images) for charts and tables."""
    return [
        {"split": split, "class": data.class_names[i], "images": n}
        for split, per_class in data.counts().items()
        for i, n in enumerate(per_class)
    ]
