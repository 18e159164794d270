"""Speed benchmark: the TF MobileNetV2 tutorial's recipe against our defaults.

Same data (../shared/datasets/cats_vs_dogs), same machine, same real ImageNet
weights. Each side runs in its own process (so peak memory is its own) and
reports the time of its head stage and fine-tuning stage, its validation
accuracy, and the accuracy of its final model on all 300 validation images.

    python benchmarks/benchmark_training.py            # all, then the tables
    python benchmarks/benchmark_training.py --only ours
    python benchmarks/benchmark_training.py --quick    # a small subset, to check the script works

Besides the recipe against our defaults it measures the quick tries, each next to
its target: a second head run that changes only head settings (features read from
the feature cache), the first and the next head run through a new dashboard server's
job queue (in a process of their own, on cold caches), the learning-rate finder, a
20-trial sweep, the cold head
stage's time breakdown with the network-only limit beside it, held-out accuracy
with 1, 2 and 3 stored views, and a scale run on generated small JPEGs (50,000 at
full size) for peak memory and time per image.

Timings exclude Python/TensorFlow start-up on both sides and include reading
the images, building the model, training and evaluating.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "cats_vs_dogs"
SIZE = 160
QUICK_PER_CLASS = 60  # --quick: training images per class (validation: a third of that)
SCALE_IMAGES = 50_000
QUICK_SCALE_IMAGES = 1_000
SCALE_RSS_LIMIT_MB = 4096


def scratch(prefix: str) -> Path:
    """A new temporary folder, removed when this process exits (caches and runs take GBs)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def quick_subset(per_class: int = QUICK_PER_CLASS) -> Path:
    """A small copy (symlinks) of cats_vs_dogs: `per_class` training images per class."""
    root = scratch("bench-quick-")
    for split, count in (("train", per_class), ("validation", max(per_class // 3, 10))):
        for class_dir in sorted((DATA / split).iterdir()):
            (root / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                (root / split / class_dir.name / image.name).symlink_to(image)
    return root


def use_shared_weights() -> None:
    """Point Keras' cache at the real weights in ../shared (before keras is imported)."""
    home = scratch("keras-home-")
    (home / "models").mkdir()
    for weights in (SHARED / "keras" / "models").glob("*.h5"):
        (home / "models" / weights.name).symlink_to(weights)
    os.environ["KERAS_HOME"] = str(home)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_speed(images: int = 256) -> float:
    """Images/second of the frozen MobileNetV2 alone at 160 px (random pixels, batches of 32,
    traced first): a probe of how fast this machine is right now. Shared machines (this one
    is a VM) change speed between runs, so each side measures it before and after its own
    work, and the tables print it beside their ratios."""
    import keras
    import numpy as np
    import tensorflow as tf

    base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False, weights="imagenet")
    forward = tf.function(lambda x: base(keras.applications.mobilenet_v2.preprocess_input(x), training=False))
    batch = tf.constant(np.random.default_rng(0).uniform(0, 255, (32, SIZE, SIZE, 3)), tf.float32)
    forward(batch)
    started = time.perf_counter()
    for _ in range(images // 32):
        np.asarray(forward(batch))
    return images / (time.perf_counter() - started)


def recipe(data: Path = DATA, epochs: int = 10) -> dict:
    """The tutorial, step by step: image_dataset_from_directory at 160 px, flip and
    rotation 0.2, frozen MobileNetV2 called with training=False, GAP, Dropout 0.2,
    Dense(1); Adam 1e-4 for 10 epochs; then layers from 100 on unfrozen, RMSprop
    1e-5 for 10 more epochs. The test split is the first fifth of validation."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    started = time.perf_counter()
    train = keras.utils.image_dataset_from_directory(data / "train", shuffle=True, batch_size=32,
                                                     image_size=(SIZE, SIZE), verbose=False)
    validation = keras.utils.image_dataset_from_directory(data / "validation", shuffle=True, batch_size=32,
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
    head = model.fit(train, epochs=epochs, validation_data=validation, verbose=0)
    head_seconds = time.perf_counter() - started

    started = time.perf_counter()
    base.trainable = True
    for layer in base.layers[:100]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.RMSprop(1e-5), loss=loss, metrics=[accuracy])
    tuned = model.fit(train, epochs=2 * epochs, initial_epoch=epochs, validation_data=validation, verbose=0)
    fine_tune_seconds = time.perf_counter() - started
    return {
        "head_seconds": head_seconds,
        "fine_tune_seconds": fine_tune_seconds,
        "head_val_accuracy": head.history["val_accuracy"][-1],
        "val_accuracy": tuned.history["val_accuracy"][-1],
        "all_validation_accuracy": model.evaluate(full_validation, verbose=0, return_dict=True)["accuracy"],
    }


class StageClock:
    """A `Progress` that adds up wall time per kind of stage the job reports; each stage
    the head job reports maps to one part (time until the next stage counts to it)."""

    KINDS = (("loading data", "decode"), ("reading images", "decode"), ("building the model", "build the model"),
             ("reading cached features", "read cached features"), ("(view", "augmentation + backbone (views)"),
             ("(validation)", "backbone (validation)"), ("(test)", "backbone (test)"),
             ("scoring the untrained head", "score the untrained head"), ("training", "head training"),
             ("saving models", "save the models"), ("evaluating on the test split", "evaluate on the test split"))

    def __init__(self):
        from core.training.progress import Progress

        self.progress, self.times = Progress(), defaultdict(float)
        self.kind, self.since = None, time.perf_counter()

    def __getattr__(self, name):
        return getattr(self.progress, name)

    def update(self, **fields):
        self.progress.update(**fields)
        stage = str(fields.get("stage", ""))
        if stage:
            self.switch(next((kind for text, kind in self.KINDS if text in stage), f"other ({stage})"))

    def switch(self, kind):
        now = time.perf_counter()
        if self.kind is not None:
            self.times[self.kind] += now - self.since
        self.kind, self.since = kind, now


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def network_limits(data_dir: Path, views: int) -> dict:
    """The limit: seconds of the frozen MobileNetV2 alone (one compiled pass, no augmentation)
    over `views` x the training images plus validation, and of the augmentation alone."""
    import keras
    import numpy as np
    import tensorflow as tf

    from core.config import AugmentConfig, DataConfig
    from core.data import datasets
    from core.model.augmentation import build_augmentation
    from core.training.fast_path import trace_with_constant_weights

    data = datasets.load_cached(DataConfig(source="folder", name=str(data_dir), image_size=SIZE), Path("/"))
    base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False, weights="imagenet")
    # Traced once with its weights folded into the graph, as the fast path runs it.
    forward = trace_with_constant_weights(
        lambda x: base(keras.applications.mobilenet_v2.preprocess_input(x), training=False), base.variables,
        tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32))
    augment = build_augmentation(AugmentConfig(), seed=0)
    train, val = data.splits["train"][0], data.splits["validation"][0]
    forward(tf.zeros((32, SIZE, SIZE, 3)))  # optimise the graph once, outside the timing

    def over(images, fn):
        started = time.perf_counter()
        for start in range(0, len(images), 32):
            np.asarray(fn(tf.cast(images[start:start + 32], tf.float32)))
        return time.perf_counter() - started

    per_pass = over(train, forward)
    return {"backbone_limit": views * per_pass + over(val, forward),
            "augmentation_alone": views * over(train, lambda x: augment(x, training=True)),
            "images_per_second_alone": len(train) / per_pass}


def ours(data_dir: Path = DATA, quick: bool = False) -> dict:
    """Our defaults, through the same jobs the dashboard and the CLI run, on a cold cache;
    then the quick tries on the warm one."""
    import dataclasses

    from core import workflow
    from core.config import DEFAULT_FINE_TUNE, DataConfig, RunConfig
    from core.data.datasets import load_labelled
    from core.results import evaluation
    from core.training import runs
    from core.training.progress import Progress

    os.environ["TL_CACHE_DIR"] = str(scratch("bench-cache-"))  # cold: no decoded images, no features
    runs_dir = scratch("bench-runs-")
    config = RunConfig(data=DataConfig(source="folder", name=str(data_dir), image_size=SIZE), fine_tune=DEFAULT_FINE_TUNE)
    run = runs.Run.create(runs_dir, config)
    clock = StageClock()
    head, head_seconds = timed(workflow.head_job, run, clock, Path("/"))
    clock.switch(None)
    head = head["head"]
    breakdown = dict(clock.times)
    tuned, fine_tune_seconds = timed(workflow.fine_tune_job, run, Progress(), Path("/"))
    tuned = tuned["fine_tune"]
    model, classes = workflow.load_run_model(run)
    images, labels, _ = load_labelled(data_dir / "validation", classes, SIZE, Path("/"))  # --quick: links into ../shared
    result = {
        "head_seconds": head_seconds,
        "fine_tune_seconds": fine_tune_seconds,
        "head_val_accuracy": head["val_accuracy"],
        "val_accuracy": tuned["val_accuracy"],
        "all_validation_accuracy": evaluation.evaluate(model, images, labels, classes)["accuracy"],
        "training_path": head["path"],
        "breakdown": breakdown,
        "train_images": int(sum(1 for _ in (data_dir / "train").rglob("*.*"))),
    }
    # A second head run that changes only head settings: decoded images and features come from the caches.
    second = dataclasses.replace(config, model=dataclasses.replace(config.model, dropout=0.3),
                                 head=dataclasses.replace(config.head, learning_rate=5e-4), fine_tune=None)
    second_clock = StageClock()
    second_metrics, result["second_head_seconds"] = timed(workflow.head_job, runs.Run.create(runs_dir, second),
                                                          second_clock, Path("/"))
    second_clock.switch(None)
    result["second_breakdown"] = dict(second_clock.times)
    result["second_head_computed"] = second_metrics["head"]["feature_cache"]["computed"]
    _, result["lr_find_seconds"] = timed(workflow.lr_find_job, runs.Run.create(runs_dir, config), Progress(), Path("/"))
    trials = 3 if quick else 20
    _, result["sweep_seconds"] = timed(workflow.sweep_job, runs.Run.create(runs_dir, config), Progress(), Path("/"),
                                       trials=trials)
    result["sweep_trials"] = trials
    # Held-out accuracy with 1, 2 and 3 stored views (3 first: 1 and 2 then read its first views).
    result["views"] = {}
    for views in (3, 1, 2):
        with_views = dataclasses.replace(config, head=dataclasses.replace(config.head, views=views), fine_tune=None)
        view_run = runs.Run.create(runs_dir, with_views)
        workflow.head_job(view_run, Progress(), Path("/"))
        view_model, _ = workflow.load_run_model(view_run, "head")
        result["views"][views] = evaluation.evaluate(view_model, images, labels, classes)["accuracy"]
    result.update(network_limits(data_dir, config.head.views))
    return result


THINK_SECONDS = 5.0  # a user changing a head setting between two quick tries


def dashboard(data_dir: Path = DATA) -> dict:
    """A new dashboard server's first two head runs, on cold caches, as its user meets them:
    the Data page reads the images (into the decoded-image cache) while the user looks at
    them; then a head run with the defaults and one that changes only the learning rate,
    through `through_the_dashboard`. The head runs store the activations at the default cut,
    as the Train head page's do."""
    import tensorflow  # noqa: F401  (imported before the timing: the server has it imported)

    from core.config import DataConfig, RunConfig
    from core.data import datasets

    os.environ["TL_CACHE_DIR"] = str(scratch("bench-cache-"))
    config = RunConfig(data=DataConfig(source="folder", name=str(data_dir), image_size=SIZE))
    _, read_seconds = timed(datasets.load_cached, config.data, Path("/"))
    seconds = through_the_dashboard(scratch("bench-runs-"), config,
                                    rates=(config.head.learning_rate, 3e-4))
    return {"data_page_seconds": read_seconds, "dashboard_head_seconds": seconds}


def through_the_dashboard(runs_dir: Path, config, rates: tuple[float, ...]) -> list[float]:
    """Head runs at each of `rates`, otherwise `config`, submitted to a `JobManager` made
    as the dashboard makes its own (its first warm worker prebuilds the default backbone),
    each once the warm worker is ready and THINK_SECONDS later: seconds from submit until
    the run is finished, as the Train head page shows it. Each later worker has the last
    run's backbone prebuilt."""
    import dataclasses
    import functools

    from core import workflow
    from core.training import runs
    from core.training.jobs import JobManager, default_backbone

    manager, seconds = JobManager(workers=1, prebuild=default_backbone()), []
    try:
        for rate in rates:
            changed = dataclasses.replace(config, head=dataclasses.replace(config.head, learning_rate=rate),
                                          fine_tune=None)
            manager.warm_worker().wait_ready(300)
            time.sleep(THINK_SECONDS)
            run = runs.Run.create(runs_dir, changed)
            started = time.perf_counter()
            manager.submit(run, functools.partial(workflow.head_job, data_root=Path("/")))
            while run.status()["status"] not in (runs.FINISHED, runs.FAILED, runs.STOPPED):
                time.sleep(0.02)
            seconds.append(time.perf_counter() - started)
            if run.status()["status"] != runs.FINISHED:
                sys.exit(f"the head run through the job manager ended {run.status()}")
            manager.wait(300)
    finally:
        manager.close()
    return seconds


def make_scale_dataset(count: int) -> Path:
    """`count` small JPEGs at 160 px in two classes (80/20 train/validation), generated; not committed."""
    import numpy as np
    from PIL import Image

    root = scratch("bench-scale-")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (SIZE, SIZE, 3)).astype("uint8")
    for index in range(count):
        split = "validation" if index % 5 == 0 else "train"
        label = index % 2
        folder = root / split / ("warm" if label else "cool")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.roll(base, int(rng.integers(0, SIZE)), axis=int(rng.integers(0, 2))).astype("int16")
        pixels[..., 0 if label else 2] += 60
        Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(folder / f"{index:06d}.jpg", quality=85)
    return root


def scale(count: int) -> dict:
    """A cold head stage (defaults) on `count` generated JPEGs: its time per training image and peak memory."""
    from core import workflow
    from core.config import DataConfig, RunConfig
    from core.training import runs
    from core.training.progress import Progress

    data_dir = make_scale_dataset(count)
    before = peak_memory_mb()  # TensorFlow and Keras imported, the JPEGs written: the fixed cost so far
    os.environ["TL_CACHE_DIR"] = str(scratch("bench-cache-"))
    config = RunConfig(data=DataConfig(source="folder", name=str(data_dir), image_size=SIZE))
    run = runs.Run.create(scratch("bench-runs-"), config)
    _, seconds = timed(workflow.head_job, run, Progress(), Path("/"))  # its scratch folders go at exit
    train = count - (count + 4) // 5
    return {"images": count, "head_seconds": seconds, "seconds_per_image": seconds / train,
            "peak_memory_before_job_mb": before}


def measure(name: str, quick: bool, scale_images: int = SCALE_IMAGES) -> dict:
    """Run one part in a fresh process and return its figures."""
    command = [sys.executable, __file__, "--only", name, "--json", "--scale-images", str(scale_images)]
    command += ["--quick"] if quick else []
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
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


def quick_tries_table(reference: dict, our: dict, scaled: dict | None) -> str:
    """Each quick-tries figure next to its target and the recipe."""
    recipe_head, cold = reference["head_seconds"], our["head_seconds"]
    first, following = our["dashboard_head_seconds"]
    per_image = cold / our["train_images"]
    lines = ["| | measured | target | recipe / reference | ratio |", "|---|---|---|---|---|",
             f"| Cold head stage (s) | {cold:.1f} | >= 8x faster | {recipe_head:.1f} | {recipe_head / cold:.1f}x |",
             f"| Whole pipeline (s) | {our['total_seconds']:.1f} | >= 8x faster | {reference['total_seconds']:.1f} | "
             f"{reference['total_seconds'] / our['total_seconds']:.1f}x |",
             f"| Second head run, head settings only, in one process (s) | {our['second_head_seconds']:.1f} | >= 50x faster | "
             f"{recipe_head:.1f} | {recipe_head / our['second_head_seconds']:.1f}x "
             f"(features computed: {our['second_head_computed']}) |",
             f"| First head run in the dashboard, submit to finished (s) | {first:.1f} | >= 8x faster | "
             f"{recipe_head:.1f} | {recipe_head / first:.1f}x (the Data page read the images before: "
             f"{our['data_page_seconds']:.1f} s) |",
             f"| Next head run in the dashboard, submit to finished (s) | {following:.1f} | "
             f">= 50x faster | {recipe_head:.1f} | {recipe_head / following:.1f}x |",
             f"| Learning-rate finder on cached features (s) | {our['lr_find_seconds']:.1f} | <= 5 s | | |",
             f"| {our['sweep_trials']}-trial sweep, best trained as a run (s) | {our['sweep_seconds']:.1f} | "
             f"<= 2x cold head stage ({2 * cold:.1f}) | {cold:.1f} | {our['sweep_seconds'] / cold:.1f}x |"]
    if scaled is None:
        lines.append("| Scale run | not run (--scale-images 0) | | | |")
    else:
        lines += [f"| Scale: {scaled['images']:,} JPEGs, peak memory (MB) | {scaled['peak_memory_mb']:.0f} | "
                  f"<= {SCALE_RSS_LIMIT_MB} | | |",
                  f"| Scale: time per training image (ms) | {1000 * scaled['seconds_per_image']:.1f} | "
                  f"<= 1.3x of {1000 * per_image:.1f} | {1000 * per_image:.1f} | "
                  f"{scaled['seconds_per_image'] / per_image:.2f}x |"]
    lines += ["", "Cold head stage, where the time goes:", "", "| part | seconds | limit |", "|---|---|---|"]
    limits = {"augmentation + backbone (views)": f"{our['backbone_limit']:.1f} s network alone (views + validation, "
                                                 f"{our['images_per_second_alone']:.0f} images/s) + "
                                                 f"{our['augmentation_alone']:.1f} s augmentation alone"}
    for part, seconds in our["breakdown"].items():
        lines.append(f"| {part} | {seconds:.1f} | {limits.get(part, '')} |")
    lines += ["", "Second head run, where the time goes:", "", "| part | seconds |", "|---|---|"]
    lines += [f"| {part} | {seconds:.1f} |" for part, seconds in our["second_breakdown"].items()]
    lines += ["", "Held-out accuracy (all validation images) by stored views:", "",
              "| views | accuracy |", "|---|---|"]
    lines += [f"| {views} | {accuracy:.3f} |" for views, accuracy in sorted(our["views"].items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["recipe", "ours", "dashboard", "scale"])
    parser.add_argument("--json", action="store_true", help="print one JSON line (used between processes)")
    parser.add_argument("--scale-images", type=int, default=SCALE_IMAGES,
                        help=f"generated JPEGs in the scale run (target set at {SCALE_IMAGES:,}; 0 skips it)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_PER_CLASS} images per class, 1+1 recipe epochs, 3 trials, "
                             f"{QUICK_SCALE_IMAGES:,} scale images: checks the script, measures nothing")
    args = parser.parse_args()
    if args.only:
        use_shared_weights()
        sys.path.insert(0, str(ROOT))
        data = quick_subset() if args.quick else DATA
        if args.only == "scale":
            result = scale(QUICK_SCALE_IMAGES if args.quick else args.scale_images)
        elif args.only == "dashboard":
            result = dashboard(data)
        else:
            before = machine_speed()
            result = recipe(data, 1 if args.quick else 10) if args.only == "recipe" else ours(data, args.quick)
            result["machine_speed"] = [before, machine_speed()]
            result["total_seconds"] = result["head_seconds"] + result["fine_tune_seconds"]
        result["peak_memory_mb"] = peak_memory_mb()
        print(json.dumps(result) if args.json else json.dumps(result, indent=2))
        return
    reference, our = (measure(name, args.quick, args.scale_images) for name in ("recipe", "ours"))
    our.update(measure("dashboard", args.quick, args.scale_images))
    scaled = measure("scale", args.quick, args.scale_images) if args.scale_images else None
    print(table(reference, our))
    print(f"\nHead stage: {reference['head_seconds'] / our['head_seconds']:.1f}x faster; whole pipeline: "
          f"{reference['total_seconds'] / our['total_seconds']:.1f}x faster; "
          f"{os.cpu_count()} CPU cores, no GPU.")
    speeds = [f"{reference['machine_speed'][0]:.0f} / {reference['machine_speed'][1]:.0f}",
              f"{our['machine_speed'][0]:.0f} / {our['machine_speed'][1]:.0f}"]
    print(f"Machine speed (frozen MobileNetV2 alone, images/s, before / after): recipe {speeds[0]}, ours {speeds[1]}; "
          "where they differ, the host's speed changed between the two sides and the ratios are off by as much.\n")
    print(quick_tries_table(reference, our, scaled))
    if args.quick:
        print("\n--quick: a small subset; these figures check the script and are not measurements.")


if __name__ == "__main__":
    main()
