"""One training phase: the head (backbone frozen), or fine-tuning from a cut.

`train_phase` freezes the classifier per the phase's `fine_tune_at`, recompiles,
and trains on the fast path (`core.training.fast_path`: the frozen part's outputs
from the feature cache) where it applies, else on the full model. The recipe is
the Keras guide "Transfer learning & fine-tuning" and the TensorFlow MobileNetV2
tutorial: train a new head on a frozen base, then unfreeze the top of the base
and train on at a low learning rate. The callbacks are in
`core.training.callbacks`, the separate head learning rate in
`core.training.two_rate`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.config import TrainConfig
from core.data.array_store import ArrayStore
from core.data.image_data import ImageData
from core.model import build as model_lib
from core.model.classifier import Classifier
from core.training.callbacks import Recorder, phase_callbacks
from core.training.fast_path import (
    cached_outputs,
    frozen_part,
    steps_per_epoch,
    view_batches,
)
from core.training.two_rate import TwoRateModel


def select_strategy(devices: list[str] | None = None) -> tf.distribute.Strategy:
    """Mirrored over several local GPUs (or the given devices), otherwise the default
    strategy. Training across machines is `core.training.distributed`'s (the CLI's)."""
    if devices:
        return tf.distribute.MirroredStrategy(devices)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@dataclass
class PhaseResult:
    """What one phase did: its epoch records (see `Recorder`), the path it took
    ("features" or "full"), its duration in seconds, whether it was stopped, the
    validation scores before training (head only), the epoch whose loss became NaN
    (1-based, or None), the model that was fitted (the trainable part on the fast
    path), the "best" and "final" weights (lists of arrays of `trained`), and the
    labels of the feature-cache entries it "read" and "computed"."""

    phase: str
    path: str  # "features" (fast path) or "full"
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False
    initial: dict = field(default_factory=dict)
    nan_epoch: int | None = None
    trained: keras.Model | None = None
    weights: dict = field(default_factory=dict)  # "best" / "final" -> list of arrays
    cache: dict = field(default_factory=dict)  # "read" / "computed" -> labels of feature-cache entries
    held_out: dict = field(default_factory=dict)  # split -> the trained part's inputs for it (fast path)

    @property
    def has_distinct_best(self) -> bool:
        best, final = self.weights.get("best"), self.weights.get("final")
        return best is not None and any((a != b).any() for a, b in zip(best, final))

    def use_weights(self, kind: str) -> None:
        """Put the "best" or "final" weights back into the model (shared layers)."""
        if self.weights.get(kind) is not None:
            self.trained.set_weights(self.weights[kind])

    @property
    def best_val_accuracy(self) -> float | None:
        values = [record["val_accuracy"] for record in self.history if "val_accuracy" in record]
        return max(values) if values else None


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class weights n / (k * count), float32 (k,), from int labels (n,): rare classes
    weigh more (scikit-learn's `class_weight="balanced"`)."""
    counts = np.bincount(labels, minlength=num_classes).astype("float64")
    return (len(labels) / (num_classes * np.maximum(counts, 1))).astype("float32")


def train_phase(classifier: Classifier, data: ImageData, config: TrainConfig, phase: str, *, batch_size: int = 32,
                seed: int = 0, views_seed: int | None = None, epoch_offset: int = 0, progress=None, on_epoch=None,
                fine_tune_cut: int | None = None, probe: dict | None = None, log_dir: Path | None = None,
                cache: ArrayStore | None = None, held_out: tuple[str, ...] = ()) -> PhaseResult:
    """Train one phase ("head" or "fine_tune") of `classifier` on `data`, in place.

    Freezes per `config.fine_tune_at` (`Classifier.freeze`), recompiles, and trains
    for `config.epochs` (numbered after `epoch_offset`, so fine-tuning continues the
    head's curve) on the fast path where it applies: the frozen part's outputs come
    from the feature cache (`cached_outputs`, views seeded by `views_seed`, default
    `seed`), computed only where no entry matches; head training with
    `fine_tune_cut` also stores the activations at that cut for a later fine-tuning.
    `seed` shuffles the batches; `batch_size` is in images. With `log_dir`, Keras'
    TensorBoard callback writes the epoch metrics there. `on_epoch` gets each
    epoch's record. On the fast path the frozen part's outputs for the `held_out`
    splits (e.g. "test") are cached too and returned in `PhaseResult.held_out`, the
    trained part's inputs for evaluating on them. The model is left with its final weights;
    `PhaseResult.use_weights("best")` switches.
    Raises `Stopped` when stopped before training started, and UserError for a
    `fine_tune_at` the backbone does not have or an unknown optimizer.
    """
    started = time.perf_counter()
    cut = classifier.freeze(config.fine_tune_at, config.freeze_batchnorm)
    fast = config.fast_path and cut > 0
    labels = data.splits["train"][1]
    weights = class_weights(labels, data.num_classes)[labels] if config.class_weights else None
    batch_size = min(batch_size, len(labels))

    cache_report: dict = {}
    held: dict = {}
    if fast:
        fine_tune_cut = fine_tune_cut if cut == classifier.depth else None
        part = frozen_part(classifier, cut, fine_tune_cut)
        outputs = cached_outputs(classifier, part, data, config.views, seed if views_seed is None else views_seed,
                                 fine_tune_cut=fine_tune_cut, probe=probe, progress=progress, cache=cache,
                                 held_out=held_out)
        cache_report = {"read": outputs.read, "computed": outputs.computed}
        held = outputs.held_out
        val = outputs.validation
        trained = part.trainable
        train_input = view_batches(outputs.views, labels, batch_size, seed, config.epochs, weights)
        val_input = tf.data.Dataset.from_tensor_slices(
            (tuple(val) if len(val) > 1 else val[0], data.splits["validation"][1])
        ).batch(batch_size).map(lambda x, y: (tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), x), y))
    else:
        trained = classifier.model
        train_input = data.tf_dataset("train", batch_size, shuffle=True, seed=seed)
        if weights is not None:
            table = tf.constant(class_weights(labels, data.num_classes))
            train_input = train_input.map(lambda x, y: (x, y, tf.gather(table, y)))
        val_input = data.tf_dataset("validation", batch_size)

    # A head on cached features trains an epoch in a fraction of a second: one traced call per
    # epoch saves Keras' per-batch overhead, and progress and stop requests are seen per epoch.
    # (Keras' multi-step loop does not run under a strategy with several replicas.)
    on_features = fast and cut == classifier.depth and tf.distribute.get_strategy().num_replicas_in_sync == 1
    trained = _compile(trained, classifier, config, data.num_classes,
                       steps_per_epoch(len(labels), batch_size) if on_features else 1)
    initial = {}
    if phase == "head":  # the tutorial's starting point: the untrained head on validation
        if progress is not None:
            progress.update(stage="scoring the untrained head")
        initial = {k: float(v) for k, v in trained.evaluate(val_input, return_dict=True, verbose=0).items()}
        if progress is not None:
            progress.update(initial=initial)
    recorder = Recorder(phase=phase, path="features" if fast else "full", steps=steps_per_epoch(len(labels), batch_size),
                        batch_size=batch_size, progress=progress, on_epoch=on_epoch, epochs=config.epochs,
                        offset=epoch_offset)
    # Both inputs are tf.data pipelines that shuffle themselves; the fast path's runs all epochs in one stream.
    trained.fit(train_input, validation_data=val_input, initial_epoch=epoch_offset,
                epochs=epoch_offset + config.epochs, steps_per_epoch=recorder.steps if fast else None, shuffle=False,
                callbacks=phase_callbacks(config, recorder, log_dir), verbose=0)
    return PhaseResult(phase=phase, path=recorder.path, history=recorder.records,
                       seconds=time.perf_counter() - started, stopped=recorder.stopped, initial=initial,
                       nan_epoch=recorder.nan_epoch, trained=trained,
                       weights={"best": recorder.best_weights, "final": recorder.final_weights}, cache=cache_report,
                       held_out=held)


def _compile(trained: keras.Model, classifier: Classifier, config: TrainConfig, num_classes: int,
             steps_per_execution: int = 1) -> keras.Model:
    """Compile what trains and return what to fit: with `head_learning_rate` while
    the backbone fine-tunes, a `TwoRateModel` gives the head its own optimizer."""
    if config.head_learning_rate is None or config.fine_tune_at is None:
        return model_lib.compile_model(trained, config.optimizer, config.learning_rate, num_classes,
                                       steps_per_execution)
    two_rate = TwoRateModel(inner=trained, head_ids=classifier.head_weight_ids(),
                            head_optimizer=model_lib.make_optimizer(config.optimizer, config.head_learning_rate))
    return model_lib.compile_model(two_rate, config.optimizer, config.learning_rate, num_classes)
