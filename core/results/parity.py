"""Export parity: run every exported file on the test split, in the runtime a user loads it with,
and compare its predictions with the Keras model the dashboard shows.

- `.keras` and the SavedModel run in a fresh, isolated Python (`python -I`,
  from a temporary folder, see `standalone_predict.py`): no import of this
  project, so a file that needs one fails here as it would for a user;
- TFLite files run in the TFLite interpreter (`tf.lite.Interpreter`).

Per format: file size, test accuracy, agreement of predicted classes with the
Keras model, largest difference of any class probability, and latency per
image (wall time of the batched prediction over the split divided by its size,
on this machine, after a warm-up; loading not counted).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from core.results import evaluation, export

#: Least share of test images whose predicted class must equal the Keras model's.
AGREEMENT_BOUNDS = {"float": 0.99, "int8": 0.97}
MEANING = {
    "float": "a float export should give the Keras model's predictions up to rounding; below 99 % agreement "
             "it computes something else (a conversion fault): do not ship it, use model.keras or report it.",
    "int8": "quantisation to int8 changes weights (and, for full-integer, activations) slightly; below 97 % "
            "agreement it changes too many predictions: prefer the float TFLite file, or a model whose "
            "classes are further apart (more training).",
}
STANDALONE_SCRIPT = Path(__file__).with_name("standalone_predict.py")
FRESH_PROCESS_TIMEOUT_S = 900


class ExportDoesNotRun(Exception):
    """An exported file failed to load or predict in its runtime; the message says how."""


def fresh_process_predict(kind: str, path, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Logits (N, units) float32 of an exported `.keras` ("keras") or zipped SavedModel
    ("saved_model") on raw images (N, S, S, 3), predicted in an isolated Python
    started in a temporary folder, and the seconds the prediction took.

    Raises ExportDoesNotRun with the last line of the child's error when it fails.
    """
    with tempfile.TemporaryDirectory(prefix="export-check-") as temp:
        temp = Path(temp)
        model_path = Path(path)
        if kind == "saved_model":
            with zipfile.ZipFile(model_path) as archive:
                archive.extractall(temp)
            model_path = temp / "saved_model"
        np.save(temp / "images.npy", np.asarray(images, dtype=np.float32))
        try:
            result = subprocess.run(
                [sys.executable, "-I", str(STANDALONE_SCRIPT), kind, str(model_path),
                 str(temp / "images.npy"), str(temp / "logits.npy")],
                cwd=temp, capture_output=True, text=True, timeout=FRESH_PROCESS_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as error:
            raise ExportDoesNotRun(f"no answer within {FRESH_PROCESS_TIMEOUT_S} s") from error
        if result.returncode != 0:
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            raise ExportDoesNotRun(lines[-1] if lines else f"exit status {result.returncode}")
        seconds = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
        return np.load(temp / "logits.npy"), seconds


def predict_export(key: str, path, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Logits and prediction seconds of the export `key` (see `export.FORMATS`) in its user runtime."""
    if key in export.TFLITE_FORMATS:
        try:
            return export.tflite_run(path, images)
        except (RuntimeError, ValueError) as error:
            raise ExportDoesNotRun(str(error)) from error
    return fresh_process_predict(key, path, images)


def compare(reference_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    """Test accuracy, agreement with the reference's predicted classes, and the largest
    absolute difference of any class probability, for logits (N, units) of both."""
    reference, probs = evaluation.probabilities(reference_logits), evaluation.probabilities(logits)
    predicted = probs.argmax(axis=1)
    return {
        "test_accuracy": float(np.mean(predicted == evaluation.class_indices(labels))),
        "agreement": float(np.mean(predicted == reference.argmax(axis=1))),
        "max_probability_difference": float(np.abs(probs - reference).max()),
    }


def check_exports(files: dict[str, dict], reference_logits: np.ndarray, images: np.ndarray,
                  labels: np.ndarray, on_step=None) -> list[dict]:
    """One parity row per export in `files` ({format key: {"file", "path", "bytes"}}).

    Row: format, file, bytes, test_accuracy, agreement, max_probability_difference,
    ms_per_image, bound (the least agreement allowed) and ok; or, for an export
    that does not run, error (the reason) and ok False. on_step(text) is told
    which file is being checked.
    """
    rows = []
    for key, file in files.items():
        precision = export.FORMATS[key].precision
        row = {"format": key, "file": file["file"], "bytes": file["bytes"], "bound": AGREEMENT_BOUNDS[precision]}
        if on_step:
            on_step(f"Checking {file['file']} on {len(labels)} test images")
        try:
            logits, seconds = predict_export(key, file["path"], images)
        except ExportDoesNotRun as error:
            rows.append({**row, "error": str(error), "ok": False})
            continue
        scores = compare(reference_logits, logits, labels)
        rows.append({**row, **scores, "ms_per_image": 1000 * seconds / max(len(labels), 1),
                     "ok": scores["agreement"] >= row["bound"]})
    return rows


def reference_predictions(model, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, float]:
    """The Keras model's logits (N, units) on `images` as the dashboard computes them, and the
    seconds of the batched pass after a warm-up batch, timed as `standalone_predict` times exports."""
    model.predict_on_batch(images[:batch_size])
    start = time.perf_counter()
    logits = np.concatenate([np.asarray(model.predict_on_batch(images[i:i + batch_size]))
                             for i in range(0, len(images), batch_size)])
    return logits, time.perf_counter() - start
