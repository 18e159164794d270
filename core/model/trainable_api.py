"""The Keras guide "Transfer learning & fine-tuning": its trainable-API experiments,
run live for the Model page. Each experiment runs as shown: its source is the code the UI displays.
"""
from __future__ import annotations

import inspect
import textwrap

import keras
import numpy as np

# The Keras guide "Transfer learning & fine-tuning", its trainable-API experiments.
# Each runs as shown: its source is the code the UI displays.


def _dense_weights():
    layer = keras.layers.Dense(3)
    layer.build((None, 4))  # Create the weights
    return {
        "weights": len(layer.weights),
        "trainable_weights": len(layer.trainable_weights),
        "non_trainable_weights": len(layer.non_trainable_weights),
    }


def _batchnorm_weights():
    layer = keras.layers.BatchNormalization()
    layer.build((None, 4))  # Create the weights
    return {
        "weights": len(layer.weights),
        "trainable_weights": len(layer.trainable_weights),
        "non_trainable_weights": len(layer.non_trainable_weights),
    }


def _frozen_dense_weights():
    layer = keras.layers.Dense(3)
    layer.build((None, 4))  # Create the weights
    layer.trainable = False  # Freeze the layer
    return {
        "weights": len(layer.weights),
        "trainable_weights": len(layer.trainable_weights),
        "non_trainable_weights": len(layer.non_trainable_weights),
    }


def _frozen_weights_do_not_train():
    layer1 = keras.layers.Dense(3, activation="relu")
    layer2 = keras.layers.Dense(3, activation="sigmoid")
    model = keras.Sequential([keras.Input(shape=(3,)), layer1, layer2])
    layer1.trainable = False  # Freeze the first layer
    initial_layer1_weights = [w.numpy() for w in layer1.weights]
    initial_layer2_weights = [w.numpy() for w in layer2.weights]
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.random.random((2, 3)), np.random.random((2, 3)), verbose=0)
    return {
        "layer1_max_change": float(max(
            np.abs(w.numpy() - w0).max() for w, w0 in zip(layer1.weights, initial_layer1_weights)
        )),
        "layer2_max_change": float(max(
            np.abs(w.numpy() - w0).max() for w, w0 in zip(layer2.weights, initial_layer2_weights)
        )),
    }


def _recursive_freezing():
    inner_model = keras.Sequential([
        keras.Input(shape=(3,)),
        keras.layers.Dense(3, activation="relu"),
        keras.layers.Dense(3, activation="relu"),
    ])
    model = keras.Sequential([
        keras.Input(shape=(3,)),
        inner_model,
        keras.layers.Dense(3, activation="sigmoid"),
    ])
    model.trainable = False  # Freeze the outer model
    return {
        "inner_model_trainable": inner_model.trainable,
        "inner_layer_trainable": inner_model.layers[0].trainable,
        "trainable_weights": len(model.trainable_weights),
        "non_trainable_weights": len(model.non_trainable_weights),
    }


_EXPERIMENTS = (
    ("A Dense layer has 2 trainable weights (kernel and bias)", _dense_weights),
    ("BatchNormalization has 2 trainable and 2 non-trainable weights", _batchnorm_weights),
    ("trainable = False moves a layer's weights to non_trainable_weights", _frozen_dense_weights),
    ("Frozen weights do not change during fit()", _frozen_weights_do_not_train),
    ("Freezing a model freezes its inner layers recursively", _recursive_freezing),
)


def _body_source(function) -> str:
    lines = inspect.getsource(function).splitlines()[1:]
    return textwrap.dedent("\n".join(lines))


def trainable_api_demo() -> list[dict]:
    """Run the guide's trainable-API experiments live.

    Returns one entry per experiment: its title, the code that ran and the
    numbers it measured.
    """
    return [
        {"title": title, "code": _body_source(experiment), "measured": experiment()}
        for title, experiment in _EXPERIMENTS
    ]
