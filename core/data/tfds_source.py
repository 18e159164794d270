"""TensorFlow Datasets as a data source (cats_vs_dogs, tf_flowers, any image classification set).

Uses the real download path (`download_and_prepare` into the TFDS data dir);
offline, a failed download becomes a UserError that says what to do.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from core import settings
from core.config import DataConfig
from core.data.image_data import SPLITS, ImageData, check_usable
from core.errors import UserError

#: Suggested datasets, with the split expressions that suit them.
SUGGESTED = {
    "cats_vs_dogs": ("train[:40%]", "train[40%:50%]", "train[50%:60%]"),
    "tf_flowers": ("train[:70%]", "train[70%:85%]", "train[85%:]"),
}


_SPLIT_HINT = "Use TFDS split syntax such as train[:40%], train[40%:50%], train[50%:60%]."


def _check_splits(splits) -> None:
    """Refuse malformed split expressions before anything is downloaded."""
    import tensorflow_datasets as tfds

    for split in splits:
        try:
            tfds.core.ReadInstruction.from_spec(split)
        except ValueError:
            raise UserError(f"Cannot read the split expression {split!r}.", _SPLIT_HINT) from None




def describe(name: str) -> str:
    """One line on a dataset for the Data page: its size and whether it must be downloaded."""
    builder = _builder(name)
    info = builder.info
    count = f"{info.splits.total_num_examples:,} images, " if info.splits.total_num_examples else ""
    if builder.data_path.exists():
        return f"{name}: {count}prepared in {settings.tfds_data_dir()}"
    size = f" ({info.download_size})" if info.download_size else ""
    return f"{name}: {count}downloads{size} into {settings.tfds_data_dir()} on first use"


def broken_install(error: ModuleNotFoundError) -> UserError:
    """A module TFDS needs is missing: a broken install, not a network failure."""
    return UserError(
        f"TensorFlow Datasets cannot run: the Python module {error.name!r} is not installed "
        "(a broken install, not a network problem).",
        f"Install the pinned requirements: pip install -r requirements.txt (or: pip install {error.name}).",
    )


def _builder(name: str):
    try:
        import tensorflow_datasets as tfds

        return tfds.builder(name, data_dir=str(settings.tfds_data_dir()))
    except ModuleNotFoundError as error:
        raise broken_install(error) from None
    except Exception as error:  # DatasetNotFoundError and friends
        raise UserError(
            f"TensorFlow Datasets has no dataset {name!r}.",
            f"Check the name (e.g. {', '.join(SUGGESTED)}). ({type(error).__name__})",
        ) from None


def load_tfds(config: DataConfig, progress: Callable[[int, int], None] | None = None):
    """Download (if needed) and load `config.name` with `config.tfds_splits`, resized to uint8 arrays."""
    import tensorflow as tf


    builder = _builder(config.name)
    _check_splits(config.tfds_splits)
    try:
        builder.download_and_prepare()
    except ModuleNotFoundError as error:  # TFDS imports some modules lazily, on first download
        raise broken_install(error) from None
    except Exception as error:
        raise UserError(
            f"Could not download the TFDS dataset {config.name!r} into {settings.tfds_data_dir()}: "
            f"{type(error).__name__}: {str(error)[:200]}",
            "Connect to the internet once (TFDS keeps a prepared copy), copy a prepared copy into that "
            "directory (or set TFDS_DATA_DIR), or use the built-in demo, a folder or a zip upload instead.",
        ) from None
    info = builder.info
    if not info.supervised_keys:
        raise UserError(f"{config.name!r} is not an image classification dataset.", "Pick one with labels.")
    class_names = list(info.features[info.supervised_keys[1]].names)
    try:
        datasets = builder.as_dataset(split=list(config.tfds_splits), as_supervised=True)
    except Exception as error:
        raise UserError(f"Invalid split in {list(config.tfds_splits)}: {str(error)[:200]}", _SPLIT_HINT) from None

    size = config.image_size

    def resize(image, label):
        shape = tf.shape(image)[:2]
        image = tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image[..., :3]
        resized = tf.cast(tf.clip_by_value(tf.image.resize(image, (size, size), antialias=True), 0, 255), tf.uint8)
        return resized, label, shape

    total = _num_examples(info, config.tfds_splits)
    done, splits, image_sizes = 0, {}, []
    for name, dataset in zip(SPLITS, datasets):
        images, labels = [], []
        for image, label, shape in dataset.map(resize, num_parallel_calls=tf.data.AUTOTUNE).as_numpy_iterator():
            images.append(image)
            labels.append(label)
            image_sizes.append((int(shape[1]), int(shape[0])))
            done += 1
            if progress and done % 64 == 0:
                progress(done, max(total, done))
        splits[name] = (np.stack(images) if images else np.zeros((0, size, size, 3), "uint8"), np.asarray(labels, "int32"))
    data = ImageData(
        class_names=class_names,
        splits=splits,
        description=f"TFDS {config.name} ({', '.join(config.tfds_splits)})",
        image_sizes=image_sizes,
    )
    check_usable(data)
    return data


def _num_examples(info, splits) -> int:
    """How many examples the split expressions select (0 when the info does not say)."""
    try:
        return sum(int(info.splits[split].num_examples) for split in splits)
    except (KeyError, ValueError):
        return 0
