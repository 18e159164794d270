"""A small hyperparameter search over head settings on cached features, with Optuna.

Each trial trains a head (`core.model.build.add_head`) from its initial weights on
the feature cache's pooled features (one stored augmented view per epoch, as the
fast path does) and scores it by its best validation accuracy, so a trial costs
only the head's training; trials with the same hidden units and optimizer reuse
one compiled head (`TrialHeads`), so Keras traces its training step once.
Optuna's TPE sampler (seeded) proposes the next settings from the trials so far;
the search space is `SPACE`. The best trial's settings become a normal run (see
`core.workflow.sweep_job`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import keras
import numpy as np
import optuna

from core.config import RunConfig
from core.model import build as model_lib
from core.model.tunable_head import set_dropout, tunable_head
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
    """`config` with a trial's head settings (model: hidden units, dropout; head: the rest)
    and trained as trials are: best epoch kept, no early stopping, no learning-rate drops."""
    model = dataclasses.replace(config.model, hidden_units=int(params["hidden_units"]), dropout=float(params["dropout"]))
    head = dataclasses.replace(config.head, learning_rate=float(params["learning_rate"]), epochs=int(params["epochs"]),
                               optimizer=params["optimizer"], class_weights=bool(params["class_weights"]),
                               restore_best=True, early_stopping_patience=0, reduce_lr_on_plateau=False)
    return dataclasses.replace(config, model=model, head=head)


def settings_of(config: RunConfig) -> dict:
    """The head settings in `config` that a trial varies (what `apply` sets), as `suggest` gives them."""
    return {"learning_rate": config.head.learning_rate, "dropout": config.model.dropout,
            "hidden_units": config.model.hidden_units, "epochs": config.head.epochs,
            "optimizer": config.head.optimizer, "class_weights": config.head.class_weights}


class _TrialScores(keras.callbacks.Callback):
    """Each epoch's validation loss and accuracy from one inference-mode call of the head on
    all validation features (Keras' own per-epoch validation costs a trial about a third of
    its time), also put into the epoch's logs as val_loss and val_accuracy for the callbacks
    after it; stops training when the progress asks to.

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
        if logs is not None:
            logs.update(val_loss=self.losses[-1], val_accuracy=self.accuracies[-1])


class TrialHeads:
    """The compiled heads a sweep's trials train (`core.model.tunable_head`), one per
    structure (hidden units, optimizer), each with Keras' training step traced once for
    all the trials that use it (tracing is about half of a short trial's time).

    `get(params)` returns the structure's head reset to the state it was built in (its
    initial weights from `seed`, a new optimizer state, the dropout's random stream) with
    the trial's dropout rate and learning rate set, so a trial's scores do not depend on
    the trials before it. feature_shape: one example's features, e.g. (1280,);
    steps: batches per epoch (each epoch is one traced call, `steps_per_execution`).
    """

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int, steps: int, seed: int = 0):
        self.feature_shape, self.num_classes, self.steps, self.seed = feature_shape, num_classes, steps, seed
        self._built: dict[tuple[int, str], tuple[keras.Model, list, list[np.ndarray]]] = {}

    def get(self, params: dict) -> keras.Model:
        key = (int(params["hidden_units"]), params["optimizer"])
        if key not in self._built:
            self._built[key] = self._build(*key)
        head, variables, initial = self._built[key]
        for variable, value in zip(variables, initial):
            variable.assign(value)
        set_dropout(head, params["dropout"])
        head.optimizer.learning_rate = float(params["learning_rate"])
        return head

    def _build(self, hidden_units: int, optimizer: str):
        keras.utils.set_random_seed(self.seed)
        head = tunable_head(self.feature_shape, hidden_units, self.num_classes, self.seed)
        model_lib.compile_model(head, optimizer, 1e-3, self.num_classes, steps_per_execution=self.steps)
        head.optimizer.build(head.trainable_variables)
        variables = head.variables + head.optimizer.variables
        return head, variables, [keras.ops.convert_to_numpy(variable) for variable in variables]


def train_trial(params: dict, views: list[list[np.ndarray]], labels: np.ndarray, val: list[np.ndarray],
                val_labels: np.ndarray, num_classes: int, batch_size: int = 32, seed: int = 0,
                progress=None, heads: TrialHeads | None = None, callbacks: tuple = ()) -> dict:
    """Train a head with `params` on cached features and return its scores.

    views: per stored view, [features (N, C) float16]; val: [features (M, C)]; heads:
    where the trial's head comes from (a sweep shares one across its trials; by default a
    new one); callbacks: more Keras callbacks for its `fit` (they see val_loss and
    val_accuracy in the epoch logs). Each epoch runs as one traced call, so a stop request
    is seen at the end of an epoch (a head's epoch on features takes a fraction of a
    second). Sample weights are always fed (ones without class weights), so both kinds of
    trial share a traced step. The same `params`, data and `seed` give the same scores.
    Returns {"val_accuracy": best over epochs, "val_loss": at that epoch, "epoch": it,
    "seconds"}; the best epoch is the one a run keeps (`restore_best`: the highest
    accuracy, then the lowest loss).
    """
    started = time.perf_counter()
    batch_size, epochs = min(batch_size, len(labels)), int(params["epochs"])
    steps = steps_per_epoch(len(labels), batch_size)
    heads = heads or TrialHeads(views[0][0].shape[1:], num_classes, steps, seed)
    head = heads.get(params)
    weights = class_weights(labels, num_classes)[labels] if params["class_weights"] else np.ones(len(labels), "float32")
    scores = _TrialScores(val[0], val_labels, progress)
    head.fit(view_batches(views, labels, batch_size, seed, epochs, weights), steps_per_epoch=steps, shuffle=False,
             epochs=epochs, callbacks=[scores, *callbacks], verbose=0)
    if not scores.accuracies:
        return {"val_accuracy": 0.0, "val_loss": math.nan, "epoch": 1, "seconds": round(time.perf_counter() - started, 2)}
    epoch_scores = [(a, -l) if math.isfinite(a) and math.isfinite(l) else (0.0, -math.inf)
                    for a, l in zip(scores.accuracies, scores.losses)]
    best = max(range(len(epoch_scores)), key=lambda e: (epoch_scores[e], -e))
    return {"val_accuracy": float(epoch_scores[best][0]), "val_loss": scores.losses[best], "epoch": best + 1,
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
    heads = TrialHeads(views[0][0].shape[1:], num_classes, steps_per_epoch(len(labels), min(batch_size, len(labels))),
                       seed)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial)
        scores = train_trial(params, views, labels, val, val_labels, num_classes, batch_size, seed, progress, heads)
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
