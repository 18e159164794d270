"""The portable model: built-in Keras layers only, the run model's outputs, loadable by plain Keras.

Every backbone of the registry is checked (random weights, at its smallest
input size): the portable model gives the run model's logits, holds no layer of
this project, and loads with `keras.saving.load_model(path, safe_mode=True)` in
an isolated Python (`python -I`, run from a temporary folder) that predicts the same.
"""
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from core.config import AugmentConfig, ModelConfig
from core.model.augmentation import build_augmentation
from core.model.backbones import BACKBONES, PREPROCESSING_MODES, Preprocess
from core.model.build import build_model
from core.results.portable import portable_model, preprocessing_layer

PIXELS = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")

FRESH_PREDICT = """
import json, sys
import keras, numpy as np
out = {}
for name in sys.argv[1].split(","):
    model = keras.saving.load_model(name + ".keras", safe_mode=True)
    out[name] = model.predict(np.load(name + ".npy"), verbose=0).tolist()
print(json.dumps(out))
"""


@pytest.mark.parametrize("mode", PREPROCESSING_MODES)
def test_builtin_preprocessing_computes_what_preprocess_does(mode):
    layer = preprocessing_layer(mode)
    expected = np.asarray(Preprocess(mode)(PIXELS))
    actual = PIXELS if layer is None else np.asarray(layer(PIXELS))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-4)
    if layer is not None:
        assert type(layer).__module__.startswith("keras.") and not layer.trainable_weights


def test_caffe_preprocessing_is_the_keras_applications_one():
    """ResNet50's own preprocess_input (RGB->BGR, minus the ImageNet mean) on the same pixels."""
    expected = keras.applications.resnet50.preprocess_input(PIXELS.copy())
    np.testing.assert_allclose(np.asarray(preprocessing_layer("caffe")(PIXELS)), expected, atol=1e-4)


def project_layers(model: keras.Model) -> list[str]:
    """Names of layers, at any depth, whose class is not Keras' own."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not type(layer).__module__.startswith("keras."):
            found.append(f"{layer.name} ({type(layer).__name__})")
    return found


def logits(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The model's inference output (training=False, as predict() runs it), as NumPy."""
    return keras.ops.convert_to_numpy(model(images, training=False))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{backbone: (run model logits, portable model logits, project layers)} with each portable model
    saved as <backbone>.keras beside its input pixels <backbone>.npy."""
    folder = tmp_path_factory.mktemp("portable")
    results = {}
    for name, spec in BACKBONES.items():
        size = max(spec.min_size, 32)
        keras.utils.set_random_seed(1)
        augmentation = build_augmentation(AugmentConfig(flip="horizontal", rotation=0.2), seed=1)
        model = build_model(ModelConfig(backbone=name, weights="none", hidden_units=8), 3, size, augmentation).model
        images = np.random.default_rng(2).uniform(0, 255, size=(2, size, size, 3)).astype("float32")
        portable = portable_model(model)
        portable.save(folder / f"{name}.keras")
        np.save(folder / f"{name}.npy", images)
        # A direct inference call, not predict(): predict() traces a tf.function per model, which
        # took half of this fixture's time; the fresh Python below still uses predict().
        results[name] = (logits(model, images), logits(portable, images), project_layers(portable))
        keras.backend.clear_session()
    return folder, results


@pytest.mark.parametrize("name", list(BACKBONES))
def test_portable_model_gives_the_run_models_logits_with_keras_layers_only(saved, name):
    run_logits, portable_logits, foreign = saved[1][name]
    assert foreign == []
    np.testing.assert_allclose(portable_logits, run_logits, rtol=1e-5, atol=1e-5 * np.abs(run_logits).max())


def test_every_portable_model_loads_in_a_python_that_never_saw_the_project(saved):
    folder, results = saved
    names = ",".join(results)
    done = subprocess.run([sys.executable, "-I", "-c", FRESH_PREDICT, names], cwd=folder,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (_, portable_logits, _) in results.items():
        np.testing.assert_allclose(np.asarray(loaded[name]), portable_logits, rtol=1e-5,
                                   atol=1e-5 * np.abs(portable_logits).max(), err_msg=name)
