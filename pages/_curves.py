"""The learning-curves charts: one run's train and validation curves (Train head,
Fine-tune) and several runs' validation curves (Runs), drawn the same way."""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import plotly.express as px

from core.results.compare import validation_curves
from core.results.curves import METRICS, curve_rows, fine_tune_start

SPLIT_COLOURS = {"train": "#1f77b4", "validation": "#e8590c"}
#: Up to this many epochs the x axis ticks every epoch.
WHOLE_EPOCH_TICKS = 20


def curves_figure(rows: list[dict], color: str, title: Callable[[str], str] = str.capitalize, **line):
    """Long-format `rows` (epoch, metric, value, `color`) as one facet per metric
    (accuracy, then loss); `title` makes each facet's title from its metric's name;
    `line`: more arguments of `plotly.express.line` (colours)."""
    frame = pd.DataFrame(rows)
    figure = px.line(frame, x="epoch", y="value", color=color, facet_col="metric", markers=True,
                     category_orders={"metric": list(METRICS)}, labels={"value": ""}, **line)
    figure.update_yaxes(matches=None, showticklabels=True)
    shown = [metric for metric in METRICS if len(frame) and (frame["metric"] == metric).any()]
    if "accuracy" in shown:  # a flat curve must not get plotly's -0.5..1 axis
        values = frame.loc[frame["metric"] == "accuracy", "value"]
        low, high = max(0.0, float(values.min()) - 0.05), min(1.0, float(values.max())) + 0.02
        figure.update_yaxes(range=[low, high], row=1, col=shown.index("accuracy") + 1)
    figure.for_each_annotation(lambda a: a.update(text=title(a.text.split("=")[-1])))
    if len(frame) and frame["epoch"].max() <= WHOLE_EPOCH_TICKS:
        figure.update_xaxes(dtick=1)  # whole epochs
    figure.update_layout(height=360, margin=dict(t=40, b=10), legend_title_text="")
    return figure


def learning_curves(history: list[dict], smoothing: float = 0.0):
    """Loss and accuracy for train and validation of one run, epochs continuing across
    phases, with the tutorial's "start fine-tuning" marker."""
    figure = curves_figure(curve_rows(history, smoothing), "split", color_discrete_map=SPLIT_COLOURS)
    marker = fine_tune_start(history)
    if marker is not None:
        figure.add_vline(x=marker + 0.5, line_dash="dash", line_color="green",
                         annotation_text="Start fine-tuning", annotation_position="bottom right")
    return figure


def comparison_curves(histories: dict[str, list[dict]]):
    """Validation accuracy and loss against epoch, one colour per run (by label)."""
    figure = curves_figure(validation_curves(histories), "run", title=lambda metric: f"Validation {metric}",
                           color_discrete_sequence=px.colors.qualitative.D3)
    figure.update_layout(legend=dict(orientation="h", y=-0.2))
    return figure
