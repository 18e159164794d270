"""Headless command line: `python -m core <command> ...`.

Each command is one function taking the parsed arguments; results go to stdout
as JSON, user errors to stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core import settings
from core.config import ModelConfig
from core.errors import UserError
from core.model.backbones import BACKBONES, DEFAULT_BACKBONE

USER_ERROR_EXIT = 2


def summary(args: argparse.Namespace) -> dict:
    """Parameter counts and the layer table of a freshly built model."""
    from core.model.build import build_model, count_params, layer_table

    model_config = ModelConfig(
        backbone=args.backbone,
        weights=args.weights,
        pooling=args.pooling,
        hidden_units=args.hidden_units,
    )
    classifier = build_model(model_config, args.classes, args.image_size)
    classifier.freeze(args.fine_tune_at, args.freeze_batchnorm)
    return {**count_params(classifier.model), "layers": layer_table(classifier)}


def _add_summary(commands) -> None:
    parser = commands.add_parser("summary", help="parameter counts and layers of a model")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=list(BACKBONES))
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument(
        "--fine-tune-at", default=None,
        help="unfreeze the backbone: 'all', a layer index or a layer name (default: frozen)",
    )
    parser.add_argument("--freeze-batchnorm", action="store_true")
    parser.add_argument("--weights", default="imagenet", help="imagenet, none or a file path")
    parser.add_argument("--pooling", default="avg", choices=["avg", "flatten"])
    parser.add_argument("--hidden-units", type=int, default=0)
    parser.set_defaults(command=summary)


def train(args: argparse.Namespace) -> dict:
    """Train headless, exactly as the dashboard does, with a progress bar on stderr; when
    TF_CONFIG names two or more machines, on all of them together (`_train_across_machines`)."""
    from core.training.distributed import cluster_task
    from core.workflow import full_job

    task = cluster_task()
    if task is not None:
        return _train_across_machines(args, task)
    run, root = _new_run(args)
    _run_job(run, functools.partial(full_job, data_root=root))
    return _train_result(run)


def _train_result(run) -> dict:
    """What `train` prints: the run's folder, status, scores and times (and a chance-level warning)."""
    from core.data.report import REPORT_FILE
    from core.results.chance import chance_level_warning

    report = run.read_json(REPORT_FILE, default=None)
    metrics = run.read_json("metrics.json", default={})
    head_metrics, fine_metrics = metrics.get("head", {}), metrics.get("fine_tune", {})
    last = fine_metrics or head_metrics
    seconds = [head_metrics.get("seconds", 0.0), fine_metrics.get("seconds", 0.0)]
    warning = chance_level_warning(last.get("val_accuracy"), list((report or {}).get("counts", {}).get("validation", {}).values()))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return {
        "chance_level_warning": warning,
        "run_dir": str(run.path), "status": run.status()["status"],
        "head_val_accuracy": head_metrics.get("val_accuracy"), "val_accuracy": last.get("val_accuracy"),
        "head_test_accuracy": head_metrics.get("test_accuracy"), "test_accuracy": last.get("test_accuracy"),
        "training_path": head_metrics.get("path"),
        "seconds_head": seconds[0], "seconds_fine_tune": seconds[1], "seconds_total": round(sum(seconds), 2),
    }


def _train_across_machines(args: argparse.Namespace, task) -> dict:
    """`train` on one machine of a cluster (`core.training.distributed`): every machine runs
    this same command with its own TF_CONFIG task and trains in step; the chief writes the
    run folder (config, status, progress, history, models, metrics) as a dashboard job
    does, the other machines write nothing and print their task and scores.

    Ctrl-C on any machine stops all of them after the same batch. A failure is a
    UserError (on the chief also recorded in the run, the traceback in its log.txt).
    """
    import time
    import traceback

    from core.training import distributed, runs
    from core.training.progress import FileProgress, Progress
    from core.training.worker import describe

    strategy = distributed.multi_worker_strategy()  # before any other TensorFlow operation
    config, root = _run_config(args)
    print(f"Training across machines: this is the {task}.", file=sys.stderr)
    run = runs.Run.create(args.runs_dir or settings.runs_dir(), config) if task.is_chief else None
    progress = FileProgress(run) if run is not None else Progress()
    if run is not None:
        run.set_status(runs.RUNNING, started=time.time(), machines=task.machines)
        run.log(f"Training across {task.machines} machines; this process (pid {os.getpid()}) is the {task.kind}.")
    progress.start()
    try:
        with _ctrl_c_stops(progress):
            outcome = _train_on_cluster(strategy, config, root, run, progress)
    except BaseException as error:
        if run is not None:
            run.set_status(runs.FAILED, finished=time.time(), **describe(error))
            run.log(f"Failed: {error}" if isinstance(error, UserError) else traceback.format_exc())
        if isinstance(error, UserError | KeyboardInterrupt):
            raise
        where = f"See {run.path / runs.LOG_FILE}." if run is not None else "See the chief's run folder and log."
        raise UserError(f"Training across machines failed on the {task}: {type(error).__name__}: {error}",
                        where) from error
    finally:
        progress.update(stage="ended")
    status = runs.STOPPED if outcome.stopped else runs.FINISHED
    if run is None:
        return {"task": str(task), "run_dir": None, "status": status, "val_accuracy": outcome.best_val_accuracy}
    run.set_status(status, finished=time.time())
    run.log(f"Job {status}.")
    return {"task": str(task), **_train_result(run)}


def _train_on_cluster(strategy, config, root, run, progress):
    """Head training, then fine-tuning when `config` asks for it, on every machine in step
    (`full_job`'s sequence); `run` is the chief's run (None elsewhere), which gets the data
    report, classes, history, models and metrics that `head_job` and `fine_tune_job` write.
    Returns the last phase's `PhaseResult`."""
    from core import workflow
    from core.training import distributed

    if run is not None:
        config, data = workflow.run_data(run, progress, root)
        run.write_json(workflow.CLASSES_FILE, data.class_names)
    else:
        data = workflow.load_data(config.data, root)
    cluster = distributed.ClusterModel(strategy, config, data.num_classes)
    cluster.check_same_data(data)

    def on_epoch(record: dict) -> None:
        print(f"{record['phase']} epoch {record['epoch']}: " + ", ".join(
            f"{key} {record[key]:.4f}" for key in ("loss", "accuracy", "val_loss", "val_accuracy")), file=sys.stderr)
        if run is not None:
            run.append_history(record)

    def finish(result, train_config, **extra):
        if run is not None:  # TensorFlow's chief-only saving: a plain copy, saved and evaluated here only
            local = cluster.local_copy(result, train_config)
            workflow.finish_phase(run, local.trained, data, local, train_config, progress, **extra)
        elif result.nan_epoch is not None:
            raise UserError(f"Training diverged: the loss became NaN in epoch {result.nan_epoch} of the "
                            f"{result.phase} phase.", "Lower the learning rate (by 10x) on every machine.")

    head = cluster.train_phase(data, config.head, "head", seed=config.seed, progress=progress, on_epoch=on_epoch)
    finish(head, config.head, extra={"initial": head.initial})
    if config.fine_tune is None or head.stopped or not head.history:
        return head
    head.use_weights("best" if config.head.restore_best else "final")  # what the head run saved as final
    offset = max(record["epoch"] for record in head.history)
    tuned = cluster.train_phase(data, config.fine_tune, "fine_tune", seed=config.seed + 1, epoch_offset=offset,
                                progress=progress, on_epoch=on_epoch)
    finish(tuned, config.fine_tune)
    return tuned


@contextlib.contextmanager
def _ctrl_c_stops(progress):
    """While inside, Ctrl-C asks `progress` to stop after the current batch instead of raising."""
    import signal

    def ask(signum, frame):
        print("\nStopping after the current batch (on every machine)...", file=sys.stderr)
        progress.request_stop()

    previous = signal.signal(signal.SIGINT, ask)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _new_run(args: argparse.Namespace):
    """A new run of the config the arguments describe (train's, sweep's and lr-find's, on one
    machine), and the data root its folder is relative to. Raises UserError when TF_CONFIG
    names several machines: only `train` runs across them."""
    from core.training import runs
    from core.training.distributed import cluster_task

    if cluster_task() is not None:
        raise UserError("Only `train` runs across machines, and TF_CONFIG names several.",
                        "Unset TF_CONFIG for this command; it runs on one machine.")
    run_config, root = _run_config(args)
    return runs.Run.create(args.runs_dir or settings.runs_dir(), run_config), root


def _run_config(args: argparse.Namespace):
    """The RunConfig the arguments describe, and the data root its folder is relative to."""
    import dataclasses
    from pathlib import Path

    from core import config as config_io
    from core.config import RunConfig, default_fine_tune
    from core.model import augmentation
    from core.model.backbones import get_backbone_spec

    run_config = config_io.loads(Path(args.config).read_text()) if args.config else RunConfig()
    data = run_config.data
    if args.data:
        data = dataclasses.replace(data, source="folder", name=str(Path(args.data).resolve()))
    if args.test_data:
        data = dataclasses.replace(data, test_folder=str(Path(args.test_data).resolve()))
    data = _replace(data, image_size=args.image_size, seed=args.seed, batch_size=args.batch_size,
                    drop_duplicates=args.drop_duplicates or None)
    model = _replace(run_config.model, backbone=args.backbone, weights=args.weights)
    head = _replace(run_config.head, epochs=args.head_epochs, fast_path=False if args.no_fast_path else None)
    # The Fine-tune page's defaults: the head's optimizer at a tenth of its rate, from the backbone's default cut.
    defaults = default_fine_tune(head, get_backbone_spec(model.backbone).fine_tune_at)
    fine_tune = run_config.fine_tune if args.config else defaults  # without a config file, the run fine-tunes
    if args.fine_tune_epochs is not None or args.fine_tune_at is not None:
        fine_tune = _replace(fine_tune or defaults, epochs=args.fine_tune_epochs, fine_tune_at=args.fine_tune_at)
    if fine_tune is not None and args.no_fast_path:
        fine_tune = dataclasses.replace(fine_tune, fast_path=False)
    run_config = dataclasses.replace(
        run_config, data=data, model=model, head=head,
        fine_tune=fine_tune if fine_tune is not None and fine_tune.epochs > 0 else None,
        augment=augmentation.parse_spec(args.augment) if args.augment else run_config.augment,
        seed=args.seed if args.seed is not None else run_config.seed,
    )
    # Paths given here are absolute; a folder name in a dashboard's config.json is
    # relative to the data root, as it was on the server.
    root = Path("/") if Path(data.name).is_absolute() else settings.data_root()
    return run_config, root


def _run_job(run, job) -> dict:
    """Run `job` on `run` through a JobManager, following its progress, and return the run's
    status; a failure becomes a UserError."""
    from core.data.report import REPORT_FILE, format_report
    from core.training import runs
    from core.training.jobs import JobManager

    manager = JobManager()
    try:
        _follow(manager, manager.submit(run, job))  # the job runs in a worker process
    finally:
        manager.close()
    report = run.read_json(REPORT_FILE, default=None)
    if report:  # what the data held, as the Data page shows it: also when it was refused
        print(format_report(report), file=sys.stderr)
    status = run.status()
    if status["status"] == runs.FAILED:
        raise UserError(f"Training failed: {status.get('error')}", status.get("hint") or f"See {run.path / runs.LOG_FILE}.")
    return status


def sweep(args: argparse.Namespace) -> dict:
    """A search over head settings on cached features; the best trial is trained as a normal run."""
    from core import workflow

    run, root = _new_run(args)
    _run_job(run, functools.partial(workflow.sweep_job, data_root=root, trials=args.trials))
    record = run.read_json(workflow.SWEEP_FILE, default={})
    best_run = record.get("best_run")
    return {"sweep_dir": str(run.path), "trials": record.get("trials", []), "best": record.get("best"),
            "best_run_dir": str(run.path.parent / best_run) if best_run else None}


def lr_find(args: argparse.Namespace) -> dict:
    """The learning-rate finder for the head on cached features."""
    from core import workflow

    run, root = _new_run(args)
    _run_job(run, functools.partial(workflow.lr_find_job, data_root=root))
    found = run.read_json(workflow.LR_FIND_FILE, default={}).get("head", {})
    return {"run_dir": str(run.path), "suggestion": found.get("suggestion"), "rates": found.get("rates"),
            "losses": found.get("losses")}


def _replace(config, **changes):
    """dataclasses.replace with only the changes that were given (not None)."""
    import dataclasses

    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


def _follow(manager, job) -> None:
    """Draw the job's progress on stderr until it ends; Ctrl-C asks it to stop."""
    while True:
        try:
            if manager.wait(timeout=0.5):
                break
        except KeyboardInterrupt:
            print("\nStopping after the current batch...", file=sys.stderr)
            manager.stop(job.run_id)
            continue
        progress = job.progress.snapshot()
        if progress.batches:
            done, total = progress.batch or 0, progress.batches
            bar = "#" * int(30 * done / total)
            phase = progress.phase or ""
            epoch = f"epoch {(progress.epoch or 0) + 1}" if progress.stage == "training" else ""
            print(f"\r{progress.stage or ''} {phase} {epoch} [{bar:<30}] {done}/{total} "
                  f"{progress.images_per_second or 0:.0f} img/s   ", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def evaluate(args: argparse.Namespace) -> dict:
    """Accuracy, loss, per-class scores and the confusion matrix of a run's model on a folder."""
    from core.data import datasets
    from core.results import evaluation
    from core.training import runs
    from core.workflow import load_run_model

    run = runs.Run(args.run_dir)
    model, classes = load_run_model(run, args.model)
    images, labels, skipped = datasets.load_labelled(args.data, classes, run.config.data.image_size)
    if not len(labels):
        raise UserError(f"No readable images in {args.data}.", "Point --data at class folders of images.")
    result = evaluation.evaluate(model, images, labels, classes)
    result.pop("predictions")
    return {**result, "images": len(labels), "skipped": [vars(s) for s in skipped]}


def predict(args: argparse.Namespace) -> list:
    """Class probabilities for each image; a bad file gets an error entry.

    With --min-confidence P, the probabilities are calibrated by the run's
    temperature (fitted on its validation split, see core.results.calibration)
    and a prediction whose calibrated confidence is below P has label "unsure".
    With --gradcam DIR, each image's Grad-CAM overlay for its predicted class goes
    to DIR as PNG and its path into the entry.
    """
    import numpy as np

    from core.data.images import ImageError, load_image
    from core.results import calibration, evaluation, gradcam
    from core.training import runs
    from core.workflow import load_run_model

    run = runs.Run(args.run_dir)
    model, classes = load_run_model(run, args.model)
    size = run.config.data.image_size
    results, images, positions = [], [], []
    for path in args.images:
        try:
            images.append(load_image(path, size))
            positions.append(len(results))
            results.append({"file": path})
        except ImageError as error:
            results.append({"file": path, "error": error.reason})
    if images:
        logits = model.predict(np.stack(images).astype("float32"), verbose=0)
        if args.min_confidence is None:
            probs = evaluation.probabilities(logits)
            extra = [{"label": classes[int(row.argmax())]} for row in probs]
        else:
            temperature = calibration.run_temperature(run, args.model, model)["temperature"]
            probs = calibration.scaled_probabilities(logits, temperature)
            extra = [{**verdict, "temperature": temperature}
                     for verdict in calibration.verdicts(probs, classes, args.min_confidence)]
        for position, row, fields in zip(positions, probs, extra):
            results[position].update(
                **fields, probabilities={name: round(float(p), 6) for name, p in zip(classes, row)},
            )
        if args.gradcam:
            maps, _ = gradcam.heatmaps(model, np.stack(images))
            paths = gradcam.save_overlays(np.stack(images), maps, [results[p]["file"] for p in positions], args.gradcam)
            for position, path in zip(positions, paths):
                results[position]["gradcam"] = str(path)
    return results


def export(args: argparse.Namespace) -> dict:
    """Export a run's model in every asked-for format, check each on the test split; the manifest."""
    from core.results import packaging
    from core.training import runs

    formats = [key.strip() for key in args.formats.split(",") if key.strip()]
    return packaging.export_run(runs.Run(args.run_dir), args.model, formats, args.out,
                                on_step=lambda text: print(text, file=sys.stderr))


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def _add_train(commands) -> None:
    parser = commands.add_parser("train", help="train the head, then fine-tune (headless)")
    _add_run_arguments(parser)
    parser.set_defaults(command=train)


def _add_sweep(commands) -> None:
    parser = commands.add_parser("sweep", help="search head settings on cached features (Optuna); train the best")
    _add_run_arguments(parser)
    parser.add_argument("--trials", type=int, default=20)
    parser.set_defaults(command=sweep)


def _add_lr_find(commands) -> None:
    parser = commands.add_parser("lr-find", help="the learning-rate finder for the head, on cached features")
    _add_run_arguments(parser)
    parser.set_defaults(command=lr_find)


def _add_run_arguments(parser) -> None:
    parser.add_argument("--data", help="DIR/{train,validation[,test]}/<class>/ or DIR/<class>/")
    parser.add_argument("--test-data", help="a separate folder of class folders used as the test split")
    parser.add_argument("--backbone", choices=list(BACKBONES))
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--weights", help="imagenet, none or a weights file")
    parser.add_argument("--augment", help="e.g. flip=horizontal,rotation=0.1 (or none)")
    parser.add_argument("--head-epochs", type=int)
    parser.add_argument("--fine-tune-epochs", type=int, help="0 skips fine-tuning")
    parser.add_argument("--fine-tune-at", help="all, a layer index or a layer name (default: the backbone's default "
                                               "cut, 125 for MobileNetV2)")
    parser.add_argument("--no-fast-path", action="store_true", help="run the whole model every epoch")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--drop-duplicates", action="store_true",
                        help="leave out validation/test images that copy a training image")
    parser.add_argument("--runs-dir")
    parser.add_argument("--config", help="a run's config.json (e.g. exported from the dashboard)")


def _add_evaluate(commands) -> None:
    parser = commands.add_parser("evaluate", help="evaluate a run's model on a folder of class folders")
    parser.add_argument("run_dir")
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="final", choices=["final", "best", "head"])
    parser.set_defaults(command=evaluate)


def _add_predict(commands) -> None:
    parser = commands.add_parser("predict", help="class probabilities of images")
    parser.add_argument("run_dir")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--model", default="final", choices=["final", "best", "head"])
    parser.add_argument("--gradcam", metavar="DIR", help="write each image's Grad-CAM overlay (predicted class) to DIR as PNG")
    parser.add_argument("--min-confidence", type=_probability, metavar="P",
                        help="calibrate confidence (temperature scaling on the validation split) and label "
                             "predictions below P (0-1) as unsure")
    parser.set_defaults(command=predict)


def _add_export(commands) -> None:
    from core.results.export import FORMATS

    parser = commands.add_parser("export", help="export a run's model, check every format; prints the manifest")
    parser.add_argument("run_dir")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated: {', '.join(FORMATS)}")
    parser.add_argument("--out", help="export folder (default: RUN_DIR/export/MODEL)")
    parser.add_argument("--model", default="final", choices=["final", "best", "head"])
    parser.set_defaults(command=export)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="command")
    _add_summary(commands)
    _add_train(commands)
    _add_sweep(commands)
    _add_lr_find(commands)
    _add_evaluate(commands)
    _add_predict(commands)
    _add_export(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        # Keep stdout for the JSON result: Keras prints download progress there.
        with contextlib.redirect_stdout(sys.stderr):
            result = args.command(args)
    except UserError as error:
        print(f"error: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"hint: {error.hint}", file=sys.stderr)
        return USER_ERROR_EXIT
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
