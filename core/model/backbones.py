"""Registry of pretrained backbones: constructor, preprocessing, sizes and weights files.

Every backbone is a `keras.applications` model loaded without its top
(`include_top=False`). Each needs its inputs preprocessed the way it was trained;
`Preprocess` does that as a layer inside the model, so the model takes raw pixels.
"""
from __future__ import annotations

import contextlib
import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from core import settings
from core.config import DEFAULT_FINE_TUNE
from core.errors import UserError

#: Preprocessing modes, as in `keras.applications.imagenet_utils.preprocess_input`,
#: plus "none" for models that preprocess inside themselves.
PREPROCESSING_MODES = ("tf", "caffe", "torch", "none")
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)

#: The default cuts of the references' backbones: MobileNetV2 from layer 125 (`DEFAULT_FINE_TUNE`,
#: its last three blocks; the TF tutorial's 100 is `core.config.TUTORIAL_CUT`) and Deep Learning
#: with Python's VGG16 from block5_conv1.
REFERENCE_CUTS = {"MobileNetV2": DEFAULT_FINE_TUNE.fine_tune_at, "VGG16": "block5_conv1"}


@dataclass(frozen=True)
class Backbone:
    """What the app needs to know about one `keras.applications` backbone.

    constructor: the `keras.applications` function (with fixed options bound).
    family: the `keras.applications` submodule holding its `preprocess_input`.
    preprocessing: "tf" (scale to [-1, 1]), "caffe" (RGB->BGR, subtract the
        ImageNet mean), "torch" (scale to [0, 1], normalise by ImageNet mean and
        std) or "none" (the model preprocesses raw pixels itself).
    default_size: suggested input size in pixels (square images).
    min_size: the smallest input size the architecture accepts.
    weight_sizes: the input sizes ImageNet weights exist for; None when the
        weights fit any size >= min_size.
    params: parameter count without the top.
    depth: number of layers without the top (`len(model.layers)`, the input layer included).
    download_mb: approximate size of the ImageNet weights download.
    weights_pattern: the file name Keras caches the weights under; "{size}"
        stands for the input size.
    """

    name: str
    constructor: Callable[..., keras.Model]
    family: str
    preprocessing: str
    default_size: int
    min_size: int
    weight_sizes: tuple[int, ...] | None
    params: int
    depth: int
    download_mb: float
    weights_pattern: str

    @property
    def fine_tune_at(self) -> str:
        """Where fine-tuning starts by default (`TrainConfig.fine_tune_at`): the references'
        cut for their backbones (`REFERENCE_CUTS`), else the layer at two thirds of the depth."""
        return REFERENCE_CUTS.get(self.name, str(round(self.depth * 2 / 3)))

    def weights_file(self, image_size: int) -> str:
        """The ImageNet weights file name Keras caches for this input size."""
        return self.weights_pattern.format(size=image_size)

    def weights_cached(self, image_size: int) -> bool:
        """Whether the ImageNet weights for this size are already in the Keras cache."""
        return (settings.keras_models_dir() / self.weights_file(image_size)).is_file()

    def allowed_sizes(self, weights: str = "imagenet") -> str:
        """The input sizes this backbone accepts with these weights, in words."""
        if weights == "imagenet" and self.weight_sizes:
            return ", ".join(str(size) for size in self.weight_sizes)
        return f"any size >= {self.min_size}"

    def preprocess_input(self, x):
        """The family's own `keras.applications.<family>.preprocess_input`."""
        return getattr(keras.applications, self.family).preprocess_input(x)


def _registry(*backbones: Backbone) -> dict[str, Backbone]:
    return {backbone.name: backbone for backbone in backbones}


_MOBILENET_SIZES = (128, 160, 192, 224)
_MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)

BACKBONES: dict[str, Backbone] = _registry(
    Backbone(
        "MobileNetV2", keras.applications.MobileNetV2, "mobilenet_v2", "tf",
        160, 32, _MOBILENET_V2_SIZES, 2_257_984, 154, 9.4,
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5",
    ),
    Backbone(
        # Width multiplier alpha=0.25: the smallest, fastest MobileNet.
        "MobileNet", functools.partial(keras.applications.MobileNet, alpha=0.25),
        "mobilenet", "tf", 160, 32, _MOBILENET_SIZES, 218_544, 86, 2.1,
        "mobilenet_2_5_{size}_tf_no_top.h5",
    ),
    Backbone(
        "MobileNetV3Small", keras.applications.MobileNetV3Small, "mobilenet_v3",
        "none", 224, 32, None, 939_120, 157, 4.3,
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    ),
    Backbone(
        "MobileNetV3Large", keras.applications.MobileNetV3Large, "mobilenet_v3",
        "none", 224, 32, None, 2_996_352, 187, 12.7,
        "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    ),
    Backbone(
        "EfficientNetB0", keras.applications.EfficientNetB0, "efficientnet",
        "none", 224, 32, None, 4_049_571, 237, 16.7, "efficientnetb0_notop.h5",
    ),
    Backbone(
        "ResNet50", keras.applications.ResNet50, "resnet50", "caffe",
        224, 32, None, 23_587_712, 175, 94.7,
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    Backbone(
        "ResNet50V2", keras.applications.ResNet50V2, "resnet_v2", "tf",
        224, 32, None, 23_564_800, 190, 94.7,
        "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    Backbone(
        "Xception", keras.applications.Xception, "xception", "tf",
        299, 71, None, 20_861_480, 132, 83.7,
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    Backbone(
        "InceptionV3", keras.applications.InceptionV3, "inception_v3", "tf",
        299, 75, None, 21_802_784, 311, 87.9,
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    Backbone(
        "DenseNet121", keras.applications.DenseNet121, "densenet", "torch",
        224, 32, None, 7_037_504, 427, 29.1,
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    Backbone(
        "VGG16", keras.applications.VGG16, "vgg16", "caffe",
        224, 32, None, 14_714_688, 19, 58.9,
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    Backbone(
        "ConvNeXtTiny", keras.applications.ConvNeXtTiny, "convnext", "none",
        224, 32, None, 27_820_128, 133, 111.3, "convnext_tiny_notop.h5",
    ),
)

DEFAULT_BACKBONE = "MobileNetV2"


class WeightsUnavailableError(UserError):
    """ImageNet weights are neither in the Keras cache nor downloadable."""

    def __init__(self, backbone: str, file_name: str, directory: Path, reason: str):
        self.file_name = file_name
        self.directory = directory
        super().__init__(
            f"ImageNet weights for {backbone} are not available: {file_name} is not "
            f"in {directory} and could not be downloaded ({reason}).",
            f"Place {file_name} in {directory} (the folder is $KERAS_HOME/models, "
            "default ~/.keras/models), point the weights setting at a weights file, "
            "or choose weights 'none' to train from scratch.",
        )


@keras.saving.register_keras_serializable(package="core")
class Preprocess(keras.layers.Layer):
    """A backbone's input preprocessing, for float pixels in [0, 255].

    Computes exactly what `keras.applications.<family>.preprocess_input` does
    for `mode` ("tf", "caffe", "torch" or "none"), as a serializable layer, so
    saved models load in safe mode.
    """

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"mode must be one of {PREPROCESSING_MODES}, got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            return (x / 255.0 - _constant(_TORCH_MEAN, x)) / _constant(_TORCH_STD, x)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - _constant(_CAFFE_MEAN_BGR, x)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _constant(values: tuple[float, ...], like):
    return ops.convert_to_tensor(values, dtype=like.dtype)




def get_backbone_spec(name: str) -> Backbone:
    """The registry entry for `name`; UserError naming the choices if unknown."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise UserError(
            f"Unknown backbone {name!r}.",
            f"Choose one of: {', '.join(BACKBONES)}.",
        ) from None


def check_image_size(spec: Backbone, image_size: int, weights: str = "imagenet") -> None:
    """UserError when `image_size` does not fit the backbone with these weights."""
    if image_size < spec.min_size or (
        weights == "imagenet" and spec.weight_sizes and image_size not in spec.weight_sizes
    ):
        raise UserError(
            f"Image size {image_size} does not fit {spec.name} with {weights} weights.",
            f"Allowed sizes: {spec.allowed_sizes(weights)}.",
        )


#: Backbones built ahead of time by `prebuild`, or kept by `reuse`, by (name, image size);
#: each is handed out once, outside any distribution strategy's scope.
_PREBUILT: dict[tuple[str, int], keras.Model] = {}


def prebuild(name: str, image_size: int) -> None:
    """Build `name` with ImageNet weights for `image_size` now, for the next `load_backbone`
    with the same arguments to take instead of building it (a warm worker does this while it
    waits for its job: building MobileNetV2 takes a fresh process about 2 s).

    Only ImageNet weights are prebuilt: they are the same whenever they are loaded, so a
    prebuilt backbone is the one `load_backbone` would build. Only weights already in the
    Keras cache: a prebuild never downloads (offline, a download could keep the job that
    comes meanwhile waiting); without them it builds nothing. Raises what `load_backbone` raises.
    """
    if get_backbone_spec(name).weights_cached(image_size):
        _PREBUILT[(name, image_size)] = load_backbone(name, image_size, "imagenet")


def reuse(backbone: keras.Model, name: str, image_size: int) -> None:
    """Keep `backbone` (`name` with ImageNet weights for `image_size`) for the next
    `load_backbone` with the same arguments to take, as a prebuilt one, so a next job in
    this process does not build it again (MobileNetV2: about 1 s).

    Call it when a job that kept the backbone frozen ends: its weights are then still the
    ImageNet ones as loaded. Its layers are made trainable again, as a new backbone's
    are. Only the last one kept is held (it replaces any other), so memory holds one
    backbone at most. A backbone made under a strategy with several replicas (mirrored
    variables) is not kept: one made outside it is what `load_backbone` builds there.
    """
    if any(isinstance(variable.value, tf.distribute.DistributedValues) for variable in backbone.weights):
        return
    backbone.trainable = True
    _PREBUILT.clear()
    _PREBUILT[(name, image_size)] = backbone


def load_backbone(name: str, image_size: int, weights: str = "imagenet") -> keras.Model:
    """The backbone without its top, for square RGB images of `image_size` pixels.

    weights: "imagenet" (from the Keras cache, downloaded when missing; or the one
        `prebuild` made or `reuse` kept, taken once outside a distribution strategy's
        scope), "none" (random initialisation) or the path of a
        weights file. With loaded weights, building draws nothing from the random
        generators (their states are restored), so what is built after the backbone (the
        head) is initialised the same whether the backbone was prebuilt or not.
    Raises WeightsUnavailableError when ImageNet weights cannot be had, and
    UserError for an unknown backbone, a size it does not take, or a weights
    file that is missing or does not fit.
    """
    spec = get_backbone_spec(name)
    check_image_size(spec, image_size, weights)
    input_shape = (image_size, image_size, 3)
    if weights == "none":
        return spec.constructor(include_top=False, weights=None, input_shape=input_shape)
    if weights == "imagenet" and (name, image_size) in _PREBUILT and not tf.distribute.has_strategy():
        return _PREBUILT.pop((name, image_size))
    with _random_state_kept():
        if weights == "imagenet":
            return _load_imagenet(spec, input_shape)
        model = spec.constructor(include_top=False, weights=None, input_shape=input_shape)
    _load_weights_file(model, spec, Path(weights).expanduser())
    return model


@contextlib.contextmanager
def _random_state_kept():
    """Restore Python's and NumPy's global random states on exit (Keras draws its default
    initializer seeds from Python's `random`)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _load_imagenet(spec: Backbone, input_shape: tuple[int, int, int]) -> keras.Model:
    try:
        return spec.constructor(include_top=False, weights="imagenet", input_shape=input_shape)
    except Exception as error:
        if spec.weights_cached(input_shape[0]):
            raise
        raise WeightsUnavailableError(
            spec.name, spec.weights_file(input_shape[0]), settings.keras_models_dir(), str(error)
        ) from error


def _load_weights_file(model: keras.Model, spec: Backbone, path: Path) -> None:
    if not path.is_file():
        raise UserError(
            f"Weights file {path} does not exist.",
            "Give the path of a .h5 or .weights.h5 file, or choose weights "
            "'imagenet' or 'none'.",
        )
    try:
        model.load_weights(path)
    except Exception as error:
        reason = str(error).strip().splitlines()[0].rstrip(" :.")
        raise UserError(
            f"Weights file {path} does not fit {spec.name} without its top: {reason}.",
            f"Use weights saved from a {spec.name} backbone (include_top=False), "
            "or choose weights 'imagenet' or 'none'.",
        ) from error
