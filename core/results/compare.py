"""Tables and curves that compare runs (pure data, no plotting).

Everything is read from the run directories (config.json, status.json,
history.jsonl, metrics.json), so a table describes finished, running and
interrupted runs alike.
"""
from __future__ import annotations

import datetime
from pathlib import Path

from core.config import DataConfig, TrainConfig
from core.errors import UserError
from core.training.progress import ProgressRecord
from core.training.runs import HISTORY_PHASES, Run

#: The validation metrics overlaid when runs are compared.
CURVE_METRICS = ("accuracy", "loss")
#: The runs table's status for a run whose config or status file cannot be read (never written to disk).
UNREADABLE = "unreadable"


def dataset_label(data: DataConfig) -> str:
    """A short name for a run's dataset: "demo shapes", the TFDS name or the folder/zip name."""
    if data.source == "demo":
        return "demo shapes"
    if data.source == "tfds":
        return data.name
    return Path(data.name).name or data.name


def best_val_accuracy(history: list[dict]) -> float | None:
    """The highest validation accuracy of any epoch, or None before the first epoch."""
    values = [record["val_accuracy"] for record in history if record.get("val_accuracy") is not None]
    return max(values) if values else None


def final_test_accuracy(metrics: dict) -> float | None:
    """The test accuracy after the last phase that was evaluated (fine-tune, else head)."""
    for phase in reversed(HISTORY_PHASES):
        value = metrics.get(phase, {}).get("test_accuracy")
        if value is not None:
            return value
    return None


def training_seconds(status: dict) -> float | None:
    """Seconds the phases took (from status.json), else finished - started; None if unknown."""
    phases = [status[f"seconds_{phase}"] for phase in HISTORY_PHASES if status.get(f"seconds_{phase}") is not None]
    if phases:
        return round(sum(phases), 2)
    started, finished = status.get("started"), status.get("finished")
    if isinstance(started, (int, float)) and isinstance(finished, (int, float)):
        return round(finished - started, 2)
    return None


def training_paths(history: list[dict]) -> str:
    """How each phase trained: "features" (cached backbone outputs) or "full", e.g. "features / full"."""
    paths = {}
    for record in history:
        paths.setdefault(record["phase"], record.get("path", "?"))
    return " / ".join(paths[phase] for phase in HISTORY_PHASES if phase in paths)


def _phase(config: TrainConfig | None) -> tuple[int | None, float | None]:
    return (None, None) if config is None else (config.epochs, config.learning_rate)


def _created(status: dict) -> datetime.datetime | None:
    created = status.get("created")
    return datetime.datetime.fromtimestamp(created) if isinstance(created, (int, float)) else None


def run_row(run: Run) -> dict:
    """One row of the runs table; raises UserError when the run's files are unreadable."""
    config, status = run.config, run.status()
    history, metrics = run.history(), run.read_json("metrics.json", default={})
    head_epochs, head_lr = _phase(config.head)
    fine_epochs, fine_lr = _phase(config.fine_tune)
    return {
        "run": run.id,
        "name": config.name,
        "status": status["status"],
        "dataset": dataset_label(config.data),
        "backbone": config.model.backbone,
        "weights": config.model.weights,
        "image size": config.data.image_size,
        "head epochs": head_epochs,
        "head LR": head_lr,
        "head optimizer": config.head.optimizer,
        "dropout": config.model.dropout,
        "hidden units": config.model.hidden_units,
        "fine-tune epochs": fine_epochs,
        "fine-tune LR": fine_lr,
        "unfreeze": config.fine_tune.fine_tune_at if config.fine_tune else config.head.fine_tune_at,
        "training path": training_paths(history),
        "best val accuracy": best_val_accuracy(history),
        "test accuracy": final_test_accuracy(metrics),
        "seconds": training_seconds(status),
        "created": _created(status),
        "error": status.get("error") or "",
    }


def runs_table(runs: list[Run]) -> list[dict]:
    """`run_row` of every run; a run whose files cannot be read gets a row saying why."""
    rows = []
    for run in runs:
        try:
            rows.append(run_row(run))
        except UserError as error:
            rows.append({"run": run.id, "status": UNREADABLE, "error": error.message})
    return rows


def validation_curves(histories: dict[str, list[dict]]) -> list[dict]:
    """Long-format rows (run, epoch, metric, value, phase) of validation accuracy and loss,
    one series per run label, epochs continuing across phases."""
    rows = []
    for label, history in histories.items():
        for record in sorted(history, key=lambda r: r["epoch"]):
            for metric in CURVE_METRICS:
                value = record.get(f"val_{metric}")
                if value is not None:
                    rows.append({"run": label, "epoch": record["epoch"], "metric": metric,
                                 "value": value, "phase": record["phase"]})
    return rows


def comparison_table(runs: dict[str, Run]) -> list[dict]:
    """Per labelled run: epochs, best validation accuracy, test accuracy, training
    time and time per epoch (feature extraction included)."""
    rows = []
    for label, run in runs.items():
        history = run.history()
        seconds = training_seconds(run.status())
        rows.append({
            "run": label,
            "epochs": len(history),
            "best val accuracy": best_val_accuracy(history),
            "test accuracy": final_test_accuracy(run.read_json("metrics.json", default={})),
            "seconds": seconds,
            "seconds per epoch": round(seconds / len(history), 2) if seconds is not None and history else None,
        })
    return rows


def progress_text(record: ProgressRecord) -> str:
    """A live job's progress in a few words, e.g. "head: epoch 2 of 5"."""
    stage = record.stage or "starting"
    if stage == "training" and record.epochs:
        return f"{record.phase or ''}: epoch {record.epoch_in_phase or 0} of {record.epochs}"
    return stage
