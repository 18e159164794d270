"""Build the classifier, compile it, and report what trains.

The model takes raw pixels in [0, 255]:

    pixels -> augmentation -> preprocess -> backbone(training=False)
           -> pooling -> [hidden] -> dropout -> logits

`build_model` returns it as a `Classifier` (core.model.classifier): the Keras
model and its named parts, which freeze from a cut and split there. The
backbone always runs in inference mode (the `InferenceMode` wrapper), so its
BatchNormalization layers keep their ImageNet statistics even after they are
unfrozen.

Changing `trainable` takes effect for training only after `compile()`: call
`compile_model` again after every `Classifier.freeze` (Keras guide "Transfer
learning & fine-tuning").
"""
from __future__ import annotations

import keras
import numpy as np

from core.config import ModelConfig
from core.errors import UserError
from core.model.backbones import Preprocess, get_backbone_spec, load_backbone
from core.model.classifier import (
    BACKBONE,
    DROPOUT,
    HIDDEN,
    LOGITS,
    POOLING,
    PREPROCESS,
    Classifier,
    InferenceMode,
)

POOLING_LAYERS = {"avg": keras.layers.GlobalAveragePooling2D, "flatten": keras.layers.Flatten}
OPTIMIZERS = ("adam", "rmsprop", "sgd")


def build_model(
    model_config: ModelConfig,
    num_classes: int,
    image_size: int,
    augmentation: keras.Layer | None = None,
) -> Classifier:
    """The classifier for `num_classes` classes on `image_size`-pixel images, backbone frozen.

    Takes raw pixels float32 (N, S, S, 3) in [0, 255]; two classes get one logit
    (binary), more get one logit per class. `augmentation` (Random* layers, from
    `build_augmentation`) goes inside the model, active in training only. The
    recipe of the Keras guide "Transfer learning & fine-tuning": a pretrained
    base without its top, `training=False`, a new pooling + dropout + Dense head.
    Raises UserError for fewer than 2 classes, an unknown pooling, a dropout rate
    outside [0, 1), and whatever `load_backbone` raises (unknown backbone, size,
    weights unavailable).
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
    preprocess = Preprocess(spec.preprocessing, name=PREPROCESS)
    wrapper = InferenceMode(backbone, enabled=model_config.weights != "none", name=BACKBONE)
    wrapper.trainable = False
    pooling = POOLING_LAYERS[model_config.pooling](name=POOLING)
    model = keras.Model(inputs, add_head(pooling(wrapper(preprocess(x))), model_config, num_classes),
                        name=f"{spec.name}_classifier")
    head = model.layers[model.layers.index(pooling) + 1:]
    return Classifier(model=model, preprocess=preprocess, wrapper=wrapper, pooling=pooling, head=tuple(head),
                      augmentation=augmentation)


def add_head(x, model_config: ModelConfig, num_classes: int, dropout: keras.layers.Layer | None = None):
    """The new head on pooled features `x` (N, D): [Dense "hidden" (ReLU)] -> Dropout ->
    Dense "logits" (one logit for two classes, else one per class). Returns the
    logits tensor, float32 (N, 1) or (N, C), no activation. `dropout`: a layer to use
    instead of `keras.layers.Dropout(model_config.dropout)` (the sweep's, whose rate varies)."""
    if model_config.hidden_units:
        x = keras.layers.Dense(model_config.hidden_units, activation="relu", name=HIDDEN)(x)
    x = (dropout or keras.layers.Dropout(model_config.dropout, name=DROPOUT))(x)
    return keras.layers.Dense(1 if num_classes == 2 else num_classes, name=LOGITS)(x)


def compile_model(
    model: keras.Model,
    optimizer: str = "adam",
    learning_rate: float = 1e-3,
    num_classes: int | None = None,
    steps_per_execution: int = 1,
) -> keras.Model:
    """Compile with the loss and accuracy that fit the logits; returns `model`.

    One logit: BinaryCrossentropy(from_logits=True) and accuracy thresholded at
    logit 0; several: SparseCategoricalCrossentropy(from_logits=True), labels int (N,).
    num_classes defaults to what the model's output width implies (1 -> 2 classes).
    Call again after every change of `trainable`: it takes effect on compile.
    `steps_per_execution` batches run per traced call (Keras' option; callbacks' batch
    hooks then fire once per call).
    Raises UserError for an unknown optimizer.
    """
    if num_classes is None:
        units = model.outputs[0].shape[-1]
        num_classes = 2 if units == 1 else units
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        accuracy = keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate), loss=loss, metrics=[accuracy],
        steps_per_execution=steps_per_execution,
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
    """Parameter counts as Keras trains them (after the last `trainable` change):
    total_params, trainable_params, non_trainable_params and
    trainable_weight_tensors (the number of trainable variables), all ints."""
    trainable = _size(model.trainable_weights)
    non_trainable = _size(model.non_trainable_weights)
    return {
        "total_params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "trainable_weight_tensors": len(model.trainable_weights),
    }


def layer_table(classifier: Classifier) -> list[dict]:
    """One row per backbone layer, then per layer after it (pooling and head).

    Backbone rows are indexed as a cut counts them (`Classifier.cut_at`); head
    rows continue the numbering. Each row: index, name, type, output_shape (text),
    params (count), trainable (whether the layer trains now), part ("backbone" or "head").
    """
    backbone = classifier.backbone
    rows = [
        _layer_row(index, layer, backbone.trainable and layer.trainable, "backbone")
        for index, layer in enumerate(backbone.layers)
    ]
    rows += [
        _layer_row(len(backbone.layers) + offset, layer, layer.trainable, "head")
        for offset, layer in enumerate((classifier.pooling, *classifier.head))
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


def summary_text(classifier: Classifier, expand_nested: bool = False) -> str:
    """The Keras model's `summary(show_trainable=True)` as text.

    expand_nested: append the backbone's own summary, layer by layer.
    """
    lines: list[str] = []
    classifier.model.summary(print_fn=lines.append, show_trainable=True)
    if expand_nested:
        classifier.backbone.summary(print_fn=lines.append, show_trainable=True)
    return "\n".join(lines)
