"""Data augmentation: an `AugmentConfig` becomes a Keras `Sequential` of Random* layers.

The layers sit inside the model, so they are active in training and a no-op at
inference, and an exported model needs no separate pipeline. They work on raw
pixels in [0, 255].
"""
from __future__ import annotations

import dataclasses

import numpy as np

from core.config import AugmentConfig
from core.errors import UserError

FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")


def validate(config: AugmentConfig) -> AugmentConfig:
    """Raise a UserError for values the Keras layers would reject."""
    if config.flip not in FLIP_MODES:
        raise UserError(f"Unknown flip mode {config.flip!r}.", f"Use one of: {', '.join(FLIP_MODES)}.")
    for name in ("rotation", "zoom", "translation", "contrast", "brightness"):
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise UserError(f"Augmentation {name}={value} is out of range.", "Use a factor between 0 and 1.")
    return config


def build_augmentation(config: AugmentConfig, seed: int | None = None):
    """A `keras.Sequential` of the Random* layers that `config` switches on, or None."""
    import keras

    validate(config)
    layers = []
    if config.flip != "none":
        layers.append(keras.layers.RandomFlip(config.flip, seed=seed))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation, seed=seed))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, seed=seed))
    if config.translation:
        layers.append(keras.layers.RandomTranslation(config.translation, config.translation, seed=seed))
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed))
    if config.brightness:
        layers.append(keras.layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed))
    if not layers:
        return None
    return keras.Sequential(layers, name="augmentation")


def preview(image: np.ndarray, config: AugmentConfig, count: int = 9, seed: int | None = None) -> np.ndarray:
    """`count` random augmentations of one image (H, W, 3) as uint8, like the Keras guide's 3x3 grid."""
    import keras

    augmentation = build_augmentation(config, seed=seed)
    batch = np.repeat(image[None].astype("float32"), count, axis=0)
    if augmentation is None:
        return batch.astype("uint8")
    out = keras.ops.convert_to_numpy(augmentation(batch, training=True))
    return np.clip(out, 0, 255).astype("uint8")


def parse_spec(spec: str) -> AugmentConfig:
    """Parse the CLI's `--augment` text, e.g. "flip=horizontal,rotation=0.1,zoom=0.1".

    "none" switches everything off; unnamed factors are 0 and flip is "none".
    """
    spec = spec.strip()
    values: dict[str, object] = {f.name: 0.0 for f in dataclasses.fields(AugmentConfig)}
    values["flip"] = "none"
    if spec and spec != "none":
        for item in spec.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in values:
                raise UserError(
                    f"Cannot read augmentation {item!r}.",
                    "Write key=value pairs separated by commas, keys: "
                    + ", ".join(values) + " (e.g. flip=horizontal,rotation=0.1).",
                )
            try:
                values[key] = value.strip() if key == "flip" else float(value)
            except ValueError:
                raise UserError(f"Augmentation {key} needs a number, got {value!r}.") from None
    return validate(AugmentConfig(**values))


def to_spec(config: AugmentConfig) -> str:
    """Inverse of `parse_spec`."""
    parts = [f"flip={config.flip}"] if config.flip != "none" else []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name != "flip" and value:
            parts.append(f"{field.name}={value:g}")
    return ",".join(parts) or "none"
