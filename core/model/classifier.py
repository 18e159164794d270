"""The classifier as named parts: the full Keras model and the layers it is made of.

Like fastai's `model_meta` (its `cut` and `split`), a `Classifier` knows where
the pretrained backbone ends and the new head starts, how to freeze the
backbone below a cut, how to turn what the user typed (`fine_tune_at`) into that
cut, and how to split the network there. Everything outside `core.model`
receives a `Classifier` (from `build_model`, or `Classifier.from_keras` for a
saved run's `.keras` file) instead of looking layers up by name.

    pixels -> augmentation -> preprocess -> backbone(training=False)
           -> pooling -> [hidden] -> dropout -> logits

The cut is a backbone layer index: layers `[cut:]` train, layers `[:cut]` are
frozen; `cut == depth` (the number of backbone layers) means the whole backbone
is frozen and only the head trains (feature extraction), `cut == 0` means all of
it trains. Follows the Keras guide "Transfer learning & fine-tuning" and the
TensorFlow MobileNetV2 tutorial (`fine_tune_at = 100`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import keras

from core.errors import UserError

#: The names `build_model` gives its layers; only `Classifier.from_keras` looks them up.
AUGMENTATION = "augmentation"
PREPROCESS = "preprocess"
BACKBONE = "backbone"
POOLING = "pooling"
HIDDEN = "hidden"
DROPOUT = "dropout"
LOGITS = "logits"
LAYER_NAMES = (AUGMENTATION, PREPROCESS, BACKBONE, POOLING, HIDDEN, DROPOUT, LOGITS)

#: Layers that summarise a feature map rather than compute one: Grad-CAM looks before them.
_SUMMARY_LAYERS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
                   keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


@keras.saving.register_keras_serializable(package="core")
class InferenceMode(keras.layers.Wrapper):
    """Calls the wrapped layer with `training=False`, whatever its caller says.

    Keras 3 lets `fit()`'s `training=True` override the `training=False` given
    when the graph was built (keras-team/keras#20285), so the backbone sits in
    this wrapper: its BatchNormalization keeps its ImageNet statistics even when
    unfrozen (the Keras guide's advice). `enabled=False` passes `training`
    through instead: a backbone trained from scratch (random weights) needs its
    BatchNormalization to learn statistics.
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


@dataclass(frozen=True, eq=False)
class Classifier:
    """A classifier built by `core.model.build.build_model`, as named parts.

    model: the full Keras model, raw pixels float32 (N, S, S, 3) in [0, 255] ->
        logits float32 (N, 1) for two classes, else (N, C).
    preprocess: the backbone's `preprocess_input` as a layer (`Preprocess`).
    wrapper: the `InferenceMode` layer holding the backbone.
    pooling: GlobalAveragePooling2D or Flatten: feature map -> pooled (bottleneck)
        features (N, D).
    head: the layers after the pooling: [Dense "hidden"], Dropout, Dense "logits".
    augmentation: the Random* layers (active in training only), or None.
    The parts are the model's own layer objects: freezing or training them
    changes the model.
    """

    model: keras.Model
    preprocess: keras.Layer
    wrapper: InferenceMode
    pooling: keras.Layer
    head: tuple[keras.Layer, ...]
    augmentation: keras.Layer | None = None

    @classmethod
    def from_keras(cls, model: keras.Model) -> Classifier:
        """The parts of a model `build_model` made, e.g. loaded from a run's `.keras` file.

        The one place layers are looked up by name. Raises UserError when `model`
        was not built by this project (no "backbone" or "pooling" layer).
        """
        names = [layer.name for layer in model.layers]
        missing = [name for name in (PREPROCESS, BACKBONE, POOLING) if name not in names]
        if missing:
            raise UserError(
                f"The model {model.name!r} has no {', '.join(repr(name) for name in missing)} layer: "
                "it was not built by this app.",
                "Load a model saved by a run of this app (its head.keras, best.keras or final.keras).",
            )
        pooling = model.get_layer(POOLING)
        return cls(
            model=model,
            preprocess=model.get_layer(PREPROCESS),
            wrapper=model.get_layer(BACKBONE),
            pooling=pooling,
            head=tuple(model.layers[model.layers.index(pooling) + 1:]),
            augmentation=model.get_layer(AUGMENTATION) if AUGMENTATION in names else None,
        )

    @property
    def backbone(self) -> keras.Model:
        """The pretrained `keras.applications` model inside the `InferenceMode` wrapper."""
        return self.wrapper.layer

    @property
    def depth(self) -> int:
        """The number of backbone layers: the cut of a fully frozen backbone."""
        return len(self.backbone.layers)

    def cut_at(self, fine_tune_at: str | None) -> int:
        """The cut (first trainable backbone layer index, 0..depth) that `fine_tune_at` means.

        fine_tune_at: None (backbone frozen: `depth`), "all" (0), a layer index as
            digits (layers from that index on train, as the TF tutorial's
            fine_tune_at = 100) or a backbone layer name (that layer and those
            after it train, as Deep Learning with Python's "block5_conv1").
        Raises UserError for an index past the end or an unknown layer name (with
        the closest names).
        """
        layers = self.backbone.layers
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

    def freeze(self, fine_tune_at: str | None, freeze_batchnorm: bool = False) -> int:
        """Freeze the backbone below the cut `fine_tune_at` means (see `cut_at`); the head
        always trains. Returns the cut (`depth` when the backbone is frozen).

        freeze_batchnorm: keep BatchNormalization layers frozen when unfreezing.
        Changing `trainable` takes effect on compile: recompile afterwards (the
        Keras guide's rule). Raises UserError as `cut_at` does.
        """
        backbone = self.backbone
        cut = self.cut_at(fine_tune_at)
        self.wrapper.trainable = cut < len(backbone.layers)  # sets it recursively
        for index, layer in enumerate(backbone.layers):
            is_frozen_bn = freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = backbone.trainable and index >= cut and not is_frozen_bn
        for layer in (self.pooling, *self.head):
            layer.trainable = True
        return cut

    def split_backbone(self, cut: int) -> tuple[keras.Model, keras.Model]:
        """(bottom, top): the backbone's layers[:cut] and layers[cut:], as two functional models.

        The tensors that cross the cut (several where residual connections jump
        over it) are the bottom's outputs and the top's inputs. Both share the
        backbone's layer objects.
        """
        backbone = self.backbone
        earlier = {id(layer.output): layer.output for layer in backbone.layers[:cut]}
        crossing, seen = [], set()
        for layer in backbone.layers[cut:]:
            for tensor in keras.tree.flatten(layer.input):
                if id(tensor) in earlier and id(tensor) not in seen:
                    seen.add(id(tensor))
                    crossing.append(tensor)
        for tensor in keras.tree.flatten(backbone.output):
            if id(tensor) in earlier and id(tensor) not in seen:
                crossing.append(tensor)
        return keras.Model(backbone.input, crossing), keras.Model(crossing, backbone.output)

    def split(self, cut: int, fine_tune_cut: int | None = None) -> tuple[Callable, keras.Model]:
        """(frozen, trainable): the network split at `cut`, the frozen part as a function.

        frozen: raw pixels float32 (N, S, S, 3) -> a list of float32 tensors, run in
            inference mode: the pooled (bottleneck) features (N, D) when the whole
            backbone is frozen (`cut == depth`), else the activations entering backbone
            layer `cut` (one tensor per tensor crossing the cut). With the backbone
            frozen and `fine_tune_cut` given, the activations entering that layer
            follow the features, computed in the same pass.
        trainable: a Keras model from those tensors (the features only) to the logits,
            made of this model's own layer objects, so training it trains this model.
        """
        if cut >= self.depth:
            inputs = keras.Input(self.pooling.output.shape[1:], name="features")
            logits = self._head(inputs)
            if fine_tune_cut is None:
                features = self.feature_extractor()
                return (lambda pixels: [features(pixels, training=False)]), keras.Model(inputs, logits)
            bottom, top = self.split_backbone(fine_tune_cut)

            def features_and_activations(pixels):
                activations = keras.tree.flatten(bottom(self.preprocess(pixels), training=False))
                top_input = activations if len(activations) > 1 else activations[0]
                return [self.pooling(top(top_input, training=False)), *activations]

            return features_and_activations, keras.Model(inputs, logits)
        bottom, top = self.split_backbone(cut)
        inputs = [keras.Input(tensor.shape[1:]) for tensor in keras.tree.flatten(bottom.output)]
        # InferenceMode keeps the top's BatchNormalization in inference mode under fit().
        x = InferenceMode(top, enabled=self.wrapper.enabled)(inputs if len(inputs) > 1 else inputs[0])
        return (lambda pixels: keras.tree.flatten(bottom(self.preprocess(pixels), training=False)),
                keras.Model(inputs, self._head(self.pooling(x))))

    def _head(self, x):
        for layer in self.head:
            x = layer(x)
        return x

    def head_weight_ids(self) -> set[int]:
        """`id()` of the trainable variables of the pooling and head layers (for `TwoRateModel`)."""
        return {id(v) for layer in (self.pooling, *self.head) for v in layer.trainable_weights}

    def feature_extractor(self) -> keras.Model:
        """The model up to its pooling: raw pixels (N, S, S, 3) in [0, 255] -> pooled
        (bottleneck) features float32 (N, D). Augmentation is a no-op at inference, so
        these are the features the head sees at prediction time."""
        return keras.Model(self.model.input, self.pooling.output, name="pooled_features")

    def gradcam_parts(self) -> tuple[keras.Layer, keras.Model, list[keras.Layer]]:
        """The pieces Grad-CAM runs one after the other, as in the Keras example's `grad_model`.

        Returns (preprocess layer, a model from the backbone's input to [last conv
        feature map (N, h, w, k), backbone output], [pooling, *head]). Augmentation is
        left out: Grad-CAM explains inference. Raises UserError as `last_conv_layer` does.
        """
        backbone = self.backbone
        conv = last_conv_layer(backbone)
        features = keras.Model(backbone.input, [conv.output, backbone.output], name="gradcam_features")
        return self.preprocess, features, [self.pooling, *self.head]


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
