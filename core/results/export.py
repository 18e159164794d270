"""Save, reload and export trained models: .keras, TensorFlow SavedModel and TFLite.

Every export takes raw RGB pixels in [0, 255] (float32, shape (N, S, S, 3)) and
returns the model's logits, exactly like the Keras model: augmentation and the
backbone's preprocessing are layers inside it. Turn logits into probabilities
with `core.evaluation.probabilities` (sigmoid for one unit, softmax otherwise).

The SavedModel and TFLite exports run the model with `training=False`. Keras'
own `model.export(format="tf_saved_model")` traces the model with its default
`training` argument, which leaves the Random* augmentation layers active in the
exported graph (random outputs, and ops TFLite cannot convert), so the serving
endpoint is built with `keras.export.ExportArchive` instead.
"""
from __future__ import annotations

import importlib
import tempfile
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.errors import UserError

#: Name of the SavedModel's serving endpoint and of its output.
SERVING_ENDPOINT = "serve"
SERVING_OUTPUT = "logits"

#: TF 2.21 still ships tf.lite.Interpreter but warns it will move to LiteRT.
_INTERPRETER_DEPRECATION = r"\s*Warning: tf\.lite\.Interpreter is deprecated"

_LOAD_HINT = (
    "Choose a .keras file saved by this dashboard (model.keras in a run directory); "
    "safe mode refuses files that contain Python code such as Lambda layers."
)


def _register_custom_layers() -> None:
    """Import core.model.build so its serializable layers (Preprocess, InferenceMode) are registered."""
    importlib.import_module("core.model.build")


def load_model_safe(path) -> keras.Model:
    """Load a .keras file with `safe_mode=True`; a missing or unreadable file raises UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Model file {path} does not exist.", _LOAD_HINT)
    _register_custom_layers()
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
        raise UserError(f"Could not load the model in {path}: {error}", _LOAD_HINT) from error


def export_keras(model: keras.Model, path) -> int:
    """Save the whole model (architecture, weights, optimizer) as a .keras file; its size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path.stat().st_size


def export_saved_model(model: keras.Model, directory) -> Path:
    """Write a TensorFlow SavedModel for serving; returns its directory.

    Its `serving_default` signature (also callable as `.serve(images)`) takes
    raw images in [0, 255] and returns {"logits": ...}, the model's inference
    mode output (augmentation off).
    """
    directory = Path(directory)
    spec = model.inputs[0]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_ENDPOINT,
        lambda images: {SERVING_OUTPUT: model(images, training=False)},
        input_signature=[keras.InputSpec(shape=spec.shape, dtype=spec.dtype)],
    )
    archive.write_out(str(directory), verbose=False)
    return directory


def zip_directory(directory, zip_path) -> int:
    """Zip `directory` (its files under a top folder of the same name); the archive's size in bytes."""
    directory, zip_path = Path(directory), Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(directory.rglob("*")):
            if file.is_file():
                archive.write(file, Path(directory.name) / file.relative_to(directory))
    return zip_path.stat().st_size


def _saved_model_to_tflite(saved_model_dir, path, quantize: bool) -> int:
    """Convert a SavedModel to a .tflite file (dynamic-range int8 weights if `quantize`)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(converter.convert())
    return path.stat().st_size


def export_tflite(model: keras.Model, path, quantize: bool = False) -> int:
    """Convert the model to TFLite through a SavedModel; the file's size in bytes.

    `quantize=True` applies dynamic-range quantisation (`tf.lite.Optimize.DEFAULT`):
    weights stored as int8, inputs and outputs stay float32 raw pixels and logits.
    """
    with tempfile.TemporaryDirectory() as temp:
        saved_model_dir = export_saved_model(model, Path(temp) / "saved_model")
        return _saved_model_to_tflite(saved_model_dir, path, quantize)


def tflite_predict(path, images) -> np.ndarray:
    """Run a .tflite model on raw images (N, S, S, 3) in [0, 255]; returns its logits."""
    images = np.asarray(images, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_INTERPRETER_DEPRECATION, category=UserWarning)
        try:
            interpreter = tf.lite.Interpreter(model_path=str(path))
        except ValueError as error:
            raise UserError(
                f"Could not read the TFLite model {path}: {error}",
                "Choose a .tflite file exported by this dashboard.",
            ) from error
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_index, images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def export_all(model: keras.Model, out_dir) -> dict[str, dict]:
    """Write every export into `out_dir`; {file name: {"path": str, "bytes": int}}.

    Files: model.keras, saved_model.zip (a `saved_model/` folder),
    model_float.tflite and model_dynamic_range.tflite.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {"model.keras": export_keras(model, out_dir / "model.keras")}
    with tempfile.TemporaryDirectory() as temp:
        saved_model_dir = export_saved_model(model, Path(temp) / "saved_model")
        sizes["saved_model.zip"] = zip_directory(saved_model_dir, out_dir / "saved_model.zip")
        for name, quantize in (("model_float.tflite", False), ("model_dynamic_range.tflite", True)):
            sizes[name] = _saved_model_to_tflite(saved_model_dir, out_dir / name, quantize)
    return {name: {"path": str(out_dir / name), "bytes": size} for name, size in sizes.items()}
