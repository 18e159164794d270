"""The portable classifier: the run's model rebuilt from Keras' own layers only.

A run's model holds two of this project's layers: `Preprocess` (the backbone's
`preprocess_input` as a layer) and `InferenceMode` (the wrapper that keeps the
backbone's BatchNormalization in inference mode while training). A `.keras`
file that contains them loads only where this project is importable. What
leaves the project is therefore rebuilt as

    pixels -> <preprocessing as built-in layers> -> backbone -> pooling -> [hidden] -> dropout -> logits

- preprocessing "tf" (x / 127.5 - 1) is `Rescaling(1/127.5, offset=-1)`;
- "torch" ((x / 255 - mean) / std) is `Normalization(mean=255 mean, variance=(255 std)^2)`;
- "caffe" (RGB->BGR, minus the ImageNet BGR mean) is an affine per-pixel colour
  map: a frozen `Dense(3)` on the channel axis whose kernel swaps R and B and
  whose bias is minus the mean (exact: the kernel holds only 0 and 1);
- "none" (the backbone preprocesses inside itself) needs nothing;
- the `InferenceMode` wrapper is dropped: at inference the backbone runs with
  `training=False` either way;
- the augmentation is dropped: Random* layers are the identity at inference.

The backbone, pooling and head layers are the run model's own layer objects,
so the trained weights are the same tensors, not copies that could drift.
Built-in here means `keras.layers` plus the layers of `keras.applications`
(e.g. ConvNeXt's LayerScale), which plain Keras deserialises from its own modules.
"""
from __future__ import annotations

import keras
import numpy as np

from core.model.backbones import _CAFFE_MEAN_BGR, _TORCH_MEAN, _TORCH_STD
from core.model.classifier import Classifier

#: The layer that takes over from the project's `Preprocess`.
PREPROCESSING = "preprocessing"


def preprocessing_layer(mode: str) -> keras.Layer | None:
    """A built-in Keras layer computing `keras.applications` preprocessing `mode` on pixels in [0, 255].

    mode: "tf", "torch", "caffe" or "none" (None is returned: nothing to do).
    Input and output are float32 (N, H, W, 3). Follows
    `keras.applications.imagenet_utils.preprocess_input`.
    """
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=PREPROCESSING)
    if mode == "torch":
        mean = 255.0 * np.asarray(_TORCH_MEAN)
        variance = (255.0 * np.asarray(_TORCH_STD)) ** 2
        return keras.layers.Normalization(axis=-1, mean=mean, variance=variance, name=PREPROCESSING)
    if mode == "caffe":
        layer = keras.layers.Dense(3, name=PREPROCESSING, trainable=False)
        layer.build((None, 3))
        swap_red_blue = np.eye(3, dtype="float32")[::-1]  # out[c] = in[2 - c]
        layer.set_weights([swap_red_blue, -np.asarray(_CAFFE_MEAN_BGR, dtype="float32")])
        return layer
    if mode == "none":
        return None
    raise ValueError(f"Unknown preprocessing mode {mode!r}")


def portable_model(model: keras.Model) -> keras.Model:
    """The inference-time equivalent of a model made by `core.model.build.build_model`.

    Takes and returns what the run's model does: raw pixels float32
    (N, S, S, 3) in [0, 255] -> logits float32 (N, 1) or (N, C). Its layers
    are all Keras' own, so `keras.saving.load_model(path, safe_mode=True)`
    loads it where this project is not installed. Called with `training=True`
    (e.g. to fine-tune it elsewhere) its BatchNormalization and Dropout train,
    as any Keras model's do; the run's own checkpoints keep the wrapper.
    Raises UserError for a model this app did not build.
    """
    parts = Classifier.from_keras(model)
    inputs = keras.Input(shape=model.inputs[0].shape[1:], dtype="float32", name="pixels")
    layer = preprocessing_layer(parts.preprocess.mode)
    x = layer(inputs) if layer is not None else inputs
    x = parts.pooling(parts.backbone(x))
    for head_layer in parts.head:
        x = head_layer(x)
    return keras.Model(inputs, x, name=model.name)

