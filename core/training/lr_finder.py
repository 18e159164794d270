"""The learning-rate finder (fastai's `lr_find`, after Smith's "Cyclical Learning Rates").

Train a fresh copy of what trains (the head on the pooled features, or the top
and head on the activations at the cut) for a few hundred mini-batches while
the learning rate grows exponentially from `start` to `end`; record the loss
after each step, smoothed by an exponential moving average with bias
correction (fastai's `beta = 0.98`), and stop early once it exceeds 4x its
minimum. The suggestion is fastai's "steep": the rate where the smoothed loss
falls fastest (the most negative slope against log10 of the rate). It runs on
the feature cache's arrays, so it takes seconds once the features exist.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import keras
import numpy as np

from core.model import build as model_lib

SMOOTHING = 0.98
DIVERGENCE = 4.0


@dataclass
class FinderResult:
    """rates: the learning rate of each step; losses: the smoothed loss after it;
    suggestion: the rate of steepest descent; raw: the unsmoothed losses."""

    rates: list[float]
    losses: list[float]
    raw: list[float]
    suggestion: float

    def to_dict(self) -> dict:
        return asdict(self)


def suggest(rates: np.ndarray, losses: np.ndarray) -> float:
    """The rate where `losses` falls fastest against log10(rate) (fastai's "steep").

    The slope at each step is a central difference over a window of a twentieth
    of the steps on each side (a per-step difference of a mini-batch loss is
    mostly noise); the first and last tenth are left out, where the moving
    average is still settling and where the loss diverges.
    """
    rates, losses = np.asarray(rates, "float64"), np.asarray(losses, "float64")
    logs = np.log10(rates)
    if len(rates) < 3 or logs[-1] == logs[0]:
        return float(rates[0])
    half = max(1, len(rates) // 20)
    centre = np.arange(half, len(rates) - half)
    slopes = (losses[centre + half] - losses[centre - half]) / (logs[centre + half] - logs[centre - half])
    margin = len(rates) // 10
    keep = (centre >= margin) & (centre < len(rates) - margin)
    if not keep.any():
        keep[:] = True
    return float(rates[centre[keep][int(np.argmin(slopes[keep]))]])


def find_learning_rate(trainable: keras.Model, views: list[list[np.ndarray]], labels: np.ndarray,
                       num_classes: int, optimizer: str = "adam", start: float = 1e-7, end: float = 10.0,
                       steps: int = 200, batch_size: int = 32, seed: int = 0, progress=None) -> FinderResult:
    """Sweep the learning rate of `trainable` exponentially from `start` to `end` over `steps` mini-batches.

    Args:
        trainable: a freshly initialised model from cached tensors to logits (it is trained, so pass a copy).
        views: per stored view, the list of cached input arrays (N, ...) float16.
        labels: (N,) int32 class indices.
        optimizer: "adam", "rmsprop" or "sgd" (the optimizer the run will use).
        progress: a `core.training.progress.Progress`; the sweep stops when asked.
    Returns:
        A `FinderResult` (rates in 1/step units of the optimizer, losses as the compiled loss).
    """
    model_lib.compile_model(trainable, optimizer, float(start), num_classes)
    rng = np.random.default_rng(seed)
    ratio = (end / start) ** (1.0 / max(steps - 1, 1))
    rates, raw, smoothed = [], [], []
    average, best = 0.0, math.inf
    order, position = rng.permutation(len(labels)), 0
    batch_size = min(batch_size, len(labels))
    for step in range(steps):
        if progress is not None and progress.stop_requested:
            break
        if position + batch_size > len(labels):
            order, position = rng.permutation(len(labels)), 0
        chosen = np.sort(order[position:position + batch_size])
        position += batch_size
        view = views[step % len(views)]
        inputs = [part[chosen].astype("float32") for part in view]
        rate = start * ratio**step
        trainable.optimizer.learning_rate.assign(rate)
        loss = float(trainable.train_on_batch(inputs[0] if len(inputs) == 1 else inputs, labels[chosen],
                                              return_dict=True)["loss"])
        if not math.isfinite(loss):
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        value = average / (1 - SMOOTHING ** (step + 1))
        rates.append(rate)
        raw.append(loss)
        smoothed.append(value)
        best = min(best, value)
        if progress is not None:
            progress.update(stage="finding the learning rate", batch=step + 1, batches=steps,
                            metrics={"learning_rate": rate, "loss": value})
        if value > DIVERGENCE * best and step > steps // 10:
            break
    if not rates:
        return FinderResult(rates, smoothed, raw, start)
    return FinderResult(rates, smoothed, raw, suggest(np.asarray(rates), np.asarray(smoothed)))
