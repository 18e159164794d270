"""Build the classifier, freeze and unfreeze its backbone, and report what trains.

The model takes raw pixels in [0, 255]:

    pixels -> augmentation -> preprocess -> backbone(training=False)
           -> pooling -> [hidden] -> dropout -> logits

The backbone always runs in inference mode (`training=False`), so its
BatchNormalization layers keep their ImageNet statistics even after they are
unfrozen. Keras 3 would otherwise let `fit()`'s `training=True` override the
`training=False` given when the graph was built (keras-team/keras#20285), so
the backbone sits inside an `InferenceMode` wrapper named "backbone".

Changing `trainable` takes effect for training only after `compile()`: call
`compile_model` again after every `set_trainable`.
"""
from __future__ import annotations

import difflib

import keras
import numpy as np

from core.config import ModelConfig
from core.errors import UserError
from core.model.backbones import Preprocess, get_backbone_spec, load_backbone

BACKBONE = "backbone"
POOLING_LAYERS = {"avg": keras.layers.GlobalAveragePooling2D, "flatten": keras.layers.Flatten}
OPTIMIZERS = ("adam", "rmsprop", "sgd")


@keras.saving.register_keras_serializable(package="core")
class InferenceMode(keras.layers.Wrapper):
    """Calls the wrapped layer with `training=False`, whatever its caller says.

    `enabled=False` passes `training` through instead: a backbone trained from
    scratch (random weights) needs its BatchNormalization to learn statistics.
    """

    def __init__(self, layer, enabled: bool = True, **kwargs):
        super().__init__(layer, **kwargs)
        self.enabled = enabled

    def call(self, inputs, training=None):
        return self.layer(inputs, training=False if self.enabled else training)

    def get_config(self):
        return {**super().get_config(), "enabled": self.enabled}

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


def build_model(
    model_config: ModelConfig,
    num_classes: int,
    image_size: int,
    augmentation: keras.Layer | None = None,
) -> keras.Model:
    """The classifier for `num_classes` classes, with its backbone frozen.

    Two classes get one logit (binary), more get one logit per class.
    Layers are named "augmentation" (when given), "preprocess", "backbone"
    (the `InferenceMode` wrapper; `get_backbone` returns the model inside),
    "pooling", "hidden" (when hidden_units > 0), "dropout" and "logits".
    """
    if num_classes < 2:
        raise UserError(
            f"A classifier needs at least 2 classes, got {num_classes}.",
            "Choose a dataset with two or more classes.",
        )
    if model_config.pooling not in POOLING_LAYERS:
        raise UserError(
            f"Unknown pooling {model_config.pooling!r}.",
            f"Choose one of: {', '.join(POOLING_LAYERS)}.",
        )
    if not 0.0 <= model_config.dropout < 1.0:
        raise UserError(
            f"Dropout rate {model_config.dropout} is outside [0, 1).",
            "Choose a rate such as 0.2 (0 = no dropout).",
        )
    spec = get_backbone_spec(model_config.backbone)
    backbone = load_backbone(spec.name, image_size, model_config.weights)

    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="pixels")
    x = augmentation(inputs) if augmentation is not None else inputs
    x = Preprocess(spec.preprocessing, name="preprocess")(x)
    backbone_layer = InferenceMode(backbone, enabled=model_config.weights != "none", name=BACKBONE)
    backbone_layer.trainable = False
    x = backbone_layer(x)
    x = POOLING_LAYERS[model_config.pooling](name="pooling")(x)
    return keras.Model(inputs, add_head(x, model_config, num_classes), name=f"{spec.name}_classifier")


def add_head(x, model_config: ModelConfig, num_classes: int):
    """The new head on pooled features `x`: [Dense "hidden" (ReLU)] -> Dropout -> Dense "logits"
    (one logit for two classes, else one per class). Returns the logits tensor."""
    if model_config.hidden_units:
        x = keras.layers.Dense(model_config.hidden_units, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(model_config.dropout, name="dropout")(x)
    return keras.layers.Dense(1 if num_classes == 2 else num_classes, name="logits")(x)


def get_backbone(model: keras.Model) -> keras.Model:
    """The backbone model (inside the "backbone" layer)."""
    return model.get_layer(BACKBONE).layer


def head_layers(model: keras.Model) -> list[keras.Layer]:
    """The layers after the backbone: pooling, hidden, dropout, logits."""
    position = model.layers.index(model.get_layer(BACKBONE))
    return model.layers[position + 1:]


def set_trainable(
    model: keras.Model, fine_tune_at: str | None, freeze_batchnorm: bool = False
) -> int:
    """Freeze the backbone up to `fine_tune_at`; the head always trains.

    fine_tune_at: None (backbone frozen), "all", a layer index as digits
        (layers from that index on train, as the tutorial's fine_tune_at = 100)
        or a backbone layer name (that layer and those after it train, as the
        book's "block5_conv1").
    freeze_batchnorm: keep BatchNormalization layers frozen when unfreezing.
    Returns the index of the first trainable backbone layer (the number of
    backbone layers when it is frozen). Recompile afterwards.
    """
    backbone = get_backbone(model)
    start = first_trainable_index(backbone, fine_tune_at)
    model.get_layer(BACKBONE).trainable = start < len(backbone.layers)  # sets it recursively
    for index, layer in enumerate(backbone.layers):
        is_frozen_bn = freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = backbone.trainable and index >= start and not is_frozen_bn
    for layer in head_layers(model):
        layer.trainable = True
    return start


def first_trainable_index(backbone: keras.Model, fine_tune_at: str | None) -> int:
    """The backbone layer index `fine_tune_at` means (see `set_trainable`)."""
    layers = backbone.layers
    if fine_tune_at is None:
        return len(layers)
    fine_tune_at = str(fine_tune_at).strip()
    if fine_tune_at == "all":
        return 0
    if fine_tune_at.isdigit():
        index = int(fine_tune_at)
        if index > len(layers):
            raise UserError(
                f"Layer index {index} is past the end of the backbone.",
                f"Choose an index from 0 to {len(layers)} (it has {len(layers)} layers).",
            )
        return index
    names = [layer.name for layer in layers]
    if fine_tune_at not in names:
        suggestions = difflib.get_close_matches(fine_tune_at, names, n=5) or names[-5:]
        raise UserError(
            f"The backbone has no layer named {fine_tune_at!r}.",
            f"Use 'all', a layer index or a layer name such as: {', '.join(suggestions)}.",
        )
    return names.index(fine_tune_at)


def compile_model(
    model: keras.Model,
    optimizer: str = "adam",
    learning_rate: float = 1e-3,
    num_classes: int | None = None,
) -> keras.Model:
    """Compile with the loss and accuracy that fit the logits.

    One logit: BinaryCrossentropy(from_logits=True) and accuracy thresholded at
    logit 0; several: SparseCategoricalCrossentropy(from_logits=True).
    num_classes defaults to what the "logits" layer implies.
    Call again after every change of `trainable`: it takes effect on compile.
    """
    if num_classes is None:
        units = model.get_layer("logits").units
        num_classes = 2 if units == 1 else units
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        accuracy = keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate), loss=loss, metrics=[accuracy]
    )
    return model


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """adam, rmsprop or sgd (with momentum 0.9) at `learning_rate`."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    raise UserError(f"Unknown optimizer {name!r}.", f"Choose one of: {', '.join(OPTIMIZERS)}.")


def _size(weights) -> int:
    return sum(int(np.prod(weight.shape)) for weight in weights)


def count_params(model: keras.Model) -> dict:
    """Parameter counts as Keras trains them: trainable vs non-trainable."""
    trainable = _size(model.trainable_weights)
    non_trainable = _size(model.non_trainable_weights)
    return {
        "total_params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "trainable_weight_tensors": len(model.trainable_weights),
    }


def layer_table(model: keras.Model) -> list[dict]:
    """One row per backbone layer, then per head layer.

    Backbone rows are indexed as `set_trainable` counts them; head rows
    continue the numbering. `trainable` is whether the layer trains now.
    """
    backbone = get_backbone(model)
    rows = [
        _layer_row(index, layer, backbone.trainable and layer.trainable, "backbone")
        for index, layer in enumerate(backbone.layers)
    ]
    rows += [
        _layer_row(len(backbone.layers) + offset, layer, layer.trainable, "head")
        for offset, layer in enumerate(head_layers(model))
    ]
    return rows


def _layer_row(index: int, layer: keras.Layer, trainable: bool, part: str) -> dict:
    shapes = keras.tree.map_structure(lambda tensor: tuple(tensor.shape), layer.output)
    return {
        "index": index,
        "name": layer.name,
        "type": type(layer).__name__,
        "output_shape": str(shapes),
        "params": layer.count_params(),
        "trainable": bool(trainable),
        "part": part,
    }


def summary_text(model: keras.Model, expand_nested: bool = False) -> str:
    """`model.summary(show_trainable=True)` as text.

    expand_nested: append the backbone's own summary, layer by layer.
    """
    lines: list[str] = []
    model.summary(print_fn=lines.append, show_trainable=True)
    if expand_nested:
        get_backbone(model).summary(print_fn=lines.append, show_trainable=True)
    return "\n".join(lines)


#: Layers that summarise a feature map rather than compute one: Grad-CAM looks before them.
_SUMMARY_LAYERS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
                   keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


def last_conv_layer(backbone: keras.Model) -> keras.Layer:
    """The layer whose output is the backbone's last convolutional feature map.

    The last layer with a 4-D output (batch, height, width, channels) that is not
    a pooling layer: Xception's "block14_sepconv2_act" (the Keras Grad-CAM
    example's choice), MobileNetV2's "out_relu", VGG16's "block5_conv3".
    Raises UserError when the backbone has no such layer.
    """
    for layer in reversed(backbone.layers):
        if isinstance(layer, _SUMMARY_LAYERS):
            continue
        output = layer.output
        if not isinstance(output, (list, tuple)) and len(output.shape) == 4:
            return layer
    raise UserError(f"The backbone {backbone.name} has no convolutional feature map.",
                    "Grad-CAM needs a convolutional backbone; choose one from the registry.")


def gradcam_parts(model: keras.Model) -> tuple[keras.Layer, keras.Model, list[keras.Layer]]:
    """The pieces Grad-CAM runs one after the other, as in the Keras example's `grad_model`.

    Returns (preprocess layer, a model from the backbone's input to
    [last conv feature map (N, h, w, k), backbone output], the head layers).
    Augmentation is left out: Grad-CAM explains inference.
    """
    backbone = get_backbone(model)
    conv = last_conv_layer(backbone)
    features = keras.Model(backbone.input, [conv.output, backbone.output], name="gradcam_features")
    return model.get_layer("preprocess"), features, head_layers(model)


def feature_extractor(model: keras.Model) -> keras.Model:
    """The frozen part of `model` up to its "pooling" layer: raw pixels (N, S, S, 3)
    in [0, 255] -> pooled (bottleneck) features (N, D). Augmentation is a no-op
    at inference, so these are the features the head sees at prediction time."""
    return keras.Model(model.input, model.get_layer("pooling").output, name="pooled_features")
