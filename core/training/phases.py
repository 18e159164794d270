"""Head training and fine-tuning, with the feature-cache fast path.

The fast path: whatever is frozen computes the same outputs every epoch, so it
runs once, and its outputs go to the feature cache (`core.training.feature_cache`)
where any later run with the same frozen part, data and views reads them. For head training the cached tensors are the pooled backbone
features; for fine-tuning from layer N they are the activations entering layer
N. Data augmentation is kept: the cache holds several random augmented views of
every image (`TrainConfig.views`) and each epoch trains on a different view.
The trainable part is built from the very same layer objects as the full model,
so training it trains the full model: its head (and unfrozen top) are in place
for fine-tuning and export with no copying.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from core.config import TrainConfig
from core.data.array_store import ArrayStore, make_key, read_rows, write_rows
from core.data.datasets import ImageData
from core.model import build as model_lib
from core.training import feature_cache

EXTRACT_BATCH = 32


class Stopped(Exception):
    """The user stopped the job before anything was trained."""


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
    """What one phase did: its epochs, the path it took, whether it was stopped,
    the validation score before training, the best and final weights, and which
    feature-cache entries it read and computed."""

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


class Recorder(keras.callbacks.Callback):
    """Progress, stop requests, NaN detection, best and final weights, per-epoch records."""

    def __init__(self, phase, path, steps, batch_size, progress=None, on_epoch=None, epochs=0, offset=0):
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
        logs = logs or {}
        if not math.isfinite(float(logs.get("loss", 0.0))):
            self.nan_epoch = self.epoch
            self.model.stop_training = True
        if self.progress is not None:
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
        if self.nan_epoch is not None or any(not math.isfinite(v) for k, v in logs.items() if "loss" in k):
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


class ViewSequence(keras.utils.PyDataset):
    """Batches of cached tensors; each epoch reads the next augmented view, reshuffled."""

    def __init__(self, views: list[list[np.ndarray]], labels, batch_size, seed, sample_weights=None):
        super().__init__()
        self.views, self.labels, self.batch_size = views, labels, batch_size
        self.sample_weights = sample_weights
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.order = self.rng.permutation(len(labels))

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index):
        chosen = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])
        view = self.views[self.epoch % len(self.views)]
        inputs = tuple(part[chosen].astype("float32") for part in view)
        inputs = inputs[0] if len(inputs) == 1 else inputs
        if self.sample_weights is None:
            return inputs, self.labels[chosen]
        return inputs, self.labels[chosen], self.sample_weights[chosen]

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self.rng.permutation(len(self.labels))


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class weights n / (k * count): rare classes weigh more (sklearn's 'balanced')."""
    counts = np.bincount(labels, minlength=num_classes).astype("float64")
    return (len(labels) / (num_classes * np.maximum(counts, 1))).astype("float32")


def split_backbone(backbone: keras.Model, start: int) -> tuple[keras.Model, keras.Model]:
    """(bottom, top): layers[:start] and layers[start:] of a functional backbone.

    The tensors that cross the cut (several where residual connections jump
    over it) are the bottom's outputs and the top's inputs. Both share the
    backbone's layer objects.
    """
    earlier = {id(layer.output): layer.output for layer in backbone.layers[:start]}
    crossing, seen = [], set()
    for layer in backbone.layers[start:]:
        for tensor in keras.tree.flatten(layer.input):
            if id(tensor) in earlier and id(tensor) not in seen:
                seen.add(id(tensor))
                crossing.append(tensor)
    for tensor in keras.tree.flatten(backbone.output):
        if id(tensor) in earlier and id(tensor) not in seen:
            crossing.append(tensor)
    return keras.Model(backbone.input, crossing), keras.Model(crossing, backbone.output)


@dataclass
class FrozenPart:
    """The frozen computation whose outputs the fast path caches, and the trainable rest."""

    extract: Callable  # raw pixels -> list of cached tensors
    trainable: keras.Model  # cached tensors -> logits
    cut: int  # first trainable backbone layer
    augmentation: keras.Layer | None = None
    traced: dict = field(default_factory=dict)

    def function(self, augment: bool, image_shape) -> Callable:
        """`extract` as a tf.function traced once per mode for any batch size; with
        `augment`, the Random* layers draw new values at every call."""
        if augment not in self.traced:
            augmentation = self.augmentation if augment else None

            @tf.function(input_signature=[tf.TensorSpec((None, *image_shape), tf.float32)])
            def run(batch):
                return self.extract(augmentation(batch, training=True) if augmentation is not None else batch)

            self.traced[augment] = run
        return self.traced[augment]


def frozen_part(model: keras.Model, start: int, keep_cut: int | None = None) -> FrozenPart:
    """Split `model` where the backbone starts to train (`start`, from set_trainable).

    For head training (backbone frozen) with `keep_cut`, the extraction also
    returns the activations entering layer `keep_cut`, after the features.
    """
    backbone = model_lib.get_backbone(model)
    head = model_lib.head_layers(model)
    preprocess = model.get_layer("preprocess")
    if start >= len(backbone.layers):
        pooling = model.get_layer("pooling")
        inputs = keras.Input(pooling.output.shape[1:], name="features")
        x = inputs
        for layer in head[1:]:
            x = layer(x)
        if keep_cut is None:
            features = keras.Model(model.input, pooling.output)
            return FrozenPart(lambda pixels: [features(pixels, training=False)], keras.Model(inputs, x), start,
                              _augmentation(model))
        bottom, top = split_backbone(backbone, keep_cut)

        def features_and_activations(pixels):
            activations = keras.tree.flatten(bottom(preprocess(pixels), training=False))
            top_input = activations if len(activations) > 1 else activations[0]
            return [pooling(top(top_input, training=False)), *activations]

        return FrozenPart(features_and_activations, keras.Model(inputs, x), start, _augmentation(model))
    bottom, top = split_backbone(backbone, start)
    inputs = [keras.Input(tensor.shape[1:]) for tensor in keras.tree.flatten(bottom.output)]
    # InferenceMode keeps the top's BatchNormalization in inference mode under fit().
    enabled = model.get_layer(model_lib.BACKBONE).enabled
    x = model_lib.InferenceMode(top, enabled=enabled)(inputs if len(inputs) > 1 else inputs[0])
    for layer in head:
        x = layer(x)
    return FrozenPart(
        lambda pixels: keras.tree.flatten(bottom(preprocess(pixels), training=False)),
        keras.Model(inputs, x),
        start,
        _augmentation(model),
    )


def extract(part: FrozenPart, images: np.ndarray, augment: bool, progress=None, label: str = "",
            allocate: Callable[[list[tuple[tuple, str]]], list[np.ndarray]] | None = None) -> list[np.ndarray]:
    """Run the frozen part over `images` (N, H, W, 3) once, with random augmentation if asked.

    Returns its outputs as float16 arrays with N rows. `allocate([(shape, dtype), ...])`
    gives the arrays to fill (memory maps of the feature cache, say), so the outputs
    never need to fit in memory; by default they are `np.empty`. Raises `Stopped`
    when the progress asks to stop.
    """
    run = part.function(augment, images.shape[1:])
    allocate = allocate or (lambda specs: [np.empty(shape, dtype) for shape, dtype in specs])
    outputs, started = None, time.perf_counter()
    total = math.ceil(len(images) / EXTRACT_BATCH)
    for index, start in enumerate(range(0, len(images), EXTRACT_BATCH)):
        if progress is not None and progress.stop_requested:
            raise Stopped
        batch = [t.numpy() for t in run(tf.cast(read_rows(images, start, start + EXTRACT_BATCH), tf.float32))]
        if outputs is None:
            outputs = allocate([((len(images), *t.shape[1:]), "float16") for t in batch])
        for out, t in zip(outputs, batch):
            write_rows(out, start, t)
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress.update(stage=f"extracting features {label}".strip(), batch=index + 1, batches=total,
                            images_per_second=min(start + EXTRACT_BATCH, len(images)) / max(elapsed, 1e-9),
                            eta_seconds=elapsed / (index + 1) * (total - index - 1))
    return outputs


def cached_outputs(model: keras.Model, part: FrozenPart, data: ImageData, views: int, seed: int, *,
                   keep_cut: int | None = None, probe: dict | None = None, progress=None,
                   cache: ArrayStore | None = None, held_out: tuple[str, ...] = ()
                   ) -> tuple[list[list[np.ndarray]], list[np.ndarray], dict]:
    """The frozen part's outputs for `views` augmented views of the training images and for
    the validation images, read from the feature cache where their key matches and
    computed (and stored) where it does not.

    `part` is `frozen_part(model, start, keep_cut)`, where `start` is the first
    trainable backbone layer: all of them (head training: the
    outputs are the pooled features, float16 (N, C)) or a cut (fine-tuning: the
    activations entering layer `start`, float16, one array per tensor crossing the
    cut). Head training with `keep_cut` also stores the activations at that cut, in
    the same pass, for a later fine-tuning. View v is augmented with
    `feature_cache.seed_view(seed, v)`. `probe` is stored with each entry (see
    `feature_cache.Context.probe`).

    `held_out` names further unaugmented splits ("test") cached and keyed like
    validation, so evaluating on them does not run the frozen part again.

    Returns (views: per view the list of arrays, validation: list of arrays,
    report: {"read": [labels], "computed": [labels]}, plus "held_out": {split: list
    of arrays} when `held_out` is given); arrays are memory maps.
    Raises `Stopped` when the progress asks to stop (nothing half-written is kept).
    """
    cache = cache or feature_cache.store()
    backbone = model_lib.get_backbone(model)
    head = part.cut == len(backbone.layers)
    cuts = ([None, keep_cut] if keep_cut is not None else [None]) if head else [part.cut]
    names = [feature_cache.output_name(cut) for cut in cuts]
    parts = {names[0]: slice(0, 1), names[1]: slice(1, None)} if len(names) == 2 else {names[0]: slice(0, None)}
    augmentation = _augmentation(model)
    pooling = type(model.get_layer("pooling")).__name__
    ctx = feature_cache.context(model, backbone, cuts, data, seed, augmentation, pooling, probe, held_out)
    report: dict = {"read": [], "computed": []}
    found: dict = {}
    for split, view in [("train", v) for v in range(views)] + [(s, None) for s in ("validation", *held_out)]:
        requests = [feature_cache.Request(name, split, view) for name in names]
        entries = {request: cache.get(feature_cache.key(ctx, request)) for request in requests}
        missing = [request for request in requests if entries[request] is None]
        if missing:
            if view is not None:
                feature_cache.reseed(augmentation, feature_cache.seed_view(seed, view))
            label = f"(view {view + 1}/{views})" if view is not None else f"({split})"
            with contextlib.ExitStack() as stack:
                writers = {request.output: stack.enter_context(cache.writer(
                    feature_cache.key(ctx, request),
                    {"probe": _probe_key(ctx, request), "label": request.label})) for request in missing}
                computed = extract(part, data.splits[split][0], view is not None, progress, label,
                                   _allocator(parts, writers))
            for request in missing:
                entries[request] = cache.get(feature_cache.key(ctx, request)) or _Unstored(
                    computed[parts[request.output]])
            report["computed"] += [request.label for request in missing]
        report["read"] += [request.label for request in requests if request not in missing]
        if progress is not None and not missing:
            progress.update(stage=f"reading cached features ({split})")
        found[split, view] = entries[requests[0]]
    if held_out:
        report["held_out"] = {split: _arrays(found[split, None]) for split in held_out}
    return ([_arrays(found["train", v]) for v in range(views)], _arrays(found["validation", None]), report)


@dataclass
class _Unstored:
    """Outputs the cache could not keep (larger than its bound): used from memory."""

    values: list[np.ndarray]


def _arrays(entry) -> list[np.ndarray]:
    if isinstance(entry, _Unstored):
        return entry.values
    return [entry.arrays[name] for name in sorted(entry.arrays, key=int)]


def _probe_key(ctx: feature_cache.Context, request: feature_cache.Request) -> str | None:
    fields = ctx.probe_fields(request)
    return None if fields is None else make_key(fields)


def _allocator(parts: dict[str, slice], writers: dict):
    """Allocate extraction outputs: those of a missing entry as its writer's memory maps."""

    def allocate(specs):
        arrays = []
        for name, where in parts.items():
            chosen = specs[where]
            if name in writers:
                arrays += [writers[name].array(str(i), shape, dtype) for i, (shape, dtype) in enumerate(chosen)]
            else:
                arrays += [np.empty(shape, dtype) for shape, dtype in chosen]
        return arrays

    return allocate


def _augmentation(model: keras.Model) -> keras.Layer | None:
    try:
        return model.get_layer("augmentation")
    except ValueError:
        return None


def _callbacks(config: TrainConfig, recorder: Recorder, log_dir: Path | None = None) -> list:
    callbacks = [recorder]
    if log_dir is not None:  # `tensorboard --logdir runs`: train/ and validation/ epoch_* scalars
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, profile_batch=0))
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience))
    if config.reduce_lr_on_plateau:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=2, min_lr=1e-7))
    return callbacks


def train_phase(model: keras.Model, data: ImageData, config: TrainConfig, phase: str, *, batch_size: int = 32,
                seed: int = 0, views_seed: int | None = None, epoch_offset: int = 0, progress=None, on_epoch=None,
                keep_cut: int | None = None, probe: dict | None = None, log_dir: Path | None = None,
                cache: ArrayStore | None = None, held_out: tuple[str, ...] = ()) -> PhaseResult:
    """Train one phase ("head" or "fine_tune") of `model` on `data`, in place.

    Freezes per `config.fine_tune_at`, recompiles, and trains for
    `config.epochs` (numbered after `epoch_offset`, so fine-tuning continues
    the head's curve) on the fast path where it applies: the frozen part's
    outputs come from the feature cache (`cached_outputs`, views seeded by
    `views_seed`, default `seed`), computed only where no entry matches; head
    training with `keep_cut` also stores the activations at that cut for a later
    fine-tuning. `seed` shuffles the batches. With `log_dir`, Keras' TensorBoard
    callback writes the epoch metrics there. On the fast path the frozen part's
    outputs for the `held_out` splits (e.g. "test") are cached too and returned in
    `PhaseResult.held_out`, the trained part's inputs for evaluating on them. The
    model is left with its final weights; `PhaseResult.use_weights("best")` switches.
    Raises `Stopped` when stopped before training started.
    """
    started = time.perf_counter()
    start = model_lib.set_trainable(model, config.fine_tune_at, config.freeze_batchnorm)
    fast = config.fast_path and start > 0
    labels = data.splits["train"][1]
    weights = class_weights(labels, data.num_classes)[labels] if config.class_weights else None
    batch_size = min(batch_size, len(labels))

    report: dict = {}
    held: dict = {}
    if fast:
        keep_cut = keep_cut if start == len(model_lib.get_backbone(model).layers) else None
        part = frozen_part(model, start, keep_cut)
        views, val, report = cached_outputs(model, part, data, config.views, seed if views_seed is None else views_seed,
                                            keep_cut=keep_cut, probe=probe, progress=progress, cache=cache,
                                            held_out=held_out)
        held = report.pop("held_out", {})
        trained = part.trainable
        train_input = ViewSequence(views, labels, batch_size, seed, weights)
        val_input = tf.data.Dataset.from_tensor_slices(
            (tuple(val) if len(val) > 1 else val[0], data.splits["validation"][1])
        ).batch(batch_size).map(lambda x, y: (tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), x), y))
    else:
        trained = model
        train_input = data.tf_dataset("train", batch_size, shuffle=True, seed=seed)
        if weights is not None:
            table = tf.constant(class_weights(labels, data.num_classes))
            train_input = train_input.map(lambda x, y: (x, y, tf.gather(table, y)))
        val_input = data.tf_dataset("validation", batch_size)

    trained = _compile(trained, model, config, data.num_classes)
    initial = {}
    if phase == "head":  # the tutorial's starting point: the untrained head on validation
        initial = {k: float(v) for k, v in trained.evaluate(val_input, return_dict=True, verbose=0).items()}
        if progress is not None:
            progress.update(initial=initial)
    recorder = Recorder(phase, "features" if fast else "full", math.ceil(len(labels) / batch_size),
                        batch_size, progress, on_epoch, config.epochs, epoch_offset)
    trained.fit(train_input, validation_data=val_input, initial_epoch=epoch_offset,
                epochs=epoch_offset + config.epochs, callbacks=_callbacks(config, recorder, log_dir), verbose=0)
    return PhaseResult(phase, recorder.path, recorder.records, time.perf_counter() - started, recorder.stopped,
                       initial, recorder.nan_epoch, trained,
                       {"best": recorder.best_weights, "final": recorder.final_weights}, report, held)


def _compile(trained: keras.Model, model: keras.Model, config: TrainConfig, num_classes: int) -> keras.Model:
    """Compile what trains and return what to fit: with `head_learning_rate` while
    the backbone fine-tunes, a `TwoRateModel` gives the head its own optimizer."""
    if config.head_learning_rate is None or config.fine_tune_at is None:
        return model_lib.compile_model(trained, config.optimizer, config.learning_rate, num_classes)
    head_ids = {id(v) for layer in model_lib.head_layers(model) for v in layer.trainable_weights}
    two_rate = TwoRateModel(trained, head_ids, model_lib.make_optimizer(config.optimizer, config.head_learning_rate))
    return model_lib.compile_model(two_rate, config.optimizer, config.learning_rate, num_classes)


class TwoRateModel(keras.Model):
    """Trains `inner` with the compiled optimizer for the backbone's variables and
    `head_optimizer` for the head's (the flowers blog's separate learning rates).
    Follows the Keras guide "Customizing what happens in fit()"."""

    def __init__(self, inner: keras.Model, head_ids: set[int], head_optimizer: keras.optimizers.Optimizer):
        super().__init__()
        self.inner, self.head_ids, self.head_optimizer = inner, head_ids, head_optimizer

    def call(self, inputs, training=False):
        return self.inner(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        pairs = list(zip(gradients, variables))
        self.optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) not in self.head_ids])
        self.head_optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) in self.head_ids])
        results = {}
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred, sample_weight=sample_weight)
            result = metric.result()
            results.update(result if isinstance(result, dict) else {metric.name: result})
        return results
