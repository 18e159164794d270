"""Metrics for a trained classifier: accuracy, per-class scores, confusion matrix, losses.

Models output logits: one unit for two classes (sigmoid), N units for N classes
(softmax). Everything here works on class probabilities of shape (N, C), so the
binary and multi-class cases share one code path. Metrics are plain numpy and
never divide by zero: an undefined precision, recall or F1 is reported as 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.image_data import images_dataset
from core.errors import UserError

#: Probabilities are clipped to [EPSILON, 1] before taking a log (Keras' epsilon).
EPSILON = 1e-7


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (N, C) from model logits (N, 1) or (N, C).

    One logit per sample is a binary model: p = sigmoid(logit) is the
    probability of class 1, so the result is [1 - p, p]. Several logits are
    turned into a softmax, computed stably by subtracting each row's maximum.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1:
        logits = logits[:, None]
    if logits.shape[1] == 1:
        positive = _sigmoid(logits[:, 0])
        return np.stack([1.0 - positive, positive], axis=1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 1 / (1 + exp(-x)) written as exp(-log(1 + exp(-x))) so it never overflows.
    return np.exp(-np.logaddexp(0.0, -x))


def predict_probabilities(model, images_or_dataset, batch_size: int = 64) -> np.ndarray:
    """Run `model` on raw images (N, S, S, 3) or a tf.data dataset; return (N, C) probabilities.

    A dataset yields (images, labels) batches; Keras ignores the labels and
    uses the dataset's own batching. A memory map (a split of the decoded-image
    cache) streams through `core.data.image_data.images_dataset`.
    """
    if isinstance(images_or_dataset, np.memmap):  # read batch by batch, never whole
        logits = model.predict(images_dataset(images_or_dataset, None, batch_size), verbose=0)
    elif isinstance(images_or_dataset, np.ndarray):
        logits = model.predict(images_or_dataset, batch_size=batch_size, verbose=0)
    else:
        logits = model.predict(images_or_dataset, verbose=0)
    return probabilities(logits)


def class_indices(labels) -> np.ndarray:
    """Integer class indices from integer, float (0./1.) or one-hot labels."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.argmax(axis=1)
    return labels.reshape(-1).astype(np.int64)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    y_true, y_pred = class_indices(y_true), class_indices(y_pred)
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} has class indices outside 0..{num_classes - 1}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    result = np.zeros(np.broadcast(numerator, denominator).shape)
    return np.divide(numerator, denominator, out=result, where=denominator > 0)


def classification_report(y_true, y_pred, class_names) -> dict:
    """Accuracy, per-class precision/recall/F1/support, and their macro and weighted averages.

    Macro averages every class equally (classes absent from the data count as 0);
    weighted averages by each class's support. Undefined scores are 0.
    """
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    precision = _safe_divide(true_positives, matrix.sum(axis=0))
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    per_class = [
        {
            "class": str(name),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    scores = {"precision": precision, "recall": recall, "f1": f1}
    return {
        "accuracy": float(_safe_divide(true_positives.sum(), matrix.sum())),
        "per_class": per_class,
        "macro": {name: float(values.mean()) for name, values in scores.items()},
        "weighted": {
            name: float(_safe_divide((values * support).sum(), support.sum()))
            for name, values in scores.items()
        },
    }


def sample_losses(y_true, probs: np.ndarray) -> np.ndarray:
    """Cross-entropy of each sample: -log(probability given to its true class), clipped."""
    y_true = class_indices(y_true)
    true_class_probs = np.asarray(probs)[np.arange(len(y_true)), y_true]
    return -np.log(np.clip(true_class_probs, EPSILON, 1.0))


def cross_entropy(y_true, probs: np.ndarray) -> float:
    """Mean cross-entropy over the samples (probabilities clipped to [1e-7, 1])."""
    return float(sample_losses(y_true, probs).mean())


def top_losses(y_true, probs: np.ndarray, k: int) -> list[int]:
    """Indices of at most `k` wrong predictions, the highest loss first (fastai's top losses).

    Only misclassified samples are considered; they are ordered by their loss,
    -log(probability of the true class), highest first (ties keep the original order).
    """
    y_true = class_indices(y_true)
    probs = np.asarray(probs)
    wrong = np.flatnonzero(probs.argmax(axis=1) != y_true)
    losses = sample_losses(y_true[wrong], probs[wrong])
    order = np.argsort(-losses, kind="stable")
    return [int(i) for i in wrong[order][:k]]


@dataclass(frozen=True)
class Interpretation:
    """One model's predictions on one labelled set, computed once; then every view of them.

    Follows fastai's `ClassificationInterpretation`: predict once, then
    `report()`, `confusion_matrix()` and `top_losses(k)`. The Evaluate page, the
    CLI's `evaluate` and the end of each training phase share it.

    probs: (N, C) float64 class probabilities; labels: (N,) int64 true classes;
    class_names: C names in output order.
    """

    probs: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    @classmethod
    def from_model(cls, model, images, labels, class_names, batch_size: int = 64) -> Interpretation:
        """Predict raw images (N, S, S, 3) in [0, 255] once.

        Raises UserError when the model's number of outputs does not match the classes.
        """
        class_names = [str(name) for name in class_names]
        probs = predict_probabilities(model, images, batch_size=batch_size)
        if probs.shape[1] != len(class_names):
            raise UserError(
                f"The model predicts {probs.shape[1]} classes but the data has "
                f"{len(class_names)} ({', '.join(class_names)}).",
                "Evaluate the model on the dataset it was trained for, or train a new model for this one.",
            )
        return cls(probs, class_indices(labels), class_names)

    @property
    def predicted(self) -> np.ndarray:
        """(N,) int64: the most probable class of each sample."""
        return self.probs.argmax(axis=1)

    @property
    def losses(self) -> np.ndarray:
        """(N,) float64: each sample's cross-entropy (nats)."""
        return sample_losses(self.labels, self.probs)

    def confusion_matrix(self) -> np.ndarray:
        """(C, C) int64 counts, rows = true class, columns = predicted."""
        return confusion_matrix(self.labels, self.predicted, len(self.class_names))

    def top_losses(self, k: int) -> list[int]:
        """Indices of at most `k` mistakes, the highest loss first (see `top_losses`)."""
        return top_losses(self.labels, self.probs, k)

    def report(self) -> dict:
        """A JSON-serialisable report.

        Keys: accuracy, loss, per_class, macro, weighted, confusion_matrix (rows =
        true class), class_names and predictions, one {label, predicted,
        confidence, loss} per sample in input order (confidence is the probability
        of the predicted class), so a gallery can sort the mistakes by loss.
        """
        predicted, losses = self.predicted, self.losses
        report = classification_report(self.labels, predicted, self.class_names)
        report.update(
            loss=float(losses.mean()),
            confusion_matrix=self.confusion_matrix().tolist(),
            class_names=list(self.class_names),
            predictions=[
                {"label": int(label), "predicted": int(guess), "confidence": float(self.probs[i, guess]),
                 "loss": float(losses[i])}
                for i, (label, guess) in enumerate(zip(self.labels, predicted))
            ],
        )
        return report


def evaluate(model, images, labels, class_names, batch_size: int = 64) -> dict:
    """`Interpretation.from_model(...).report()`: predict raw images once and report."""
    return Interpretation.from_model(model, images, labels, class_names, batch_size).report()
