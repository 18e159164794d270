"""Speed benchmark: the TF MobileNetV2 tutorial's recipe against our defaults.

Same data (../shared/datasets/cats_vs_dogs), same machine, same real ImageNet
weights. Each side runs in its own process (so peak memory is its own) and
reports the time of its head stage and fine-tuning stage, its validation
accuracy, and the accuracy of its final model on all 300 validation images.

    python benchmarks/benchmark_training.py            # both, then the table
    python benchmarks/benchmark_training.py --only ours

Timings exclude Python/TensorFlow start-up on both sides and include reading
the images, building the model, training and evaluating.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "cats_vs_dogs"
SIZE = 160


def use_shared_weights() -> None:
    """Point Keras' cache at the real weights in ../shared (before keras is imported)."""
    home = Path(tempfile.mkdtemp(prefix="keras-home-"))
    (home / "models").mkdir()
    for weights in (SHARED / "keras" / "models").glob("*.h5"):
        (home / "models" / weights.name).symlink_to(weights)
    os.environ["KERAS_HOME"] = str(home)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def recipe() -> dict:
    """The tutorial, step by step: image_dataset_from_directory at 160 px, flip and
    rotation 0.2, frozen MobileNetV2 called with training=False, GAP, Dropout 0.2,
    Dense(1); Adam 1e-4 for 10 epochs; then layers from 100 on unfrozen, RMSprop
    1e-5 for 10 more epochs. The test split is the first fifth of validation."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    started = time.perf_counter()
    train = keras.utils.image_dataset_from_directory(DATA / "train", shuffle=True, batch_size=32,
                                                     image_size=(SIZE, SIZE), verbose=False)
    validation = keras.utils.image_dataset_from_directory(DATA / "validation", shuffle=True, batch_size=32,
                                                          image_size=(SIZE, SIZE), verbose=False)
    full_validation = validation
    batches = validation.cardinality()
    validation = validation.skip(batches // 5)
    train, validation = train.prefetch(tf.data.AUTOTUNE), validation.prefetch(tf.data.AUTOTUNE)

    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.2)])
    base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False, weights="imagenet")
    base.trainable = False
    inputs = keras.Input(shape=(SIZE, SIZE, 3))
    x = augmentation(inputs)
    x = keras.applications.mobilenet_v2.preprocess_input(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    accuracy = keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=[accuracy])
    head = model.fit(train, epochs=10, validation_data=validation, verbose=0)
    head_seconds = time.perf_counter() - started

    started = time.perf_counter()
    base.trainable = True
    for layer in base.layers[:100]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.RMSprop(1e-5), loss=loss, metrics=[accuracy])
    tuned = model.fit(train, epochs=20, initial_epoch=10, validation_data=validation, verbose=0)
    fine_tune_seconds = time.perf_counter() - started
    return {
        "head_seconds": head_seconds,
        "fine_tune_seconds": fine_tune_seconds,
        "head_val_accuracy": head.history["val_accuracy"][-1],
        "val_accuracy": tuned.history["val_accuracy"][-1],
        "all_validation_accuracy": model.evaluate(full_validation, verbose=0, return_dict=True)["accuracy"],
    }


def ours() -> dict:
    """Our defaults, through the same job the dashboard and the CLI run."""
    from core import workflow
    from core.config import DEFAULT_FINE_TUNE, DataConfig, RunConfig
    from core.data.datasets import load_labelled
    from core.results import evaluation
    from core.training import runs
    from core.training.progress import Progress

    config = RunConfig(data=DataConfig(source="folder", name=str(DATA), image_size=SIZE), fine_tune=DEFAULT_FINE_TUNE)
    run = runs.Run.create(Path(tempfile.mkdtemp(prefix="bench-runs-")), config)
    started = time.perf_counter()
    kept: dict = {}
    head = workflow.head_job(run, Progress(), Path("/"), keep=kept)["head"]
    head_seconds = time.perf_counter() - started
    started = time.perf_counter()
    tuned = workflow.fine_tune_job(run, Progress(), Path("/"), reuse=kept.get("activations"))["fine_tune"]
    fine_tune_seconds = time.perf_counter() - started
    model, classes = workflow.load_run_model(run)
    images, labels, _ = load_labelled(DATA / "validation", classes, SIZE)
    return {
        "head_seconds": head_seconds,
        "fine_tune_seconds": fine_tune_seconds,
        "head_val_accuracy": head["val_accuracy"],
        "val_accuracy": tuned["val_accuracy"],
        "all_validation_accuracy": evaluation.evaluate(model, images, labels, classes)["accuracy"],
        "training_path": head["path"],
    }


def measure(name: str) -> dict:
    """Run one side in a fresh process and return its figures."""
    done = subprocess.run([sys.executable, __file__, "--only", name, "--json"], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(reference: dict, our: dict) -> str:
    rows = [
        ("Head stage (s)", "head_seconds", "{:.1f}"),
        ("Fine-tuning stage (s)", "fine_tune_seconds", "{:.1f}"),
        ("Whole pipeline (s)", "total_seconds", "{:.1f}"),
        ("Validation accuracy after head", "head_val_accuracy", "{:.3f}"),
        ("Validation accuracy after fine-tuning", "val_accuracy", "{:.3f}"),
        ("Final model on all 300 validation images", "all_validation_accuracy", "{:.3f}"),
        ("Peak memory (MB)", "peak_memory_mb", "{:.0f}"),
    ]
    lines = ["| | TF tutorial recipe | ours (defaults) | ratio |", "|---|---|---|---|"]
    for label, key, fmt in rows:
        ratio = f"{reference[key] / our[key]:.1f}x faster" if key.endswith("seconds") else ""
        lines.append(f"| {label} | {fmt.format(reference[key])} | {fmt.format(our[key])} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["recipe", "ours"])
    parser.add_argument("--json", action="store_true", help="print one JSON line (used between processes)")
    args = parser.parse_args()
    if args.only:
        use_shared_weights()
        sys.path.insert(0, str(ROOT))
        result = (recipe if args.only == "recipe" else ours)()
        result["total_seconds"] = result["head_seconds"] + result["fine_tune_seconds"]
        result["peak_memory_mb"] = peak_memory_mb()
        print(json.dumps(result) if args.json else json.dumps(result, indent=2))
        return
    reference, our = measure("recipe"), measure("ours")
    print(table(reference, our))
    print(f"\nHead stage: {reference['head_seconds'] / our['head_seconds']:.1f}x faster; whole pipeline: "
          f"{reference['total_seconds'] / our['total_seconds']:.1f}x faster; "
          f"{os.cpu_count()} CPU cores, no GPU.")


if __name__ == "__main__":
    main()
