"""Two learning rates in one fit: the backbone's unfrozen top at one, the new head at another."""
from __future__ import annotations

import keras
import tensorflow as tf


class TwoRateModel(keras.Model):
    """Trains `inner` with the compiled optimizer for the backbone's variables and
    `head_optimizer` for the head's (the flowers blog's separate learning rates).

    inner: the model that trains (inputs -> logits); head_ids: `id()` of the head's
    variables (`Classifier.head_weight_ids`); head_optimizer: a Keras optimizer.
    Follows the Keras guide "Customizing what happens in fit()".
    """

    def __init__(self, *, inner: keras.Model, head_ids: set[int], head_optimizer: keras.optimizers.Optimizer):
        super().__init__()
        self.inner, self.head_ids, self.head_optimizer = inner, head_ids, head_optimizer

    def call(self, inputs, training=False):
        return self.inner(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        pairs = list(zip(gradients, variables))
        self.optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) not in self.head_ids])
        self.head_optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) in self.head_ids])
        results = {}
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred, sample_weight=sample_weight)
            result = metric.result()
            results.update(result if isinstance(result, dict) else {metric.name: result})
        return results
