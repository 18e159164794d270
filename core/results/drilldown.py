"""Confusion-matrix drill-down: the images behind one cell, most confident first."""
from __future__ import annotations

import numpy as np

from core.results.evaluation import class_indices


def cell_members(labels, probs: np.ndarray, true_class: int, predicted_class: int) -> np.ndarray:
    """Indices (int64) of the samples in confusion-matrix cell (true_class, predicted_class):
    those labelled `true_class` whose highest probability (N, C) is `predicted_class`,
    ordered by the probability of the predicted class, highest first (ties keep input order)."""
    labels = class_indices(labels)
    probs = np.asarray(probs)
    members = np.flatnonzero((labels == true_class) & (probs.argmax(axis=1) == predicted_class))
    return members[np.argsort(-probs[members, predicted_class], kind="stable")]
