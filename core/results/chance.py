"""Is a model any better than guessing? The one rule the Train head page and the CLI use.

A classifier that always answers the most frequent class scores that class's share
of the validation images; one that guesses uniformly scores 1 / classes. A validation
accuracy within `MARGIN` of the higher of the two means the model has learned next
to nothing, however green the rest of the screen is.
"""
from __future__ import annotations

from collections.abc import Sequence

#: How close to the guessing baseline (in accuracy, 0-1) counts as "at chance".
MARGIN = 0.05


def chance_level_warning(val_accuracy: float | None, val_counts: Sequence[int]) -> str | None:
    """A warning with what to try when `val_accuracy` (0-1) is within `MARGIN` of chance
    (1 / number of classes) or of the majority class's share of `val_counts`
    (validation images per class); None when the model beats both, or nothing is known."""
    total = sum(val_counts)
    if val_accuracy is None or total == 0 or len(val_counts) < 2:
        return None
    chance, majority = 1 / len(val_counts), max(val_counts) / total
    baseline = max(chance, majority)
    if val_accuracy > baseline + MARGIN:
        return None
    return (
        f"Validation accuracy {val_accuracy:.1%} is at chance level: guessing scores {chance:.1%} "
        f"({len(val_counts)} classes) and always answering the largest class {majority:.1%}. "
        "The model has learned next to nothing. Try ImageNet weights instead of random ones, "
        "unfreezing the backbone (fine-tuning), more epochs or another learning rate, and check the labels."
    )
