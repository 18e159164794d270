"""Save, reload and export trained models: .keras, TensorFlow SavedModel and TFLite.

Every export takes raw RGB pixels in [0, 255] (shape (N, S, S, 3); float32, or
uint8 for the full-integer TFLite file) and returns the model's logits, exactly
like the Keras model: the backbone's preprocessing is a layer inside it. Turn
logits into probabilities with `core.results.evaluation.probabilities` (sigmoid
for one unit, softmax otherwise). Exports are meant to be given the portable
model (`core.results.portable.portable_model`), so they load without this project.

The SavedModel and TFLite exports run the model with `training=False`. Keras'
own `model.export(format="tf_saved_model")` traces the model with its default
`training` argument, which leaves the Random* augmentation layers active in the
exported graph (random outputs, and ops TFLite cannot convert), so the serving
endpoint is built with `keras.export.ExportArchive` instead.
"""
from __future__ import annotations

import importlib
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

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


#: What each representative sample of the int8 calibration is: one raw image, batch of 1.
Representative = Callable[[], Iterable[list[np.ndarray]]]


@dataclass(frozen=True)
class ExportFormat:
    """One export format: its file in the export folder and what a user does with it.

    precision: "float" (predictions should match Keras to rounding) or "int8"
    (int8 weights or activations: a few predictions may differ).
    """

    key: str
    file_name: str
    title: str
    precision: str


FORMATS: dict[str, ExportFormat] = {
    f.key: f for f in (
        ExportFormat("keras", "model.keras", "Keras model: `keras.saving.load_model(path)`", "float"),
        ExportFormat("saved_model", "saved_model.zip",
                     "TensorFlow SavedModel for TF Serving (signature `serving_default`)", "float"),
        ExportFormat("tflite", "model_float.tflite", "TFLite, float32", "float"),
        ExportFormat("dynamic_range", "model_dynamic_range.tflite",
                     "TFLite, dynamic-range quantised (int8 weights, float activations, about 4x smaller)",
                     "int8"),
        ExportFormat("int8", "model_int8.tflite",
                     "TFLite, full-integer int8 (uint8 pixels in, float logits out) for edge accelerators",
                     "int8"),
    )
}
TFLITE_FORMATS = ("tflite", "dynamic_range", "int8")


def _saved_model_to_tflite(saved_model_dir, path, mode: str,
                           representative: Representative | None = None) -> int:
    """Convert a SavedModel to a .tflite file; its size in bytes.

    mode: "tflite" (float32), "dynamic_range" (`tf.lite.Optimize.DEFAULT`:
    int8 weights, float activations) or "int8" (full-integer quantisation:
    every op in int8 (`TFLITE_BUILTINS_INT8`), activations calibrated on
    `representative`, input uint8 raw pixels, output float32 logits), as in
    the TensorFlow Lite post-training quantisation guide.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if mode in ("dynamic_range", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":
        if representative is None:
            raise ValueError("int8 quantisation needs a representative dataset")
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(converter.convert())
    return path.stat().st_size


def representative_images(images: np.ndarray, count: int = 100, seed: int = 0) -> Representative:
    """A representative dataset for int8 calibration: `count` images drawn at random (seeded)
    from `images` (N, S, S, 3) in [0, 255], yielded one at a time as [float32 (1, S, S, 3)]."""
    chosen = np.random.default_rng(seed).permutation(len(images))[:count]

    def samples():
        for index in chosen:
            yield [np.asarray(images[index:index + 1], dtype=np.float32)]

    return samples


def export_tflite(model: keras.Model, path, mode: str = "tflite",
                  representative: Representative | None = None) -> int:
    """Convert the model to TFLite through a SavedModel (see `_saved_model_to_tflite`); the size in bytes."""
    with tempfile.TemporaryDirectory() as temp:
        saved_model_dir = export_saved_model(model, Path(temp) / "saved_model")
        return _saved_model_to_tflite(saved_model_dir, path, mode, representative)


def _quantise(values: np.ndarray, detail: dict) -> np.ndarray:
    """Float values as the tensor's dtype: quantised with its (scale, zero point) when it has them."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return values.astype(dtype)
    scale, zero_point = detail["quantization"]
    if scale:
        values = values / scale + zero_point
    info = np.iinfo(dtype)
    return np.clip(np.round(values), info.min, info.max).astype(dtype)


def _dequantise(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.issubdtype(values.dtype, np.floating) or not scale:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def tflite_run(path, images) -> tuple[np.ndarray, float]:
    """Run a .tflite model on raw images (N, S, S, 3) in [0, 255] in one batch.

    Inputs are cast (or quantised, for a uint8/int8 input) to what the model
    takes; outputs are dequantised. Returns float32 logits (N, units) and the
    seconds `invoke()` took. Raises UserError for a file that is no TFLite model.
    """
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
    input_detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(input_detail["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], _quantise(images, input_detail))
    start = time.perf_counter()
    interpreter.invoke()
    seconds = time.perf_counter() - start
    output_detail = interpreter.get_output_details()[0]
    return _dequantise(interpreter.get_tensor(output_detail["index"]), output_detail), seconds


def tflite_predict(path, images) -> np.ndarray:
    """Float32 logits (N, units) of a .tflite model on raw images (N, S, S, 3) in [0, 255]."""
    return tflite_run(path, images)[0]


def write_labels(class_names: list[str], path) -> Path:
    """labels.txt: one class name per line, in the order of the model's outputs
    (for one logit: line 1 is the class of logit < 0, line 2 of logit > 0)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
    return path


def export_formats(model: keras.Model, out_dir, formats: Iterable[str] = tuple(FORMATS),
                   representative: Representative | None = None) -> dict[str, dict]:
    """Write the chosen `formats` (keys of FORMATS) of `model` into `out_dir`.

    Returns {format key: {"file": name, "path": str, "bytes": int}}. The
    SavedModel is zipped (a `saved_model/` folder); "int8" needs
    `representative` (see `representative_images`). Raises UserError for an
    unknown format.
    """
    formats = list(formats)
    unknown = [key for key in formats if key not in FORMATS]
    if unknown:
        raise UserError(f"Unknown export format(s): {', '.join(unknown)}.",
                        f"Choose from: {', '.join(FORMATS)}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    if "keras" in formats:
        sizes["keras"] = export_keras(model, out_dir / FORMATS["keras"].file_name)
    with tempfile.TemporaryDirectory() as temp:
        saved_model_dir = export_saved_model(model, Path(temp) / "saved_model")
        if "saved_model" in formats:
            sizes["saved_model"] = zip_directory(saved_model_dir, out_dir / FORMATS["saved_model"].file_name)
        for key in TFLITE_FORMATS:
            if key in formats:
                sizes[key] = _saved_model_to_tflite(saved_model_dir, out_dir / FORMATS[key].file_name,
                                                    key, representative)
    return {key: {"file": FORMATS[key].file_name, "path": str(out_dir / FORMATS[key].file_name), "bytes": size}
            for key, size in sizes.items()}
