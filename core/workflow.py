"""The workflow's jobs, shared by the dashboard (through the JobManager) and the CLI.

A job is `fn(run, progress)`: it reads everything from the run's config, writes
per-epoch history, models and metrics into the run directory, and reports
progress to a `core.training.progress.Progress` (stages "loading data",
"reading images", "building the model", "training", then "saving models" and "evaluating on the test
split" after the last epoch). Jobs are module-level functions, submitted as
`functools.partial(job, ...)` with plain arguments, so they can be sent to a
worker process.

Run directory files written here: `head.keras` (the model after head training),
`best.keras` and `final.keras` (best epoch and last state of the latest phase;
the same model when `restore_best` is on) and `metrics.json`.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import keras
import numpy as np

from core import config as config_io
from core.config import RunConfig, TrainConfig, default_fine_tune
from core.data import datasets
from core.data.datasets import ImageData
from core.data.report import REPORT_FILE, data_report
from core.errors import UserError
from core.model import backbones
from core.model.augmentation import build_augmentation
from core.model.build import build_model
from core.model.classifier import Classifier
from core.model.tunable_head import copy_head_weights
from core.results import evaluation, export
from core.training import feature_cache, lr_finder, runs, sweep
from core.training import phases as training
from core.training.callbacks import Recorder, phase_callbacks
from core.training.fast_path import cached_outputs, frozen_part, steps_per_epoch
from core.training.progress import Stopped
from core.training.runs import Run

CLASSES_FILE = "classes.json"
load_data = datasets.load_cached


def run_data(run: Run, progress, root: Path | None) -> tuple[RunConfig, ImageData]:
    """The run's data, with its report kept as `data_report.json`; a refused dataset
    fails the run as a data error (message and hint, no traceback)."""
    config = run.config
    _report(progress, "loading data")
    try:
        data = load_data(config.data, root, None if progress is None else _data_progress(progress))
    except UserError as error:
        raise UserError(f"Data refused before training: {error.message}", error.hint) from None
    run.write_json(REPORT_FILE, data_report(data))
    return config, data


def _report(progress, stage: str) -> None:
    if progress is not None:
        progress.update(stage=stage)


def _data_progress(progress):
    return lambda done, total: progress.update(stage="reading images", batch=done, batches=total)


def _stoppable(job):
    """A stop during feature extraction ends the job quietly, as a stop during training does."""

    @functools.wraps(job)
    def run_job(run: Run, progress, data_root: Path | None = None, **kwargs) -> dict:
        try:
            return job(run, progress, data_root, **kwargs)
        except Stopped:
            run.log("Stopped before training started; nothing was saved.")
            return run.read_json("metrics.json", default={})

    return run_job


@_stoppable
def head_job(run: Run, progress, data_root: Path | None = None) -> dict:
    """Build the model from the run's config and train its head (backbone frozen).

    On the fast path the features come from the feature cache where they match
    (the test split's too, for the evaluation at the end); when the config also
    asks for fine-tuning, the activations at its cut are stored there in the same
    pass, for `fine_tune_job` (in this process or another).
    """
    config, data = run_data(run, progress, data_root)
    run.write_json(CLASSES_FILE, data.class_names)
    keras.utils.set_random_seed(config.seed)
    _report(progress, "building the model")
    with training.select_strategy().scope():
        classifier = build_model(config.model, data.num_classes, config.data.image_size,
                                 build_augmentation(config.augment, seed=config.seed))
        result = training.train_phase(
            classifier, data, config.head, "head", batch_size=config.data.batch_size, seed=config.seed,
            progress=progress, on_epoch=run.append_history, fine_tune_cut=_fine_tune_cut(classifier, config),
            probe=feature_cache.probe_of(config), log_dir=tensorboard_dir(run), held_out=_held_out(data),
        )
    if config.head.epochs == 0:  # explicit override: fine-tune on an untrained head
        run.log("head: 0 epochs asked for; the untrained head is saved as it is.")
        for kind in ("head", "final"):
            run.save_model(classifier.model, kind)
    metrics = finish_phase(run, classifier.model, data, result, config.head, progress,
                           extra={"initial": result.initial})
    _reuse_backbone(classifier, config)
    return metrics


def _reuse_backbone(classifier: Classifier, config: RunConfig) -> None:
    """At the end of a job that kept the backbone frozen, let the next job in this process
    take it rather than build it again (`backbones.reuse`; ImageNet weights only)."""
    if config.model.weights == "imagenet":
        backbones.reuse(classifier.backbone, config.model.backbone, config.data.image_size)


@_stoppable
def fine_tune_job(run: Run, progress, data_root: Path | None = None) -> dict:
    """Load the run's head-trained model (`head.keras`) and fine-tune it per
    `config.fine_tune`; the activations at the cut come from the feature cache where
    the head job (or an earlier run) stored them. Fine-tuning a run again starts over
    from its head: the earlier fine-tuning's epochs, models and metrics are replaced."""
    config, data = run_data(run, progress, data_root)
    if config.fine_tune is None:
        raise UserError(f"Run {run.id} has no fine-tuning settings.", "Choose them on the Fine-tune page.")
    if not run.model_path("head").is_file():
        raise UserError(f"Run {run.id} has no trained head ({run.model_path('head')} is missing).",
                        "Train the head first: fine-tuning on a random head wrecks the pretrained features.")
    keras.utils.set_random_seed(config.seed + 1)
    # A fine-tuning again starts over from the head, as the first one did; the earlier one's
    # epochs are dropped when the new one's first epoch ends (a stop before that keeps them).
    offset = max((r["epoch"] for r in run.history() if r["phase"] != "fine_tune"), default=0)
    _report(progress, "loading the head-trained model")
    with training.select_strategy().scope():
        model = export.load_model_safe(run.model_path("head"))
        result = training.train_phase(
            Classifier.from_keras(model), data, config.fine_tune, "fine_tune", batch_size=config.data.batch_size,
            seed=config.seed + 1, views_seed=config.seed, epoch_offset=offset, progress=progress,
            on_epoch=_replacing_history(run, "fine_tune"), log_dir=tensorboard_dir(run),
        )
    return finish_phase(run, model, data, result, config.fine_tune, progress)


def _replacing_history(run: Run, phase: str):
    """An `on_epoch` that drops `phase`'s earlier epoch records before appending the first new one."""
    dropped = []

    def on_epoch(record: dict) -> None:
        if not dropped:
            run.drop_history(phase)
            dropped.append(True)
        run.append_history(record)

    return on_epoch


def full_job(run: Run, progress, data_root: Path | None = None) -> dict:
    """Head training, then fine-tuning when the config asks for it (the CLI's job)."""
    metrics = head_job(run, progress, data_root)
    if run.config.fine_tune is not None and not progress.stop_requested:
        metrics = fine_tune_job(run, progress, data_root)
    return metrics


LR_FIND_FILE = "lr_find.json"
SWEEP_FILE = "sweep.json"


@_stoppable
def lr_find_job(run: Run, progress, data_root: Path | None = None, phase: str = "head") -> dict:
    """The learning-rate finder (`core.training.lr_finder`) for the run's head, or with
    `phase="fine_tune"` for its fine-tuning (on the run's trained head, from its cut),
    on the feature cache's outputs (computed and stored first where missing).

    Writes `lr_find.json` ({"head": result, "fine_tune": result}, see
    `FinderResult`) into the run directory and returns that dict; trains nothing
    that is saved. Raises UserError for fine-tuning without a trained head.
    """
    config, data = run_data(run, progress, data_root)
    labels = data.splits["train"][1]
    if phase == "fine_tune":
        tune = config.fine_tune
        if tune is None or not run.model_path("head").is_file():
            raise UserError(f"Run {run.id} has no trained head or no fine-tuning settings.",
                            "Train the head and choose the unfreeze point first.")
        classifier = Classifier.from_keras(export.load_model_safe(run.model_path("head")))
        part = frozen_part(classifier, classifier.freeze(tune.fine_tune_at, tune.freeze_batchnorm))
        views = cached_outputs(classifier, part, data, tune.views, config.seed, progress=progress).views
        optimizer = tune.optimizer
    else:
        classifier, part, outputs = _head_features(config, data, progress)
        views, optimizer = outputs.views, config.head.optimizer
    result = lr_finder.find_learning_rate(part.trainable, views, labels, data.num_classes, optimizer,
                                          batch_size=config.data.batch_size, seed=config.seed, progress=progress)
    if phase == "head":
        _reuse_backbone(classifier, config)
    found = {**run.read_json(LR_FIND_FILE, default={}), phase: result.to_dict()}
    run.write_json(LR_FIND_FILE, found)
    run.log(f"lr finder ({phase}): suggested learning rate {result.suggestion:.2e}")
    return found


@_stoppable
def sweep_job(run: Run, progress, data_root: Path | None = None, trials: int = 20) -> dict:
    """Search head settings (`core.training.sweep`) on the run's cached features, then
    make the best trial a new normal run beside this one, which the user can fine-tune:
    its head is trained as the trial was (`_trial_as_run`), so it has the trial's scores.

    Writes `sweep.json` ({"trials": rows, "best": row, "best_run": run id}) into
    this run's directory, after every trial; returns it.
    """
    config, data = run_data(run, progress, data_root)
    classifier, _, outputs = _head_features(config, data, progress)
    record = {"trials": [], "base": config_io.to_dict(config)}

    def save(rows: list[dict]) -> None:
        record["trials"] = rows
        run.write_json(SWEEP_FILE, record)

    rows = sweep.search(outputs.views, data.splits["train"][1], outputs.validation, data.splits["validation"][1],
                        data.num_classes, trials, config.data.batch_size, config.seed, progress, on_trial=save)
    _reuse_backbone(classifier, config)
    if not rows or progress.stop_requested:
        return record
    record["best"] = sweep.best_row(rows)
    best_config = dataclasses.replace(sweep.apply(config, record["best"]), name=f"best of sweep {run.id}")
    best = Run.create(run.path.parent, best_config)
    record["best_run"] = best.id
    run.write_json(SWEEP_FILE, record)
    best.set_status(runs.RUNNING, started=time.time())
    _trial_as_run(best, progress, data_root)
    best.set_status(runs.STOPPED if progress.stop_requested else runs.FINISHED, finished=time.time())
    run.log(f"sweep: {len(rows)} trials; best {record['best']}; trained as run {best.id}")
    return record


@_stoppable
def _trial_as_run(run: Run, progress, data_root: Path | None = None) -> dict:
    """Train the run's head as a sweep trains a trial with its settings (`sweep.train_trial`
    on the same cached features and seed: the same scores, epoch by epoch), recorded,
    logged to TensorBoard, saved and scored on the test split as `head_job` does. The
    model built from the run's config gets the trial head's weights (best and last epoch)."""
    config, data = run_data(run, progress, data_root)
    run.write_json(CLASSES_FILE, data.class_names)
    classifier, part, outputs = _head_features(config, data, progress)
    labels = data.splits["train"][1]
    batch_size = min(config.data.batch_size, len(labels))
    recorder = Recorder(phase="head", path="features", steps=steps_per_epoch(len(labels), batch_size),
                        batch_size=batch_size, progress=progress, on_epoch=run.append_history, epochs=config.head.epochs)
    started = time.perf_counter()
    sweep.train_trial(sweep.settings_of(config), outputs.views, labels, outputs.validation,
                      data.splits["validation"][1], data.num_classes, batch_size, config.seed, progress,
                      callbacks=phase_callbacks(config.head, recorder, tensorboard_dir(run)))
    weights = {}
    for kind, values in (("best", recorder.best_weights), ("final", recorder.final_weights)):
        if values is not None:
            recorder.model.set_weights(values)
            copy_head_weights(recorder.model, part.trainable)
            weights[kind] = part.trainable.get_weights()
    result = training.PhaseResult(phase="head", path="features", history=recorder.records,
                                  seconds=time.perf_counter() - started, stopped=recorder.stopped,
                                  nan_epoch=recorder.nan_epoch, trained=part.trainable, weights=weights,
                                  cache={"read": outputs.read, "computed": outputs.computed},
                                  held_out=outputs.held_out)
    metrics = finish_phase(run, classifier.model, data, result, config.head, progress)
    _reuse_backbone(classifier, config)
    return metrics


def _head_features(config: RunConfig, data: ImageData, progress):
    """(classifier, frozen part, `CachedOutputs`) for head training with `config`, the
    features from the feature cache (stored in the same pass: the activations at the
    fine-tuning cut and the test split's features, as `head_job` does)."""
    keras.utils.set_random_seed(config.seed)
    _report(progress, "building the model")
    classifier = build_model(config.model, data.num_classes, config.data.image_size,
                             build_augmentation(config.augment, seed=config.seed))
    cut = _fine_tune_cut(classifier, config)
    part = frozen_part(classifier, classifier.freeze(None), cut)
    outputs = cached_outputs(classifier, part, data, config.head.views, config.seed, fine_tune_cut=cut,
                             probe=feature_cache.probe_of(config), progress=progress, held_out=_held_out(data))
    return classifier, part, outputs


def _held_out(data: ImageData) -> tuple[str, ...]:
    """The splits besides train and validation whose features a head run caches: test, when it has images."""
    return ("test",) if len(data.splits["test"][1]) else ()


def tensorboard_dir(run: Run) -> Path:
    """Where a run's TensorBoard event files go: `<run dir>/tensorboard` (so `tensorboard --logdir runs` works)."""
    return run.path / "tensorboard"


def _fine_tune_cut(classifier: Classifier, config: RunConfig) -> int | None:
    """The backbone layer fine-tuning will start from, when its fast path can read
    activations stored during head training (a cut strictly inside the backbone).

    A head-only run (the Train head page's) stores them at the backbone's default
    cut (`Backbone.fine_tune_at`, where the Fine-tune page starts), so a fine-tuning
    with the defaults runs no frozen layer again.
    """
    backbone = backbones.get_backbone_spec(config.model.backbone)
    tune = config.fine_tune or default_fine_tune(config.head, backbone.fine_tune_at)
    if not tune.fast_path or not config.head.fast_path:
        return None
    try:
        cut = classifier.cut_at(tune.fine_tune_at)
    except UserError:  # the default cut is past the end of a small backbone
        return None
    return cut if 0 < cut < classifier.depth else None


def comparison_configs(base: RunConfig, epochs: int) -> dict[str, RunConfig]:
    """The flowers blog's three runs on the same data and epochs: random weights
    trained end to end; a frozen pretrained backbone with a new head; and that
    head then fine-tuned with the whole backbone unfrozen at a 10x lower rate."""
    head = dataclasses.replace(base.head, epochs=epochs, fine_tune_at=None)
    model = dataclasses.replace(base.model, weights="imagenet" if base.model.weights == "none" else base.model.weights)
    fine_tune = dataclasses.replace(head, fine_tune_at="all", learning_rate=head.learning_rate / 10)
    return {
        "from scratch": dataclasses.replace(
            base, name="compare: from scratch", model=dataclasses.replace(model, weights="none"),
            head=dataclasses.replace(head, fine_tune_at="all"), fine_tune=None),
        "transfer (frozen)": dataclasses.replace(base, name="compare: transfer (frozen)", model=model, head=head, fine_tune=None),
        "fine-tuned": dataclasses.replace(base, name="compare: fine-tuned", model=model, head=head, fine_tune=fine_tune),
    }


def finish_phase(run: Run, model: keras.Model, data: ImageData, result: training.PhaseResult,
                  config: TrainConfig, progress=None, extra: dict | None = None) -> dict:
    """Save the phase's models, evaluate on the test split and record the metrics.

    The test split is scored by the trained part on its cached inputs when the phase
    cached them (`PhaseResult.held_out`; float16 features, as validation's), else by
    the whole model on the images.

    A diverged phase (NaN loss) keeps its best epoch, if any, and fails with a message.
    """
    if result.nan_epoch is not None:
        if result.history:
            result.use_weights("best")
            run.save_model(model, "best")
        raise UserError(
            f"Training diverged: the loss became NaN in epoch {result.nan_epoch} of the {result.phase} phase.",
            "Lower the learning rate (by 10x), check the images, and start again"
            + (f"; the best epoch so far is kept in {run.model_path('best').name}." if result.history else "."),
        )
    if not result.history:
        run.log(f"{result.phase}: stopped before the first epoch ended; no model saved.")
        return run.read_json("metrics.json", default={})
    _report(progress, "saving models")
    # With restore_best the final model is the best one: one save, then a copy.
    kept, other = ("best", "final") if config.restore_best else ("final", "best")
    result.use_weights(kept)
    run.save_model(model, kept)
    if config.restore_best or not result.has_distinct_best:
        run.copy_model(kept, other)
    else:
        result.use_weights("best")
        run.save_model(model, "best")
        result.use_weights("final")
    if result.phase == "head":
        run.copy_model("final", "head")

    summary = {
        "path": result.path,
        "epochs": len(result.history),
        "seconds": round(result.seconds, 2),
        "val_accuracy": result.best_val_accuracy if config.restore_best else result.history[-1].get("val_accuracy"),
        "stopped": result.stopped,
        "feature_cache": {kind: len(labels) for kind, labels in result.cache.items()},
    }
    test_images, test_labels = data.splits["test"]
    if len(test_labels):
        _report(progress, "evaluating on the test split")
        cached = result.held_out.get("test")
        if cached is not None and len(cached) == 1:  # the head's input from the feature cache: no backbone pass
            scores = evaluation.evaluate(result.trained, np.asarray(cached[0], dtype="float32"), test_labels,
                                         data.class_names)
        else:
            scores = evaluation.evaluate(model, test_images, test_labels, data.class_names)
        summary.update(test_accuracy=scores["accuracy"], test_loss=scores["loss"])
    metrics = {**run.read_json("metrics.json", default={}), **(extra or {}), result.phase: summary}
    run.write_json("metrics.json", metrics)
    run.update_status(**{f"seconds_{result.phase}": summary["seconds"]})
    run.log(f"{result.phase}: {summary}")
    return metrics


def load_run_model(run: Run, kind: str = "final") -> tuple[keras.Model, list[str]]:
    """A run's saved model (Keras safe mode) and its class names."""
    classes = run.read_json(CLASSES_FILE)
    if not classes:
        raise UserError(f"Run {run.id} has no trained model yet.", "Train its head first.")
    return export.load_model_safe(run.model_path(kind)), classes
