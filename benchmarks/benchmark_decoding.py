"""Cost of strict decoding: loading the cats_vs_dogs training JPEGs with and without
TensorFlow's check of every JPEG (`core.data.images._check_jpeg`).

The baseline is the same loader with the check switched off (Pillow alone); the
target is at most 1.25x its time. Both runs read the same files, so the page cache
is warmed by an untimed pass first.

    python benchmarks/benchmark_decoding.py [--quick] [--size 160]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_RATIO = 1.25
TRAIN = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cats_vs_dogs" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 images instead of all 1,400")
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()

    from core.data import images

    paths = sorted(str(p) for p in TRAIN.rglob("*") if images.is_image_file(p))[: 100 if args.quick else None]
    images.load_images(paths, args.size)  # warm the page cache and TensorFlow

    def timed() -> float:
        start = time.perf_counter()
        loaded = images.load_images(paths, args.size)
        assert len(loaded.kept) == len(paths), loaded.skipped
        return time.perf_counter() - start

    with mock.patch.object(images, "_check_jpeg", lambda content, name: None):
        baseline = timed()
    strict = timed()
    print(f"{len(paths)} JPEGs at {args.size} px: strict {strict:.2f} s, baseline (Pillow only) {baseline:.2f} s, "
          f"target <= {TARGET_RATIO:.2f}x baseline, ratio {strict / baseline:.2f}x")


if __name__ == "__main__":
    main()
