"""The Keras callbacks a phase trains with: progress and stop requests, per-epoch
records with the best and final weights, and Keras' own TerminateOnNaN,
TensorBoard, EarlyStopping and ReduceLROnPlateau.

Keras' `EarlyStopping(restore_best_weights=True)` is not used to keep the best
weights: a run keeps both its best and its final weights (`best.keras`,
`final.keras`; `TrainConfig.restore_best` chooses which one continues), also
after a stop request or a NaN, and its best epoch is the one with the highest
validation accuracy (lowest validation loss on a tie), which `EarlyStopping`
cannot rank by. `Recorder` does that; `EarlyStopping` only stops.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import keras

from core.config import TrainConfig


class Recorder(keras.callbacks.Callback):
    """Progress, stop requests, per-epoch records, NaN epochs, best and final weights.

    phase: "head" or "fine_tune"; path: "features" (fast path) or "full".
    steps: batches per epoch; batch_size: images per batch (for images/second).
    progress: a `core.training.progress.Progress` (or None); it gets stage
        "training", phase, path, epochs, epoch, epoch_in_phase, batch, batches,
        images_per_second, eta_seconds (seconds) and metrics (the batch logs).
    on_epoch: called with each epoch's record (a dict: phase, epoch, path,
        seconds, the epoch logs, learning_rate).
    epochs: epochs in this phase; offset: epochs before it (fine-tuning continues
        the head's numbering).
    After `fit`: `records`, `best_weights` and `final_weights` (lists of arrays),
    `nan_epoch` (1-based, or None) and `stopped` (a stop was requested).
    """

    def __init__(self, *, phase: str, path: str, steps: int, batch_size: int, progress=None,
                 on_epoch: Callable[[dict], None] | None = None, epochs: int = 0, offset: int = 0):
        super().__init__()
        self.phase, self.path, self.steps, self.batch_size = phase, path, steps, batch_size
        self.epochs, self.offset = epochs, offset
        self.progress, self.on_epoch = progress, on_epoch
        self.records: list[dict] = []
        self.best = self.best_weights = self.final_weights = self.nan_epoch = None
        self.stopped = False
        self.epoch = offset

    def on_train_begin(self, logs=None):
        if self.progress is not None:
            self.progress.update(stage="training", phase=self.phase, epochs=self.epochs, epoch_in_phase=0,
                                 batch=0, batches=self.steps)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.epoch_start = epoch + 1, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.progress is None:
            return
        logs = logs or {}
        elapsed = time.perf_counter() - self.epoch_start
        done = batch + 1
        self.progress.update(
            stage="training", phase=self.phase, path=self.path, batch=done, batches=self.steps,
            images_per_second=done * self.batch_size / max(elapsed, 1e-9),
            eta_seconds=elapsed / done * (self.steps - done), metrics={k: float(v) for k, v in logs.items()},
        )
        if self.progress.stop_requested:
            self.stopped = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        # TerminateOnNaN stops at the batch whose loss is NaN; the epoch's mean loss then is NaN too.
        if any(not math.isfinite(v) for k, v in logs.items() if "loss" in k):
            self.nan_epoch = epoch + 1
            self.model.stop_training = True
            return
        record = {"phase": self.phase, "epoch": epoch + 1, "path": self.path,
                  "seconds": time.perf_counter() - self.epoch_start, **logs,
                  "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))}
        self.records.append(record)
        if self.on_epoch is not None:
            self.on_epoch(record)
        score = (logs.get("val_accuracy", 0.0), -logs.get("val_loss", 0.0))
        if self.best is None or score > self.best:
            self.best, self.best_weights = score, self.model.get_weights()
        if self.progress is not None:
            self.progress.update(epoch=epoch + 1, epoch_in_phase=epoch + 1 - self.offset)

    def on_train_end(self, logs=None):
        self.final_weights = self.model.get_weights()


def phase_callbacks(config: TrainConfig, recorder: Recorder, log_dir: Path | None = None) -> list:
    """`recorder`, Keras' TerminateOnNaN (stop at the first NaN or infinite batch loss),
    with `log_dir` TensorBoard (`tensorboard --logdir runs`: train/ and validation/
    epoch_* scalars), EarlyStopping on val_loss with `config.early_stopping_patience`
    (epochs) and ReduceLROnPlateau (x0.3 after 2 epochs without a better val_loss,
    down to 1e-7) when `config` asks for them."""
    callbacks = [recorder, keras.callbacks.TerminateOnNaN()]
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, profile_batch=0))
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience))
    if config.reduce_lr_on_plateau:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=2, min_lr=1e-7))
    return callbacks
