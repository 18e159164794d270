"""Server memory over repeated runs through the dashboard's job path.

Runs the same small training job (built-in demo data at 96 px, MobileNetV2 with the
real ImageNet weights, head and one fine-tuning epoch) 20 times through one
JobManager, as the dashboard's server does, and prints this (the server's) process's
resident memory after runs 1, 5, 10 and 20. Each job runs in its own worker process,
so the target is flat: run 20 <= run 1 + 50 MB.

    python benchmarks/benchmark_memory.py            # 20 runs
    python benchmarks/benchmark_memory.py --quick    # 3 runs of one head epoch, to check it works
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.benchmark_training import use_shared_weights

TARGET_MB = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 runs of one head epoch, no fine-tuning")
    args = parser.parse_args()
    use_shared_weights()
    import tempfile

    from core import workflow
    from core.config import DataConfig, RunConfig, TrainConfig
    from core.training import runs
    from core.training.jobs import JobManager

    count = 3 if args.quick else args.runs
    config = RunConfig(data=DataConfig(image_size=96), head=TrainConfig(epochs=1 if args.quick else 2, views=1),
                       fine_tune=None if args.quick else TrainConfig(epochs=1, learning_rate=1e-4, fine_tune_at="100"))
    runs_dir = Path(tempfile.mkdtemp(prefix="memory-runs-"))
    manager, process = JobManager(), psutil.Process()
    report = sorted({1, 5, 10, 20, count} & set(range(1, count + 1)))
    sizes = {}
    print("| run | server resident memory (MB) | change since run 1 (MB) |\n|---|---|---|")
    try:
        for number in range(1, count + 1):
            run = runs.Run.create(runs_dir, config)
            manager.submit(run, workflow.full_job)
            manager.wait()
            assert run.status()["status"] == runs.FINISHED, run.read_log()
            sizes[number] = process.memory_info().rss / 2**20
            if number in report:
                change = f"{sizes[number] - sizes[1]:+.0f}" if number > 1 else ""
                print(f"| {number} | {sizes[number]:.0f} | {change} |", flush=True)
    finally:
        manager.close()
    growth = sizes[count] - sizes[1]
    print(f"\nRun {count} vs run 1: {growth:+.0f} MB (target: <= +{TARGET_MB} MB): "
          f"{'met' if growth <= TARGET_MB else 'NOT met'}.")


if __name__ == "__main__":
    main()
