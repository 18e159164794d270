"""Exports (.keras, SavedModel, TFLite) reproduce the model's predictions on raw pixels."""
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.errors import UserError
from core.results import export

SIZE = 32


def small_model(units: int) -> keras.Model:
    """Raw pixels -> augmentation (inactive at inference) -> [-1, 1] -> conv -> head of logits.

    The conv (3*3*3*48) and hidden Dense (48*64) kernels exceed the 1024 weights
    below which TFLite's dynamic-range quantisation leaves a tensor in float.
    """
    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(0.1)(x)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = keras.layers.Conv2D(48, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(units)(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def images():
    """Raw uint8-range pixels, asymmetric, so an active flip or rotation would change outputs."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(scope="module")
def model():
    return small_model(3)


@pytest.fixture(scope="module")
def expected(model, images):
    return model.predict(images, verbose=0)


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    return export.export_formats(model, tmp_path_factory.mktemp("exports"),
                                 representative=export.representative_images(calibration_images(), 16))


def calibration_images():
    return np.random.default_rng(1).integers(0, 256, size=(32, SIZE, SIZE, 3)).astype("uint8")


def test_export_formats_writes_every_file_and_reports_its_size(exports):
    assert {key: entry["file"] for key, entry in exports.items()} == {
        "keras": "model.keras",
        "saved_model": "saved_model.zip",
        "tflite": "model_float.tflite",
        "dynamic_range": "model_dynamic_range.tflite",
        "int8": "model_int8.tflite",
    }
    for entry in exports.values():
        assert entry["bytes"] > 0
        assert entry["bytes"] == os.path.getsize(entry["path"])


def test_export_formats_writes_only_the_chosen_ones_and_refuses_unknown(model, tmp_path):
    written = export.export_formats(model, tmp_path, ["keras", "tflite"])
    assert set(written) == {"keras", "tflite"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.keras", "model_float.tflite"]
    with pytest.raises(UserError, match="Unknown export format.*onnx") as raised:
        export.export_formats(model, tmp_path, ["onnx"])
    assert "int8" in raised.value.hint


def test_int8_tflite_takes_uint8_pixels_and_stays_close(exports, images, expected):
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=exports["int8"]["path"])
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops
    logits = export.tflite_predict(exports["int8"]["path"], images)
    assert not np.allclose(logits, expected, rtol=0, atol=1e-7), "activations were not quantised"
    np.testing.assert_allclose(logits, expected, atol=0.1 * np.abs(expected).max())


def test_labels_file_has_one_class_per_line_in_output_order(tmp_path):
    path = export.write_labels(["tulip", "daisy", "rose"], tmp_path / "labels.txt")
    assert path.read_text(encoding="utf-8").splitlines() == ["tulip", "daisy", "rose"]


def test_keras_file_reloads_in_safe_mode_with_same_predictions(exports, images, expected):
    reloaded = export.load_model_safe(exports["keras"]["path"])
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_saved_model_serving_signature_matches_model(exports, images, expected, tmp_path):
    with zipfile.ZipFile(exports["saved_model"]["path"]) as archive:
        assert "saved_model/saved_model.pb" in archive.namelist()
        archive.extractall(tmp_path)
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    serving = loaded.signatures["serving_default"]
    logits = serving(images=tf.constant(images))["logits"].numpy()
    # Tight tolerance: an active RandomFlip/RandomRotation would change these logits.
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_float_tflite_matches_model(exports, images, expected):
    logits = export.tflite_predict(exports["tflite"]["path"], images)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_dynamic_range_tflite_is_smaller_and_close(exports, images, expected):
    assert exports["dynamic_range"]["bytes"] < exports["tflite"]["bytes"]
    logits = export.tflite_predict(exports["dynamic_range"]["path"], images)
    assert not np.allclose(logits, expected, rtol=0, atol=1e-7), "weights were not quantised"
    # int8 weights: errors of a few percent of the logits' scale.
    np.testing.assert_allclose(logits, expected, atol=0.05 * np.abs(expected).max())


def test_export_tflite_of_binary_model_gives_one_logit(tmp_path, images):
    binary = small_model(1)
    size = export.export_tflite(binary, tmp_path / "binary.tflite", mode="tflite")
    assert size == os.path.getsize(tmp_path / "binary.tflite")
    logits = export.tflite_predict(tmp_path / "binary.tflite", images.astype("uint8"))
    assert logits.shape == (len(images), 1)
    np.testing.assert_allclose(logits, binary.predict(images, verbose=0), rtol=1e-4, atol=1e-4)


def test_export_keras_returns_file_size(model, tmp_path):
    size = export.export_keras(model, tmp_path / "nested" / "model.keras")
    assert size == os.path.getsize(tmp_path / "nested" / "model.keras")


def test_zip_directory_keeps_folder_name_and_reports_size(tmp_path):
    folder = tmp_path / "bundle"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "data").write_bytes(b"weights")
    size = export.zip_directory(folder, tmp_path / "bundle.zip")
    assert size == os.path.getsize(tmp_path / "bundle.zip")
    with zipfile.ZipFile(tmp_path / "bundle.zip") as archive:
        assert sorted(archive.namelist()) == ["bundle/saved_model.pb", "bundle/variables/data"]
        assert archive.read("bundle/variables/data") == b"weights"


def test_corrupt_keras_file_raises_user_error(tmp_path):
    corrupt = tmp_path / "model.keras"
    corrupt.write_bytes(b"this is not a zip archive")
    with pytest.raises(UserError, match="model.keras") as raised:
        export.load_model_safe(corrupt)
    assert raised.value.hint


def test_missing_keras_file_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        export.load_model_safe(tmp_path / "absent.keras")


def test_safe_mode_refuses_lambda_layers(tmp_path):
    inputs = keras.Input((4,))
    unsafe = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    unsafe.save(tmp_path / "unsafe.keras")
    with pytest.raises(UserError, match="Lambda"):
        export.load_model_safe(tmp_path / "unsafe.keras")


def test_corrupt_tflite_file_raises_user_error(tmp_path):
    corrupt = tmp_path / "model.tflite"
    corrupt.write_bytes(b"not a flatbuffer")
    with pytest.raises(UserError, match="model.tflite"):
        export.tflite_predict(corrupt, np.zeros((1, SIZE, SIZE, 3), dtype="float32"))
