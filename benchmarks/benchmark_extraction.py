"""A/B of the cold head stage's extraction: our extraction function against variants,
in one process, on the same images (cats_vs_dogs at 160 px, MobileNetV2, the real weights).

Each variant extracts one augmented view of the same training images; the runs are
interleaved (A B C A B C ...) and the median is printed beside ours (the baseline)
with the ratio, so a busy machine slows all of them alike:

- ours: `core.training.fast_path.extract` (the frozen part traced once with its weights
  folded into the graph as constants, the augmentation before it; batches of 32);
- variables: the same traced `tf.function` reading the weights from their variables
  (what the extraction did before the weights were folded);
- xla: the backbone compiled with XLA (`jit_compile=True`; XLA cannot compile the
  augmentation's RandomRotation on CPU, so that stays a plain `tf.function`);
- batch 64: ours with batches of 64;
- decode + extract, then the same with decoding overlapped: JPEG decoding of chunk k+1
  (`core.data.images.decode_images`, threads) while the backbone runs on chunk k,
  against decoding everything first (what a cold run does today).

A variant is worth adopting when its ratio is clearly below 1 here and on a quiet
machine at full size (`python benchmarks/benchmark_extraction.py`).

    python benchmarks/benchmark_extraction.py --quick   # 128 images, 2 rounds: checks the script
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from queue import Queue

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benchmark_training import DATA, SIZE, use_shared_weights

CHUNK = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 images, 2 rounds")
    parser.add_argument("--images", type=int, default=1400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    count, rounds = (128, 2) if args.quick else (args.images, args.rounds)
    use_shared_weights()

    import keras
    import numpy as np
    import tensorflow as tf

    from core.config import AugmentConfig, ModelConfig
    from core.data import images as images_module
    from core.model.augmentation import build_augmentation
    from core.model.build import build_model
    from core.training import fast_path

    paths = sorted(str(p) for p in (DATA / "train").rglob("*") if images_module.is_image_file(p))[:count]
    pixels = images_module.load_images(paths, SIZE).images
    keras.utils.set_random_seed(0)
    classifier = build_model(ModelConfig(), 2, SIZE, build_augmentation(AugmentConfig(), seed=0))
    part = fast_path.frozen_part(classifier, classifier.freeze(None))
    augmentation = part.augmentation

    spec = [tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32)]
    # XLA cannot compile RandomRotation's ImageProjectiveTransformV3 on CPU: the augmentation
    # stays a plain tf.function, the backbone is compiled.
    augment = tf.function(lambda batch: augmentation(batch, training=True), input_signature=spec)
    backbone = tf.function(lambda batch: part.extract(batch), input_signature=spec, jit_compile=True)

    def xla(batch):
        return backbone(augment(batch))

    variables = tf.function(lambda batch: part.extract(augmentation(batch, training=True)), input_signature=spec)

    def run_batches(fn, source, batch):
        for start in range(0, len(source), batch):
            [t.numpy() for t in fn(tf.cast(source[start:start + batch], tf.float32))]

    ours = part.function(True, pixels.shape[1:])

    def decode_then_extract():
        decoded = np.empty((len(paths), SIZE, SIZE, 3), "uint8")
        images_module.decode_images(paths, SIZE, decoded, chunk=CHUNK)
        run_batches(ours, decoded, 32)

    def decode_overlapped():
        chunks: Queue = Queue(maxsize=2)

        def decode():
            for start in range(0, len(paths), CHUNK):
                out = np.empty((min(CHUNK, len(paths) - start), SIZE, SIZE, 3), "uint8")
                images_module.decode_images(paths[start:start + CHUNK], SIZE, out, chunk=CHUNK)
                chunks.put(out)
            chunks.put(None)

        thread = threading.Thread(target=decode)
        thread.start()
        while (chunk := chunks.get()) is not None:
            run_batches(ours, chunk, 32)
        thread.join()

    variants = {
        "ours": lambda: fast_path.extract(part, pixels, True),
        "variables": lambda: run_batches(variables, pixels, 32),
        "xla": lambda: run_batches(xla, pixels, 32),
        "batch 64": lambda: run_batches(ours, pixels, 64),
        "decode + extract": decode_then_extract,
        "decode overlapped": decode_overlapped,
    }
    run_batches(ours, pixels[:64], 32)  # trace, and compile with XLA, outside the timing
    run_batches(xla, pixels[:64], 32)
    run_batches(variables, pixels[:64], 32)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{count} images at {SIZE} px, one augmented view, median of {rounds} interleaved rounds")
    print("| variant | s | images/s | baseline (s) | ratio |")
    print("|---|---|---|---|---|")
    for name, seconds in median.items():
        base = "decode + extract" if name == "decode overlapped" else "ours"
        print(f"| {name} | {seconds:.2f} | {count / seconds:.0f} | {median[base]:.2f} ({base}) | "
              f"{seconds / median[base]:.2f}x |")
    if args.quick:
        print("\n--quick: a small subset; these figures check the script and are not measurements.")


if __name__ == "__main__":
    main()
