"""Learning curves from a run's per-epoch history (pure data, no plotting)."""
from __future__ import annotations

import pandas as pd

METRICS = ("accuracy", "loss")


def smooth(values: list[float], factor: float = 0.8) -> list[float]:
    """Exponential moving average, as Deep Learning with Python plots noisy curves:
    s[0] = v[0], s[i] = factor * s[i-1] + (1 - factor) * v[i] (pandas' `ewm`, adjust=False)."""
    return pd.Series(values, dtype="float64").ewm(alpha=1 - factor, adjust=False).mean().tolist()


def fine_tune_start(history: list[dict]) -> int | None:
    """The last head epoch, where the "start fine-tuning" marker goes (None without fine-tuning)."""
    head = [r["epoch"] for r in history if r["phase"] == "head"]
    tuned = [r["epoch"] for r in history if r["phase"] == "fine_tune"]
    if not tuned:
        return None
    return max(head) if head else min(tuned) - 1


def curve_rows(history: list[dict], smoothing: float = 0.0) -> list[dict]:
    """Long-format rows (epoch, metric, split, value, phase) for train and validation curves."""
    records = sorted(history, key=lambda r: r["epoch"])
    rows = []
    for metric in METRICS:
        for split, key in (("train", metric), ("validation", f"val_{metric}")):
            points = [r for r in records if key in r]
            values = [r[key] for r in points]
            if smoothing:
                values = smooth(values, smoothing)
            rows += [
                {"epoch": r["epoch"], "metric": metric, "split": split, "value": v, "phase": r["phase"]}
                for r, v in zip(points, values)
            ]
    return rows
