"""A small hyperparameter search over head settings on cached features, with Optuna.

Each trial trains a fresh head (`core.model.build.add_head`) on the feature
cache's pooled features (one stored augmented view per epoch, as the fast path
does) and scores it by its best validation accuracy, so a trial costs only the
head's training. Optuna's TPE sampler (seeded) proposes the next settings from
the trials so far; the search space is `SPACE`. The best trial's settings become
a normal run (see `core.workflow.sweep_job`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import keras
import numpy as np
import optuna

from core.config import ModelConfig, RunConfig
from core.model import build as model_lib
from core.training.fast_path import steps_per_epoch, view_batches
from core.training.phases import class_weights

#: The head settings searched, with their ranges (learning rate log-uniform).
SPACE = {
    "learning_rate": (1e-4, 3e-2),
    "dropout": (0.0, 0.5),
    "hidden_units": (0, 64, 128, 256),
    "epochs": (3, 15),
    "optimizer": model_lib.OPTIMIZERS,
    "class_weights": (False, True),
}


def suggest(trial: optuna.Trial) -> dict:
    """One trial's head settings, drawn from `SPACE`."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", *SPACE["learning_rate"], log=True),
        "dropout": trial.suggest_float("dropout", *SPACE["dropout"]),
        "hidden_units": trial.suggest_categorical("hidden_units", SPACE["hidden_units"]),
        "epochs": trial.suggest_int("epochs", *SPACE["epochs"]),
        "optimizer": trial.suggest_categorical("optimizer", SPACE["optimizer"]),
        "class_weights": trial.suggest_categorical("class_weights", SPACE["class_weights"]),
    }


def apply(config: RunConfig, params: dict) -> RunConfig:
    """`config` with a trial's head settings (model: hidden units, dropout; head: the rest)."""
    model = dataclasses.replace(config.model, hidden_units=int(params["hidden_units"]), dropout=float(params["dropout"]))
    head = dataclasses.replace(config.head, learning_rate=float(params["learning_rate"]), epochs=int(params["epochs"]),
                               optimizer=params["optimizer"], class_weights=bool(params["class_weights"]))
    return dataclasses.replace(config, model=model, head=head)


class _TrialScores(keras.callbacks.Callback):
    """Each epoch's validation loss and accuracy from one inference-mode call of the head on
    all validation features (Keras' own per-epoch validation costs a trial about a third of
    its time); stops training when the progress asks to.

    After `fit`: `losses` and `accuracies`, one float per epoch.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, progress=None):
        super().__init__()
        self.features, self.labels, self.progress = keras.ops.convert_to_tensor(features, "float32"), labels, progress
        self.losses: list[float] = []
        self.accuracies: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        if self.progress is not None and self.progress.stop_requested:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logits = self.model(self.features, training=False)
        predicted = keras.ops.convert_to_numpy(logits)
        predicted = (predicted[:, 0] > 0) if predicted.shape[1] == 1 else predicted.argmax(axis=1)
        self.losses.append(float(self.model.loss(self.labels, logits)))
        self.accuracies.append(float(np.mean(predicted == self.labels)))


def train_trial(params: dict, views: list[list[np.ndarray]], labels: np.ndarray, val: list[np.ndarray],
                val_labels: np.ndarray, num_classes: int, batch_size: int = 32, seed: int = 0,
                progress=None) -> dict:
    """Train a fresh head with `params` on cached features and return its scores.

    views: per stored view, [features (N, C) float16]; val: [features (M, C)].
    Each epoch runs as one traced call (`steps_per_execution`), so a stop request is
    seen at the end of an epoch (a head's epoch on features takes a fraction of a second).
    Returns {"val_accuracy": best over epochs, "val_loss": at that epoch, "epoch": it, "seconds"}.
    """
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(views[0][0].shape[1:], name="features")
    head = keras.Model(inputs, model_lib.add_head(inputs, ModelConfig(hidden_units=int(params["hidden_units"]),
                                                                     dropout=float(params["dropout"])), num_classes))
    batch_size, epochs = min(batch_size, len(labels)), int(params["epochs"])
    steps = steps_per_epoch(len(labels), batch_size)
    model_lib.compile_model(head, params["optimizer"], params["learning_rate"], num_classes, steps_per_execution=steps)
    weights = class_weights(labels, num_classes)[labels] if params["class_weights"] else None
    scores = _TrialScores(val[0], val_labels, progress)
    head.fit(view_batches(views, labels, batch_size, seed, epochs, weights), steps_per_epoch=steps, shuffle=False,
             epochs=epochs, callbacks=[scores], verbose=0)
    accuracies = [a if math.isfinite(a) else 0.0 for a in scores.accuracies] or [0.0]
    best = int(np.argmax(accuracies))
    loss = scores.losses[best] if scores.losses else math.nan
    return {"val_accuracy": float(accuracies[best]), "val_loss": loss, "epoch": best + 1,
            "seconds": round(time.perf_counter() - started, 2)}


def search(views: list[list[np.ndarray]], labels: np.ndarray, val: list[np.ndarray], val_labels: np.ndarray,
           num_classes: int, trials: int, batch_size: int = 32, seed: int = 0, progress=None,
           on_trial: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Run `trials` Optuna trials (TPE, seeded) over `SPACE` and return one row per trial:
    its number, settings and scores; `on_trial(rows)` is called after each. Reports stage
    "sweep" with batch / batches = trials done / `trials` and eta_seconds (the mean trial's
    time so far, times the trials left). Stops early when the progress asks to stop."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    rows: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial)
        scores = train_trial(params, views, labels, val, val_labels, num_classes, batch_size, seed, progress)
        rows.append({"trial": trial.number + 1, **params, **scores})
        if progress is not None:
            mean = sum(row["seconds"] for row in rows) / len(rows)
            progress.update(stage="sweep", batch=len(rows), batches=trials, trials=rows,
                            eta_seconds=mean * (trials - len(rows)))
        if on_trial is not None:
            on_trial(rows)
        if progress is not None and progress.stop_requested:
            study.stop()
        return scores["val_accuracy"]

    study.optimize(objective, n_trials=trials)
    return rows


def best_row(rows: list[dict]) -> dict:
    """The trial with the highest validation accuracy (then the lowest validation loss)."""
    return max(rows, key=lambda row: (row["val_accuracy"], -row["val_loss"] if math.isfinite(row["val_loss"]) else -1e9))
