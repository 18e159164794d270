"""Label issues and the embedding map on the flowers data, with labels flipped on purpose.

Real MobileNetV2 ImageNet weights (../shared), ../shared/datasets/flowers (3,453
training and 430 validation images, 5 classes). The frozen backbone's pooled
features are computed once (the "cached features"; timed separately); then, with 5 %
of the training labels flipped to another class (seeded), it times the label-issue
ranking of train + validation (5-fold cross-validated heads, cleanlab) plus the
PCA embedding map of validation + test, and measures the share of flipped images in
the top 5 % of the ranking.

    python benchmarks/benchmark_insight.py           # full size (the lead runs it)
    python benchmarks/benchmark_insight.py --quick   # 400 training images at 96 px, proves it works
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.benchmark_training import SHARED, use_shared_weights  # noqa: E402

DATA = SHARED / "datasets"
FLIP_SHARE = 0.05
TARGET_SECONDS = 10.0
TARGET_RECALL = 0.6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="400 training images at 96 px")
    parser.add_argument("--size", type=int, default=128, help="image size (the flowers images are 128 px)")
    parser.add_argument("--head", default="ensemble", choices=("ensemble", "knn", "logistic"), help="the cross-validated head")
    args = parser.parse_args()
    use_shared_weights()
    os.environ["TL_CACHE_DIR"] = os.environ.get("TL_CACHE_DIR") or str(Path("/tmp") / "tl-bench-cache")

    import numpy as np

    from core.config import DataConfig, ModelConfig
    from core.data import datasets
    from core.model.build import build_model
    from core.results import embedding, features, label_issues

    size = 96 if args.quick else args.size
    data = datasets.load(DataConfig(source="folder", name="flowers", image_size=size), root=DATA)
    if args.quick:
        images, labels = data.splits["train"]
        keep = np.random.default_rng(0).permutation(len(labels))[:400]
        data.splits["train"] = (images[keep], labels[keep])
    model = build_model(ModelConfig(backbone="MobileNetV2", weights="imagenet"), data.num_classes, size).model
    started = time.perf_counter()
    pooled = {split: features.pooled_features(model, images) for split, (images, _) in data.splits.items()}
    feature_seconds = time.perf_counter() - started

    rng = np.random.default_rng(42)
    train_labels = data.splits["train"][1].copy()
    flipped = rng.choice(len(train_labels), int(round(FLIP_SHARE * len(train_labels))), replace=False)
    train_labels[flipped] = (train_labels[flipped] + rng.integers(1, data.num_classes, len(flipped))) % data.num_classes
    labels = np.concatenate([train_labels, data.splits["validation"][1]])
    pooled_ranked = np.concatenate([pooled["train"], pooled["validation"]])

    started = time.perf_counter()
    issues = label_issues.find_issues(pooled_ranked, labels, data.num_classes, head=args.head)
    coords = embedding.project(np.concatenate([pooled["validation"], pooled["test"]]))
    seconds = time.perf_counter() - started

    top = issues.position[:int(round(FLIP_SHARE * len(labels)))]
    recall = len(set(top.tolist()) & set(flipped.tolist())) / len(flipped)
    chance = len(top) / len(labels)
    print(f"flowers{' (quick)' if args.quick else ''}: {len(labels)} ranked images ({len(flipped)} flipped), "
          f"{len(coords)} mapped, {size} px, MobileNetV2 ImageNet, {args.head} head; features once: {feature_seconds:.1f} s")
    print(f"{'':46} {'measured':>9} {'baseline':>9} {'target':>8} {'ratio':>7}")
    print(f"{'label issues + embedding map from features (s)':46} {seconds:9.2f} {feature_seconds:9.2f} "
          f"{TARGET_SECONDS:8.1f} {seconds / TARGET_SECONDS:7.2f}  (baseline: computing the features)")
    print(f"{'flipped images found in the top 5 %':46} {recall:9.2f} {chance:9.2f} "
          f"{TARGET_RECALL:8.2f} {recall / TARGET_RECALL:7.2f}  (baseline: a random ranking)")


if __name__ == "__main__":
    main()
