"""Calibrated confidence: temperature scaling, and the "unsure" verdict built on it.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017)
divides the logits by one scalar T > 0 fitted to minimise the negative
log-likelihood (NLL) of the validation split; predicted classes never change,
only how confident the model claims to be. T > 1 softens an over-confident
model. The fit is `scipy.optimize.minimize_scalar` over log T (the NLL is
smooth and has one minimum there).

The temperature is stored with the run, in `calibration.json`, per model kind,
with the model file's version it was fitted on; a changed model is refitted.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from core.data import datasets
from core.errors import UserError
from core.results import evaluation
from core.training.runs import Run

CALIBRATION_FILE = "calibration.json"
#: log T is searched in [-LOG_T_BOUND, LOG_T_BOUND]: T from about 0.01 to 100.
LOG_T_BOUND = 4.6
UNSURE = "unsure"


def scaled_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Class probabilities (N, C) float64 of logits (N, 1) or (N, C) divided by `temperature`."""
    return evaluation.probabilities(np.asarray(logits, dtype=np.float64) / temperature)


def negative_log_likelihood(logits: np.ndarray, labels, temperature: float = 1.0) -> float:
    """Mean NLL (nats) of the true classes under `scaled_probabilities`."""
    return evaluation.cross_entropy(labels, scaled_probabilities(logits, temperature))


def fit_temperature(logits: np.ndarray, labels) -> float:
    """The temperature T > 0 minimising the validation NLL of logits (N, units) and integer labels (N,);
    1 when every validation image is already right (then no temperature is identified).

    Raises UserError for an empty validation split.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if not len(logits):
        raise UserError("The validation split is empty: there is nothing to calibrate the confidence on.",
                        "Give the data a validation fraction above 0, or a validation folder.")
    if (scaled_probabilities(logits, 1.0).argmax(axis=1) == np.asarray(labels)).all():
        # Every validation image is right: the NLL falls as T shrinks all the way to 0, so no
        # temperature is identified, and sharpening would make any new image look certain.
        # The logits are left as they are.
        return 1.0
    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
                             bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded")
    return float(np.exp(result.x))


def run_temperature(run: Run, kind: str, model, data_root=None) -> dict:
    """The run's stored calibration of its `kind` model, fitted on its validation split when
    missing or fitted on an older model file: {"temperature", "nll_before", "nll_after",
    "validation_images", "model_mtime_ns"}. Raises UserError when the data cannot be read."""
    version = run.model_path(kind).stat().st_mtime_ns
    stored = run.read_json(CALIBRATION_FILE, default={}) or {}
    if stored.get(kind, {}).get("model_mtime_ns") == version:
        return stored[kind]
    images, labels = datasets.load_cached(run.config.data, data_root).splits["validation"]
    logits = model.predict(np.asarray(images, dtype=np.float32), verbose=0) if len(labels) else np.zeros((0, 1))
    temperature = fit_temperature(logits, labels)
    entry = {"temperature": temperature, "nll_before": negative_log_likelihood(logits, labels),
             "nll_after": negative_log_likelihood(logits, labels, temperature),
             "validation_images": int(len(labels)), "model_mtime_ns": version}
    run.write_json(CALIBRATION_FILE, {**stored, kind: entry})
    return entry


def verdicts(probs: np.ndarray, classes: list[str], min_confidence: float) -> list[dict]:
    """Per row of calibrated probabilities (N, C): {"label", "confidence", "unsure"}; "label"
    is the predicted class, or "unsure" when its probability is below `min_confidence`."""
    predicted = probs.argmax(axis=1)
    confidence = probs[np.arange(len(probs)), predicted]
    return [{"label": UNSURE if value < min_confidence else classes[index], "predicted": classes[index],
             "confidence": float(value), "unsure": bool(value < min_confidence)}
            for index, value in zip(predicted, confidence)]
