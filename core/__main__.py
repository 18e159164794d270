"""Headless command line: `python -m core <command> ...`.

Each command is one function taking the parsed arguments; results go to stdout
as JSON, user errors to stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core import settings
from core.config import ModelConfig  # noqa: E402
from core.errors import UserError  # noqa: E402
from core.model.backbones import BACKBONES, DEFAULT_BACKBONE  # noqa: E402

USER_ERROR_EXIT = 2


def summary(args: argparse.Namespace) -> dict:
    """Parameter counts and the layer table of a freshly built model."""
    from core.model.build import build_model, count_params, layer_table, set_trainable

    model_config = ModelConfig(
        backbone=args.backbone,
        weights=args.weights,
        pooling=args.pooling,
        hidden_units=args.hidden_units,
    )
    model = build_model(model_config, args.classes, args.image_size)
    set_trainable(model, args.fine_tune_at, args.freeze_batchnorm)
    return {**count_params(model), "layers": layer_table(model)}


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
    """Train headless, exactly as the dashboard does, with a progress bar on stderr."""
    import dataclasses
    import functools
    from pathlib import Path

    from core import config as config_io
    from core.config import DEFAULT_FINE_TUNE, RunConfig
    from core.model import augmentation
    from core.training import runs
    from core.training.jobs import JobManager
    from core.workflow import full_job

    run_config = config_io.loads(Path(args.config).read_text()) if args.config else RunConfig(fine_tune=DEFAULT_FINE_TUNE)
    data = run_config.data
    if args.data:
        data = dataclasses.replace(data, source="folder", name=str(Path(args.data).resolve()))
    if args.test_data:
        data = dataclasses.replace(data, test_folder=str(Path(args.test_data).resolve()))
    data = _replace(data, image_size=args.image_size, seed=args.seed, batch_size=args.batch_size)
    model = _replace(run_config.model, backbone=args.backbone, weights=args.weights)
    head = _replace(run_config.head, epochs=args.head_epochs, fast_path=False if args.no_fast_path else None)
    fine_tune = run_config.fine_tune
    if args.fine_tune_epochs is not None or args.fine_tune_at is not None:
        fine_tune = _replace(fine_tune or DEFAULT_FINE_TUNE, epochs=args.fine_tune_epochs, fine_tune_at=args.fine_tune_at)
    if fine_tune is not None and args.no_fast_path:
        fine_tune = dataclasses.replace(fine_tune, fast_path=False)
    run_config = dataclasses.replace(
        run_config, data=data, model=model, head=head,
        fine_tune=fine_tune if fine_tune is not None and fine_tune.epochs > 0 else None,
        augment=augmentation.parse_spec(args.augment) if args.augment else run_config.augment,
        seed=args.seed if args.seed is not None else run_config.seed,
    )
    run = runs.Run.create(args.runs_dir or settings.runs_dir(), run_config)
    manager = JobManager()
    # Paths given here are absolute; a folder name in a dashboard's config.json is
    # relative to the data root, as it was on the server.
    root = Path("/") if Path(data.name).is_absolute() else settings.data_root()
    job = manager.submit(run, functools.partial(full_job, data_root=root))  # runs in a worker process
    try:
        _follow(manager, job)
    finally:
        manager.close()
    status = run.status()
    if status["status"] == runs.FAILED:
        raise UserError(f"Training failed: {status.get('error')}", status.get("hint") or f"See {run.path / runs.LOG_FILE}.")
    metrics = run.read_json("metrics.json", default={})
    head_metrics, fine_metrics = metrics.get("head", {}), metrics.get("fine_tune", {})
    last = fine_metrics or head_metrics
    seconds = [head_metrics.get("seconds", 0.0), fine_metrics.get("seconds", 0.0)]
    return {
        "run_dir": str(run.path), "status": status["status"],
        "head_val_accuracy": head_metrics.get("val_accuracy"), "val_accuracy": last.get("val_accuracy"),
        "head_test_accuracy": head_metrics.get("test_accuracy"), "test_accuracy": last.get("test_accuracy"),
        "training_path": head_metrics.get("path"),
        "seconds_head": seconds[0], "seconds_fine_tune": seconds[1], "seconds_total": round(sum(seconds), 2),
    }


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
        if progress.get("batches"):
            done, total = progress["batch"], progress["batches"]
            bar = "#" * int(30 * done / total)
            phase = progress.get("phase") or ""
            epoch = f"epoch {progress.get('epoch', 0) + 1}" if progress.get("stage") == "training" else ""
            print(f"\r{progress.get('stage', '')} {phase} {epoch} [{bar:<30}] {done}/{total} "
                  f"{progress.get('images_per_second', 0):.0f} img/s   ", end="", file=sys.stderr, flush=True)
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
    """Class probabilities for each image; a bad file gets an error entry."""
    import numpy as np

    from core.data.images import ImageError, load_image
    from core.results import evaluation
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
        probs = evaluation.predict_probabilities(model, np.stack(images).astype("float32"))
        for position, row in zip(positions, probs):
            results[position].update(
                label=classes[int(row.argmax())],
                probabilities={name: round(float(p), 6) for name, p in zip(classes, row)},
            )
    return results


def _add_train(commands) -> None:
    parser = commands.add_parser("train", help="train the head, then fine-tune (headless)")
    parser.add_argument("--data", help="DIR/{train,validation[,test]}/<class>/ or DIR/<class>/")
    parser.add_argument("--test-data", help="a separate folder of class folders used as the test split")
    parser.add_argument("--backbone", choices=list(BACKBONES))
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--weights", help="imagenet, none or a weights file")
    parser.add_argument("--augment", help="e.g. flip=horizontal,rotation=0.1 (or none)")
    parser.add_argument("--head-epochs", type=int)
    parser.add_argument("--fine-tune-epochs", type=int, help="0 skips fine-tuning")
    parser.add_argument("--fine-tune-at", help="all, a layer index or a layer name")
    parser.add_argument("--no-fast-path", action="store_true", help="run the whole model every epoch")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--runs-dir")
    parser.add_argument("--config", help="a run's config.json (e.g. exported from the dashboard)")
    parser.set_defaults(command=train)


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
    parser.set_defaults(command=predict)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="command")
    _add_summary(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_predict(commands)
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
