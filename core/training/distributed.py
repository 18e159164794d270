"""Training across machines: `tf.distribute.MultiWorkerMirroredStrategy` with a custom loop.

Keras 3's `fit` and `evaluate` fail under this strategy with two or more workers
(keras-team/keras#20585: Keras reduces the first (x, y) batch and the scalar losses with
`strategy.reduce`, which takes neither across workers), so each phase runs a training
loop of its own, as TensorFlow's tutorials "Custom training loop with Keras and
MultiWorkerMirroredStrategy" and "Custom training with tf.distribute.Strategy" write it:
the model and its optimizer are made under `strategy.scope()`, the data is a
`tf.data` pipeline split by `strategy.experimental_distribute_dataset` (auto-shard by
DATA: every machine reads the same images and keeps its share of each global batch),
and a `@tf.function` step runs `strategy.run` with a `tf.GradientTape`; the loss is
scaled by the global batch size (`tf.nn.compute_average_loss`) and the Keras optimizer's
`apply_gradients` sums the gradients over all replicas. Validation counts (loss sum,
correct, images) are summed over the cluster, so every machine sees the same scores.

The phase logic is the single-machine one: `Classifier.freeze` freezes the backbone for
the head and unfreezes from the cut for fine-tuning, and the same Keras callbacks
(`core.training.callbacks`: `Recorder`, early stopping, ReduceLROnPlateau) are driven by the
loop through a `keras.callbacks.CallbackList`. Every decision that ends a loop (a stop
request, a NaN loss, early stopping) is taken on values summed over the cluster, so all
machines leave the loop at the same step; a machine that left alone would wait forever
in the next all-reduce. Only the chief writes files (TensorFlow's chief-only saving):
`local_copy` gives it a plain model, outside the strategy, to save and evaluate.
The frozen part runs every epoch here (path "full"): the feature cache is per machine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from core import settings
from core.config import RunConfig, TrainConfig
from core.data.image_data import ImageData
from core.errors import UserError
from core.model import build as model_lib
from core.model.augmentation import build_augmentation
from core.model.classifier import Classifier
from core.training.callbacks import Recorder, phase_callbacks
from core.training.phases import PhaseResult, class_weights


@dataclass(frozen=True)
class Task:
    """This machine's place in the cluster `TF_CONFIG` describes."""

    kind: str  # "chief" or "worker"
    index: int
    machines: int  # chief and workers together

    @property
    def is_chief(self) -> bool:
        """The machine that writes the run: the "chief" task, else worker 0 (TensorFlow's rule)."""
        return self.kind == "chief" or (self.kind == "worker" and self.index == 0)

    def __str__(self) -> str:
        return f"{self.kind} {self.index} of {self.machines} machines"


def cluster_task() -> Task | None:
    """This machine's task when `$TF_CONFIG` names two or more machines, else None (train on one).

    Raises UserError when TF_CONFIG lacks a task of type "chief" or "worker" with an
    index inside its cluster, or names an "evaluator" or "ps" task (not supported).
    """
    spec = settings.tf_config()
    if spec is None:
        return None
    cluster = spec.get("cluster") or {}
    task = spec.get("task") or {}
    hint = ('TF_CONFIG is {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}, with this machine\'s index.')
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported or task.get("type") not in ("chief", "worker"):
        raise UserError(f"TF_CONFIG names task types this project cannot train with: "
                        f"{unsupported or [task.get('type')]}.",
                        "Use only 'chief' and 'worker' tasks (MultiWorkerMirroredStrategy). " + hint)
    machines = sum(len(cluster.get(kind) or []) for kind in ("chief", "worker"))
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster.get(task["type"]) or []):
        raise UserError(f"TF_CONFIG's task index {index!r} is not one of its {task['type']} addresses.", hint)
    if machines < 2:
        return None
    return Task(task["type"], index, machines)


def multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """The strategy over the machines TF_CONFIG names. Make it before any other TensorFlow
    operation runs (TensorFlow configures its collective ops once, at start-up)."""
    return tf.distribute.MultiWorkerMirroredStrategy()


class ClusterModel:
    """The run's model, made under `strategy.scope()` and trained by every machine in step.

    `config` is the run's `RunConfig`; `num_classes` comes from the data. The model is
    `core.model.build.build_model`'s (a `Classifier`), seeded with `config.seed`.
    """

    def __init__(self, strategy: tf.distribute.Strategy, config: RunConfig, num_classes: int):
        self.strategy, self.config, self.num_classes = strategy, config, num_classes
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            self.classifier = self._build()
        self._local: Classifier | None = None

    def _build(self) -> Classifier:
        config = self.config
        return model_lib.build_model(config.model, self.num_classes, config.data.image_size,
                                     build_augmentation(config.augment, seed=config.seed))

    def check_same_data(self, data: ImageData) -> None:
        """Raise UserError on every machine unless all of them read the same data
        (class names and images per split): each keeps its share of every batch, so
        different data would train on a mix nobody chose."""
        text = repr((data.class_names, {split: len(labels) for split, (_, labels) in data.splits.items()}))
        mine = float(int(hashlib.sha256(text.encode()).hexdigest()[:5], 16))  # exact in float32
        total, squares = (float(v) for v in self._sum_over_replicas(tf.constant([mine, mine * mine], tf.float64)))
        replicas = self.strategy.num_replicas_in_sync
        if total * total != replicas * squares:  # equal only when every machine's value is the same
            raise UserError("The machines of the cluster read different data (class names or images per split differ).",
                            "Give every machine the same data folder and the same command, then start them again.")

    def _sum_over_replicas(self, value: tf.Tensor) -> np.ndarray:
        @tf.function
        def total():
            return self.strategy.reduce("SUM", self.strategy.run(lambda: tf.identity(value)), axis=None)

        return total().numpy()

    def train_phase(self, data: ImageData, config: TrainConfig, phase: str, *, seed: int, epoch_offset: int = 0,
                    progress=None, on_epoch=None) -> PhaseResult:
        """Train one phase ("head" or "fine_tune") on every machine of the cluster.

        Freezes per `config.fine_tune_at` (`Classifier.freeze`), makes the phase's optimizer
        (and the head's own, with `config.head_learning_rate`) under the strategy, and
        runs `config.epochs` epochs (numbered after `epoch_offset`) over the training
        split in global batches of `RunConfig.data.batch_size` images, shuffled with
        `seed`, each followed by validation. `progress` gets the single-machine fields
        (stage, batch, ETA, metrics; its stop request, on any machine, stops all of
        them after the same batch); `on_epoch(record)` gets each epoch's record.
        Returns the `PhaseResult` (path "full"; `trained` is the distributed model).
        """
        started = time.perf_counter()
        model, strategy = self.classifier.model, self.strategy
        self.classifier.freeze(config.fine_tune_at, config.freeze_batchnorm)
        labels = data.splits["train"][1]
        batch_size = min(self.config.data.batch_size, len(labels))
        keras.utils.set_random_seed(seed)
        with strategy.scope():
            model_lib.compile_model(model, config.optimizer, config.learning_rate, self.num_classes)
            head_ids = set()
            head_optimizer = None
            if config.head_learning_rate is not None and config.fine_tune_at is not None:
                head_ids = self.classifier.head_weight_ids()
                head_optimizer = model_lib.make_optimizer(config.optimizer, config.head_learning_rate)
                head_optimizer.build([v for v in model.trainable_variables if id(v) in head_ids])
            model.optimizer.build([v for v in model.trainable_variables if id(v) not in head_ids])
            per_example = type(model.loss).from_config({**model.loss.get_config(), "reduction": None})
        weights = tf.constant(class_weights(labels, data.num_classes) if config.class_weights
                              else np.ones(data.num_classes, "float32"))

        def train_replica(images, targets, stop):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                losses = per_example(targets, logits) * tf.gather(weights, targets)
                loss = tf.nn.compute_average_loss(losses, global_batch_size=batch_size)
            variables = model.trainable_variables
            gradients = tape.gradient(loss, variables)
            pairs = list(zip(gradients, variables))
            model.optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) not in head_ids])
            if head_optimizer is not None:
                head_optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) in head_ids])
            return [*_counts(losses, logits, targets), tf.identity(stop)]

        @tf.function
        def train_step(batch, stop):
            outputs = strategy.run(train_replica, args=(*batch, stop))
            return [strategy.reduce("SUM", value, axis=None) for value in outputs]

        @tf.function
        def eval_step(batch):
            def replica(images, targets):
                logits = model(images, training=False)
                return _counts(per_example(targets, logits), logits, targets)

            return [strategy.reduce("SUM", value, axis=None) for value in strategy.run(replica, args=batch)]

        train = _distribute(strategy, data.tf_dataset("train", batch_size, shuffle=True, seed=seed))
        validation = _distribute(strategy, data.tf_dataset("validation", batch_size))

        def evaluate() -> dict:
            totals = np.zeros(3)
            for batch in validation:
                totals += [float(v) for v in eval_step(batch)]
            return _scores(totals)

        initial = {}
        if phase == "head":  # the tutorial's starting point: the untrained head on validation
            initial = evaluate()
            if progress is not None:
                progress.update(initial=initial)
        synced = _SyncedStop(progress)
        recorder = Recorder(phase=phase, path="full", steps=math.ceil(len(labels) / batch_size), batch_size=batch_size,
                            progress=synced, on_epoch=on_epoch, epochs=config.epochs, offset=epoch_offset)
        callbacks = keras.callbacks.CallbackList(phase_callbacks(config, recorder), model=model)
        model.stop_training = False
        callbacks.on_train_begin()
        for epoch in range(epoch_offset, epoch_offset + config.epochs):
            callbacks.on_epoch_begin(epoch)
            totals = np.zeros(3)
            for step, batch in enumerate(train):
                outputs = [float(v) for v in train_step(batch, tf.constant(float(synced.asked_here)))]
                totals += outputs[:3]
                synced.stopped = synced.stopped or outputs[3] > 0
                callbacks.on_train_batch_end(step, _scores(totals))
                if model.stop_training:
                    break
            callbacks.on_epoch_end(epoch, {**_scores(totals), **{f"val_{k}": v for k, v in evaluate().items()}})
            if model.stop_training:
                break
        callbacks.on_train_end()
        return PhaseResult(phase=phase, path=recorder.path, history=recorder.records,
                           seconds=time.perf_counter() - started, stopped=recorder.stopped, initial=initial,
                           nan_epoch=recorder.nan_epoch, trained=model,
                           weights={"best": recorder.best_weights, "final": recorder.final_weights})

    def local_copy(self, result: PhaseResult, config: TrainConfig) -> PhaseResult:
        """`result` with a plain model (made outside the strategy, frozen as `config` says,
        holding the phase's final weights) as its `trained` model: what the chief saves and evaluates alone. A
        model of the strategy would wait for the other machines in every `predict`."""
        if self._local is None:
            self._local = self._build()
        self._local.freeze(config.fine_tune_at, config.freeze_batchnorm)
        self._local.model.set_weights(result.weights["final"])
        return dataclasses.replace(result, trained=self._local.model)


class _SyncedStop:
    """The progress a `Recorder` reports to: updates go to this machine's progress (the
    chief's run folder), and `stop_requested` is the cluster's answer, the same on every
    machine; `asked_here` is this machine's own request, sent with each step."""

    def __init__(self, progress):
        self.progress, self.stopped = progress, False

    @property
    def asked_here(self) -> bool:
        return self.progress is not None and self.progress.stop_requested

    @property
    def stop_requested(self) -> bool:
        return self.stopped

    def update(self, **fields) -> None:
        if self.progress is not None:
            self.progress.update(**fields)


def _counts(losses: tf.Tensor, logits: tf.Tensor, targets: tf.Tensor) -> list[tf.Tensor]:
    """(sum of per-image losses, correct predictions, images) of one replica's batch; one
    logit is a binary prediction thresholded at 0, as `compile_model`'s accuracy."""
    if logits.shape[-1] == 1:
        predicted = tf.cast(logits[:, 0] > 0, tf.int32)
    else:
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(targets, tf.int32)), tf.float32))
    return [tf.reduce_sum(losses), correct, tf.cast(tf.shape(targets)[0], tf.float32)]


def _scores(totals: np.ndarray) -> dict:
    """{"loss", "accuracy"} from summed (loss, correct, images)."""
    images = max(float(totals[2]), 1.0)
    return {"loss": float(totals[0]) / images, "accuracy": float(totals[1]) / images}


def _distribute(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """`dataset` (global batches) split over the cluster's replicas, sharded by DATA."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))
