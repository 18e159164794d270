"""A head on pooled features whose dropout rate is a variable, for a sweep's trials.

`tunable_head` builds the head of `build.add_head` on features alone, with
`TunableDropout` in place of Keras' Dropout: a sweep then traces one training step
for every dropout rate it tries (`core.training.sweep.TrialHeads`). `set_dropout`
sets the rate; `copy_head_weights` puts a trained head's weights into the same
layers of another head (a `Classifier`'s).
"""
from __future__ import annotations

import keras

from core.config import ModelConfig
from core.model.build import DROPOUT, add_head


class TunableDropout(keras.layers.Layer):
    """Dropout whose rate is a variable (`rate`, float32 scalar in [0, 1)). In training
    each unit is kept with probability 1 - rate and scaled by 1 / (1 - rate), as in
    `keras.layers.Dropout`; otherwise it passes its input through. Named as the head's
    Dropout. seed: its random stream's seed (`keras.random.SeedGenerator`)."""

    def __init__(self, seed: int, **kwargs):
        super().__init__(name=DROPOUT, **kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        self.rate = self.add_weight(shape=(), initializer="zeros", trainable=False, name="rate")

    def call(self, inputs, training=False):
        if not training:
            return inputs
        kept = keras.random.uniform(keras.ops.shape(inputs), seed=self.seed_generator) >= self.rate
        return keras.ops.where(kept, inputs / (1.0 - self.rate), 0.0)


def tunable_head(feature_shape: tuple[int, ...], hidden_units: int, num_classes: int, seed: int) -> keras.Model:
    """The head of `add_head` on features of `feature_shape` (one example's, e.g. (1280,)),
    float32 in, logits out, with a `TunableDropout` (rate 0 until `set_dropout`)."""
    inputs = keras.Input(feature_shape, name="features")
    return keras.Model(inputs, add_head(inputs, ModelConfig(hidden_units=hidden_units), num_classes,
                                        dropout=TunableDropout(seed)))


def set_dropout(head: keras.Model, rate: float) -> None:
    """Set the dropout rate of a `tunable_head` (in [0, 1))."""
    head.get_layer(DROPOUT).rate.assign(float(rate))


def copy_head_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy the weights of each of `target`'s trainable layers from `source`'s layer of the
    same name (heads made by `add_head`: "hidden", "logits"). Raises ValueError when
    `source` lacks one of them or its shapes differ."""
    for layer in target.layers:
        if layer.trainable_weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
