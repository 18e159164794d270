"""Pooled (bottleneck) features of images from a trained model's frozen part.

The seam for a feature cache: label issues and the embedding map take features
as arrays, and this is the one place that computes them from a model. An on-disk
cache (core/training/feature_cache.py, being built) can stand in for `pooled_features`.
"""
from __future__ import annotations

import numpy as np

from core.model.classifier import Classifier
from core.training.progress import Stopped


def pooled_features(model, images: np.ndarray, batch_size: int = 64, progress=None) -> np.ndarray:
    """Features (N, D) float32 of raw images (N, S, S, 3) in [0, 255], from `model`'s layers
    up to its pooling (`Classifier.feature_extractor`), in inference mode.

    progress: an object with `update(**fields)` and `stop_requested` (a job's
    `Progress`); it gets stage="features", batch, batches. Raises `Stopped`
    when a stop is requested between batches.
    """
    extractor = Classifier.from_keras(model).feature_extractor()
    batches = -(-len(images) // batch_size)
    parts = []
    for batch in range(batches):
        if progress is not None:
            if progress.stop_requested:
                raise Stopped()
            progress.update(stage="features", batch=batch, batches=batches)
        chunk = np.asarray(images[batch * batch_size:(batch + 1) * batch_size], dtype="float32")
        parts.append(np.asarray(extractor(chunk, training=False), dtype="float32"))
    if progress is not None:
        progress.update(stage="features", batch=batches, batches=batches)
    return np.concatenate(parts) if parts else np.zeros((0, extractor.output.shape[-1]), "float32")
