"""The fast path: what is frozen runs once, and its outputs are cached.

Whatever is frozen computes the same outputs every epoch, so it runs once and
its outputs go to the feature cache (`core.training.feature_cache`), where any
later run with the same frozen part, data and views reads them. For head
training the cached tensors are the pooled backbone features (bottleneck
features); for fine-tuning from cut N they are the activations entering backbone
layer N. Data augmentation is kept: the cache holds several random augmented
views of every image (`TrainConfig.views`) and each epoch trains on a different
view. The trainable part is built from the very same layer objects as the full
model (`Classifier.split`), so training it trains the full model: its head (and
unfrozen top) are in place for fine-tuning and export with no copying. The frozen
part runs as a graph with its weights as constants (`FrozenPart.function`).

Follows the Keras guide "Transfer learning & fine-tuning" (feature extraction:
run the base once, train a small model on its outputs) and Deep Learning with
Python §5.3 ("fast feature extraction without data augmentation"), extended to
augmented views and to a cut inside the backbone.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from core.data.array_store import ArrayStore, make_key, read_rows, write_rows
from core.data.image_data import ImageData
from core.model.classifier import Classifier
from core.training import feature_cache
from core.training.progress import Stopped

#: Images per batch when running the frozen part.
EXTRACT_BATCH = 32


@dataclass
class FrozenPart:
    """The frozen computation whose outputs the fast path caches, and the trainable rest.

    extract: raw pixels float32 (N, S, S, 3) -> list of float32 tensors (see `Classifier.split`).
    trainable: a Keras model from those tensors to the logits.
    cut: the first trainable backbone layer (`depth` for head training).
    weights: the model's frozen weights (Keras' `non_trainable_weights`: no random seed
        state), which `extract` reads as constants of its graph.
    """

    extract: Callable
    trainable: keras.Model
    cut: int
    weights: list
    augmentation: keras.Layer | None = None
    traced: dict = field(default_factory=dict)

    def function(self, augment: bool, image_shape) -> Callable:
        """`extract` as a graph function for any batch size, with its weights folded in.

        `extract` is traced once inside a `keras.StatelessScope` that maps each of
        `weights` to a constant holding its value (Keras 3's stateless-call mechanism),
        so the graph holds the weights as constants, as a graph frozen for serving does,
        and Grappler folds each BatchNormalization into the convolution before it: about
        1.4x the images per second of the Keras model on a CPU, for outputs that differ
        by float32 round-off. With `augment`, the augmentation (whose random state stays
        a variable) runs first and draws new values at every call.
        """
        spec = tf.TensorSpec((None, *image_shape), tf.float32)
        if "frozen" not in self.traced:
            self.traced["frozen"] = trace_with_constant_weights(self.extract, self.weights, spec)
        frozen = self.traced["frozen"]
        if not augment or self.augmentation is None:
            return frozen
        if "augmented" not in self.traced:
            augmentation = self.augmentation

            @tf.function(input_signature=[spec], autograph=False)  # Keras layers need no conversion
            def run(batch):
                return frozen(augmentation(batch, training=True))

            self.traced["augmented"] = run
        return self.traced["augmented"]


def trace_with_constant_weights(extract: Callable, weights: list, spec: tf.TensorSpec) -> Callable:
    """`extract` traced once for inputs of `spec`, as a concrete function whose graph
    holds each of `weights` (Keras variables) as a constant with its current value;
    the variables are not read when it runs (see `FrozenPart.function`)."""
    values = [weight.numpy() for weight in weights]

    @tf.function(input_signature=[spec], autograph=False)  # plain Python: nothing to convert
    def frozen(batch):
        mapping = [(weight, tf.constant(value)) for weight, value in zip(weights, values)]
        with keras.StatelessScope(state_mapping=mapping):
            return extract(batch)

    traced = frozen.get_concrete_function()
    values.clear()  # the graph holds its own copy; a concrete function never traces again
    return traced


def frozen_part(classifier: Classifier, cut: int, fine_tune_cut: int | None = None) -> FrozenPart:
    """`classifier` split at `cut` (from `Classifier.freeze`).

    For head training (`cut == classifier.depth`) with `fine_tune_cut`, the
    extraction also returns the activations entering backbone layer
    `fine_tune_cut`, after the features, for a later fine-tuning from there.
    """
    extract, trainable = classifier.split(cut, fine_tune_cut)
    return FrozenPart(extract=extract, trainable=trainable, cut=cut, weights=classifier.model.non_trainable_weights,
                      augmentation=classifier.augmentation)


def extract(part: FrozenPart, images: np.ndarray, augment: bool, progress=None, label: str = "",
            allocate: Callable[[list[tuple[tuple, str]]], list[np.ndarray]] | None = None) -> list[np.ndarray]:
    """Run the frozen part over `images` (N, H, W, 3) once, with random augmentation if asked.

    Returns its outputs as float16 arrays with N rows. `allocate([(shape, dtype), ...])`
    gives the arrays to fill (memory maps of the feature cache, say), so the outputs
    never need to fit in memory; by default they are `np.empty`. Progress gets
    stage "extracting features <label>", batch, batches, images_per_second and
    eta_seconds. Raises `Stopped` when the progress asks to stop.
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


@dataclass
class CachedOutputs:
    """The frozen part's outputs for a phase, as `cached_outputs` returns them.

    views: per augmented view of the training split, the list of arrays (N, ...) float16.
    validation: the list of arrays of the unaugmented validation split.
    held_out: split -> the list of arrays of each further unaugmented split asked for ("test").
    read / computed: labels of the feature-cache entries read and computed.
    Arrays are memory maps of the cache (in memory when the cache could not keep them).
    """

    views: list[list[np.ndarray]]
    validation: list[np.ndarray]
    held_out: dict[str, list[np.ndarray]] = field(default_factory=dict)
    read: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)


def cached_outputs(classifier: Classifier, part: FrozenPart, data: ImageData, views: int, seed: int, *,
                   fine_tune_cut: int | None = None, probe: dict | None = None, progress=None,
                   cache: ArrayStore | None = None, held_out: tuple[str, ...] = ()) -> CachedOutputs:
    """The frozen part's outputs for `views` augmented views of the training images and for
    the validation images, read from the feature cache where their key matches and
    computed (and stored) where it does not.

    `part` is `frozen_part(classifier, cut, fine_tune_cut)`: with the whole backbone
    frozen (head training) the outputs are the pooled features, float16 (N, D); with a
    cut inside it (fine-tuning) the activations entering layer `cut`, float16, one
    array per tensor crossing the cut. Head training with `fine_tune_cut` also stores
    the activations at that cut, in the same pass, for a later fine-tuning. View v is
    augmented with `feature_cache.seed_view(seed, v)`. `probe` is stored with each
    entry (see `feature_cache.Context.probe`). `held_out` names further unaugmented
    splits ("test") cached and keyed like validation, so evaluating on them does not run
    the frozen part again.
    Raises `Stopped` when the progress asks to stop (nothing half-written is kept).
    """
    cache = cache or feature_cache.store()
    head = part.cut == classifier.depth
    cuts = ([None, fine_tune_cut] if fine_tune_cut is not None else [None]) if head else [part.cut]
    names = [feature_cache.output_name(cut) for cut in cuts]
    parts = {names[0]: slice(0, 1), names[1]: slice(1, None)} if len(names) == 2 else {names[0]: slice(0, None)}
    augmentation = classifier.augmentation
    ctx = feature_cache.context(classifier, cuts, data, seed, probe, held_out)
    result = CachedOutputs(views=[], validation=[])
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
            result.computed += [request.label for request in missing]
        result.read += [request.label for request in requests if request not in missing]
        if progress is not None and not missing:
            progress.update(stage=f"reading cached features ({split})")
        found[split, view] = entries[requests[0]]
    result.views = [_arrays(found["train", v]) for v in range(views)]
    result.validation = _arrays(found["validation", None])
    result.held_out = {split: _arrays(found[split, None]) for split in held_out}
    return result


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


def steps_per_epoch(count: int, batch_size: int) -> int:
    """Batches in one epoch over `count` rows (the last may be smaller)."""
    return math.ceil(count / batch_size)


def view_batches(views: list[list[np.ndarray]], labels: np.ndarray, batch_size: int, seed: int, epochs: int,
                 sample_weights: np.ndarray | None = None) -> tf.data.Dataset:
    """Batches of cached tensors for `epochs` epochs: epoch e reads augmented view
    e mod len(views), in a new shuffled order (seeded by `seed`).

    views: per view, the list of arrays (N, ...), float16 memory maps or arrays (cast
    to float32 per batch, so only a batch is in memory at a time); labels: int (N,);
    sample_weights: float32 (N,) or None. Yields (inputs, labels[, sample_weights]),
    inputs one float32 tensor (B, ...) or a tuple of them. Fit it with
    `steps_per_epoch=steps_per_epoch(N, batch_size)`: the epochs follow one another
    in one stream. Each batch is gathered by `tf.numpy_function` (rows sorted, so a
    memory map is read in order) and prefetched while the previous batch trains, which
    costs far less per batch than a `keras.utils.PyDataset`.
    """
    rng = np.random.default_rng(seed)
    count = len(labels)
    schedule = []
    for epoch in range(epochs):
        order = rng.permutation(count)
        schedule += [(epoch % len(views), np.sort(order[start:start + batch_size]))
                     for start in range(0, count, batch_size)]
    labels = np.asarray(labels, dtype="int32")
    extras = [labels] if sample_weights is None else [labels, np.asarray(sample_weights, dtype="float32")]
    parts = len(views[0])

    def load(step):
        view, rows = schedule[int(step)]
        return [part[rows].astype("float32") for part in views[view]] + [extra[rows] for extra in extras]

    shapes = [(None, *part.shape[1:]) for part in views[0]] + [(None,)] * len(extras)
    types = [tf.float32] * parts + [tf.as_dtype(extra.dtype) for extra in extras]

    def batch(step):
        tensors = tf.numpy_function(load, [step], types, stateful=False)
        for tensor, shape in zip(tensors, shapes):
            tensor.set_shape(shape)
        inputs = tensors[0] if parts == 1 else tuple(tensors[:parts])
        return (inputs, *tensors[parts:])

    return tf.data.Dataset.range(len(schedule)).map(batch).prefetch(2)
