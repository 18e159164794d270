"""Learning-curve data: smoothing, the fine-tuning marker, long-format rows."""
import pytest

from core.results.curves import curve_rows, fine_tune_start, smooth

HISTORY = [
    {"phase": "head", "epoch": 1, "loss": 0.6, "accuracy": 0.7, "val_loss": 0.5, "val_accuracy": 0.8},
    {"phase": "head", "epoch": 2, "loss": 0.4, "accuracy": 0.8, "val_loss": 0.3, "val_accuracy": 0.9},
    {"phase": "fine_tune", "epoch": 3, "loss": 0.2, "accuracy": 0.9, "val_loss": 0.2, "val_accuracy": 0.95},
]


def test_smooth_is_the_books_exponential_average():
    assert smooth([1.0, 0.0, 0.0], 0.8) == pytest.approx([1.0, 0.8, 0.64])
    assert smooth([]) == []


def test_fine_tune_marker_sits_at_the_last_head_epoch():
    assert fine_tune_start(HISTORY) == 2
    assert fine_tune_start(HISTORY[:2]) is None


def test_curve_rows_cover_both_metrics_and_splits_with_continuing_epochs():
    rows = curve_rows(HISTORY)
    assert len(rows) == 2 * 2 * 3
    val_acc = [r for r in rows if r["metric"] == "accuracy" and r["split"] == "validation"]
    assert [(r["epoch"], r["value"], r["phase"]) for r in val_acc] == [
        (1, 0.8, "head"), (2, 0.9, "head"), (3, 0.95, "fine_tune")]
    smoothed = [r["value"] for r in curve_rows(HISTORY, 0.5) if r["metric"] == "loss" and r["split"] == "train"]
    assert smoothed == pytest.approx([0.6, 0.5, 0.35])
